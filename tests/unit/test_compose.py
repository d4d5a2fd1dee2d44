"""docker-compose.yaml can't run here (no Docker engine): check its wiring statically."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


MOUNT = re.compile(r"^((?:\$\{[^}]*\})?[^:]*):([^:]+)")


def split(volume: str) -> tuple[str, str]:
    match = MOUNT.match(volume)
    assert match, volume
    return match.group(1), match.group(2)


def load() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_stack_has_the_airflow_3_celery_topology():
    services = load()["services"]
    assert {
        "postgres",
        "redis",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-worker",
        "airflow-triggerer",
        "airflow-init",
    } <= set(services)
    env = services["airflow-worker"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:")


def test_every_dependency_and_mount_resolves():
    doc = load()
    services = doc["services"]
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for volume in service.get("volumes", []):
            source, _ = split(volume)
            if source.startswith("${AIRFLOW_PROJ_DIR:-.}/"):
                path = source.removeprefix("${AIRFLOW_PROJ_DIR:-.}/")
                assert path == "logs" or (ROOT / path).exists(), f"{name} mounts missing {path}"
            elif not source.startswith(("/", ".")):
                assert source in doc.get("volumes", {}), f"{name} uses undeclared volume {source}"
    mounts = {split(v)[1] for v in services["airflow-scheduler"]["volumes"]}
    assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= mounts


def test_no_suite_credentials_in_the_compose_file():
    text = (ROOT / "docker-compose.yaml").read_text().lower()
    for word in ("client_secret", "app_secret", "tenant_id"):
        assert word not in text
