"""Interpreter settings for a sync process: the GIL switch interval and the garbage
collector's thresholds.

A sync runs its suite reads on the event loop, the mapping in a mapper thread and the OA
writes in a writer thread.

- GIL: the writer spends its time in short database round trips; each releases the GIL, and
  on return the writer waits for it while another thread computes — by default up to 5 ms
  (``sys.getswitchinterval``), far longer than the round trip itself. With tens of
  statements per group, that wait was most of a first sync's OA time (measured: 300
  mailboxes × 40 events, 16.5 s at 5 ms, 10.5 s at 1 ms and at 0.5 ms). 1 ms keeps the
  waits short without switching needlessly often.
- Garbage collector: a sync allocates container objects by the million (parsed JSON pages,
  events, rows) that die young and form no cycles; with CPython's default thresholds
  (700, 10, 10) the collector ran ~2,000 times and took 23% of a first sync's CPU (500
  mailboxes × 40 events: 4.4 of 18.9 s). A first generation of 100,000 objects cuts that
  to 5 collections (0.4 s); the garbage it lets wait is a few tens of MB (peak RSS of a
  2,000-mailbox first sync 230 → 288 MB), bounded by the threshold, not by the tenant.

Both are per process; a task process runs one sync, so they are set, not restored — and
only ever raised towards these values, never lowered below what the process chose.
"""

from __future__ import annotations

import gc
import sys

SWITCH_INTERVAL_S = 0.001
GC_THRESHOLDS = (100_000, 20, 100)


def tune_for_sync() -> None:
    """Lower the GIL switch interval to ``SWITCH_INTERVAL_S`` and raise the collector's
    thresholds to ``GC_THRESHOLDS`` (each value only where the process's own is lower)."""
    if sys.getswitchinterval() > SWITCH_INTERVAL_S:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
    current = gc.get_threshold()
    if current[0] != 0:  # 0: the process disabled automatic collection; leave it so
        gc.set_threshold(*(max(c, t) for c, t in zip(current, GC_THRESHOLDS, strict=True)))
