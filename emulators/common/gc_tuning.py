"""Garbage-collector settings for an emulator process.

An emulator holds every stored item as nested dicts and lists (a 2,000-mailbox tenant is
millions of containers), and each request allocates a few hundred more. With CPython's
default thresholds the collector ran every ~700 allocations and its older generations kept
walking the whole store: in a 10,000-change drain that was a fifth of the Graph emulator's
CPU. Nothing the stores keep forms reference cycles that must be freed quickly, so collections
can be rare; and what the seed loaded is frozen out of them altogether.
"""

from __future__ import annotations

import gc

THRESHOLDS = (100_000, 50, 100)


def tune() -> None:
    """Rarer collections: each threshold only ever raised, and automatic collection switched
    off (a first threshold of 0) stays off. The same rule as calsync's own sync processes
    (``calsync.sync.process_tuning``), kept apart so the emulators do not load calsync's
    sync engine."""
    current = gc.get_threshold()
    if current[0] != 0:
        gc.set_threshold(*(max(a, b) for a, b in zip(current, THRESHOLDS, strict=True)))


def freeze_loaded() -> None:
    """Move everything alive now (the seeded store) out of the collector's generations."""
    gc.collect()
    gc.freeze()
