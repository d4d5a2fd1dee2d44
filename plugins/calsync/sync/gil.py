"""The GIL switch interval for a sync process.

A sync runs its suite reads on the event loop, the mapping in a mapper thread and the OA
writes in a writer thread. The writer spends its time in short database round trips; each
releases the GIL, and on return the writer waits for it while another thread computes —
by default up to 5 ms (``sys.getswitchinterval``), far longer than the round trip itself.
With tens of statements per group, that wait was most of a first sync's OA time (measured:
300 mailboxes × 40 events, 16.5 s at 5 ms, 10.5 s at 1 ms and at 0.5 ms). 1 ms keeps the
waits short without switching needlessly often. The interval is per process; a task process
runs one sync, so it is set, not restored.
"""

from __future__ import annotations

import sys

SWITCH_INTERVAL_S = 0.001


def shorten_switch_interval() -> None:
    """Lower the process's GIL switch interval to ``SWITCH_INTERVAL_S`` (never raise it)."""
    if sys.getswitchinterval() > SWITCH_INTERVAL_S:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
