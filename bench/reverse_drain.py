"""Reverse-drain throughput: N OA-made changes pushed to the Graph emulator by the real engine
(``calsync.sync.reverse.drain``), against per-request latency and Graph's per-mailbox
concurrency limit (issue 4: ≥ 200 changes/s at 20 ms; issue 6 scenario 4: ≥ 500).

    .venv/bin/python bench/reverse_drain.py                                   # 10,000 on SQLite
    .venv/bin/python bench/reverse_drain.py --oa postgresql --json bench/reverse_drain.json
    .venv/bin/python bench/reverse_drain.py --oa postgresql --drains 2        # two processes

Set-up (not timed): the Graph emulator as a separate process (``python -m emulators.graph``,
``--latency-ms`` per request, ``per_mailbox_concurrency`` = ``--mailbox-limit``: more requests
in flight for one mailbox are answered 429), a tenant of ``--users`` generated mailboxes plus
the mapped rooms' mailboxes; a fresh OA (SQLite file, or a scratch database on the local
PostgreSQL at 127.0.0.1:5432 as ``postgres``, dropped afterwards) with those users, rooms (3 in
4 mapped to a room mailbox) and ``--changes`` schedules written as the OA application writes
them (each schedule, then its participants), so the triggers fill the outbox: spread evenly
over the users' mailboxes, 10% all-day, 40% in a room, 0–``--max-attendees`` attendees
(colleagues and external guests).

Timed: one drain of one reverse integration (route the outbox, then deliver every change), or
``--drains`` drain processes at once (as several Airflow workers would run them; they share the
work through the deliveries' claims): wall time, changes/s, Graph requests (token requests
apart) and 429s, two floors — the suite's (one request per change × latency ÷ the requests
Graph allows at once: 4 per mailbox) and the engine's (requests sent × latency ÷ the requests
it keeps in flight: ``execution.concurrency`` × ``writes_per_mailbox`` per drain) — peak RSS of a
drain process (for ``--drains 1`` the bench process, seeding included) and of the emulator,
and the CPU seconds each side used. Afterwards every schedule must be in its creator's calendar
exactly once and every delivery done (else the exit status is 1). Prints a table; ``--json``
writes the figures as JSON.

``--concurrency`` defaults to 4 (16 requests in flight): at 20 ms that allows ~800 requests/s,
more than one process's HTTP client (kiota + httpx) can send; more in flight only adds CPU
(httpx scans its connection pool on every request).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

from bench_oa import create_oa, drop_oa  # noqa: E402

ZONE = "Asia/Shanghai"
CONN_ID = "calsync_bench_reverse"
DOMAIN = "contoso.com"


def log_to(path: Path) -> Any:
    """Send what the process writes to stdout — the log lines a task would write (Airflow's
    INFO default: one per Graph request) — to a file; they are still produced, so they cost
    what they cost. Returns a file object on the original stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    os.dup2(log, 1)
    os.close(log)
    return out


# --- the emulator, in its own process -------------------------------------------------------


class Emulator:
    """``python -m emulators.graph`` as a child process, driven through its control API."""

    def __init__(self, workdir: Path, latency_ms: float, mailbox_limit: int) -> None:
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "emulators.graph", "--port", "0"),
                *("--tls-dir", str(workdir / "tls"), "--latency-ms", str(latency_ms)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the Graph emulator did not start")
        self.state = json.loads(line)
        self.http = requests.Session()
        self.control = f"https://127.0.0.1:{self.state['port']}/_emulator"
        try:
            self.call("POST", "faults", {"per_mailbox_concurrency": mailbox_limit})
        except BaseException:
            self.stop()
            raise

    def call(self, method: str, path: str, body: Any = None) -> Any:
        # verify per request: REQUESTS_CA_BUNDLE would override a session's
        response = self.http.request(
            method, f"{self.control}/{path}", json=body, timeout=600, verify=self.state["ca_file"]
        )
        response.raise_for_status()
        return response.json() if response.content else None

    def stats(self) -> dict[str, Any]:
        return self.call("GET", "stats")

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return round(int(line.split()[1]) / 1024)

    def cpu_s(self) -> float:
        """User + system CPU seconds the emulator process used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- the OA -------------------------------------------------------------------------------


def user_mail(u: int) -> str:
    return f"user{u:05d}@{DOMAIN}"


def seed_oa(engine: Any, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    """Users, rooms, room mappings, then the schedules as the OA writes them (no calsync
    write origin: every one is an OA change for the outbox). Returns what the suite should
    end up with: {creator mailbox: count}."""
    import sqlalchemy as sa

    from calsync.oa import schema as t

    with engine.begin() as conn:
        conn.execute(
            sa.insert(t.users),
            [
                {
                    "login_name": f"user{u:05d}",
                    "display_name": f"用户{u}",
                    "email": user_mail(u),
                    "active": True,
                }
                for u in range(args.users)
            ],
        )
        conn.execute(
            sa.insert(t.rooms),
            [{"name": f"会议室{r:02d}", "capacity": 8} for r in range(args.rooms)],
        )
        room_ids = list(conn.execute(sa.select(t.rooms.c.id).order_by(t.rooms.c.id)).scalars())
        mapped = [rid for i, rid in enumerate(room_ids) if i % 4 != 3]
        conn.execute(
            sa.insert(t.room_mappings),
            [{"room_id": rid, "suite_mailbox": f"room{rid:03d}@{DOMAIN}"} for rid in mapped],
        )
    return seed_schedules(engine, args, rng)


def seed_schedules(
    engine: Any, args: argparse.Namespace, rng: random.Random, first: int = 0
) -> dict[str, Any]:
    """``args.changes`` schedules numbered from ``first``, spread evenly over the seeded
    users, written as the OA writes them. Returns {creator mailbox: count}."""
    import sqlalchemy as sa

    from calsync.oa import schema as t

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
    with engine.connect() as conn:
        user_ids = list(conn.execute(sa.select(t.users.c.id).order_by(t.users.c.id)).scalars())
        room_ids = list(conn.execute(sa.select(t.rooms.c.id).order_by(t.rooms.c.id)).scalars())
    expected: dict[str, int] = {}
    blank = {"user_id": None, "room_id": None, "email": "", "name": ""}
    chunk = 1000
    for start in range(first, first + args.changes, chunk):
        schedules: list[dict[str, Any]] = []
        people: list[list[dict[str, Any]]] = []
        for n in range(start, min(first + args.changes, start + chunk)):
            u = n % args.users  # spread evenly over the mailboxes
            expected[user_mail(u)] = expected.get(user_mail(u), 0) + 1
            day = today + dt.timedelta(days=rng.randint(-3, 12))
            room = rng.choice(room_ids) if rng.random() < 0.4 else None
            values: dict[str, Any] = {
                "title": f"评审 {n} review",
                "creator_id": user_ids[u],
                "timezone": ZONE,
                "location": "" if room else rng.choice(["", "线上 Teams", "B座 2F"]),
                "details": f"议程 agenda {n}" if n % 3 else "",
                "room_id": room,
                "created_at": now,
                "updated_at": now,
            }
            if rng.random() < 0.1:
                values |= {"all_day": True, "start_date": day, "end_date": day + dt.timedelta(1)}
            else:
                start = dt.datetime.combine(day, dt.time(rng.randint(0, 10)))  # 08–18h in +8
                values |= {"start_utc": start, "end_utc": start + dt.timedelta(minutes=45)}
            schedules.append(values)
            rows = []
            for k in range(rng.randint(0, args.max_attendees)):
                if rng.random() < 0.7:
                    other = user_ids[rng.randrange(args.users)]
                    if other != user_ids[u]:
                        rows.append({"kind": "user", "user_id": other})
                else:
                    rows.append({"kind": "external", "email": f"guest{k}@fabrikam.com"})
            if room:
                rows.append({"kind": "room", "room_id": room})
            people.append(rows)
        with engine.begin() as conn:  # one OA transaction per chunk, as a bulk import would
            for values, group in zip(schedules, people, strict=True):
                sid = conn.execute(sa.insert(t.schedules).values(**values)).inserted_primary_key[0]
                if group:  # the schedule's participants right after it, as the OA writes them
                    rows = [blank | row | {"schedule_id": sid} for row in group]
                    conn.execute(sa.insert(t.participants), rows)
    return expected


# --- the run ------------------------------------------------------------------------------


def integration(args: argparse.Namespace) -> Any:
    from calsync.config import parse_integration

    return parse_integration(
        Path("bench_reverse.yaml"),
        f"""
name: reverse drain bench
type: office365_global
connection_id: {CONN_ID}
direction: reverse
timezone: {ZONE}
office365: {{page_size: 100}}
execution: {{concurrency: {args.concurrency}, claim_lease_s: 3600}}
""",
    )


def run_drain(engine: Any, config: Any, worker: str = "bench") -> tuple[dict[str, Any], float]:
    from scale_worker import warm_up

    from calsync.connectors.base import connector_for
    from calsync.mapping import MappingLibrary
    from calsync.oa import store
    from calsync.sync.reverse import drain

    library = MappingLibrary.load(ROOT / "include" / "mappings")
    run = store.RunInfo("*", "bench_reverse", f"drain-{worker}")
    warm_up(config)  # as the forward workers: start-up is not drain time
    started = time.perf_counter()
    summary = asyncio.run(
        drain(engine, [config], library, connector_for, run, worker=worker, time_budget_s=3600)
    )
    return summary, time.perf_counter() - started


def worker_main(args: argparse.Namespace) -> int:
    """``--worker URL``: one more drain process (as a second Airflow worker would run one),
    started by the main process: ready → waits for a line on stdin → drains → JSON line."""
    from scale_worker import peak_rss_mb

    from calsync.oa.db import engine_from_url

    out = log_to(Path(args.log))
    engine = engine_from_url(args.worker)
    if args.config_file:  # the scale benchmark's integration (any suite)
        from calsync.config import parse_integration

        config = parse_integration(args.config_file, args.config_file.read_text())
    else:
        config = integration(args)
    print("ready", file=out, flush=True)
    sys.stdin.readline()
    start = resource.getrusage(resource.RUSAGE_SELF)
    summary, wall = run_drain(engine, config, worker=f"bench-{os.getpid()}")
    engine.dispose()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "summary": summary,
                "wall_s": wall,
                # VmHWM, not ru_maxrss: Linux carries that across exec from the parent (the
                # scale benchmark's harness holds a whole generated tenant)
                "rss_kb": round(peak_rss_mb() * 1024),
                "cpu_s": usage.ru_utime + usage.ru_stime - start.ru_utime - start.ru_stime,
            }
        ),
        file=out,
        flush=True,
    )
    return 0


def run_drains(
    url: str, args: argparse.Namespace, config_file: Path | None = None
) -> tuple[list[dict[str, Any]], float]:
    """``--drains`` processes draining the same outbox at once; wall time from their common
    start to the last one's end (start-up and imports not counted). ``config_file``: the
    integration they drain (default: this bench's Graph one)."""
    import queue
    import threading

    argv = [sys.executable, __file__, "--worker", url, "--concurrency", str(args.concurrency)]
    argv += ["--log", str(args.log)]
    if config_file is not None:
        argv += ["--config-file", str(config_file)]
    procs = [
        subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        for _ in range(args.drains)
    ]
    lines: queue.Queue[tuple[int, str | None]] = queue.Queue()

    def read(index: int, proc: subprocess.Popen[str]) -> None:  # keeps every pipe drained
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put((index, line))
        lines.put((index, None))

    for index, proc in enumerate(procs):
        threading.Thread(target=read, args=(index, proc), daemon=True).start()
    results: dict[int, dict[str, Any]] = {}
    try:
        ready: set[int] = set()
        while len(ready) < len(procs):
            index, line = lines.get(timeout=300)
            if line is None:
                raise SystemExit("a drain process did not start")
            if line.strip() == "ready":
                ready.add(index)
        started = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        ended = 0
        while ended < len(procs):
            index, line = lines.get(timeout=3600)
            if line is None:
                ended += 1
            elif line.startswith("{"):
                results[index] = json.loads(line)
        wall = time.perf_counter() - started
        if len(results) < len(procs):
            raise SystemExit("a drain process failed")
        return [results[i] for i in range(len(procs))], wall
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def verify(engine: Any, emu: Emulator, expected: dict[str, int]) -> dict[str, int]:
    """Every schedule in its creator's calendar once; every delivery done."""
    import sqlalchemy as sa

    from calsync.oa import schema as t

    duplicates = missing = 0
    for mailbox, count in expected.items():
        own = [
            e
            for e in emu.call("GET", f"mailboxes/{mailbox}/events")["value"]
            if e.get("isOrganizer", True) and str(e.get("subject", "")).startswith("评审 ")
        ]
        subjects = [e["subject"] for e in own]
        duplicates += len(subjects) - len(set(subjects))
        missing += max(0, count - len(set(subjects)))
    with engine.connect() as conn:
        states = dict(
            conn.execute(
                sa.select(t.deliveries.c.status, sa.func.count()).group_by(t.deliveries.c.status)
            ).all()
        )
    return {
        "duplicates": duplicates,
        "missing": missing,
        **{f"deliveries_{k}": v for k, v in states.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=200, help="mailboxes in the tenant")
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--max-attendees", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--mailbox-limit", type=int, default=4, help="Graph's per-mailbox limit")
    parser.add_argument("--oa", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--concurrency", type=int, default=4, help="execution.concurrency")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drains", type=int, default=1, help="drain processes at once")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log", type=Path, help="the drains' log (default: in a temp dir)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: a drain process
    parser.add_argument("--config-file", type=Path, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.worker:
        return worker_main(args)

    from calsync.oa.db import engine_from_url
    from calsync.oa.migrate import upgrade

    workdir = Path(tempfile.mkdtemp(prefix="calsync-reverse-bench-"))
    args.log = args.log or workdir / "drain.log"
    out = log_to(Path(args.log))
    emu = Emulator(workdir, args.latency_ms, args.mailbox_limit)
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = emu.state["airflow_conn_json"]
    url = create_oa(args.oa, workdir)
    engine = engine_from_url(url)
    try:
        upgrade(engine)
        started = time.perf_counter()
        expected = seed_oa(engine, args, random.Random(args.seed))
        seed_s = time.perf_counter() - started
        rooms = [f"room{i:03d}@{DOMAIN}" for i in range(1, args.rooms + 1)]
        mailboxes = [*map(user_mail, range(args.users)), *rooms]
        emu.call("POST", "seed", {"mailboxes": {m: {"events": []} for m in mailboxes}})
        config = integration(args)
        before = emu.stats()
        emu_cpu = emu.cpu_s()
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        per_drain: list[dict[str, Any]] = []
        if args.drains == 1:
            summary, wall = run_drain(engine, config)
            reports = [summary]
            rss_mb = [round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)]
        else:
            results, wall = run_drains(url, args)
            reports = [r["summary"] for r in results]
            rss_mb = [round(r["rss_kb"] / 1024) for r in results]
            per_drain = [
                {
                    "counts": r["summary"]["integrations"][0]["counts"],
                    "wall_s": round(r["wall_s"], 2),
                }
                for r in results
            ]
        after = emu.stats()
        emu_cpu = emu.cpu_s() - emu_cpu
        now = resource.getrusage(resource.RUSAGE_SELF)
        drain_cpu = now.ru_utime + now.ru_stime - cpu.ru_utime - cpu.ru_stime
        if args.drains > 1:
            drain_cpu = sum(r["cpu_s"] for r in results)
        checks = verify(engine, emu, expected)
    finally:
        emulator_rss = emu.peak_rss_mb()
        emu.stop()
        engine.dispose()
        drop_oa(url)

    from calsync.connectors.graph import GraphConnector

    by_kind = {
        k: after["by_kind"].get(k, 0) - before["by_kind"].get(k, 0) for k in after["by_kind"]
    }
    tokens = by_kind.pop("token", 0)
    requests_sent = sum(by_kind.values())
    per_drain = args.concurrency * GraphConnector.writes_per_mailbox
    in_flight = min(per_drain * args.drains, args.users * args.mailbox_limit)
    suite_limit = args.users * args.mailbox_limit
    counts: dict[str, int] = {}
    errors: list[str] = []
    routed: dict[str, int] = {}
    for summary in reports:
        [report] = summary["integrations"]
        for key, value in report["counts"].items():
            counts[key] = counts.get(key, 0) + value
        errors += report["errors"]
        for key, value in summary["routed"].items():
            routed[key] = routed.get(key, 0) + value
    result = {
        "changes": args.changes,
        "users": args.users,
        "oa": args.oa,
        "latency_ms": args.latency_ms,
        "mailbox_limit": args.mailbox_limit,
        "concurrency": args.concurrency,
        "drains": args.drains,
        "max_in_flight": in_flight,
        "seed_s": round(seed_s, 2),
        "wall_s": round(wall, 2),
        "changes_per_s": round(args.changes / wall, 1),
        "requests": requests_sent,
        "by_kind": by_kind,
        "token_requests": tokens,
        "throttled_429": after["throttled_429"] - before["throttled_429"],
        "suite_floor_s": round(args.changes * args.latency_ms / 1000 / suite_limit, 2),
        "engine_floor_s": round(requests_sent * args.latency_ms / 1000 / in_flight, 2),
        "peak_rss_mb": max(rss_mb),  # per drain process
        "emulator_peak_rss_mb": emulator_rss,
        "drain_cpu_s": round(drain_cpu, 1),
        "emulator_cpu_s": round(emu_cpu, 1),
        "routed": routed,
        "counts": counts,
        "errors": errors[:5],
        "per_drain": per_drain,
        "checks": checks,
    }
    print(
        f"reverse drain: {args.changes} changes over {args.users} mailboxes, OA {args.oa}, "
        f"latency {args.latency_ms:g} ms, {args.mailbox_limit} requests/mailbox, "
        f"execution.concurrency {args.concurrency}, {args.drains} drain process(es) "
        f"(≤ {in_flight} requests in flight)",
        file=out,
    )
    cells = {
        "wall s": result["wall_s"],
        "changes/s": result["changes_per_s"],
        "requests": result["requests"],
        "429s": result["throttled_429"],
        "floor s": result["suite_floor_s"],
        "eng floor": result["engine_floor_s"],
        "RSS MB": result["peak_rss_mb"],
        "emu RSS MB": result["emulator_peak_rss_mb"],
        "CPU s": result["drain_cpu_s"],
        "emu CPU s": result["emulator_cpu_s"],
    }
    print(" ".join(f"{k:>10}" for k in cells), file=out)
    print(" ".join(f"{v:>10}" for v in cells.values()), file=out)
    print("counts:", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())), file=out)
    print("checks:", ", ".join(f"{k}={v}" for k, v in checks.items()), file=out)
    print(f"log: {args.log}", file=out)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    ok = (
        checks["duplicates"] == 0
        and checks["missing"] == 0
        and checks.get("deliveries_done") == args.changes
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
