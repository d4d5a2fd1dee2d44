"""Forward-sync benchmark: U mailboxes × E events on the Graph emulator (with per-request
latency), synced into a fresh OA on SQLite, PostgreSQL or MariaDB by the real engine.

    .venv/bin/python bench/forward_bench.py --users 200 --events 40 --latency-ms 20 --oa sqlite
    .venv/bin/python bench/forward_bench.py --users 2000 --oa postgresql --json bench/out.json
    .venv/bin/python bench/forward_bench.py --users 200 --profile /tmp/forward.prof

Runs, each timed around the engine (``sync_users`` over every user, as one task would):

- ``first_full_sync``: a scheduled run on an empty OA (no feed state yet: a full read);
- ``resync_unchanged``: the next scheduled run, nothing changed (the incremental path);
- ``resync_1pct``: after 1% of the events were edited in the suite (incremental);
- ``full_read_unchanged``: a manual-range run (full read of every mailbox, nothing changed).

Reports wall time, events/s, requests sent, the network floor (requests × latency ÷ the
concurrency used), the bench process's peak RSS so far and the CPU seconds the engine (this
process) and the emulator used, as a table and (with --json) as
JSON. The emulator runs in its own process (``--emulator thread`` puts it in this one), so the
engine's CPU and memory are measured apart from the emulator's; both share the machine's
cores. The seed is streamed to a file, so the bench never holds the tenant in memory.
``--profile FILE`` writes a cProfile of the engine runs and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import functools
import json
import os
import pstats
import random
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

ZONE = "Asia/Shanghai"
CONN_ID = "calsync_bench_graph"
ADMIN_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/mysql?charset=utf8mb4",
}


def mailbox(u: int) -> str:
    return f"user{u:05d}@contoso.com"


def mailbox_events(u: int, events: int, today: dt.date, rng: random.Random) -> list[dict]:
    """One mailbox's seed events: timed and all-day, CJK titles, HTML bodies, attendees."""
    items = []
    for e in range(events):
        day = today + dt.timedelta(days=rng.randint(-3, 3))
        hour = rng.randint(8, 19)
        all_day = rng.random() < 0.1
        item: dict[str, Any] = {
            "subject": f"会议 {u}-{e} 🎯 review",
            "body": {"contentType": "html", "content": f"<p>议程 <b>{e}</b></p>" * 3},
            "attendees": [
                {
                    "type": "required",
                    "emailAddress": {"address": f"ext{k}@fabrikam.com", "name": f"Ext {k}"},
                }
                for k in range(rng.randint(0, 5))
            ],
            "deliver": False,
        }
        if all_day:
            item |= {
                "isAllDay": True,
                "start": {"dateTime": f"{day}T00:00:00", "timeZone": ZONE},
                "end": {"dateTime": f"{day + dt.timedelta(days=1)}T00:00:00", "timeZone": ZONE},
            }
        else:
            item |= {
                "start": {"dateTime": f"{day}T{hour:02d}:00:00", "timeZone": ZONE},
                "end": {"dateTime": f"{day}T{hour:02d}:45:00", "timeZone": ZONE},
            }
        items.append(item)
    return items


def make_seed(users: int, events: int, today: dt.date, rng: random.Random) -> dict[str, Any]:
    """The whole seed as one dict (for small tenants and in-process emulators)."""
    return {
        "mailboxes": {
            mailbox(u): {"events": mailbox_events(u, events, today, rng)} for u in range(users)
        }
    }


def write_seed(path: Path, users: int, events: int, today: dt.date, rng: random.Random) -> None:
    """The same seed as :func:`make_seed`, written one mailbox at a time."""
    with path.open("w", encoding="utf-8") as out:
        out.write('{"mailboxes": {')
        for u in range(users):
            box = json.dumps({"events": mailbox_events(u, events, today, rng)}, ensure_ascii=False)
            out.write(f'{"," if u else ""}"{mailbox(u)}": {box}')
        out.write("}}")


# --- the emulator, in this process or its own -------------------------------------------


class Emulator:
    """The Graph emulator's control surface: seed, stats, edits; a thread or a process."""

    def __init__(self, mode: str, workdir: Path, latency_ms: float) -> None:
        self.mode, self.workdir, self.latency_ms = mode, workdir, latency_ms
        self._emu: Any = None
        self._proc: subprocess.Popen[str] | None = None
        self._session: Any = None
        self.conn_json = ""

    def start(self, seed_file: Path) -> None:
        if self.mode == "thread":
            from emulators.graph import GraphEmulator

            self._emu = GraphEmulator(
                tls_dir=self.workdir / "tls", latency_ms=self.latency_ms, page_size=1000
            )
            self._emu.start()
            self._emu.load_seed(seed_file)
            self.conn_json = self._emu.airflow_conn_json()
            return
        import requests

        state_file = self.workdir / "graph.json"
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "emulators.graph",
                "--port",
                "0",
                "--tls-dir",
                str(self.workdir / "tls"),
                "--seed",
                str(seed_file),
                "--latency-ms",
                str(self.latency_ms),
                "--page-size",
                "1000",
                "--state-file",
                str(state_file),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "graph.log").open("w"),
            text=True,
        )
        deadline = time.monotonic() + 300
        while not state_file.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Graph emulator did not start")
            time.sleep(0.2)
        state = json.loads(state_file.read_text(encoding="utf-8"))
        self.conn_json = state["airflow_conn_json"]
        self._base = state["authority"] + "/_emulator"
        self._session = requests.Session()
        self._session.trust_env = False  # the CA below, whatever REQUESTS_CA_BUNDLE says
        self._session.verify = state["ca_file"]

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._emu is not None:
            store = self._emu.store
            parts = path.strip("/").split("/")
            if parts == ["stats"]:
                return self._emu.stats.snapshot()
            if method == "GET":
                return {"value": store.events(parts[1])}
            return store.update_event(parts[1], parts[3], body, deliver=False)
        response = self._session.request(
            method, self._base + path + ("?deliver=false" if method == "PATCH" else ""), json=body
        )
        response.raise_for_status()
        return response.json()

    def cpu_s(self) -> float:
        """CPU seconds the emulator process used so far (0 in thread mode: it is ours)."""
        if self._proc is None:
            return 0.0
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def requests(self) -> int:
        return int(self._call("GET", "/stats")["requests"])

    def change(self, boxes: list[str], share: float, rng: random.Random) -> int:
        """Edit ``share`` of the events (spread over the mailboxes); returns how many."""
        edited = 0
        for box in boxes:
            for event in self._call("GET", f"/mailboxes/{box}/events")["value"]:
                if rng.random() < share:
                    patch = {"subject": f"{event.get('subject', '')} (moved)"}
                    self._call("PATCH", f"/mailboxes/{box}/events/{event['id']}", patch)
                    edited += 1
        return edited

    def stop(self) -> None:
        if self._emu is not None:
            self._emu.stop()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)


# --- the OA ------------------------------------------------------------------------------


def make_oa(kind: str, users: int, workdir: Path) -> tuple[Any, str]:
    import sqlalchemy as sa

    from calsync.oa import schema as t
    from calsync.oa.db import engine_from_url
    from calsync.oa.migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'oa.db'}"
    else:
        name = f"calsync_fwdbench_{secrets.token_hex(4)}"
        admin = sa.create_engine(ADMIN_URLS[kind], isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            quoted = f'"{name}"' if kind == "postgresql" else f"`{name}`"
            extra = "" if kind == "postgresql" else " CHARACTER SET utf8mb4"
            conn.exec_driver_sql(f"CREATE DATABASE {quoted}{extra}")
        admin.dispose()
        server, _, query = ADMIN_URLS[kind].partition("?")
        url = f"{server.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
    engine = engine_from_url(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(t.users),
            [
                {
                    "login_name": f"user{u:05d}",
                    "display_name": f"用户{u}",
                    "email": mailbox(u),
                    "active": True,
                }
                for u in range(users)
            ],
        )
    return engine, url


def drop_oa(kind: str, url: str) -> None:
    if kind == "sqlite":
        return
    import sqlalchemy as sa

    name = url.rsplit("/", 1)[1].split("?")[0]
    admin = sa.create_engine(ADMIN_URLS[kind], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if kind == "postgresql":
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    admin.dispose()


# --- runs --------------------------------------------------------------------------------


def run_sync(
    engine: Any,
    config: Any,
    library: Any,
    window: Any,
    label: str,
    incremental: bool,
    profiler: cProfile.Profile | None,
) -> dict[str, Any]:
    from calsync.connectors.base import connector_for
    from calsync.oa import store
    from calsync.sync.forward import sync_users

    with engine.connect() as conn:
        users = store.resolve_scope(conn, config.scope, config.binding).users

    async def go() -> list[Any]:
        async with connector_for(config) as connector:
            run = store.RunInfo(config.id, "bench", label)
            return await sync_users(
                engine, config, library, connector, users, window, run, incremental=incremental
            )

    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    try:
        results = asyncio.run(go())
    finally:
        if profiler is not None:
            profiler.disable()
    wall = time.perf_counter() - started
    totals: dict[str, int] = {}
    for r in results:
        for key, value in r.counts.items():
            totals[key] = totals.get(key, 0) + value
    return {"wall_s": wall, "totals": totals, "failed": sum(1 for r in results if r.error)}


def measure(emu: Emulator, args: argparse.Namespace, run: Any) -> dict[str, Any]:
    """Run one scenario; its figures (wall time, requests, CPU, peak RSS so far)."""
    before, emu_cpu, cpu = emu.requests(), emu.cpu_s(), time.process_time()
    result: dict[str, Any] = run()
    cpu, emu_cpu = time.process_time() - cpu, emu.cpu_s() - emu_cpu
    requests = emu.requests() - before
    return result | {
        "wall_s": round(result["wall_s"], 2),
        "engine_cpu_s": round(cpu, 2),
        "emulator_cpu_s": round(emu_cpu, 2),
        "requests": requests,
        "events_per_s": round(args.users * args.events / result["wall_s"], 1),
        # the token request aside; Graph allows 4 per mailbox, calsync reads 1 at a time
        "network_floor_s": round(requests * args.latency_ms / 1000 / args.concurrency, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def warm_up() -> None:
    """Import what the first read imports lazily (Airflow, the Graph hook): a task process
    has paid for that before its first mailbox, so the timed runs should not."""
    import airflow.providers.common.compat.sdk
    import airflow.providers.microsoft.azure.hooks.msgraph  # noqa: F401

    import calsync.connectors.graph
    import calsync.sync.forward  # noqa: F401


def scenarios(args: argparse.Namespace) -> Iterator[tuple[str, bool, float]]:
    """(label, incremental, share of events to edit before the run)."""
    yield "first_full_sync", True, 0.0
    yield "resync_unchanged", True, 0.0
    yield "resync_1pct", True, args.change_share
    if args.full_read:
        yield "full_read_unchanged", False, 0.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--oa", choices=["sqlite", "postgresql", "mariadb"], default="sqlite")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--change-share", type=float, default=0.01)
    parser.add_argument("--no-full-read", dest="full_read", action="store_false")
    parser.add_argument("--emulator", choices=["process", "thread"], default="process")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the engine runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from calsync.config import parse_integration
    from calsync.mapping import MappingLibrary
    from calsync.model import Window

    workdir = Path(tempfile.mkdtemp(prefix="calsync-bench-"))
    today = dt.date.today()
    rng = random.Random(7)
    seed_file = workdir / "seed.json"
    write_seed(seed_file, args.users, args.events, today, rng)
    profiler = cProfile.Profile() if args.profile else None
    emu = Emulator(args.emulator, workdir, args.latency_ms)
    report: dict[str, Any] = {
        "users": args.users,
        "events_per_user": args.events,
        "latency_ms": args.latency_ms,
        "oa": args.oa,
        "concurrency": args.concurrency,
        "page_size": args.page_size,
        "emulator": args.emulator,
        "runs": {},
    }
    try:
        emu.start(seed_file)
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = emu.conn_json
        config = parse_integration(
            Path("bench.yaml"),
            f"""
name: bench
type: office365_global
connection_id: {CONN_ID}
window_days: 3
timezone: {ZONE}
filters: [skip_cancelled]
office365: {{page_size: {args.page_size}}}
execution: {{concurrency: {args.concurrency}}}
""",
        )
        library = MappingLibrary.load(ROOT / "include" / "mappings")
        window = Window(today - dt.timedelta(days=3), today + dt.timedelta(days=3), ZONE)
        warm_up()
        engine, url = make_oa(args.oa, args.users, workdir)
        try:
            for label, incremental, share in scenarios(args):
                boxes = [mailbox(u) for u in range(args.users)]
                edited = emu.change(boxes, share, rng) if share else 0
                report["runs"][label] = measure(
                    emu,
                    args,
                    functools.partial(
                        run_sync, engine, config, library, window, label, incremental, profiler
                    ),
                ) | {"edited": edited}
        finally:
            engine.dispose()
            drop_oa(args.oa, url)
    finally:
        emu.stop()

    print(
        f"forward sync: {args.users} users × {args.events} events, OA {args.oa}, "
        f"latency {args.latency_ms} ms, concurrency {args.concurrency}, emulator {args.emulator}"
    )
    header = ["wall s", "events/s", "requests", "floor s", "RSS MB", "CPU s", "emu CPU"]
    print(f"{'run':20} " + " ".join(f"{h:>9}" for h in header) + "  actions")
    for label, r in report["runs"].items():
        actions = ", ".join(f"{k}={v}" for k, v in sorted(r["totals"].items()))
        cells = [
            r["wall_s"],
            r["events_per_s"],
            r["requests"],
            r["network_floor_s"],
            r["peak_rss_mb"],
            r["engine_cpu_s"],
            r["emulator_cpu_s"],
        ]
        print(f"{label:20} " + " ".join(f"{c:>9}" for c in cells) + f"  {actions}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if profiler is not None:
        profiler.dump_stats(args.profile)
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
