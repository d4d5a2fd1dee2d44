"""Scenario 6 of the scale benchmark: scenario 1 (first full forward sync of U × E events) as
a real DAG run under ``airflow standalone`` (LocalExecutor), trigger to finished run.

Set-up (not timed): the tenant on the suite emulator (its own process), a fresh OA with the
tenant's users and rooms, a private AIRFLOW_HOME and include/ with one forward integration,
`airflow standalone` started and its API up, the DAG unpaused. Timed: ``POST dagRuns`` → the
run's terminal state, polled every 0.5 s. Reported: end-to-end seconds, the run's own
start → end, mapped ``sync_users`` tasks, the batch size and parallelism used, the OA
schedules written (must be U × E) and the suite requests.

Batch size and parallelism (``--batch-size``, ``--parallelism``): on 2 cores, 4 task processes
at once keep both cores busy while each waits on the network (``core.parallelism`` 4 also
keeps LocalExecutor's pre-forked workers few, FACTS.md). Every task process pays several
seconds to start (interpreter, Airflow's task runner, the suite client) — measured 10–15 s on
the loaded machine — so the users go in one wave of as many batches as there are slots:
``batch_size = ceil(U / parallelism)`` (500 for 2,000 users); inside a task
``execution.concurrency`` mailboxes are read at once. Smaller batches retry less work when a
task fails but pay the start-up again per wave.

    .venv/bin/python bench/airflow_run.py --suite graph --users 200 --events 40
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT), str(BENCH)]


def _oa_connection(url: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return json.dumps({"conn_type": "sqlite", "host": parsed.database})
    return json.dumps(
        {
            "conn_type": "generic",
            "extra": {"sqlalchemy_url": parsed.render_as_string(hide_password=False)},
        }
    )


def _count_schedules(url: str) -> int:
    import sqlalchemy as sa

    from calsync.oa import schema as t
    from calsync.oa.db import engine_from_url

    engine = engine_from_url(url)
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(t.schedules)).scalar_one()
    engine.dispose()
    return int(count)


def airflow_scenario(suite: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import requests
    from reverse_latency import Api, free_port, stop
    from scale import (
        GRAPH_CONCURRENCY,
        Child,
        create_oa,
        drop_oa,
        integration_yaml,
        prepare_oa,
        suite_limit,
    )
    from tenant import SEEDS, generate

    parallelism = getattr(args, "parallelism", None) or 4
    batch_size = getattr(args, "batch_size", None) or max(1, math.ceil(args.users / parallelism))
    tenant = generate(args.users, args.events, seed=args.seed)
    seed_file = workdir / f"{suite}_airflow_seed.json"
    seed_file.write_text(json.dumps(SEEDS[suite](tenant), ensure_ascii=False))
    limit = suite_limit(suite, args)
    emu = Child(
        [
            sys.executable,
            str(BENCH / "emulator_host.py"),
            *("--suite", suite, "--seed", str(seed_file), "--tls-dir", str(workdir / "tls")),
            *("--latency-ms", str(args.latency_ms), "--limit", str(limit)),
        ],
        workdir / f"{suite}_airflow_emulator.log",
    )
    url = ""
    proc: subprocess.Popen[bytes] | None = None
    log = open(workdir / f"{suite}_standalone.log", "w")  # noqa: SIM115 - lives with the process
    try:
        ready = emu.read()
        url = create_oa(args.oa, workdir, f"{suite}_airflow")
        prepare_oa(url, tenant)
        conn_id = f"calsync_bench_{suite}"
        integration = f"scale_{suite}"
        include = workdir / f"{suite}_airflow_include"
        shutil.rmtree(include, ignore_errors=True)
        shutil.copytree(ROOT / "include" / "mappings", include / "mappings")
        (include / "integrations").mkdir(parents=True)
        # per task: 64 mailboxes for Graph (limited per mailbox only); a share of the
        # tenant limit for Exchange and Alibaba Mail, the tasks running side by side
        concurrency = args.concurrency or (
            GRAPH_CONCURRENCY
            if suite == "graph"
            else max(1, suite_limit(suite, args) // parallelism)
        )
        text = integration_yaml(suite, conn_id, ready, concurrency).replace(
            f"execution: {{concurrency: {concurrency}}}",
            f"execution: {{concurrency: {concurrency}, per_user_task_limit: "
            f"{min(batch_size, 1000)}, batch_size: {batch_size}, retries: 2, retry_delay_s: 5}}",
        )
        (include / "integrations" / f"{integration}.yaml").write_text(text + "schedule: null\n")
        # A fresh deployment runs the housekeeping DAG at once (its latest cron slot): not now.
        (include / "housekeeping.yaml").write_text("enabled: false\n")
        home = workdir / f"{suite}_airflow_home"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        (home / "simple_auth_manager_passwords.json.generated").write_text('{"admin": "admin"}\n')
        port = free_port()
        bundle = workdir / "ca-bundle.pem"
        system = Path("/etc/ssl/certs/ca-certificates.crt")
        ca = Path(ready["ca_file"]).read_text() if ready.get("ca_file") else ""
        bundle.write_text((system.read_text() if system.exists() else "") + ca)
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
            "AIRFLOW__LOGGING__NAMESPACE_LEVELS": (
                "airflow.task.hooks.calsync.connectors.graph_hook.CloudGraphHook=WARNING"
            ),
            "CALSYNC_INCLUDE_DIR": str(include),
            "AIRFLOW_CONN_CALSYNC_OA": _oa_connection(url),
            f"AIRFLOW_CONN_{conn_id.upper()}": ready["airflow_conn_json"],
            "SSL_CERT_FILE": str(bundle),
            "REQUESTS_CA_BUNDLE": str(bundle),
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        }
        proc = subprocess.Popen(
            [str(BIN / "airflow"), "standalone"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        started = time.monotonic()
        api = Api(env)
        api.login(started + 300)
        dag_id = f"calsync_{integration}"
        _unpause(api, dag_id, started + 300)
        stack_ready_s = time.monotonic() - started
        before = emu.ask({"op": "stats"})
        t0 = time.monotonic()
        made = api.session.post(
            f"{api.base}/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, timeout=30
        )
        made.raise_for_status()
        run_id = made.json()["dag_run_id"]
        state, run = "queued", {}
        deadline = t0 + args.airflow_timeout_s
        while time.monotonic() < deadline:
            try:
                got = api.session.get(
                    f"{api.base}/api/v2/dags/{dag_id}/dagRuns/{run_id}", timeout=30
                )
                run = got.json()
                state = run.get("state", state)
            except requests.RequestException:
                pass
            if state in ("success", "failed"):
                break
            time.sleep(0.5)
        end_to_end = time.monotonic() - t0
        after = emu.ask({"op": "stats"})
        tasks = api.session.get(
            f"{api.base}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
            params={"limit": 1000},
            timeout=30,
        ).json()
        mapped = [ti for ti in tasks.get("task_instances", []) if ti["task_id"] == "sync_users"]
        durations = [ti.get("duration") or 0 for ti in mapped]
        return {
            "end_to_end_s": round(end_to_end, 1),
            "state": state,
            "run_start_to_end_s": _span(run.get("start_date"), run.get("end_date")),
            "mapped_tasks": len(mapped),
            "task_s_median": round(sorted(durations)[len(durations) // 2], 1)
            if durations
            else None,
            "task_s_max": round(max(durations), 1) if durations else None,
            "batch_size": batch_size,
            "parallelism": parallelism,
            "concurrency": concurrency,
            "schedules_in_oa": _count_schedules(url),
            "expected": tenant.total_events,
            "requests": after["requests"] - before["requests"],
            "stack_ready_s": round(stack_ready_s, 1),
        }
    finally:
        if proc is not None:
            stop(proc)
        log.close()
        emu.stop()
        if url:
            drop_oa(url)


def _unpause(api: Any, dag_id: str, deadline: float) -> None:
    """``Api.unpause`` with a longer timeout: a busy 2-core machine answers slowly."""
    import requests

    while time.monotonic() < deadline:
        try:
            r = api.session.patch(
                f"{api.base}/api/v2/dags/{dag_id}", json={"is_paused": False}, timeout=60
            )
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"DAG {dag_id} did not appear")


def _span(start: str | None, end: str | None) -> float | None:
    import datetime as dt

    if not start or not end:
        return None
    parse = dt.datetime.fromisoformat
    return round(
        (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds(), 1
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=["graph", "exchange", "alimail"], default="graph")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--oa", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--concurrency", type=int, help="default: as bench/scale.py")
    parser.add_argument("--tenant-limit", type=int, help="default: 27 (EWS) / 16 (Alibaba)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--airflow-timeout-s", type=float, default=900)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="calsync-airflow-run-"))
    result = airflow_scenario(args.suite, args, workdir)
    print(json.dumps(result, indent=1))
    return 0 if result["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
