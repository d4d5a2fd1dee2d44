"""Reverse-sync latency under `airflow standalone`: OA commit → the suite emulator receiving
the write, at a steady rate of OA changes.

    .venv/bin/python bench/reverse_latency.py                       # watcher, 10/s for 60 s
    .venv/bin/python bench/reverse_latency.py --mode sensor         # deferrable sensor instead
    .venv/bin/python bench/reverse_latency.py --rate 10 --seconds 60 --json bench/latency.json

Sets up a private AIRFLOW_HOME, an OA (SQLite, or ``--oa-url`` e.g. a PostgreSQL database), the
Graph emulator in this process (``--latency-ms`` per request; every create is time-stamped on
arrival), one reverse integration, and starts `airflow standalone`. Modes:

- ``watcher`` (shipped): the reverse DAG scheduled by the outbox asset's watcher;
- ``sensor``: a ``@continuous`` DAG whose first task is a deferrable sensor on the same trigger,
  then the same drain (bench/sensor_dag/, not shipped).

``--scheduler-idle`` sets AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME (Airflow's default is
1 s; FACTS.md measured 0.1 s as the best trade). Prints a table and writes JSON with --json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]
BIN = Path(sys.executable).parent
GRAPH_CONN = "calsync_bench_graph"
DAG_IDS = {"watcher": "calsync_reverse", "sensor": "calsync_reverse_sensor"}
INTEGRATION = f"""
name: Reverse latency bench
type: office365_global
connection_id: {GRAPH_CONN}
direction: reverse
timezone: Asia/Shanghai
execution: {{concurrency: 8}}
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_emulator(work: Path, latency_ms: float) -> tuple[Any, dict[str, float]]:
    from emulators.graph import GraphEmulator

    emu = GraphEmulator(tls_dir=work / "tls", port=0, latency_ms=latency_ms)
    emu.start()
    from calsync.oa.seed import DEMO_USERS

    for user in DEMO_USERS:
        if user["email"]:
            emu.store.add_mailbox(user["email"], user["name"])
    arrived: dict[str, float] = {}
    real = emu.store.create_event

    def stamped(mailbox: str, event: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        arrived.setdefault(str(event.get("subject")), time.time())
        return real(mailbox, event, *args, **kwargs)

    emu.store.create_event = stamped  # type: ignore[method-assign]
    return emu, arrived


def prepare_oa(url: str) -> Any:
    from calsync.oa.db import engine_from_url
    from calsync.oa.migrate import upgrade
    from calsync.oa.seed import seed_demo

    engine = engine_from_url(url)
    upgrade(engine)
    seed_demo(engine)
    return engine


def airflow_env(work: Path, emu: Any, oa_url: str, mode: str, idle: float | None) -> dict[str, str]:
    include = work / "include"
    shutil.copytree(ROOT / "include" / "mappings", include / "mappings")
    (include / "integrations").mkdir(parents=True)
    (include / "integrations" / "bench_reverse.yaml").write_text(INTEGRATION)
    dags = ROOT / "dags" if mode == "watcher" else ROOT / "bench" / "sensor_dag"
    bundle = work / "ca-bundle.pem"
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    bundle.write_text((system.read_text() if system.exists() else "") + emu.ca_file.read_text())
    from sqlalchemy.engine import make_url

    url = make_url(oa_url)
    oa_conn: dict[str, Any] = {"conn_type": "sqlite", "host": url.database}
    if url.get_backend_name() != "sqlite":
        oa_conn = {
            "conn_type": "generic",
            "extra": {"sqlalchemy_url": url.render_as_string(hide_password=False)},
        }
    home = work / "airflow"
    home.mkdir()
    port = free_port()
    (home / "simple_auth_manager_passwords.json.generated").write_text('{"admin": "admin"}\n')
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__LOGGING__NAMESPACE_LEVELS": (
            "airflow.task.hooks.calsync.connectors.graph_hook.CloudGraphHook=WARNING"
        ),
        "CALSYNC_INCLUDE_DIR": str(include),
        "AIRFLOW_CONN_CALSYNC_OA": json.dumps(oa_conn),
        f"AIRFLOW_CONN_{GRAPH_CONN.upper()}": emu.airflow_conn_json(),
        "SSL_CERT_FILE": str(bundle),
        "REQUESTS_CA_BUNDLE": str(bundle),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    if idle is not None:
        env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] = str(idle)
    return env


class Api:
    def __init__(self, env: dict[str, str]) -> None:
        self.base = f"http://127.0.0.1:{env['AIRFLOW__API__PORT']}"
        self.session = requests.Session()

    def login(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                r = self.session.post(
                    f"{self.base}/auth/token",
                    json={"username": "admin", "password": "admin"},
                    timeout=5,
                )
                if r.status_code in (200, 201):
                    token = r.json()["access_token"]
                    self.session.headers["Authorization"] = f"Bearer {token}"
                    return
            time.sleep(1)
        raise TimeoutError("the Airflow API did not come up")

    def unpause(self, dag_id: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            r = self.session.patch(
                f"{self.base}/api/v2/dags/{dag_id}", json={"is_paused": False}, timeout=10
            )
            if r.status_code == 200:
                return
            time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} did not appear")


def make_change(engine: Any, creator_id: int, title: str) -> float:
    import sqlalchemy as sa

    from calsync.oa import schema as t

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    start = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(t.schedules).values(
                title=title,
                start_utc=start,
                end_utc=start + dt.timedelta(hours=1),
                timezone="Asia/Shanghai",
                creator_id=creator_id,
                created_at=now,
                updated_at=now,
            )
        )
    return time.time()


def creators(engine: Any) -> list[int]:
    import sqlalchemy as sa

    from calsync.oa import schema as t

    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(t.users.c.id).where(t.users.c.email.is_not(None), t.users.c.active)
            ).scalars()
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        children = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in parent.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    psutil.wait_procs(children, timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(15)
    for p in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="calsync-revlat-"))
    emu, arrived = start_emulator(work, args.latency_ms)
    oa_url = args.oa_url or f"sqlite:///{work / 'oa.db'}"
    engine = prepare_oa(oa_url)
    env = airflow_env(work, emu, oa_url, args.mode, args.scheduler_idle)
    log = open(work / "standalone.log", "w")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen(
        [str(BIN / "airflow"), "standalone"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,
    )
    try:
        started = time.monotonic()
        api = Api(env)
        api.login(started + 180)
        api.unpause(DAG_IDS[args.mode], started + 180)
        users = creators(engine)
        # warm-up: the first change proves the whole path is live
        make_change(engine, users[0], "warm-up")
        deadline = time.monotonic() + 180
        while "warm-up" not in arrived and time.monotonic() < deadline:
            time.sleep(0.05)
        if "warm-up" not in arrived:
            raise TimeoutError(f"no delivery within 180 s; see {work / 'standalone.log'}")
        ready_s = time.monotonic() - started
        committed: dict[str, float] = {}
        interval = 1.0 / args.rate
        total = int(args.rate * args.seconds)
        t0 = time.monotonic()
        for i in range(total):
            wait = t0 + i * interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            title = f"lat-{i}"
            committed[title] = make_change(engine, users[i % len(users)], title)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(t not in arrived for t in committed):
            time.sleep(0.1)
        latencies = [arrived[t] - c for t, c in committed.items() if t in arrived]
        missing = [t for t in committed if t not in arrived]
        return {
            "mode": args.mode,
            "oa": oa_url.split(":")[0],
            "rate_per_s": args.rate,
            "changes": total,
            "delivered": len(latencies),
            "missing": len(missing),
            "latency_ms_per_request": args.latency_ms,
            "scheduler_idle_sleep_s": args.scheduler_idle,
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p95_s": round(percentile(latencies, 0.95), 3) if latencies else None,
            "p99_s": round(percentile(latencies, 0.99), 3) if latencies else None,
            "max_s": round(max(latencies), 3) if latencies else None,
            "stack_ready_s": round(ready_s, 1),
            "graph_requests": emu.stats.snapshot()["requests"],
        }
    finally:
        stop(proc)
        emu.stop()
        log.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work dir kept: {work}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(DAG_IDS), default="watcher")
    parser.add_argument("--rate", type=float, default=10.0, help="OA changes per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--oa-url", help="OA database URL (default: a fresh SQLite file)")
    parser.add_argument("--scheduler-idle", type=float, default=0.1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args()
    threading.current_thread().name = "bench"
    result = run(args)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
