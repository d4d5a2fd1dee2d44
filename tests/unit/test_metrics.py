"""Per-run counts reach Airflow's metrics backend (StatsD when configured)."""

from __future__ import annotations

from typing import Any

import pytest


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []

    def incr(self, stat: str, count: int = 1, **_: Any) -> None:
        self.calls.append(("incr", stat, count))

    def gauge(self, stat: str, value: float, **_: Any) -> None:
        self.calls.append(("gauge", stat, value))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Any:
    from airflow.sdk._shared.observability.metrics import stats

    rec = Recorder()
    monkeypatch.setattr(stats, "_factory", lambda: rec)
    monkeypatch.setattr(stats, "_backend", None)  # built from the factory on next use
    monkeypatch.setattr(stats, "_export_legacy_names", False)
    return rec


def test_counts_and_gauges_are_emitted_per_integration(recorder: Recorder):
    from calsync.airflow.metrics import emit

    emit("forward", "hq.exchange", {"created": 3, "failed": 0, "held": 2}, {"failed_users": 1})
    assert recorder.calls == [
        ("incr", "calsync.forward.hq_exchange.created", 3),
        ("incr", "calsync.forward.hq_exchange.held", 2),
        ("gauge", "calsync.forward.hq_exchange.failed_users", 1.0),
    ]


def test_a_failing_backend_never_fails_a_sync(recorder: Recorder, monkeypatch):
    from calsync.airflow.metrics import emit

    def boom(*_: Any, **__: Any) -> None:
        raise OSError("statsd down")

    monkeypatch.setattr(recorder, "incr", boom)
    emit("reverse", "x", {"created": 1})  # no exception
