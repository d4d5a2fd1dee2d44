"""A forward-sync process of the scale benchmark: the engine (``calsync.sync.forward.sync_users``,
as a DAG's mapped task calls it) or the naive baseline, in a process of its own so its peak
memory is its own and not the harness's (which holds the generated tenant).

Started by ``bench/scale.py`` with a job (JSON: mode, suite, OA URL, integration YAML, the
suite connection's environment); prints ``ready``, then for every ``{"label", "incremental"}``
line on stdin runs one sync of every user in scope and prints one JSON line: wall time, action
counts, failed users, peak RSS so far. Imports and start-up are not timed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT), str(ROOT / "bench")]


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: Linux carries that across exec
    from the parent, here the harness holding the whole generated tenant."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


OA_APPLY_S = [0.0]  # the OA writer thread's busy time in the last engine run


def time_oa_writes() -> None:
    """Time ``apply_group`` (plan and write a group of mailboxes in one OA transaction: all
    the writer thread does): the run's OA write time, for the goal's "floor + OA writes"."""
    from calsync.sync import forward

    apply_group = forward.apply_group

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return apply_group(*args, **kwargs)
        finally:
            OA_APPLY_S[0] += time.perf_counter() - started

    forward.apply_group = timed


def engine_run(
    engine: Any,
    config: Any,
    library: Any,
    window: Any,
    label: str,
    incr: bool,
    only: set[str] | None = None,
) -> Any:
    """One task's sync of the users in scope (``only``: this worker's share of them, as a
    mapped task gets its batch)."""
    from calsync.connectors.base import connector_for
    from calsync.oa import store
    from calsync.sync.forward import sync_users

    with engine.connect() as conn:
        users = store.resolve_scope(conn, config.scope, config.binding).users
    if only is not None:
        users = [u for u in users if u.mailbox in only]

    async def go() -> list[Any]:
        async with connector_for(config) as connector:
            run = store.RunInfo(config.id, "bench_scale", label)
            return await sync_users(
                engine, config, library, connector, users, window, run, incremental=incr
            )

    OA_APPLY_S[0] = 0.0
    started = time.perf_counter()
    results = asyncio.run(go())
    wall = time.perf_counter() - started
    counts: dict[str, int] = {}
    for r in results:
        for key, value in r.counts.items():
            counts[key] = counts.get(key, 0) + value
    errors = [r.error for r in results if r.error][:3]
    return wall, counts, sum(1 for r in results if r.error), errors, OA_APPLY_S[0]


def warm_up(config: Any) -> None:
    """Load what a task process has loaded before it syncs or drains — Airflow (the
    connection lookup imports it: seconds on this machine), the compat SDK the connectors
    import on their first call, and the suite's connector module —: start-up, not sync time."""
    import importlib

    from airflow.sdk import BaseHook

    from calsync.connectors.base import connector_for

    BaseHook.get_connection(config.connection_id)
    importlib.import_module("airflow.providers.common.compat.sdk")
    connector_for(config)  # imports the connector's module; not entered, nothing opened


def py_spy() -> str | None:
    """py-spy on PATH or beside this interpreter (a virtual environment's), if installed."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def profile(path: str) -> subprocess.Popen[bytes]:
    """py-spy sampling this process (threads, GIL holders only: waits are not CPU) into
    ``path`` until SIGINT; ``--profile`` of scale.py."""
    spy = py_spy()
    if spy is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    command = [spy, "record", "--pid", str(os.getpid()), "--gil", "--threads", "-r", "100"]
    child = subprocess.Popen(
        [*command, "-f", "raw", "-o", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)  # attached before the step starts
    return child


def main() -> int:
    job = json.loads(sys.argv[1])
    os.environ.update(job["env"])
    logging.basicConfig(level=logging.WARNING)
    from calsync.config import parse_integration
    from calsync.mapping import MappingLibrary
    from calsync.oa import store
    from calsync.oa.db import engine_from_url
    from calsync.sync.window import scheduled_window

    config = parse_integration(Path(f"{job['integration']}.yaml"), job["config_yaml"])
    library = MappingLibrary.load(ROOT / "include" / "mappings")
    window = scheduled_window(dt.datetime.now(dt.UTC), config.timezone, config.window_days)
    engine = engine_from_url(job["oa_url"])
    warm_up(config)
    reader = None
    if job["mode"] == "naive":
        import naive_sync

        if job["suite"] == "graph":
            reader = naive_sync.GraphReader(job["conn_json"])
        elif job["suite"] == "alimail":
            reader = naive_sync.AlimailReader(job["conn_json"], job["endpoint"])
        else:
            reader = naive_sync.ExchangeReader(job["conn_json"], job["ca_file"], config.timezone)
    if reader is None:
        time_oa_writes()
    print("ready", flush=True)
    for line in sys.stdin:
        step = json.loads(line)
        if step.get("stop"):
            break
        only = set(job["mailboxes"]) if job.get("mailboxes") else None
        profiler = (
            profile(f"{step['profile']}.{step['label']}.{os.getpid()}.raw")
            if step.get("profile")
            else None
        )
        cpu_before = time.process_time()
        if reader is not None:
            run = store.RunInfo(config.id, "bench_naive", step["label"])
            result = naive_sync.naive_sync(engine, config, library, reader, window, run, only)
            wall, counts, failed, errors = result.wall_s, result.counts, result.failed, []
            oa_apply = None
        else:
            wall, counts, failed, errors, oa_apply = engine_run(
                engine, config, library, window, step["label"], step["incremental"], only
            )
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file and exits
            profiler.wait()
        rss = peak_rss_mb()
        print(
            json.dumps(
                {
                    "wall_s": round(wall, 2),
                    "counts": counts,
                    "failed_users": failed,
                    "errors": errors,
                    "peak_rss_mb": round(rss),
                    "oa_apply_s": None if oa_apply is None else round(oa_apply, 3),
                    "cpu_s": round(time.process_time() - cpu_before, 2),
                }
            ),
            flush=True,
        )
    if reader is not None:
        reader.close()
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
