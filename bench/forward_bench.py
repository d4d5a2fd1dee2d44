"""Forward-sync benchmark: U mailboxes × E events on the Graph emulator (with per-request
latency), synced into a fresh OA on SQLite or PostgreSQL by the real engine in one process.

    .venv/bin/python bench/forward_bench.py --users 200 --events 40 --latency-ms 20 --oa sqlite
    .venv/bin/python bench/forward_bench.py --oa postgresql --json bench/out.json

Reports, for a first full sync and an unchanged re-sync: wall time, events/s, requests sent,
and the process's peak RSS; as a table and (with --json) as JSON. The network floor is
requests × latency ÷ the concurrency used (Graph allows 4 concurrent requests per mailbox;
calsync reads one page at a time per mailbox, `execution.concurrency` mailboxes at once).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

ZONE = "Asia/Shanghai"
CONN_ID = "calsync_bench_graph"


def make_seed(users: int, events: int, today: dt.date, rng: random.Random) -> dict[str, Any]:
    boxes: dict[str, Any] = {}
    for u in range(users):
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
        boxes[f"user{u:05d}@contoso.com"] = {"events": items}
    return {"mailboxes": boxes}


def make_oa(kind: str, users: int, workdir: Path) -> tuple[Any, str]:
    import sqlalchemy as sa

    from calsync.oa import schema as t
    from calsync.oa.db import engine_from_url
    from calsync.oa.migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'oa.db'}"
    else:
        name = f"calsync_bench_{secrets.token_hex(4)}"
        admin = sa.create_engine(
            "postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    engine = engine_from_url(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(t.users),
            [
                {
                    "login_name": f"user{u:05d}",
                    "display_name": f"用户{u}",
                    "email": f"user{u:05d}@contoso.com",
                    "active": True,
                }
                for u in range(users)
            ],
        )
    return engine, url


def drop_oa(kind: str, url: str) -> None:
    if kind != "postgresql":
        return
    import sqlalchemy as sa

    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def run_sync(engine: Any, config: Any, library: Any, window: Any, label: str) -> dict[str, Any]:
    from calsync.connectors.base import connector_for
    from calsync.oa import store
    from calsync.sync.forward import sync_users

    with engine.connect() as conn:
        users = store.resolve_scope(conn, config.scope, config.binding).users

    async def go() -> list[Any]:
        async with connector_for(config) as connector:
            run = store.RunInfo(config.id, "bench", label)
            return await sync_users(engine, config, library, connector, users, window, run)

    started = time.perf_counter()
    results = asyncio.run(go())
    wall = time.perf_counter() - started
    totals: dict[str, int] = {}
    for r in results:
        for key, value in r.counts.items():
            totals[key] = totals.get(key, 0) + value
    return {"wall_s": wall, "totals": totals, "failed": sum(1 for r in results if r.error)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--oa", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from calsync.config import parse_integration
    from calsync.mapping import MappingLibrary
    from calsync.model import Window
    from emulators.graph import GraphEmulator

    workdir = Path(tempfile.mkdtemp(prefix="calsync-bench-"))
    emu = GraphEmulator(tls_dir=workdir / "tls", latency_ms=args.latency_ms, page_size=1000)
    emu.start()
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = emu.airflow_conn_json()
    today = dt.date.today()
    emu.load_seed(make_seed(args.users, args.events, today, random.Random(7)))
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
    engine, url = make_oa(args.oa, args.users, workdir)
    report: dict[str, Any] = {
        "users": args.users,
        "events_per_user": args.events,
        "latency_ms": args.latency_ms,
        "oa": args.oa,
        "concurrency": args.concurrency,
        "page_size": args.page_size,
        "runs": {},
    }
    try:
        for label in ("first_full_sync", "resync_unchanged"):
            before = emu.stats.snapshot()["requests"]
            result = run_sync(engine, config, library, window, label)
            requests = emu.stats.snapshot()["requests"] - before
            api_requests = requests - (1 if label == "first_full_sync" else 0)  # token
            events = args.users * args.events
            result |= {
                "requests": requests,
                "events_per_s": round(events / result["wall_s"], 1),
                "network_floor_s": round(
                    api_requests * args.latency_ms / 1000 / args.concurrency, 2
                ),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
            result["wall_s"] = round(result["wall_s"], 2)
            report["runs"][label] = result
    finally:
        emu.stop()
        engine.dispose()
        drop_oa(args.oa, url)

    print(
        f"forward sync: {args.users} users × {args.events} events, OA {args.oa}, "
        f"latency {args.latency_ms} ms, concurrency {args.concurrency}"
    )
    header = ["wall s", "events/s", "requests", "floor s", "RSS MB"]
    print(f"{'run':20} " + " ".join(f"{h:>9}" for h in header) + "  actions")
    for label, r in report["runs"].items():
        actions = ", ".join(f"{k}={v}" for k, v in sorted(r["totals"].items()))
        cells = [
            r["wall_s"],
            r["events_per_s"],
            r["requests"],
            r["network_floor_s"],
            r["peak_rss_mb"],
        ]
        print(f"{label:20} " + " ".join(f"{c:>9}" for c in cells) + f"  {actions}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
