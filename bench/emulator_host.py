"""One suite emulator in its own process for the benchmarks (so its CPU is not the engine's),
driven by JSON lines on stdin/stdout through its Python API — the same for all three suites,
whether or not the suite has a control API.

    python bench/emulator_host.py --suite graph --seed FILE --latency-ms 20 --limit 4 --tls-dir D

Prints one JSON line when ready (``airflow_conn_json``, ``endpoint``, ``ca_file``, the limit
in force), then answers one JSON line per command:

- ``{"op": "stats"}`` → requests so far (total, by kind), throttled answers, max concurrency;
- ``{"op": "touch", "events": [[mailbox, id], ...]}`` → changes those events' subjects (as a
  user editing them would: new change key, last-modified time), answers the count;
- ``{"op": "rss"}`` → the process's peak RSS in MB;
- ``{"op": "stop"}`` → stops.

Concurrency limits the suites enforce: Graph 4 requests in flight per mailbox (``--limit``);
Alibaba Mail and Exchange a per-tenant limit (``--limit``; Exchange only when the emulator has
one: the ready line says ``limit_enforced``).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

from emulators.common import gc_tuning  # noqa: E402 (after the path set-up above)


def start(suite: str, tls_dir: Path, latency_ms: float, limit: int) -> tuple[Any, bool]:
    if suite == "graph":
        from emulators.graph import GraphEmulator

        emu = GraphEmulator(tls_dir=tls_dir, latency_ms=latency_ms, page_size=1000)
        emu.faults.update(per_mailbox_concurrency=limit)
        return emu.start(), True
    if suite == "alimail":
        from emulators.alimail import AlimailEmulator

        emu = AlimailEmulator(tls_dir=tls_dir, latency_ms=latency_ms)
        emu.faults.update(per_tenant_concurrency=limit)
        return emu.start(), True
    from emulators.ews import EwsEmulator

    emu = EwsEmulator(tls_dir=tls_dir, latency_ms=latency_ms, auth="basic")
    enforced = False
    for name in ("per_tenant_concurrency", "tenant_concurrency", "concurrency_limit"):
        if hasattr(emu.faults, name):
            emu.faults.update(**{name: limit})
            enforced = True
            break
    return emu.start(), enforced


def stats(suite: str, emu: Any) -> dict[str, Any]:
    snap = emu.stats.snapshot()
    by_kind = dict(snap.get("by_operation" if suite == "exchange" else "by_kind") or {})
    throttled = (
        snap.get("throttled_429", 0)
        + snap.get("server_busy", 0)
        + snap.get("unavailable_503", 0)
        + snap.get("concurrency_refused", 0)
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "requests": snap["requests"],
        "by_kind": by_kind,
        "throttled": throttled,
        "max_concurrency_seen": snap.get("max_concurrency_seen"),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),  # the emulator's CPU so far
    }


def touch(suite: str, emu: Any, events: list[list[str]]) -> int:
    for mailbox, event_id in events:
        if suite == "graph":
            current = emu.store.get_instance(mailbox, event_id)
            subject = current.data["subject"] if hasattr(current, "data") else None
            subject = f"{subject or ''} (已修改 edited)"
            emu.store.update_event(mailbox, event_id, {"subject": subject}, deliver=False)
        elif suite == "alimail":
            emu.store.update_event(mailbox, event_id, {"subject": f"已修改 edited {event_id}"})
        else:
            emu.store.update_event(
                mailbox, event_id, {"subject": f"已修改 edited {event_id}"}, deliver=False
            )
    return len(events)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["graph", "exchange", "alimail"], required=True)
    parser.add_argument("--seed", type=Path, required=True)
    parser.add_argument("--tls-dir", type=Path, required=True)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--limit", type=int, required=True)
    args = parser.parse_args()
    gc_tuning.tune()
    emu, enforced = start(args.suite, args.tls_dir, args.latency_ms, args.limit)
    try:
        emu.load_seed(json.loads(args.seed.read_text(encoding="utf-8")))
        gc_tuning.freeze_loaded()
        state = emu.state()
        ready = {
            "airflow_conn_json": emu.airflow_conn_json(),
            "endpoint": state.get("endpoint") or state.get("service_endpoint"),
            "ca_file": str(emu.ca_file) if emu.ca_file else None,
            "limit": args.limit,
            "limit_enforced": enforced,
        }
        print(json.dumps(ready), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            if op == "stats":
                answer: Any = stats(args.suite, emu)
            elif op == "touch":
                answer = {"touched": touch(args.suite, emu, command["events"])}
            elif op == "rss":
                from scale_worker import peak_rss_mb  # VmHWM: ru_maxrss is the harness's

                answer = {"peak_rss_mb": round(peak_rss_mb())}
            elif op == "stop":
                print(json.dumps({"stopped": True}), flush=True)
                break
            else:
                answer = {"error": f"unknown op {op!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
