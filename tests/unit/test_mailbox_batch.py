"""MailboxBatcher: a mailbox's writes asked for together leave in one request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from calsync.connectors.mailbox_batch import MailboxBatcher


class Suite:
    """Answers each value with ``mailbox:value``; "bad" values with their own error; a
    request holding "down" fails as a whole."""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.sent: list[tuple[str, list[str]]] = []
        self.delay_s = delay_s
        self.in_flight: dict[str, int] = {}
        self.most_in_flight = 0

    async def send(self, mailbox: str, values: list[str]) -> list[Any]:
        self.sent.append((mailbox, list(values)))
        self.in_flight[mailbox] = self.in_flight.get(mailbox, 0) + 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight[mailbox])
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight[mailbox] -= 1
        if "down" in values:
            raise ConnectionError("suite down")
        return [ValueError(f"refused {v}") if v == "bad" else f"{mailbox}:{v}" for v in values]


def test_writes_asked_together_share_a_request_per_mailbox() -> None:
    suite = Suite()
    batcher: MailboxBatcher[str, str] = MailboxBatcher(suite.send, max_batch=50)

    async def scenario() -> list[str]:
        asks = [("a", "1"), ("b", "2"), ("a", "3"), ("a", "4"), ("b", "5")]
        return list(await asyncio.gather(*(batcher.submit(m, v) for m, v in asks)))

    assert asyncio.run(scenario()) == ["a:1", "b:2", "a:3", "a:4", "b:5"]
    assert sorted(suite.sent) == [("a", ["1", "3", "4"]), ("b", ["2", "5"])]


def test_writes_asked_while_a_request_is_in_flight_leave_together_next() -> None:
    """One request per mailbox in flight; what comes meanwhile waits and goes in the next."""
    suite = Suite(delay_s=0.05)
    batcher: MailboxBatcher[str, str] = MailboxBatcher(suite.send, max_batch=2)

    async def scenario() -> list[str]:
        first = asyncio.ensure_future(batcher.submit("a", "1"))
        await asyncio.sleep(0.01)  # the first request is in flight
        later = [batcher.submit("a", v) for v in ("2", "3", "4")]
        return [await first, *await asyncio.gather(*later)]

    assert asyncio.run(scenario()) == ["a:1", "a:2", "a:3", "a:4"]
    assert suite.sent == [("a", ["1"]), ("a", ["2", "3"]), ("a", ["4"])]  # max_batch 2
    assert suite.most_in_flight == 1


def test_a_lone_write_leaves_at_once() -> None:
    suite = Suite(delay_s=0)
    batcher: MailboxBatcher[str, str] = MailboxBatcher(suite.send, max_batch=50)

    async def scenario() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await batcher.submit("a", "1")
        return result, loop.time() - start

    result, took = asyncio.run(scenario())
    assert result == "a:1" and took < 0.5 and suite.sent == [("a", ["1"])]


def test_an_item_error_is_its_callers_and_a_failed_request_fails_its_writes_only() -> None:
    suite = Suite()
    batcher: MailboxBatcher[str, str] = MailboxBatcher(suite.send, max_batch=50)

    async def scenario() -> list[Any]:
        asks = [("a", "1"), ("a", "bad"), ("b", "down"), ("b", "2"), ("c", "3")]
        return list(
            await asyncio.gather(*(batcher.submit(m, v) for m, v in asks), return_exceptions=True)
        )

    ok, refused, down, down_too, other = asyncio.run(scenario())
    assert ok == "a:1" and other == "c:3"
    assert isinstance(refused, ValueError) and "bad" in str(refused)
    assert isinstance(down, ConnectionError) and down_too is down


def test_a_wrong_count_of_answers_fails_the_writes() -> None:
    async def short(mailbox: str, values: list[str]) -> list[Any]:
        return values[:1]

    batcher: MailboxBatcher[str, str] = MailboxBatcher(short, max_batch=50)

    async def scenario() -> list[Any]:
        return list(
            await asyncio.gather(
                batcher.submit("a", "1"), batcher.submit("a", "2"), return_exceptions=True
            )
        )

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(scenario()))


def test_a_cancelled_caller_is_dropped_and_the_others_still_answered() -> None:
    suite = Suite(delay_s=0.05)
    batcher: MailboxBatcher[str, str] = MailboxBatcher(suite.send, max_batch=50)

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(batcher.submit("a", "1"))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.submit("a", "2"))
        kept = asyncio.ensure_future(batcher.submit("a", "3"))
        await asyncio.sleep(0)
        gone.cancel()
        return [await first, await kept]

    assert asyncio.run(scenario()) == ["a:1", "a:3"]
    assert suite.sent == [("a", ["1"]), ("a", ["3"])]


def test_closing_the_loop_cancels_what_waits() -> None:
    """The sender cancelled (the task's loop ending) leaves no caller waiting for ever."""
    suite = Suite(delay_s=10)
    batcher: MailboxBatcher[str, str] = MailboxBatcher(suite.send, max_batch=50)

    async def scenario() -> None:
        asks = [asyncio.ensure_future(batcher.submit("a", v)) for v in ("1", "2")]
        await asyncio.sleep(0.01)
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task() and task not in asks:
                task.cancel()  # the sender
        for ask in asks:
            with pytest.raises(asyncio.CancelledError):
                await ask

    asyncio.run(scenario())


def test_a_batcher_reused_under_a_new_event_loop_starts_afresh() -> None:
    suite = Suite(delay_s=0)
    batcher: MailboxBatcher[str, str] = MailboxBatcher(suite.send, max_batch=50)
    assert asyncio.run(batcher.submit("a", "1")) == "a:1"
    assert asyncio.run(batcher.submit("a", "2")) == "a:2"
