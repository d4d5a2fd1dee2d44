"""A wall-clock bound for tests of hostile input (sandbox escapes, resource exhaustion)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def deadline(hard_s: int, soft_s: float, message: str) -> Iterator[None]:
    """Fail with ``message`` (instead of hanging) past ``hard_s``; the block itself must
    finish within ``soft_s``. Main thread only (SIGALRM)."""

    def on_alarm(signum: int, frame: object) -> None:
        pytest.fail(message)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(hard_s)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < soft_s
