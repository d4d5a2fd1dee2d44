"""One request for several writes to one mailbox: what is asked for a mailbox while its last
request is in flight (or in the same turn of the event loop) leaves together in the next one.

A suite that takes several items per request but one mailbox per request (EWS CreateItem: the
impersonation header names one mailbox) gains from it whenever a caller has a mailbox's writes
in flight together, as a reverse drain does (its claims put a creator's changes side by side).
A lone write is sent at once (after the current turn of the loop), so an event-driven change
waits for nothing. At most one request per mailbox is in flight from here.

``send(mailbox, values)`` answers each value, in order, with a result or the exception for that
value; raising fails every value of that request with the exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

V = TypeVar("V")
R = TypeVar("R")

Send = Callable[[str, list[V]], Awaitable[list[R | BaseException]]]


class MailboxBatcher(Generic[V, R]):
    """Per-mailbox queues, each emptied by one sender task, ``max_batch`` values a request."""

    def __init__(self, send: Send[V, R], max_batch: int) -> None:
        self._send = send
        self._max = max_batch
        self._queued: dict[str, list[tuple[V, asyncio.Future[R]]]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, mailbox: str, value: V) -> R:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a connector reused under a new event loop
            self._loop, self._queued, self._senders = loop, {}, {}
        future: asyncio.Future[R] = loop.create_future()
        self._queued.setdefault(mailbox, []).append((value, future))
        if mailbox not in self._senders:
            self._senders[mailbox] = asyncio.create_task(self._sender(mailbox))
        return await future

    async def _sender(self, mailbox: str) -> None:
        batch: list[tuple[V, asyncio.Future[R]]] = []
        try:
            await asyncio.sleep(0)  # the writes asked for in this turn of the loop join
            while queued := self._queued.get(mailbox):
                batch = queued[: self._max]
                del queued[: self._max]
                live = [(v, f) for v, f in batch if not f.done()]  # a cancelled caller: dropped
                if not live:
                    continue
                try:
                    results = await self._send(mailbox, [v for v, _ in live])
                    if len(results) != len(live):
                        raise RuntimeError(f"{len(results)} answers to {len(live)} writes")
                except Exception as exc:
                    results = [exc] * len(live)
                for (_, future), result in zip(live, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
                batch = []
        except BaseException:  # cancelled (the loop is closing): nobody waits for ever
            for _, future in [*batch, *self._queued.get(mailbox, [])]:
                future.cancel()
            raise
        finally:
            self._senders.pop(mailbox, None)
            self._queued.pop(mailbox, None)
