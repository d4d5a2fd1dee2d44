"""Scale benchmark (issue 6): a generated tenant of U users × E events on each suite emulator,
synced by calsync and by the naive baseline, beside the network floor.

    .venv/bin/python bench/scale.py --suite graph --users 200 --events 40
    .venv/bin/python bench/scale.py --suite all --users 2000 --oa postgresql --json bench/out.json
    .venv/bin/python bench/scale.py --scenarios 5            # DAG-file parse time only

Scenarios (``--scenarios 1,2,3,4,5,6``; default 1,2,3,5):

1. first full forward sync of every user (the first scheduled run): wall time, events/s,
   requests sent, peak RSS of the sync process;
2. re-sync with no change (scheduled run, incremental path): wall time, requests;
3. re-sync after 1% of the events changed (their subjects edited in the suite);
4. reverse drain of ``--changes`` OA changes (default 10,000) into the suite: changes/s, as
   an integration's drains run after its first (which looks up what the next ones reuse, e.g.
   Alibaba Mail's calendar ids; it drains as many changes before and is reported too);
5. DAG-file parse time with 50 integration configs (``bench/dag_parse.py``);
6. scenario 1 as a real DAG run under ``airflow standalone`` (``bench/airflow_run.py``).

Every forward figure stands beside the naive baseline (``bench/naive_sync.py``: one user at
a time, one request per page, one OA statement per event) run in the same invocation against
the same emulator, on its own OA database — the two OAs are compared afterwards
(``oa_match``) — and beside the network floor: the fewest requests the suite needs ×
latency ÷ the concurrency it allows (Graph: 4 in flight per mailbox; Exchange and Alibaba
Mail: ``--tenant-limit`` per tenant, default 27 — Exchange's EWSMaxConcurrency — and 16,
enforced by the emulators). Each emulator runs in its own
process (``bench/emulator_host.py``); each sync in its own process (``bench/scale_worker.py``).

``--processes P`` splits the users over P sync processes started together (as P mapped tasks
of a DAG run) and runs scenario 4 with P drain processes; each forward figure also gives the
OA writer thread's busy time and the wall time ÷ (floor + that time).

Prints a table; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT), str(BENCH)]

from bench_oa import create_oa, drop_oa  # noqa: E402
from scale_worker import py_spy  # noqa: E402

SUITES = ("graph", "exchange", "alimail")
TYPES = {"graph": "office365_global", "exchange": "exchange", "alimail": "alimail_v2"}
GRAPH_MAILBOX_LIMIT = 4  # Graph: concurrent requests per mailbox
# Per tenant: Exchange's default EWSMaxConcurrency (27) and the Alibaba emulator's default.
TENANT_LIMITS = {"exchange": 27, "alimail": 16}
CHANGED_SHARE = 0.01  # scenario 3


# --- processes --------------------------------------------------------------------------


class Child:
    """A child process speaking JSON lines (the emulator host, a sync worker)."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = open(log, "a")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def read(self) -> Any:
        """The next JSON line (other output, e.g. a library's log line, is skipped)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line == "ready":
                return "ready"
            if line.startswith("{"):
                return json.loads(line)
        raise SystemExit(f"{self.proc.args[1]} ended early; see {self.log.name}")

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def ask(self, message: dict[str, Any]) -> Any:
        self.send(message)
        return self.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "stop", "stop": True}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --- the OA -----------------------------------------------------------------------------


def prepare_oa(url: str, tenant: Any) -> None:
    from tenant import seed_oa

    from calsync.oa.db import engine_from_url
    from calsync.oa.migrate import upgrade

    engine = engine_from_url(url)
    upgrade(engine)
    seed_oa(engine, tenant)
    engine.dispose()


def oa_digest(url: str, mailboxes: set[str] | None = None) -> dict[str, Any]:
    """What the OA holds, independent of row ids and timestamps: counts and a hash over the
    schedules (with their participants) and links — of the schedules linked to ``mailboxes``
    only, when given."""
    import hashlib

    import sqlalchemy as sa

    from calsync.oa import schema as t
    from calsync.oa.db import engine_from_url

    engine = engine_from_url(url)
    s, p, lk = t.schedules, t.participants, t.links
    with engine.connect() as conn:
        people: dict[int, list[str]] = {}
        for row in conn.execute(
            sa.select(p.c.schedule_id, p.c.kind, p.c.user_id, p.c.room_id, p.c.email)
        ):
            people.setdefault(row.schedule_id, []).append(
                f"{row.kind}|{row.user_id}|{row.room_id}|{row.email}"
            )
        linked = conn.execute(sa.select(lk.c.schedule_id, lk.c.suite_id, lk.c.mailbox)).all()
        if mailboxes is not None:
            linked = [row for row in linked if row.mailbox in mailboxes]
        suite_of = {row.schedule_id: row.suite_id for row in linked}
        rows = []
        for r in conn.execute(sa.select(s)):
            if mailboxes is not None and r.id not in suite_of:
                continue
            rows.append(
                "|".join(
                    str(v)
                    for v in (
                        suite_of.get(r.id), r.title, r.start_utc, r.end_utc, r.all_day,
                        r.start_date, r.end_date, r.timezone, r.location, r.room_id, r.details,
                        r.color, r.creator_id, r.source_integration,
                        ",".join(sorted(people.get(r.id, []))),
                    )
                )
            )  # fmt: skip
        links = sorted(
            "|".join(str(v) for v in row[:4])
            for row in conn.execute(
                sa.select(lk.c.mailbox, lk.c.suite_id, lk.c.identity_key, lk.c.content_hash)
            )
            if mailboxes is None or row.mailbox in mailboxes
        )
    engine.dispose()
    digest = hashlib.sha256("\n".join(sorted(rows) + links).encode()).hexdigest()[:16]
    return {
        "schedules": len(rows),
        "participants": sum(len(people.get(i, [])) for i in suite_of),
        "links": len(links),
        "digest": digest,
    }


# --- one suite's forward scenarios ---------------------------------------------------------


def integration_yaml(
    suite: str, conn_id: str, ready: dict[str, Any], concurrency: int, direction: str = "forward"
) -> str:
    lease = ", claim_lease_s: 3600" if direction != "forward" else ""
    text = f"""
name: scale bench {suite}
type: {TYPES[suite]}
connection_id: {conn_id}
direction: {direction}
window_days: 3
timezone: Asia/Shanghai
filters: [skip_cancelled]
execution: {{concurrency: {concurrency}{lease}}}
"""
    if suite == "graph":
        text += "office365: {page_size: 100}\n"
    elif suite == "exchange":
        text += (
            f"exchange: {{server: '{ready['endpoint']}', access_mode: impersonation, "
            f"ca_bundle: '{ready['ca_file']}', check_mailbox_domain: true, domain: contoso.com}}\n"
        )
    else:
        text += f"alimail: {{endpoint: '{ready['endpoint']}'}}\n"
    return text


GRAPH_CONCURRENCY = 64  # mailboxes read at once per process: Graph limits per mailbox only
# × 4 writes per mailbox in flight per drain process. $batch carries them: with more in flight
# the batches leave fuller (fewer client-stack passes per change); 16 → 32 took a 2-drain
# run from ~450 to ~530 changes/s, more gave nothing.
GRAPH_REVERSE_CONCURRENCY = 32


def suite_concurrency(suite: str, args: argparse.Namespace) -> int:
    """``execution.concurrency`` of the forward integration: ``--concurrency``, else 64 for
    Graph and the tenant limit shared by the sync processes for Exchange and Alibaba Mail
    (more would only be refused by the suite)."""
    if args.concurrency:
        return int(args.concurrency)
    if suite == "graph":
        return GRAPH_CONCURRENCY
    return max(1, suite_limit(suite, args) // args.processes)


def reverse_concurrency(suite: str, args: argparse.Namespace) -> int:
    """``execution.concurrency`` of the reverse integration: ``--reverse-concurrency``, else
    32 for Graph (up to 4 writes per mailbox in flight each) and the tenant limit shared by
    the drain processes for Exchange and Alibaba Mail, whose connectors send at most
    ``execution.concurrency`` requests at once (their worker threads), however many writes
    the drain has in flight."""
    if args.reverse_concurrency:
        return int(args.reverse_concurrency)
    if suite == "graph":
        return GRAPH_REVERSE_CONCURRENCY
    return max(1, suite_limit(suite, args) // args.processes)


def suite_limit(suite: str, args: argparse.Namespace) -> int:
    """The concurrency limit the emulator enforces: per mailbox (Graph) or per tenant."""
    if suite == "graph":
        return GRAPH_MAILBOX_LIMIT
    return args.tenant_limit or TENANT_LIMITS[suite]


def floors(suite: str, users: int, events: int, latency_s: float, tenant_limit: int) -> dict:
    """The network floor per scenario: the fewest requests the suite needs × latency ÷ the
    requests it allows at once. Page sizes are each API's maximum: Graph 1,000 per
    calendarView/delta page, EWS 1,000 per FindItem and GetItem, Alibaba 100 per view page."""
    changed_boxes = min(users, math.ceil(users * events * CHANGED_SHARE))
    if suite == "graph":
        full = users * math.ceil(events / 1000)
        resync = users  # one delta request per mailbox
        changed = users
        allowed = users * GRAPH_MAILBOX_LIMIT
    elif suite == "exchange":
        full = users * 2 * math.ceil(events / 1000)  # FindItem (ids) + GetItem (fields)
        resync = users  # SyncFolderItems per mailbox
        changed = users + changed_boxes  # + GetItem of the changed items
        allowed = tenant_limit
    else:
        full = users * (1 + math.ceil(events / 100))  # calendar list + view pages
        resync = users * math.ceil(events / 100)  # no change feed: the view (calendar remembered)
        changed = resync
        allowed = tenant_limit

    def floor(requests: int) -> float:
        return round(math.ceil(requests / allowed) * latency_s, 3)

    return {
        "allowed_concurrency": allowed,
        "1": {"min_requests": full, "floor_s": floor(full)},
        "2": {"min_requests": resync, "floor_s": floor(resync)},
        "3": {"min_requests": changed, "floor_s": floor(changed)},
    }


def forward_scenarios(suite: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from tenant import SEEDS, generate, user_mail

    wanted = [s for s in ("1", "2", "3") if s in args.scenarios]
    tenant = generate(args.users, args.events, seed=args.seed)
    seed_file = workdir / f"{suite}_seed.json"
    seed_file.write_text(json.dumps(SEEDS[suite](tenant), ensure_ascii=False))
    limit = suite_limit(suite, args)
    emu = Child(
        [
            sys.executable,
            str(BENCH / "emulator_host.py"),
            *("--suite", suite, "--seed", str(seed_file), "--tls-dir", str(workdir / "tls")),
            *("--latency-ms", str(args.latency_ms), "--limit", str(limit)),
        ],
        workdir / f"{suite}_emulator.log",
    )
    urls: dict[str, str] = {}
    workers: dict[str, list[Child]] = {}
    out: dict[str, Any] = {"limit": limit}
    try:
        ready = emu.read()
        out["limit_enforced"] = ready["limit_enforced"]
        conn_id = f"calsync_bench_{suite}"
        env = {f"AIRFLOW_CONN_{conn_id.upper()}": ready["airflow_conn_json"]}
        if ready.get("ca_file"):
            env |= {"SSL_CERT_FILE": ready["ca_file"], "REQUESTS_CA_BUNDLE": ready["ca_file"]}
        concurrency = suite_concurrency(suite, args)
        out["concurrency"] = concurrency
        config_yaml = integration_yaml(suite, conn_id, ready, concurrency)
        modes = ["engine"] + ([] if args.no_naive else ["naive"])
        # The naive baseline is sequential, so its time is the sum over users: on a big
        # tenant it syncs the first --naive-users and its time and requests are scaled up.
        naive_users = min(args.users, args.naive_users)
        sampled = {user_mail(u) for u in range(naive_users)} if naive_users < args.users else None
        scale_up = args.users / naive_users
        for mode in modes:
            urls[mode] = create_oa(args.oa, workdir, f"{suite}_{mode}")
            prepare_oa(urls[mode], tenant)
            job = {
                "mode": mode,
                "suite": suite,
                "integration": f"bench_{suite}",
                "oa_url": urls[mode],
                "config_yaml": config_yaml,
                "env": env,
                "conn_json": ready["airflow_conn_json"],
                "endpoint": ready["endpoint"],
                "ca_file": ready["ca_file"],
                "mailboxes": sorted(sampled) if mode == "naive" and sampled else None,
            }
            # --processes P: the engine's users split over P processes, as P mapped tasks
            # of one DAG run share a tenant (parallelism P); the naive baseline is one process.
            shares = (
                [None]
                if mode == "naive" or args.processes == 1
                else [
                    sorted(user_mail(u) for u in range(k, args.users, args.processes))
                    for k in range(args.processes)
                ]
            )
            workers[mode] = [
                Child(
                    [
                        sys.executable,
                        str(BENCH / "scale_worker.py"),
                        json.dumps(job | ({"mailboxes": share} if share else {})),
                    ],
                    workdir / f"{suite}_{mode}_{k}.log",
                )
                for k, share in enumerate(shares)
            ]
        for worker in (w for group in workers.values() for w in group):
            if worker.read() != "ready":
                raise SystemExit("a sync worker did not start")
        runs: dict[str, dict[str, Any]] = {}
        labels = {"1": "first_full_sync", "2": "resync_unchanged", "3": "resync_1pct_changed"}
        for scenario in ("1", "2", "3"):
            if scenario != "1" and scenario not in wanted:
                continue  # scenario 1 always runs: the others start from its OA
            if scenario == "3":
                singles = tenant.single_ids()  # edited in place: series stay as they are
                target = math.ceil(tenant.total_events * CHANGED_SHARE)
                picked = singles[:: max(1, len(singles) // target)][:target]
                emu.ask({"op": "touch", "events": picked})
                out["changed_events"] = len(picked)
            for mode, group in workers.items():
                before = emu.ask({"op": "stats"})
                pg_before = postgres_cpu_s() if args.oa == "postgresql" else None
                step = {"label": labels[scenario], "incremental": True}
                if mode == "engine" and args.profile == scenario:
                    step["profile"] = str((args.json or workdir / "x").with_suffix(""))
                for worker in group:  # all at once: they run side by side
                    worker.send(step)
                result = combined([worker.read() for worker in group])
                after = emu.ask({"op": "stats"})
                # where the machine's CPU went: the sync processes, the emulator, PostgreSQL
                result["emulator_cpu_s"] = round(after["cpu_s"] - before["cpu_s"], 2)
                if pg_before is not None:
                    pg_after = postgres_cpu_s()
                    if pg_after is not None:
                        result["postgres_cpu_s"] = round(pg_after - pg_before, 2)
                by_kind = {
                    k: v - before["by_kind"].get(k, 0)
                    for k, v in after["by_kind"].items()
                    if v - before["by_kind"].get(k, 0)
                }
                result |= {
                    "requests": after["requests"] - before["requests"],
                    "by_kind": by_kind,
                    "throttled": after["throttled"] - before["throttled"],
                    "events_per_s": round(tenant.total_events / max(result["wall_s"], 1e-9), 1),
                }
                if mode == "naive" and sampled:
                    result |= {
                        "measured_users": naive_users,
                        "measured_wall_s": result["wall_s"],
                        "measured_requests": result["requests"],
                        "wall_s": round(result["wall_s"] * scale_up, 1),
                        "requests": round(result["requests"] * scale_up),
                        "extrapolated": True,
                    }
                    result["events_per_s"] = round(
                        tenant.total_events / max(result["wall_s"], 1e-9), 1
                    )
                runs.setdefault(scenario, {})[mode] = result
        for mode, url in urls.items():
            out.setdefault("oa", {})[mode] = oa_digest(url, sampled)
        if "naive" in urls:
            out["oa_match"] = out["oa"]["engine"]["digest"] == out["oa"]["naive"]["digest"]
        out["emulator_peak_rss_mb"] = emu.ask({"op": "rss"})["peak_rss_mb"]
        out["runs"] = {s: r for s, r in runs.items() if s in wanted}
        out["floor"] = floors(suite, args.users, args.events, args.latency_ms / 1000, limit)
        return out
    finally:
        for worker in (w for group in workers.values() for w in group):
            worker.stop()
        emu.stop()
        for url in urls.values():
            drop_oa(url)


def postgres_cpu_s() -> float | None:
    """CPU seconds of the local PostgreSQL's processes, live and ended (the postmaster's
    reaped children), or None when they cannot be read (another user's processes)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    try:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if (proc / "comm").read_text().strip() not in ("postgres", "postmaster"):
                    continue
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # utime, stime, cutime, cstime: the postmaster's c-times hold ended backends
            total += sum(int(v) for v in fields[11:15]) / tick
    except OSError:
        return None
    return total


def x_floor_and_oa(run: dict[str, Any], floor: float) -> float | str:
    """Wall time ÷ (network floor + the OA writer's busy time)."""
    oa = run.get("oa_apply_s")
    return round(run["wall_s"] / (floor + oa), 2) if oa else "-"


def combined(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One sync's figures from its worker processes' (started together): the slowest one's
    wall time, summed counts, the largest process's peak RSS and the sum over processes."""
    if len(results) == 1:
        return results[0]
    counts: dict[str, int] = {}
    for result in results:
        for key, value in result["counts"].items():
            counts[key] = counts.get(key, 0) + value
    return {
        "wall_s": max(r["wall_s"] for r in results),
        "counts": counts,
        "failed_users": sum(r["failed_users"] for r in results),
        "errors": [e for r in results for e in r["errors"]][:3],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "oa_apply_s": max((r.get("oa_apply_s") or 0.0) for r in results),
        "cpu_s": round(sum(r.get("cpu_s") or 0.0 for r in results), 2),
        "processes": len(results),
        "process_wall_s": [r["wall_s"] for r in results],
        "peak_rss_mb_total": sum(r["peak_rss_mb"] for r in results),
    }


# --- the table ----------------------------------------------------------------------------


def table(report: dict[str, Any]) -> list[str]:
    lines = [
        f"calsync scale benchmark: {report['users']} users × {report['events']} events "
        f"({report['users'] * report['events']:,} events), OA {report['oa']}, latency "
        f"{report['latency_ms']:g} ms, execution.concurrency "
        f"{report['concurrency'] or 'per suite (Graph 64, else tenant limit ÷ processes)'}, "
        f"sync processes {report.get('processes', 1)}, "
        f"tenant limit {report['tenant_limit'] or TENANT_LIMITS}",
        f"{'suite':9} {'scenario':22} {'calsync s':>10} {'ev/s':>8} {'requests':>9} "
        f"{'RSS MB':>7} {'naive s':>9} {'naive req':>9} {'× naive':>8} {'floor s':>8} "
        f"{'× floor':>8} {'OA s':>6} {'× (floor + OA)':>14}  CPU s: sync/emulator/PostgreSQL",
    ]
    names = {"1": "1 first full sync", "2": "2 re-sync unchanged", "3": "3 re-sync 1% changed"}
    for suite, data in report["suites"].items():
        for scenario, runs in (data.get("forward", {}).get("runs") or {}).items():
            eng, naive = runs["engine"], runs.get("naive")
            floor = data["forward"]["floor"][scenario]["floor_s"]
            cells = [
                f"{eng['wall_s']:>10}",
                f"{eng['events_per_s']:>8}",
                f"{eng['requests']:>9}",
                f"{eng['peak_rss_mb']:>7}",
                f"{naive['wall_s'] if naive else '-':>9}",
                f"{naive['requests'] if naive else '-':>9}",
                f"{round(naive['wall_s'] / eng['wall_s'], 1) if naive else '-':>8}",
                f"{floor:>8}",
                f"{round(eng['wall_s'] / floor, 1) if floor else '-':>8}",
                # the OA writer's busy time (slowest process): what the goal adds to the floor
                f"{eng.get('oa_apply_s', '-'):>6}",
                f"{x_floor_and_oa(eng, floor):>14}",
                f" {eng.get('cpu_s', '-')}/{eng.get('emulator_cpu_s', '-')}/"
                f"{eng.get('postgres_cpu_s', '-')}",
            ]
            lines.append(f"{suite:9} {names[scenario]:22} " + " ".join(cells))
        forward = data.get("forward")
        if forward and "oa_match" in forward:
            lines.append(
                f"{suite:9} OA after 1–3: calsync {forward['oa']['engine']}, "
                f"naive {'same' if forward['oa_match'] else forward['oa']['naive']}"
            )
        reverse = data.get("reverse")
        first = (reverse or {}).get("first_drain")
        if first:  # the integration's first drain, which looks up what later ones reuse
            lines.append(
                f"{suite:9} {'4 first drain':22} {first['wall_s']:>10} "
                f"{first['changes_per_s']:>8} {first['requests']:>9} "
                f"{first['peak_rss_mb']:>7} {'-':>9} {'-':>9} {'-':>8} "
                f"{first['floor_s']:>8} {first.get('x_floor', '-'):>8} {'-':>6} {'-':>14}"
                f"  {first.get('cpu_s', '-')}/{first.get('emulator_cpu_s', '-')}/"
                f"{first.get('postgres_cpu_s', '-')}"
            )
        if reverse:
            lines.append(
                f"{suite:9} {'4 reverse drain':22} {reverse['wall_s']:>10} "
                f"{reverse['changes_per_s']:>8} {reverse['requests']:>9} "
                f"{reverse['peak_rss_mb']:>7} {reverse.get('naive_changes_per_s', '-'):>9} "
                f"{reverse.get('naive_requests', '-'):>9} {reverse.get('x_naive', '-'):>8} "
                f"{reverse['floor_s']:>8} {reverse.get('x_floor', '-'):>8} {'-':>6} {'-':>14}"
                f"  {reverse.get('cpu_s', '-')}/{reverse.get('emulator_cpu_s', '-')}/"
                f"{reverse.get('postgres_cpu_s', '-')} (ev/s = changes/s; naive s = its "
                f"changes/s over {reverse.get('naive_changes', '-')} changes)"
            )
        airflow = data.get("airflow")
        if airflow:
            lines.append(
                f"{suite:9} {'6 Airflow DAG run':22} {airflow.get('end_to_end_s', '-'):>10}  "
                + ", ".join(f"{k}={v}" for k, v in airflow.items() if k != "end_to_end_s")
            )
    parse = report.get("dag_parse")
    if parse:
        lines.append(
            f"{'(all)':9} {'5 DAG-file parse':22} {parse['dagbag_s']:>10}  "
            + ", ".join(f"{k}={v}" for k, v in parse.items() if k != "dagbag_s")
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=[*SUITES, "all"], default="all")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--oa", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--scenarios", default="1,2,3,5", help="comma-separated, 1–6")
    parser.add_argument(
        "--concurrency",
        type=int,
        help="execution.concurrency (default: 64 for Graph, the tenant limit ÷ --processes "
        "for Exchange and Alibaba Mail)",
    )
    parser.add_argument(
        "--tenant-limit", type=int, help="EWS/Alibaba per tenant (default: 27 / 16)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="scenarios 1-3: the users split over this many sync processes (as that many "
        "mapped tasks run side by side); scenario 4: this many drain processes share the "
        "outbox (as several workers' reverse runs); 1: one process does it all",
    )
    parser.add_argument("--changes", type=int, default=10_000, help="scenario 4")
    parser.add_argument(
        "--reverse-concurrency",
        type=int,
        help="scenario 4: execution.concurrency of the reverse integration (up to 4 writes "
        "per mailbox in flight each; default: 16 for Graph, the tenant limit ÷ (4 × "
        "--processes) for Exchange and Alibaba Mail)",
    )
    parser.add_argument("--parallelism", type=int, default=4, help="scenario 6")
    parser.add_argument("--batch-size", type=int, help="scenario 6 (default: one wave)")
    parser.add_argument("--airflow-timeout-s", type=float, default=900, help="scenario 6")
    parser.add_argument("--naive-changes", type=int, default=300, help="scenario 4 baseline")
    parser.add_argument(
        "--naive-users", type=int, default=200, help="baseline users (scaled up to --users)"
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--profile",
        choices=["1", "2", "3"],
        help="attach py-spy (pip install py-spy) to calsync's sync processes for this "
        "scenario only; its raw stacks are written beside the JSON (or to the work dir)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if args.profile and py_spy() is None:
        parser.error("--profile needs py-spy: pip install py-spy")
    unknown = args.scenarios - {"1", "2", "3", "4", "5", "6"}
    if unknown:
        parser.error(f"--scenarios: unknown {sorted(unknown)}; pick from 1–6")
    suites = SUITES if args.suite == "all" else (args.suite,)
    workdir = Path(tempfile.mkdtemp(prefix="calsync-scale-"))
    report: dict[str, Any] = {
        "users": args.users,
        "events": args.events,
        "latency_ms": args.latency_ms,
        "oa": args.oa,
        "concurrency": args.concurrency,
        "processes": args.processes,
        "tenant_limit": args.tenant_limit,
        "scenarios": sorted(args.scenarios),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg": os.getloadavg(),
        "workdir": str(workdir),
        "suites": {},
    }
    for suite in suites:
        data: dict[str, Any] = {}
        if args.scenarios & {"1", "2", "3"}:
            data["forward"] = forward_scenarios(suite, args, workdir)
        if "4" in args.scenarios:
            from reverse_scale import reverse_scenario

            data["reverse"] = reverse_scenario(suite, args, workdir)
        if "6" in args.scenarios:
            from airflow_run import airflow_scenario

            data["airflow"] = airflow_scenario(suite, args, workdir)
        report["suites"][suite] = data
        if args.json:  # after each suite: a long run stopped half-way keeps what it measured
            args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    if "5" in args.scenarios:
        from dag_parse import measure

        report["dag_parse"] = measure(workdir, configs=50)
    for line in table(report):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    mismatched = [
        s for s, d in report["suites"].items() if d.get("forward", {}).get("oa_match") is False
    ]
    if mismatched:
        print(f"the naive baseline's OA differs from calsync's for: {', '.join(mismatched)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
