"""Connector read benchmark: how fast each suite connector reads a tenant, without the OA.

    .venv/bin/python bench/connector_read.py --users 200 --events 40
    .venv/bin/python bench/connector_read.py --users 2000 --suite graph --json /tmp/read.json

For each suite (Graph, EWS, Alibaba Mail): the emulator in its own process
(``bench/emulator_host.py``: ``--latency-ms`` per request, the suite's concurrency limit), the
generated tenant of ``bench/tenant.py`` (U users × E events: series occurrences, all-day
events, rooms, 0-30 attendees, CJK titles, HTML bodies), and one connector reading every
mailbox's window with ``list_events``, ``--concurrency`` mailboxes at a time (as the forward
engine does), timed after a warm-up read of one mailbox (imports, login, first connection).
Reports wall time, events/s, the requests the emulator served (Graph: requests inside
``$batch`` round trips count one by one), the connector process's CPU seconds, the
emulator process's CPU seconds and its throttling answers. What the forward engine adds
(planning, OA writes) is ``bench/forward_bench.py``'s and ``bench/scale.py``'s to measure.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT), str(ROOT / "bench")]

TYPES = {"graph": "office365_global", "exchange": "exchange", "alimail": "alimail_v2"}
LIMITS = {"graph": 4, "exchange": 27, "alimail": 16}  # the emulators' defaults (README)


class Host:
    """``bench/emulator_host.py`` as a child speaking JSON lines."""

    def __init__(self, suite: str, seed: Path, workdir: Path, latency_ms: float) -> None:
        self.log = open(workdir / f"{suite}.log", "w")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "emulator_host.py"),
                f"--suite={suite}",
                f"--seed={seed}",
                f"--tls-dir={workdir / 'tls'}",
                f"--latency-ms={latency_ms}",
                f"--limit={LIMITS[suite]}",
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.ready = self.read()

    def read(self) -> Any:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise SystemExit(f"the emulator host ended early; see {self.log.name}")

    def ask(self, op: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op}) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def cpu_s(self) -> float:
        """CPU seconds the emulator process used so far (user + system, from /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("stop")
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired, SystemExit):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def integration(suite: str, conn_id: str, ready: dict[str, Any], concurrency: int) -> Any:
    from calsync.config import parse_integration

    text = f"""
name: read bench {suite}
type: {TYPES[suite]}
connection_id: {conn_id}
window_days: 3
timezone: Asia/Shanghai
execution: {{concurrency: {concurrency}}}
"""
    if suite == "graph":
        text += "office365: {page_size: 100}\n"
    elif suite == "exchange":
        text += (
            f"exchange: {{server: '{ready['endpoint']}', access_mode: impersonation, "
            f"ca_bundle: '{ready['ca_file']}'}}\n"
        )
    else:
        text += f"alimail: {{endpoint: '{ready['endpoint']}'}}\n"
    return parse_integration(Path(f"read_{suite}.yaml"), text)


async def read_all(
    config: Any, mailboxes: list[str], window: Any, host: Host | None = None
) -> dict[str, Any]:
    """Read every mailbox; timed after a warm-up read of the first one (imports, login, the
    first connection: once per task, not per mailbox). Returns events, failed mailboxes, wall
    and CPU seconds, and the emulator's stats before the timed part."""
    from calsync.connectors.base import connector_for

    gate = asyncio.Semaphore(config.execution.concurrency)
    counts = {"events": 0, "failed": 0}

    async def one(connector: Any, mailbox: str) -> None:
        async with gate:
            try:
                events = await connector.list_events(mailbox, window)
            except Exception as exc:
                counts["failed"] += 1
                if counts["failed"] <= 3:
                    print(f"  {mailbox}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return
            counts["events"] += len(events)  # not `+= len(await …)`: that loses updates

    async with connector_for(config) as connector:
        await connector.list_events(mailboxes[0], window)
        before = host.ask("stats") if host is not None else None
        emu_cpu = host.cpu_s() if host is not None else 0.0
        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(connector, m) for m in mailboxes))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        emu_cpu = (host.cpu_s() if host is not None else 0.0) - emu_cpu
    return {**counts, "wall_s": wall, "cpu_s": cpu, "emulator_cpu_s": emu_cpu, "before": before}


def bench_suite(suite: str, tenant: Any, args: argparse.Namespace, workdir: Path) -> dict:
    import tenant as gen

    from calsync.model import Window

    seed = workdir / f"{suite}.json"
    seeds = {"graph": gen.graph_seed, "exchange": gen.exchange_seed, "alimail": gen.alimail_seed}
    seed.write_text(json.dumps(seeds[suite](tenant), ensure_ascii=False), encoding="utf-8")
    host = Host(suite, seed, workdir, args.latency_ms)
    try:
        conn_id = f"calsync_read_{suite}"
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = host.ready["airflow_conn_json"]
        if host.ready.get("ca_file"):
            os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = host.ready["ca_file"]
        config = integration(suite, conn_id, host.ready, args.concurrency)
        window = Window(
            tenant.today - dt.timedelta(days=3), tenant.today + dt.timedelta(days=3), gen.ZONE
        )
        read = asyncio.run(read_all(config, list(tenant.calendars), window, host))
        after = host.ask("stats")
    finally:
        host.stop()
    before, events, wall, cpu = read["before"], read["events"], read["wall_s"], read["cpu_s"]
    kinds = {
        k: v - before["by_kind"].get(k, 0)
        for k, v in after["by_kind"].items()
        if v - before["by_kind"].get(k, 0)
    }
    return {
        "wall_s": round(wall, 2),
        "events": events,
        "events_per_s": round(events / wall),
        "failed_mailboxes": read["failed"],
        "requests": after["requests"] - before["requests"],
        "by_kind": kinds,
        "throttled": after["throttled"] - before["throttled"],
        "max_concurrency_seen": after.get("max_concurrency_seen"),
        "client_cpu_s": round(cpu, 2),
        "client_cpu_ms_per_event": round(cpu * 1000 / max(events, 1), 3),
        "emulator_cpu_s": round(read["emulator_cpu_s"], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--suite", choices=["all", *TYPES], default="all")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import tenant as gen

    workdir = Path(tempfile.mkdtemp(prefix="calsync-read-bench-"))
    tenant = gen.generate(args.users, args.events)
    suites = list(TYPES) if args.suite == "all" else [args.suite]
    report: dict[str, Any] = {
        "users": args.users,
        "events_per_user": args.events,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "suites": {},
    }
    for suite in suites:
        report["suites"][suite] = bench_suite(suite, tenant, args, workdir)
    print(
        f"connector read: {args.users} mailboxes × {args.events} events, "
        f"latency {args.latency_ms:g} ms, {args.concurrency} mailboxes at a time"
    )
    header = ("wall s", "events/s", "requests", "throttled", "CPU s", "CPU ms/ev", "emu CPU s")
    print(f"{'suite':10}" + "".join(f"{h:>11}" for h in header))
    for suite, r in report["suites"].items():
        cells = (
            r["wall_s"],
            r["events_per_s"],
            r["requests"],
            r["throttled"],
            r["client_cpu_s"],
            r["client_cpu_ms_per_event"],
            r["emulator_cpu_s"],
        )
        print(f"{suite:10}" + "".join(f"{c:>11}" for c in cells) + f"  {r['by_kind']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
