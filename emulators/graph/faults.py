"""Fault injection, throttling and request statistics.

``Faults`` are settable at any time (attributes or ``update(**fields)``). ``Throttle`` applies
them: a Retry-After window per (client, mailbox) after every 429/503 it hands out — a request
inside that window counts as a violation and is throttled again — and a cap on the requests
in flight per mailbox (exceeding it: 429 ApplicationThrottled, as Exchange Online does at
four concurrent requests per app and mailbox).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import unquote

from emulators.common.throttle import StatsBase, ThrottleBase, retry_after_text

__all__ = ["Faults", "Stats", "Throttle", "Verdict", "retry_after_text"]


@dataclass
class Faults:
    latency_ms: float = 0.0  # sleep before answering each Graph API request
    rate_429: float = 0.0  # probability of a random 429 TooManyRequests
    rate_503: float = 0.0  # probability of a random 503 ServiceUnavailable
    retry_after_s: float = 1.0  # Retry-After on 429/503 (fractions allowed)
    fail_next: list[tuple[str, int]] = field(default_factory=list)  # (path substring, status)
    per_mailbox_concurrency: int = 4
    # >0: every token issued so far expires when the API has counted this many requests
    # ($batch sub-requests included), inside that request (then the field goes back to 0)
    expire_tokens_after: int = 0

    def update(self, **values: Any) -> None:
        """Set fields from JSON-ish values (unknown names raise ValueError)."""
        known = {f.name for f in fields(self)}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown fault field {name!r}; known: {sorted(known)}")
            if name == "fail_next":
                value = [_fail_entry(entry) for entry in value or []]
            elif name in ("per_mailbox_concurrency", "expire_tokens_after"):
                value = int(value)
            else:
                value = float(value)
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _fail_entry(entry: Any) -> tuple[str, int]:
    if isinstance(entry, dict):
        return str(entry["path"]), int(entry["status"])
    path, status = entry
    return str(path), int(status)


class Stats(StatsBase):
    """Counters; read them as attributes or as one JSON-able ``snapshot()``
    (``stats["throttled_429"]``: one value of it)."""

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            # ``requests`` counts API requests as Graph's limits do: each request inside a
            # $batch is one (and the batch itself none); ``batches`` counts the $batch round
            # trips, ``batched_requests`` the requests they carried.
            self.batches = 0
            self.batched_requests = 0
            self.by_kind: Counter[str] = Counter()
            self.by_status: Counter[int] = Counter()
            self.by_mailbox: Counter[str] = Counter()
            self.throttled_429 = 0
            self.unavailable_503 = 0
            self.retry_after_violations = 0
            self.transaction_replays = 0
            self.max_concurrency_seen: dict[str, int] = {}
            self.invitations_sent: Counter[str] = Counter()
            self.updates_sent: Counter[str] = Counter()
            self.cancellations_sent: Counter[str] = Counter()

    def request(self, kind: str, mailbox: str | None) -> None:
        with self._lock:
            self.requests += 1
            self.by_kind[kind] += 1
            if mailbox:
                self.by_mailbox[mailbox] += 1

    def batch(self) -> None:
        with self._lock:
            self.batches += 1

    def subrequest(self, kind: str, mailbox: str | None) -> None:
        """One request inside a ``$batch``."""
        with self._lock:
            self.requests += 1
            self.batched_requests += 1
            self.by_kind[kind] += 1
            if mailbox:
                self.by_mailbox[mailbox] += 1

    def status(self, status: int) -> None:
        with self._lock:
            self.by_status[status] += 1
            if status == 429:
                self.throttled_429 += 1
            elif status == 503:
                self.unavailable_503 += 1

    def concurrency(self, mailbox: str, in_flight: int) -> None:
        with self._lock:
            if in_flight > self.max_concurrency_seen.get(mailbox, 0):
                self.max_concurrency_seen[mailbox] = in_flight

    def notify(self, kind: str, mailbox: str, count: int) -> None:
        """Meeting messages sent by ``mailbox`` (kind: invitations/updates/cancellations_sent)."""
        with self._lock:
            getattr(self, kind)[mailbox] += count

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "batches": self.batches,
                "batched_requests": self.batched_requests,
                "by_kind": dict(self.by_kind),
                "by_status": {str(k): v for k, v in self.by_status.items()},
                "by_mailbox": dict(self.by_mailbox),
                "throttled_429": self.throttled_429,
                "unavailable_503": self.unavailable_503,
                "retry_after_violations": self.retry_after_violations,
                "transaction_replays": self.transaction_replays,
                "max_concurrency_seen": dict(self.max_concurrency_seen),
                "invitations_sent": dict(self.invitations_sent),
                "updates_sent": dict(self.updates_sent),
                "cancellations_sent": dict(self.cancellations_sent),
            }


@dataclass(frozen=True)
class Verdict:
    """A fault to answer with instead of the real response."""

    status: int
    code: str
    message: str
    retry_after: float | None = None


class Throttle(ThrottleBase):
    """Applies ``Faults`` to requests; one instance per emulator, shared by handler threads."""

    faults: Faults
    stats: Stats

    def take_fail_next(self, target: str) -> int | None:
        """The status of the first ``fail_next`` entry found in the request target, as sent or
        percent-decoded (``users/a@b.com`` matches ``users/a%40b.com``); consumed."""
        decoded = unquote(target)
        with self._lock:
            for index, (needle, status) in enumerate(self.faults.fail_next):
                if needle in target or needle in decoded:
                    del self.faults.fail_next[index]
                    return status
        return None

    def check_window(self, client: str, mailbox: str) -> Verdict | None:
        """A violation verdict when the client comes back before its Retry-After elapsed."""
        with self._lock:
            if self._wait_left((client, mailbox)) is None:
                return None
        self.stats.add("retry_after_violations")
        return Verdict(
            429,
            "TooManyRequests",
            "The request came before the Retry-After of an earlier throttling response elapsed.",
            self.faults.retry_after_s,
        )

    def enter(self, mailbox: str) -> Verdict | None:
        """Count a request in flight for ``mailbox``; a verdict if that exceeds the cap."""
        with self._lock:
            over, in_flight = self._enter(mailbox, self.faults.per_mailbox_concurrency)
            if over:
                verdict: Verdict | None = Verdict(
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                    self.faults.retry_after_s,
                )
            else:
                verdict = None
        self.stats.concurrency(mailbox, in_flight)
        return verdict

    def leave(self, mailbox: str) -> None:
        with self._lock:
            self._leave(mailbox)

    def random_fault(self) -> Verdict | None:
        with self._lock:
            roll = self._rng.random()
        if roll < self.faults.rate_429:
            return Verdict(
                429,
                "TooManyRequests",
                "Too many requests, retry after the time in the Retry-After header.",
                self.faults.retry_after_s,
            )
        if roll < self.faults.rate_429 + self.faults.rate_503:
            return Verdict(
                503,
                "ServiceUnavailable",
                "The service is temporarily unavailable.",
                self.faults.retry_after_s,
            )
        return None

    def penalize(self, client: str, mailbox: str | None, seconds: float) -> None:
        """Remember that ``client`` was told to wait ``seconds`` before its next request."""
        if mailbox is None:
            return
        with self._lock:
            self._hold((client, mailbox), seconds)
