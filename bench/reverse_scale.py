"""Scenario 4 of the scale benchmark: a reverse drain of N OA changes into each suite.

The OA and its changes are made by ``bench/reverse_drain.py``'s ``seed_oa`` (schedules written
as the OA application writes them, so the triggers fill the outbox: 10% all-day, 40% in a
room, 0–10 attendees); the suite is the emulator in its own process with the tenant's
mailboxes and no events. Timed: one ``calsync.sync.reverse.drain`` of one reverse
integration (``reverse_drain.run_drain``), twice: its first drain (which looks up what the
next ones reuse: Alibaba Mail's calendar ids) and, after as many new changes by the same
creators, its second, which is the figure; the first is reported beside it
(``first_drain``). Beside them:

- the naive baseline: the outbox rows taken one at a time in order on a second OA with the
  first ``--naive-changes`` (default 300) of the same changes — the schedule read
  (calsync's ``load_snapshot``/``build_write``), one create request through the suite's
  connector (or an update, for a later row of a schedule already sent: no coalescing), the
  link inserted and the row deleted, one commit per row. Its rate (schedules/s) is compared;
- the floor: one request per change (Exchange: one CreateItem per mailbox, up to 100 items;
  the changes are spread evenly over the mailboxes) × latency ÷ the requests the suite allows
  at once (Graph 4 per mailbox × mailboxes; Exchange and Alibaba the tenant limit); an Alibaba
  Mail first drain adds one calendar listing per mailbox.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench_oa import create_oa, drop_oa
from scale import (
    GRAPH_MAILBOX_LIMIT,
    Child,
    integration_yaml,
    postgres_cpu_s,
    reverse_concurrency,
    suite_limit,
)

ROOT = Path(__file__).resolve().parent.parent
EWS_ITEMS_PER_CREATE = 100  # what the floor assumes one CreateItem carries (exchangelib's chunk)
BENCH = ROOT / "bench"


def _drain_args(args: argparse.Namespace, changes: int) -> argparse.Namespace:
    return argparse.Namespace(
        users=args.users, rooms=20, changes=changes, max_attendees=10, concurrency=4
    )


def _seed(url: str, args: argparse.Namespace, changes: int) -> Any:
    import reverse_drain

    from calsync.oa.db import engine_from_url
    from calsync.oa.migrate import upgrade

    engine = engine_from_url(url)
    upgrade(engine)
    reverse_drain.seed_oa(engine, _drain_args(args, changes), random.Random(args.seed))
    return engine


def naive_drain(engine: Any, config: Any, library: Any) -> tuple[int, float]:
    """Outbox rows one at a time, in order: read the schedule, one create (or, for a schedule
    already sent, an update), bookkeeping, commit. Returns (schedules created, seconds)."""
    import sqlalchemy as sa

    from calsync.connectors.base import connector_for
    from calsync.model import OAUser
    from calsync.oa import schema as t
    from calsync.sync.reverse import build_write, load_snapshot

    with engine.connect() as conn:
        rooms = dict(
            conn.execute(
                sa.select(t.room_mappings.c.room_id, t.room_mappings.c.suite_mailbox)
            ).all()
        )
        ids = list(
            conn.execute(sa.select(t.outbox.c.id, t.outbox.c.schedule_id).order_by(t.outbox.c.id))
        )

    async def go() -> int:
        done = 0
        async with connector_for(config) as connector:
            for outbox_id, schedule_id in ids:
                with engine.connect() as conn:
                    snap = load_snapshot(conn, config, schedule_id, rooms)
                    if snap is None:
                        continue
                    creator = conn.execute(
                        sa.select(t.users).where(t.users.c.id == snap.schedule["creator_id"])
                    ).one()
                owner = OAUser(
                    creator.id,
                    creator.email.lower(),
                    creator.display_name,
                    login=creator.login_name,
                )
                write = build_write(config, library, snap, owner)
                if isinstance(write, str):
                    continue
                with engine.connect() as conn:
                    linked = conn.execute(
                        sa.select(t.links.c.suite_id).where(
                            t.links.c.integration_id == config.id,
                            t.links.c.schedule_id == schedule_id,
                        )
                    ).scalar()
                if linked is not None:  # a later change of the same schedule: no coalescing
                    await connector.update_event(owner.mailbox, linked, write)
                    with engine.begin() as conn:
                        conn.execute(sa.delete(t.outbox).where(t.outbox.c.id == outbox_id))
                    continue
                write.known_new = True  # a first attempt just creates: one request
                event = await connector.create_event(owner.mailbox, write)
                with engine.begin() as conn:
                    now = sa.func.now()
                    conn.execute(
                        sa.insert(t.links).values(
                            integration_id=config.id,
                            mailbox=owner.mailbox,
                            suite_id=event.suite_id,
                            ical_uid=event.ical_uid[:400],
                            identity_key=event.identity_key[:400],
                            schedule_id=schedule_id,
                            change_key=event.change_key[:200],
                            created_at=now,
                            updated_at=now,
                        )
                    )
                    conn.execute(sa.delete(t.outbox).where(t.outbox.c.id == outbox_id))
                done += 1
        return done

    started = time.perf_counter()
    done = asyncio.run(go())
    return done, time.perf_counter() - started


@contextlib.contextmanager
def stdout_to(path: Path) -> Any:
    """The drain's log lines (Airflow's INFO default: one per Graph request) go to a file:
    still produced, so still paid for, but not on the harness's table."""
    sys.stdout.flush()
    saved = os.dup(1)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.close(log)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


class _TimedDrain:
    """One reverse integration's drains of the changes due, timed, with the requests they
    sent, the floor and where the CPU went."""

    def __init__(
        self,
        suite: str,
        args: argparse.Namespace,
        workdir: Path,
        emu: Child,
        engine: Any,
        url: str,
        config: Any,
        config_file: Path,
    ) -> None:
        self.suite, self.args, self.workdir, self.emu = suite, args, workdir, emu
        self.engine, self.url, self.config, self.config_file = engine, url, config, config_file
        self.runs = 0

    def run(self) -> dict[str, Any]:
        import reverse_drain

        args, suite, emu = self.args, self.suite, self.emu
        self.runs += 1
        before = emu.ask({"op": "stats"})
        pg_before = postgres_cpu_s() if args.oa == "postgresql" else None
        drains = args.processes  # drain processes sharing the outbox, as several workers
        concurrency = reverse_concurrency(suite, args)
        log = self.workdir / f"{suite}_reverse_drain.log"
        if drains == 1:
            start = resource.getrusage(resource.RUSAGE_SELF)
            with stdout_to(log):
                summary, wall = reverse_drain.run_drain(self.engine, self.config)
            reports = [summary["integrations"][0]]
            usage = resource.getrusage(resource.RUSAGE_SELF)
            rss = [round(usage.ru_maxrss / 1024)]
            cpu = [usage.ru_utime + usage.ru_stime - start.ru_utime - start.ru_stime]
        else:
            spec = argparse.Namespace(drains=drains, concurrency=concurrency, log=log)
            results, wall = reverse_drain.run_drains(self.url, spec, self.config_file)
            reports = [r["summary"]["integrations"][0] for r in results]
            rss = [round(r["rss_kb"] / 1024) for r in results]
            cpu = [r["cpu_s"] for r in results]
        after = emu.ask({"op": "stats"})
        pg_after = postgres_cpu_s() if pg_before is not None else None
        report: dict[str, Any] = {"counts": {}, "errors": []}
        for one in reports:
            for key, value in one["counts"].items():
                report["counts"][key] = report["counts"].get(key, 0) + value
            report["errors"] += one["errors"]
        requests = after["requests"] - before["requests"]
        limit = suite_limit(suite, args)
        allowed = args.users * GRAPH_MAILBOX_LIMIT if suite == "graph" else limit
        mailboxes = min(args.users, args.changes)
        fewest = args.changes
        if suite == "exchange":  # a CreateItem takes up to 100 items of one mailbox
            per_mailbox = math.ceil(args.changes / mailboxes)
            fewest = mailboxes * math.ceil(per_mailbox / EWS_ITEMS_PER_CREATE)
        elif suite == "alimail" and self.runs == 1:  # the first drain lists each calendar
            fewest += mailboxes
        floor = round(-(-fewest // allowed) * args.latency_ms / 1000, 2)
        result: dict[str, Any] = {
            "changes": args.changes,
            "wall_s": round(wall, 2),
            "changes_per_s": round(args.changes / wall, 1),
            "requests": requests,
            "throttled": after["throttled"] - before["throttled"],
            "counts": report["counts"],
            "errors": report["errors"][:3],
            "peak_rss_mb": max(rss),
            "drain_processes": drains,
            "execution_concurrency": concurrency,
            "allowed_concurrency": allowed,
            "floor_s": floor,
            "x_floor": round(wall / floor, 1) if floor else None,
            # where the machine's CPU went: the drain processes, the emulator, PostgreSQL
            "cpu_s": round(sum(cpu), 2),
            "emulator_cpu_s": round(after["cpu_s"] - before["cpu_s"], 2),
        }
        if pg_after is not None and pg_before is not None:
            result["postgres_cpu_s"] = round(pg_after - pg_before, 2)
        return result


def _seed_more(engine: Any, args: argparse.Namespace) -> None:
    """As many new changes again, by the same creators (the next drain's work)."""
    import reverse_drain

    reverse_drain.seed_schedules(
        engine, _drain_args(args, args.changes), random.Random(args.seed + 1), first=args.changes
    )


def reverse_scenario(suite: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from tenant import SEEDS, generate

    from calsync.config import parse_integration
    from calsync.mapping import MappingLibrary

    seed_file = workdir / f"{suite}_reverse_seed.json"
    seed_file.write_text(json.dumps(SEEDS[suite](generate(args.users, 0, rooms=20))))
    limit = suite_limit(suite, args)
    emu = Child(
        [
            sys.executable,
            str(BENCH / "emulator_host.py"),
            *("--suite", suite, "--seed", str(seed_file), "--tls-dir", str(workdir / "tls")),
            *("--latency-ms", str(args.latency_ms), "--limit", str(limit)),
        ],
        workdir / f"{suite}_reverse_emulator.log",
    )
    urls: list[str] = []
    try:
        ready = emu.read()
        conn_id = f"calsync_bench_{suite}_reverse"
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = ready["airflow_conn_json"]
        concurrency = reverse_concurrency(suite, args)
        yaml_text = integration_yaml(suite, conn_id, ready, concurrency, direction="reverse")
        config_file = workdir / f"bench_{suite}_reverse.yaml"
        config_file.write_text(yaml_text)
        config = parse_integration(config_file, yaml_text)
        library = MappingLibrary.load(ROOT / "include" / "mappings")
        urls.append(create_oa(args.oa, workdir, f"{suite}_reverse"))
        engine = _seed(urls[0], args, args.changes)
        drain = _TimedDrain(suite, args, workdir, emu, engine, urls[0], config, config_file)
        # An integration's first drain looks up what it keeps for the next ones (Alibaba
        # Mail: each mailbox's calendar id). The figure is its second drain, of as many new
        # changes by the same creators, as every drain after the first runs; the first is
        # reported beside it.
        first = drain.run()
        _seed_more(engine, args)
        result = drain.run() | {"first_drain": first}
        engine.dispose()
        if not args.no_naive:
            sample = min(args.changes, args.naive_changes)
            urls.append(create_oa(args.oa, workdir, f"{suite}_reverse_naive"))
            naive_engine = _seed(urls[1], args, sample)
            before = emu.ask({"op": "stats"})
            # its own integration id: its calsync keys differ from the engine's events
            naive_config = parse_integration(Path(f"bench_{suite}_naive.yaml"), yaml_text)
            with stdout_to(workdir / f"{suite}_reverse_naive.log"):
                done, naive_wall = naive_drain(naive_engine, naive_config, library)
            after = emu.ask({"op": "stats"})
            naive_engine.dispose()
            rate = done / naive_wall if naive_wall else 0.0
            result |= {
                "naive_changes": done,
                "naive_wall_s": round(naive_wall, 2),
                "naive_changes_per_s": round(rate, 1),
                "naive_requests": after["requests"] - before["requests"],
                "x_naive": round(result["changes_per_s"] / rate, 1) if rate else None,
            }
        return result
    finally:
        emu.stop()
        for url in urls:
            drop_oa(url)
