"""Throttling bookkeeping the emulators share: a seeded fault RNG, the earliest time each key
(a client, a (client, mailbox) pair...) may come back after a 429/503/busy answer, requests in
flight per key, and the counters' lock. Which faults a suite answers, and how, stays there.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Hashable
from typing import Any


def retry_after_text(seconds: float) -> str:
    """Whole seconds as an integer (what the services send), fractions as given."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class ThrottleBase:
    """Holds ``faults`` and ``stats``; one per emulator, shared by the handler threads.

    ``_lock`` guards everything below; the ``_``-methods expect the caller to hold it.
    """

    def __init__(self, faults: Any, stats: Any, seed: int = 0) -> None:
        self.faults = faults
        self.stats = stats
        self._lock = threading.Lock()
        self._seed = seed
        self._rng = random.Random(seed)
        self._not_before: dict[Any, float] = {}
        self._in_flight: Counter[str] = Counter()

    def reset(self) -> None:
        """The RNG back at its seed, every back-off window forgotten."""
        with self._lock:
            self._rng = random.Random(self._seed)
            self._not_before.clear()

    def _wait_left(self, key: Hashable) -> float | None:
        """Seconds until ``key`` may come back, or None when it may now."""
        until = self._not_before.get(key)
        if until is None:
            return None
        left = until - time.monotonic()
        return left if left > 0 else None

    def _hold(self, key: Hashable, seconds: float) -> None:
        """``key`` may not come back before ``seconds`` from now."""
        self._not_before[key] = time.monotonic() + seconds

    def _enter(self, key: str, cap: int) -> tuple[bool, int]:
        """Count one more request in flight for ``key``: (over ``cap``, hence not counted;
        the number in flight with it)."""
        self._in_flight[key] += 1
        in_flight = self._in_flight[key]
        if in_flight > cap:
            self._in_flight[key] -= 1
            return True, in_flight
        return False, in_flight

    def _leave(self, key: str) -> None:
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]


class StatsBase:
    """Counters behind a lock; a subclass defines ``reset()`` and ``snapshot()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + count)

    def __getitem__(self, name: str) -> Any:
        """``stats["name"]``: a value of ``snapshot()``."""
        return self.snapshot()[name]
