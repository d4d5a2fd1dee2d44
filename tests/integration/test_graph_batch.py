"""The Office 365 connector's JSON batching against the Graph emulator: concurrent requests
share ``$batch`` round trips, and a batch that fails in part ends with every request in its
correct state — the failed ones retried alone after their Retry-After, the others' results
kept, a log record naming what was retried (issue 7: partial ``$batch`` failures)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

import pytest

from calsync.config import IntegrationConfig
from calsync.connectors.base import EventWrite, connector_for
from calsync.connectors.graph import GraphConnector
from calsync.errors import ConnectorError
from calsync.model import Window
from tests.integration.conftest import TODAY

A, B, D = "zhangwei@contoso.com", "lina@contoso.com", "liuyang@contoso.com"
MAILBOXES = (A, B, D)


def write(subject: str, key: str) -> EventWrite:
    start = dt.datetime.combine(TODAY, dt.time(9), tzinfo=dt.UTC)
    return EventWrite(
        subject=subject, start=start, end=start + dt.timedelta(hours=1), key=key, known_new=True
    )


def subjects(graph: Any, mailbox: str, prefix: str) -> list[str]:
    return sorted(
        e["subject"] for e in graph.store.events(mailbox) if e["subject"].startswith(prefix)
    )


async def _timed(coro: Any) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        result = await coro
    except Exception as exc:  # the test looks at which ones failed
        result = exc
    return time.monotonic() - started, result


def test_concurrent_reads_share_batches_and_read_what_single_requests_read(
    graph: Any, config: IntegrationConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = Window(TODAY - dt.timedelta(days=3), TODAY + dt.timedelta(days=3), config.timezone)

    async def read_all() -> dict[str, Any]:
        async with connector_for(config) as connector:
            results = await asyncio.gather(*(connector.list_events(m, window) for m in MAILBOXES))
        return {
            m: sorted((e.suite_id, e.subject, e.start) for e in r)
            for m, r in zip(MAILBOXES, results, strict=True)
        }

    batched = asyncio.run(read_all())
    stats = graph.stats.snapshot()
    assert stats["batches"] >= 1 and stats["batched_requests"] >= len(MAILBOXES)
    assert stats["batches"] < stats["batched_requests"]  # round trips were shared
    assert all(batched[m] for m in MAILBOXES)

    monkeypatch.setattr(GraphConnector, "use_batch", False)
    graph.stats.reset()
    assert asyncio.run(read_all()) == batched
    assert graph.stats["batches"] == 0


def test_a_throttled_sub_request_is_retried_alone_after_its_retry_after(
    graph: Any, config: IntegrationConfig, caplog: pytest.LogCaptureFixture
) -> None:
    graph.faults.retry_after_s = 1
    graph.faults.fail_next = [(f"users/{B}/events", 429)]

    async def create_all() -> list[tuple[float, Any]]:
        async with connector_for(config) as connector:
            return await asyncio.gather(
                *(
                    _timed(connector.create_event(m, write(f"batch {m}", f"k-{m}")))
                    for m in MAILBOXES
                )
            )

    with caplog.at_level(logging.INFO, logger="calsync.connectors.graph_batch"):
        results = dict(zip(MAILBOXES, asyncio.run(create_all()), strict=True))
    for mailbox in MAILBOXES:
        assert subjects(graph, mailbox, "batch ") == [f"batch {mailbox}"]  # once each
        assert results[mailbox][1].calsync_key == f"k-{mailbox}"
    # The others' answers were handed back with the first batch; B's only after its wait.
    assert results[A][0] < 0.9 and results[D][0] < 0.9
    assert results[B][0] >= 1.0
    stats = graph.stats.snapshot()
    assert stats["by_kind"]["events_create"] == 4  # B's create sent twice, the others once
    assert stats["throttled_429"] == 1 and stats["retry_after_violations"] == 0
    assert stats["batches"] == 2
    (record,) = [r for r in caplog.records if "batched POST" in r.getMessage()]
    assert f"429 for a batched POST in {B}" in record.getMessage()
    assert "retry 1 of 3" in record.getMessage()


def test_a_failed_sub_request_fails_alone(graph: Any, config: IntegrationConfig) -> None:
    graph.faults.fail_next = [(f"users/{D}/events", 500)]

    async def create_all() -> list[tuple[float, Any]]:
        async with connector_for(config) as connector:
            return await asyncio.gather(
                *(
                    _timed(connector.create_event(m, write(f"half {m}", f"h-{m}")))
                    for m in MAILBOXES
                )
            )

    results = dict(zip(MAILBOXES, asyncio.run(create_all()), strict=True))
    failed = results[D][1]
    assert isinstance(failed, ConnectorError) and "Injected failure" in str(failed)
    assert subjects(graph, D, "half ") == []
    for mailbox in (A, B):
        assert subjects(graph, mailbox, "half ") == [f"half {mailbox}"]
    # A retry of the failed one (what the reverse engine does next) finishes the job.

    async def again() -> Any:
        async with connector_for(config) as connector:
            return await connector.create_event(D, write(f"half {D}", f"h-{D}"))

    assert asyncio.run(again()).calsync_key == f"h-{D}"
    assert subjects(graph, D, "half ") == [f"half {D}"]


def test_retries_are_bounded(graph: Any, config: IntegrationConfig) -> None:
    graph.faults.retry_after_s = 0.1
    graph.faults.fail_next = [(f"users/{A}/events", 503)] * 4

    async def create() -> Any:
        async with connector_for(config) as connector:
            return await connector.create_event(A, write("bounded", "b-1"))

    with pytest.raises(ConnectorError, match="ServiceUnavailable"):
        asyncio.run(create())
    assert graph.stats["by_kind"]["events_create"] == 4  # the first try and 3 retries
    assert graph.stats["retry_after_violations"] == 0
    assert subjects(graph, A, "bounded") == []


def test_many_writes_to_one_mailbox_stay_within_its_limit(
    graph: Any, config: IntegrationConfig
) -> None:
    async def create_many() -> list[Any]:
        async with connector_for(config) as connector:
            return await asyncio.gather(
                *(connector.create_event(A, write(f"many {i:02d}", f"m-{i}")) for i in range(10))
            )

    asyncio.run(create_many())
    assert subjects(graph, A, "many ") == [f"many {i:02d}" for i in range(10)]
    stats = graph.stats.snapshot()
    assert stats["throttled_429"] == 0
    assert stats["max_concurrency_seen"][A] <= 4
    assert stats["batches"] >= 3  # 4 at a time for one mailbox
