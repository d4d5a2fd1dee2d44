"""A distributed Airflow stack on this machine, as docker-compose.yaml wires it in containers:
CeleryExecutor, PostgreSQL metadata DB, Redis broker, and every component in its own process
(api-server, scheduler, dag-processor, triggerer, one Celery worker).

Private by construction, so it never meets another test or a running demo: its own
AIRFLOW_HOME, metadata database, Redis database number, API and log-server ports, JWT/API
secrets and Celery node name. ``stop()`` ends the components in an order that leaves nothing
behind (scheduler and triggerer first, the API server last, since workers report to it), then
looks for any process that still carries this stack's AIRFLOW_HOME and kills it by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from tests.airflow_env import ROOT

BIN = Path(sys.executable).parent
ADMIN = ("admin", "admin")
QUIET_HOOK_LOGGER = "airflow.task.hooks.calsync.connectors.graph_hook.CloudGraphHook"
# Stop order: nothing new is scheduled or fired while workers finish; the API goes last.
STOP_ORDER = ("scheduler", "triggerer", "dag-processor", "worker", "api-server")
TERMINAL = {"success", "failed"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MARKER_KEY = "calsync:stack"  # value: "<pid of the claiming process>:<token>"


def claim_redis_db(url: str, token: str) -> int:
    """An empty Redis database number (15 down to 1; 0 is everyone's default), claimed with a
    marker key so two stacks started at once never share one. A database whose claimant died
    without releasing it (the test process was killed) is emptied and reused."""
    import redis

    marker = f"{os.getpid()}:{token}"
    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{url}/{number}", socket_timeout=5)
        try:
            owner = client.get(MARKER_KEY)
            if owner is not None and not psutil.pid_exists(int(owner.split(b":")[0])):
                client.flushdb()  # a stale claim: its keys are a dead stack's broker state
            if client.dbsize() == 0 and client.set(MARKER_KEY, marker, nx=True):
                return number
        finally:
            client.close()
    raise RuntimeError("no empty Redis database (1..15) to use as a private broker")


def release_redis_db(url: str, number: int, token: str) -> None:
    """Empty the claimed database (broker queues, bindings), if it is still ours."""
    import redis

    client = redis.Redis.from_url(f"{url}/{number}", socket_timeout=5)
    try:
        if client.get(MARKER_KEY) == f"{os.getpid()}:{token}".encode():
            client.flushdb()
    finally:
        client.close()


@dataclass
class CeleryStack:
    home: Path  # AIRFLOW_HOME; component logs go to home/logs/<component>.log
    metadata_url: str  # postgresql+psycopg2://… (a throw-away database)
    broker_url: str  # redis://127.0.0.1:6379/N
    extra_env: dict[str, str] = field(default_factory=dict)
    worker_concurrency: int = 4
    api_port: int = field(default_factory=free_port)
    worker_log_port: int = field(default_factory=free_port)
    trigger_log_port: int = field(default_factory=free_port)
    worker_name: str = field(default_factory=lambda: f"calsync-it-{secrets.token_hex(3)}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)  # what needed SIGKILL in stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        """The one environment every component gets (FACTS: the same JWT secret and API secret
        key everywhere, the execution API URL of *this* api-server, distinct log ports)."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        backend = self.metadata_url.replace("postgresql+psycopg2://", "db+postgresql+psycopg2://")
        return {
            **inherited,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_url,
            # Airflow derives +asyncpg for its async engine, which is not installed: psycopg 3
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": self.metadata_url.replace(
                "postgresql+psycopg2://", "postgresql+psycopg://"
            ),
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": backend,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt"),
            "AIRFLOW__API__SECRET_KEY": self._secret("api"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            # as docker-compose.yaml: a loaded api-server may take more than the default 5 s
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
            "AIRFLOW__LOGGING__NAMESPACE_LEVELS": f"{QUIET_HOOK_LOGGER}=WARNING",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.1",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN[0]}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            **self.extra_env,
        }

    def _secret(self, kind: str) -> str:
        path = self.home / f".{kind}_secret"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text()

    def log(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    # --- lifecycle -------------------------------------------------------------------------

    def migrate(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        passwords = self.home / "simple_auth_manager_passwords.json.generated"
        passwords.write_text(json.dumps({ADMIN[0]: ADMIN[1]}) + "\n")
        with open(self.log("db-migrate"), "wb") as out:
            subprocess.run(
                [str(BIN / "airflow"), "db", "migrate"],
                env=self.env(),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=180,
            )

    def commands(self) -> dict[str, list[str]]:
        airflow = str(BIN / "airflow")
        return {
            "api-server": [
                airflow,
                "api-server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
            ],
            "scheduler": [airflow, "scheduler"],
            "dag-processor": [airflow, "dag-processor"],
            "triggerer": [airflow, "triggerer"],
            "worker": [
                airflow,
                "celery",
                "worker",
                "--celery-hostname",
                f"{self.worker_name}@%h",
                "--concurrency",
                str(self.worker_concurrency),
                "--without-gossip",
                "--without-mingle",
            ],
        }

    def start(self) -> None:
        env = self.env()
        for name, argv in self.commands().items():
            with open(self.log(name), "wb") as out:
                self.procs[name] = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    process_group=0,  # its own group: a terminal's Ctrl-C never reaches it
                )

    def wait_healthy(self, deadline: float) -> dict[str, Any]:
        """Until /api/v2/monitor/health reports every component healthy and the worker says
        ready; a component that exits meanwhile fails at once, naming its log."""
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.check_running()
            with contextlib.suppress(requests.RequestException, ValueError):
                health = requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).json()
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            healthy = bool(health) and all(
                (health.get(p) or {}).get("status") == "healthy" for p in parts
            )
            if (
                healthy
                and f"{self.worker_name}@" in self.tail("worker", 200_000)
                and (" ready." in self.tail("worker", 200_000))
            ):
                return health
            time.sleep(0.5)
        raise TimeoutError(f"the stack did not come up healthy: {health}\n{self.diagnostics()}")

    def check_running(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited {proc.returncode} at start-up\n{self.diagnostics([name])}"
                )

    def _ours(self) -> list[psutil.Process]:
        """Every live process that runs with this stack's AIRFLOW_HOME (any depth, also ones
        whose parent already died)."""
        found = []
        home = str(self.home)
        for p in psutil.process_iter(["pid"]):
            try:
                if p.pid == os.getpid():
                    continue
                if p.environ().get("AIRFLOW_HOME") == home and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def stop(self, timeout: float = 45) -> list[str]:
        """SIGTERM the components one by one in STOP_ORDER, each given its share of
        ``timeout`` to exit with its children; then SIGKILL whatever carries this AIRFLOW_HOME
        still. Returns (and records in ``killed``) what had to be killed. Idempotent."""
        deadline = time.monotonic() + timeout
        for name in STOP_ORDER:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            try:
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
            except psutil.NoSuchProcess:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            share = max(5.0, (deadline - time.monotonic()) / 2)
            _, alive = psutil.wait_procs(tree, timeout=share)
            for p in alive:  # its own children outliving it: end them by pid
                with contextlib.suppress(psutil.NoSuchProcess):
                    line = f"{name}: {p.pid} {_cmdline(p)}"
                    p.kill()
                    self.killed.append(line)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        leftovers = self._ours()
        for p in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                line = f"leftover: {p.pid} {_cmdline(p)}"
                p.kill()
                self.killed.append(line)
        psutil.wait_procs(leftovers, timeout=10)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        return self.killed

    def leftovers(self) -> list[str]:
        return [f"{p.pid} {_cmdline(p)}" for p in self._ours()]

    # --- diagnostics -----------------------------------------------------------------------

    def tail(self, name: str, size: int = 4000) -> str:
        path = self.log(name)
        if not path.exists():
            return ""
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode(errors="replace")

    def diagnostics(self, names: Iterable[str] | None = None) -> str:
        return "\n".join(
            f"----- {name} ({self.log(name)}) -----\n{self.tail(name)}"
            for name in (names or self.commands())
        )


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:100]
    except psutil.Error:
        return "?"


class Api:
    """The REST API as a script uses it: a bearer token from /auth/token."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url
        self.session = requests.Session()

    def login(self, user: str, password: str) -> None:
        r = self.session.post(
            f"{self.base}/auth/token", json={"username": user, "password": password}, timeout=10
        )
        r.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def get(self, path: str, **params: Any) -> Any:
        r = self.session.get(f"{self.base}/api/v2/{path}", params=params, timeout=15)
        r.raise_for_status()
        return r.json()

    def wait_for_dags(self, dag_ids: Iterable[str], deadline: float) -> None:
        wanted = set(dag_ids)
        seen: set[str] = set()
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                seen = {d["dag_id"] for d in self.get("dags", limit=100)["dags"]}
                if wanted <= seen:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"DAGs {sorted(wanted - seen)} were not parsed (seen {sorted(seen)})")

    def unpause(self, dag_id: str) -> None:
        r = self.session.patch(
            f"{self.base}/api/v2/dags/{dag_id}", json={"is_paused": False}, timeout=15
        )
        r.raise_for_status()

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        r = self.session.post(
            f"{self.base}/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": None, "conf": conf or {}},
            timeout=15,
        )
        r.raise_for_status()
        return r.json()["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"dags/{dag_id}/dagRuns/{run_id}")

    def wait_run(self, dag_id: str, run_id: str, deadline: float) -> dict[str, Any]:
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                run = self.run(dag_id, run_id)
                if run["state"] in TERMINAL:
                    return run
            time.sleep(0.5)
        raise TimeoutError(f"{dag_id} {run_id} did not finish: {run.get('state')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.get(f"dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=100)[
            "task_instances"
        ]
