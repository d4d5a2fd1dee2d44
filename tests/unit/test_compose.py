"""docker-compose.yaml can't run here (no Docker engine): check it statically — against the
Compose specification's JSON schema, and its wiring: the Airflow 3 Celery topology, one shared
environment (keys, execution API, broker, metadata DB), mounts, health-gated start order, and
an image that installs the pinned requirements. tests/integration/test_celery_stack.py runs the
same topology as local processes.

tests/unit/data/compose_spec.json is the Compose specification schema as Debian's
docker-compose 1.29.2 ships it (compose/config/compose_spec.json, Apache-2.0).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).parent / "data" / "compose_spec.json"
MOUNT = re.compile(r"^((?:\$\{[^}]*\})?[^:]*):([^:]+)")
PROJ = "${AIRFLOW_PROJ_DIR:-.}/"
# service → its Airflow command; every one runs the common image, env and mounts
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-worker": "celery worker",
    "airflow-triggerer": "triggerer",
    "flower": "celery flower",
}
ONE_SHOT = {"airflow-init", "airflow-cli"}  # run to completion / on demand: no healthcheck
QUIET_HOOK_LOGGER = "airflow.task.hooks.calsync.connectors.graph_hook.CloudGraphHook"


def split(volume: str) -> tuple[str, str]:
    match = MOUNT.match(volume)
    assert match, volume
    return match.group(1), match.group(2)


def load() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def common() -> dict[str, Any]:
    return load()["x-airflow-common"]


def airflow_services() -> dict[str, dict[str, Any]]:
    services = load()["services"]
    return {n: s for n, s in services.items() if n in AIRFLOW_SERVICES or n in ONE_SHOT}


def validator() -> Any:
    import jsonschema

    return jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))


def test_the_file_follows_the_compose_specification():
    errors = sorted(validator().iter_errors(load()), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def test_the_schema_check_would_catch_a_mistake():
    doc = load()
    doc["services"]["airflow-worker"]["depends_on"]["redis"]["condition"] = "service_ready"
    doc["services"]["airflow-scheduler"]["healthcheck"]["retry"] = 5
    doc["services"]["airflow-triggerer"]["volumes"] = "dags:/opt/airflow/dags"
    assert len(list(validator().iter_errors(doc))) >= 3


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose (v1) not installed")
def test_docker_compose_v1_accepts_it():
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yaml"), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_stack_has_the_airflow_3_celery_topology():
    services = load()["services"]
    assert {"postgres", "redis", *AIRFLOW_SERVICES, *ONE_SHOT} <= set(services)
    for name, command in AIRFLOW_SERVICES.items():
        assert services[name]["command"] == command, name
    env = services["airflow-worker"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert services["flower"]["profiles"] == ["flower"]
    assert services["airflow-cli"]["profiles"] == ["debug"]


def test_every_airflow_service_shares_image_environment_and_mounts():
    base = common()
    for name, service in airflow_services().items():
        assert service["image"] == base["image"] and service["build"] == base["build"], name
        assert service["user"] == (base["user"] if name != "airflow-init" else "0:0"), name
        env = service["environment"]
        missing = {k: v for k, v in base["environment"].items() if env.get(k) != v}
        assert not missing, f"{name} lacks the common environment: {missing}"
        assert service["volumes"] == base["volumes"], name
    mounts = {split(v)[1] for v in base["volumes"]}
    assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= mounts


def test_components_start_in_health_gated_order():
    services = load()["services"]
    for name, service in airflow_services().items():
        deps = service["depends_on"]
        assert deps["postgres"] == {"condition": "service_healthy"}, name
        assert deps["redis"] == {"condition": "service_healthy"}, name
        if name in ONE_SHOT:
            continue
        assert deps["airflow-init"] == {"condition": "service_completed_successfully"}, name
        assert service["restart"] == "always", name
    # workers talk to the execution API: start them once the api-server is healthy
    worker = services["airflow-worker"]
    assert worker["depends_on"]["airflow-apiserver"] == {"condition": "service_healthy"}
    assert worker["environment"]["DUMB_INIT_SETSID"] == "0"  # warm shutdown of the worker
    assert "stop_grace_period" in worker


def test_every_long_running_service_has_a_healthcheck():
    services = load()["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck")
        assert check and check["test"] and check["interval"] and check["retries"], name
        test = check["test"] if isinstance(check["test"], list) else [check["test"]]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    env = common()["environment"]
    assert env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"  # :8974/health
    assert "8974/health" in " ".join(services["airflow-scheduler"]["healthcheck"]["test"])
    assert "TriggererJob" in services["airflow-triggerer"]["healthcheck"]["test"][1]
    assert "DagProcessorJob" in services["airflow-dag-processor"]["healthcheck"]["test"][1]
    assert "inspect ping" in services["airflow-worker"]["healthcheck"]["test"][1]


def test_components_share_keys_and_reach_each_other_by_service_name():
    services = load()["services"]
    env = common()["environment"]
    # one JWT secret and API secret key for all (tasks authenticate with tokens it signs)
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] and env["AIRFLOW__API__SECRET_KEY"]
    api = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    published = {p.split(":")[-1] for p in services["airflow-apiserver"]["ports"]}
    assert (api.hostname, str(api.port), api.path) == ("airflow-apiserver", "8080", "/execution/")
    assert str(api.port) in published
    pg = services["postgres"]["environment"]
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"):
        url = urlsplit(env[key])
        assert url.scheme.startswith("postgresql+psycopg"), key
        assert (url.hostname, url.username, url.password, url.path) == (
            "postgres",
            pg["POSTGRES_USER"],
            pg["POSTGRES_PASSWORD"],
            f"/{pg['POSTGRES_DB']}",
        ), key
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].endswith("@postgres/airflow")
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    oa = json.loads(env["AIRFLOW_CONN_CALSYNC_OA"])
    assert oa["host"] == "postgres" and oa["schema"] == "calsync_oa"
    init = "\n".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init and "CREATE DATABASE calsync_oa" in init
    assert "calsync.oa.migrate --conn-id calsync_oa" in init


def test_calsync_settings_in_the_common_environment():
    env = common()["environment"]
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] == "0.1"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert f"{QUIET_HOOK_LOGGER}=WARNING" in env["AIRFLOW__LOGGING__NAMESPACE_LEVELS"]
    # the logger name follows the hook class: a rename must not silently un-quiet it
    from calsync.connectors import graph_hook

    assert hasattr(graph_hook, QUIET_HOOK_LOGGER.rsplit(".", 1)[-1])
    mounted = {split(v)[1]: split(v)[0] for v in common()["volumes"]}
    assert env["CALSYNC_INCLUDE_DIR"] in mounted


def test_the_image_installs_the_pinned_requirements():
    requirements = (ROOT / "requirements.txt").read_text()
    airflow = re.search(r"^apache-airflow==(\S+)$", requirements, re.M)
    assert airflow, "requirements.txt pins apache-airflow"
    assert re.search(r"^celery\[redis\]>=5\.5,<5\.7$", requirements, re.M)  # FACTS: 5.7 breaks
    assert re.search(r"^apache-airflow-providers-celery==", requirements, re.M)
    base = f"apache/airflow:{airflow.group(1)}-python3.11"
    assert common()["build"]["args"]["AIRFLOW_IMAGE"] == base
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG AIRFLOW_IMAGE={base}" in dockerfile
    assert re.search(r"-r \S*requirements\.txt", dockerfile)
    assert re.search(r"-c \S*constraints\.txt", dockerfile)
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {"!requirements.txt", "!constraints.txt"} <= set(ignore)


def test_every_mount_source_exists():
    doc = load()
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source, _ = split(volume)
            if source.startswith(PROJ):
                path = source.removeprefix(PROJ)
                assert path in ("logs", "config") or (ROOT / path).exists(), f"{name}: {path}"
            elif not source.startswith(("/", ".")):
                assert source in doc.get("volumes", {}), f"{name} uses undeclared volume {source}"
        for dep in service.get("depends_on", {}):
            assert dep in doc["services"], f"{name} depends on unknown service {dep}"


def test_no_suite_credentials_in_the_compose_file():
    text = (ROOT / "docker-compose.yaml").read_text().lower()
    for word in ("client_secret", "app_secret", "tenant_id"):
        assert word not in text
