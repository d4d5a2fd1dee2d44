"""Graph JSON batching (``POST $batch``) for the Office 365 connector's concurrent requests.

Every mailbox request the connector makes is queued here; what is queued at the same moment
(within ``linger_s``) leaves as one ``$batch`` of up to 20 requests. The client stack's cost
(kiota request building, middleware, TLS, the access token) is paid once per batch instead of
once per request: a forward run reads the first calendarView pages of 20 mailboxes in one
round trip, a reverse drain sends 20 creates/updates/deletes in one.

Graph answers each sub-request on its own, so the batch can fail in part:

- 429/503/504 for a sub-request (throttled, with Retry-After): that mailbox is held for the
  Retry-After (nothing more is sent for it meanwhile, in this batch or any other: Graph counts
  an early return as a violation), then only that request is sent again, in a later batch; the
  others' answers are handed back at once. After ``max_retries`` retries, or when the waits
  would pass ``max_wait_s`` in total, the last answer is handed back (the caller's error).
- any other status is the request's answer (the connector maps it to the hook's exceptions).
- the batch request itself failing (transport error, 401 on the batch, a 429 kiota gave up on)
  fails every request in it with that exception; the connector's re-authentication repeats
  them.

Graph's limit of 4 concurrent requests per mailbox is counted per sub-request: at most
``per_mailbox`` requests of one mailbox are in flight across all batches.

Until a first batch has been answered, only one is in flight: the first batch logs in and
opens the connection, and what queues meanwhile leaves in full batches on a warm client (the
first requests of a run would otherwise each fetch a token and do a TLS handshake).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from calsync.errors import ConnectorError

log = logging.getLogger(__name__)

MAX_BATCH = 20  # Graph's limit per $batch
RETRY_STATUSES = frozenset({429, 503, 504})


@dataclass(slots=True)
class SubAnswer:
    """One sub-request's answer: status, headers (names lower-cased) and the JSON body."""

    status: int
    headers: dict[str, str]
    body: Any


@dataclass(eq=False, slots=True)
class _Queued:
    mailbox: str
    request: dict[str, Any]  # id-less $batch entry: method, url, headers, body
    future: asyncio.Future[SubAnswer]
    retries: int = 0
    waited_s: float = 0.0


@dataclass
class BatchStats:
    """What the batcher did (for logs and tests)."""

    batches: int = 0
    sub_requests: int = 0
    retried: Counter[int] = field(default_factory=Counter)  # status → sub-requests re-sent


class GraphBatcher:
    """Queues mailbox requests and sends them as ``$batch`` requests through ``send``.

    ``send(payload)`` posts ``{"requests": [...]}`` and returns the parsed answer. Make one per
    event loop (the connector makes it on first use).
    """

    def __init__(
        self,
        send: Callable[[dict[str, Any]], Awaitable[Any]],
        *,
        size: int = MAX_BATCH,
        per_mailbox: int = 4,
        linger_s: float = 0.003,
        max_retries: int = 3,
        max_wait_s: float = 180.0,
    ) -> None:
        if not 1 <= size <= MAX_BATCH:
            raise ValueError(f"batch size must be 1..{MAX_BATCH}, not {size}")
        self._send = send
        self.size = size
        self.per_mailbox = per_mailbox
        self.linger_s = linger_s
        self.max_retries = max_retries
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._queue: deque[_Queued] = deque()
        self._in_flight: Counter[str] = Counter()
        self._held: dict[str, float] = {}  # mailbox → loop time it may be sent again
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._primed = False  # a batch was answered: more than one may be in flight

    async def request(
        self,
        mailbox: str,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> SubAnswer:
        """Send one request (``url`` relative to the API version, query included) in a batch;
        its answer, after any retries of throttled answers."""
        entry: dict[str, Any] = {"method": method, "url": url}
        sent_headers = dict(headers or {})
        if body is not None:
            entry["body"] = body
            sent_headers.setdefault("Content-Type", "application/json")
        if sent_headers:
            entry["headers"] = sent_headers
        future: asyncio.Future[SubAnswer] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(mailbox.lower(), entry, future))
        self._schedule()
        return await future

    async def aclose(self) -> None:
        """Wait for the batches in flight (their callers are waiting for them anyway)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- scheduling ------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Flush now when a full batch is ready, else once the linger (or a hold) is over."""
        if not self._primed and self._tasks:
            return  # the first batch is out; its answer schedules the next
        loop = asyncio.get_running_loop()
        ready, next_hold = self._ready_count()
        if ready >= self.size:
            self._flush()
            return
        if self._timer is not None:
            return
        if ready:
            self._timer = loop.call_later(self.linger_s, self._flush)
        elif next_hold is not None:
            self._timer = loop.call_at(next_hold, self._flush)

    def _ready_count(self) -> tuple[int, float | None]:
        """(how many queued requests could go now, up to a batch; the earliest hold's end)."""
        now = asyncio.get_running_loop().time()
        taken: Counter[str] = Counter()
        ready = 0
        next_hold: float | None = None
        for item in self._queue:
            until = self._held.get(item.mailbox)
            if until is not None and until > now:
                next_hold = until if next_hold is None else min(next_hold, until)
                continue
            if self._in_flight[item.mailbox] + taken[item.mailbox] >= self.per_mailbox:
                continue
            taken[item.mailbox] += 1
            ready += 1
            if ready >= self.size:
                break
        return ready, next_hold

    def _take(self) -> list[_Queued]:
        """Up to a batch of queued requests that may go now, oldest first."""
        now = asyncio.get_running_loop().time()
        picked: list[_Queued] = []
        kept: deque[_Queued] = deque()
        while self._queue:
            item = self._queue.popleft()
            until = self._held.get(item.mailbox)
            if until is not None and until <= now:
                del self._held[item.mailbox]
                until = None
            if (
                len(picked) < self.size
                and until is None
                and self._in_flight[item.mailbox] < self.per_mailbox
                and not item.future.done()  # its caller was cancelled
            ):
                self._in_flight[item.mailbox] += 1
                picked.append(item)
            elif not item.future.done():
                kept.append(item)
        self._queue = kept
        return picked

    def _flush(self) -> None:
        self._timer = None
        if not self._primed and self._tasks:
            return  # the first batch's answer flushes again
        while True:
            picked = self._take()
            if not picked:
                break
            task = asyncio.get_running_loop().create_task(self._run(picked))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if len(picked) < self.size or not self._primed:
                break
        if self._queue:
            self._schedule()

    # --- one batch -------------------------------------------------------------------------

    async def _run(self, picked: list[_Queued]) -> None:
        payload = {"requests": [{"id": str(i), **q.request} for i, q in enumerate(picked)]}
        self.stats.batches += 1
        self.stats.sub_requests += len(picked)
        try:
            answer = await self._send(payload)
        except BaseException as exc:
            for item in picked:
                self._in_flight[item.mailbox] -= 1
                if not item.future.done():
                    item.future.set_exception(exc)
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._schedule()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._primed = True
        self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
        entries = answer.get("responses") if isinstance(answer, dict) else None
        by_id = {str(e.get("id")): e for e in entries or [] if isinstance(e, dict)}
        now = asyncio.get_running_loop().time()
        requeue: list[_Queued] = []
        for index, item in enumerate(picked):
            self._in_flight[item.mailbox] -= 1
            if item.future.done():
                continue
            entry = by_id.get(str(index))
            if entry is None:
                item.future.set_exception(
                    BatchAnswerMissing(f"the $batch answer has no response for request {index}")
                )
                continue
            sub = SubAnswer(
                int(entry.get("status") or 0),
                {str(k).lower(): str(v) for k, v in (entry.get("headers") or {}).items()},
                entry.get("body"),
            )
            wait = self._retry_wait(item, sub)
            if wait is None:
                item.future.set_result(sub)
                continue
            item.retries += 1
            item.waited_s += wait
            self.stats.retried[sub.status] += 1
            self._held[item.mailbox] = max(self._held.get(item.mailbox, 0.0), now + wait)
            log.info(
                "Graph answered %s for a batched %s in %s (retry %d of %d): sending it again "
                "after %.1f s; the rest of its batch is done",
                sub.status,
                item.request["method"],
                item.mailbox,
                item.retries,
                self.max_retries,
                wait,
            )
            requeue.append(item)
        self._queue.extendleft(reversed(requeue))  # ahead of newer requests
        self._schedule()

    def _retry_wait(self, item: _Queued, sub: SubAnswer) -> float | None:
        """Seconds to wait before sending ``item`` again, or None to hand ``sub`` back."""
        if sub.status not in RETRY_STATUSES or item.retries >= self.max_retries:
            return None
        wait = _retry_after(sub.headers.get("retry-after"))
        if wait is None:
            wait = 3.0 * 2**item.retries  # kiota's back-off when Graph gives no Retry-After
        if item.waited_s + wait > self.max_wait_s:
            return None
        return wait


class BatchAnswerMissing(ConnectorError):
    """Graph's $batch answer left a request out."""


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (Graph sends delta seconds; an HTTP date is not used there)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds)
