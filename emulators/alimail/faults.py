"""Fault injection, throttling and statistics of the Alibaba Mail emulator.

``Faults`` can be changed at any time (attributes or ``update(**fields)``). ``Throttle``
applies them: random 429s and 5xx answers carrying Retry-After, a one-shot ``fail_next`` list
(a path substring and a status, answered before the request is handled — or after it, which
makes an ambiguous write), a cap on the requests in flight per tenant (app id), and after
every 429/5xx with Retry-After a window per (app, mailbox) inside which a new request counts
as a violation and is refused again (``stats.retry_after_violations``). A request that had
already arrived when the answer opening the window went out (a concurrent one, on the wire
before the client could know) is refused too but counted in ``stats.in_flight_refusals``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import unquote

from emulators.common.throttle import StatsBase, ThrottleBase, retry_after_text

__all__ = ["FailSpec", "Faults", "Stats", "Throttle", "Verdict", "retry_after_text"]


@dataclass
class FailSpec:
    """Answer the next request whose target contains ``path`` with ``status``; with
    ``after`` the request is carried out first (the client cannot know it was)."""

    path: str
    status: int
    after: bool = False
    method: str | None = None

    @classmethod
    def of(cls, entry: Any) -> FailSpec:
        if isinstance(entry, FailSpec):
            return entry
        if isinstance(entry, dict):
            return cls(
                str(entry["path"]),
                int(entry["status"]),
                bool(entry.get("after", False)),
                entry.get("method"),
            )
        path, status, *rest = entry
        return cls(str(path), int(status), bool(rest[0]) if rest else False)


@dataclass
class Faults:
    latency_ms: float = 0.0  # sleep before answering each API request
    rate_429: float = 0.0  # probability of a random 429
    rate_5xx: float = 0.0  # probability of a random 5xx (status_5xx)
    status_5xx: int = 503
    retry_after_s: float | None = 1.0  # Retry-After on 429/5xx; None: no header
    fail_next: list[FailSpec] = field(default_factory=list)
    per_tenant_concurrency: int = 16  # requests in flight per app id

    def update(self, **values: Any) -> None:
        """Set fields from JSON-ish values (unknown names raise ValueError)."""
        known = {f.name for f in fields(self)}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown fault field {name!r}; known: {sorted(known)}")
            if name == "fail_next":
                value = [FailSpec.of(entry) for entry in value or []]
            elif name in ("per_tenant_concurrency", "status_5xx"):
                value = int(value)
            elif name == "retry_after_s":
                value = None if value is None else float(value)
            else:
                value = float(value)
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["fail_next"] = [vars(s) for s in self.fail_next]
        return out


class Stats(StatsBase):
    """Counters; attributes or one JSON-able ``snapshot()`` (also ``stats["name"]``)."""

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.by_kind: Counter[str] = Counter()
            self.by_status: Counter[int] = Counter()
            self.by_mailbox: Counter[str] = Counter()
            self.tokens_issued = 0
            self.token_refusals = 0
            self.unauthorized = 0
            self.throttled_429 = 0
            self.errors_5xx = 0
            self.retry_after_violations = 0
            self.in_flight_refusals = 0
            self.violation_delays: list[float] = []  # seconds into the window
            self.max_concurrency_seen: dict[str, int] = {}
            self.notifications: Counter[str] = Counter()  # per recipient, every kind
            self.invitations_sent: Counter[str] = Counter()
            self.updates_sent: Counter[str] = Counter()
            self.cancellations_sent: Counter[str] = Counter()

    def request(self, kind: str, mailbox: str | None) -> None:
        with self._lock:
            self.requests += 1
            self.by_kind[kind] += 1
            if mailbox:
                self.by_mailbox[mailbox] += 1

    def status(self, status: int) -> None:
        with self._lock:
            self.by_status[status] += 1
            if status == 429:
                self.throttled_429 += 1
            elif status >= 500:
                self.errors_5xx += 1

    def concurrency(self, tenant: str, in_flight: int) -> None:
        with self._lock:
            if in_flight > self.max_concurrency_seen.get(tenant, 0):
                self.max_concurrency_seen[tenant] = in_flight

    def notify(self, kind: str, recipient: str) -> None:
        """One notification mail to ``recipient`` (kind: invitations/updates/cancellations_sent)."""
        with self._lock:
            getattr(self, kind)[recipient] += 1
            self.notifications[recipient] += 1

    def late(self, seconds: float) -> None:
        with self._lock:
            self.violation_delays.append(round(seconds, 4))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "by_kind": dict(self.by_kind),
                "by_status": {str(k): v for k, v in self.by_status.items()},
                "by_mailbox": dict(self.by_mailbox),
                "tokens_issued": self.tokens_issued,
                "token_refusals": self.token_refusals,
                "unauthorized": self.unauthorized,
                "throttled_429": self.throttled_429,
                "errors_5xx": self.errors_5xx,
                "retry_after_violations": self.retry_after_violations,
                "in_flight_refusals": self.in_flight_refusals,
                "violation_delays": list(self.violation_delays),
                "max_concurrency_seen": dict(self.max_concurrency_seen),
                "notifications": dict(self.notifications),
                "invitations_sent": dict(self.invitations_sent),
                "updates_sent": dict(self.updates_sent),
                "cancellations_sent": dict(self.cancellations_sent),
            }


@dataclass(frozen=True)
class Verdict:
    """A fault to answer with instead of (or after) the real response."""

    status: int
    code: str
    message: str
    retry_after: float | None = None


class Throttle(ThrottleBase):
    """Applies ``Faults``; one per emulator, shared by the handler threads."""

    faults: Faults
    stats: Stats

    def __init__(self, faults: Faults, stats: Stats, seed: int = 0) -> None:
        super().__init__(faults, stats, seed)
        self._opened: dict[tuple[str, str], float] = {}  # when each window opened

    def take_fail_next(self, method: str, target: str) -> FailSpec | None:
        """The first matching ``fail_next`` entry (path as sent or percent-decoded), consumed."""
        decoded = unquote(target)
        with self._lock:
            for index, spec in enumerate(self.faults.fail_next):
                if spec.method and spec.method.upper() != method.upper():
                    continue
                if spec.path in target or spec.path in decoded:
                    del self.faults.fail_next[index]
                    return spec
        return None

    def check_window(
        self, client: str, mailbox: str, received: float | None = None
    ) -> Verdict | None:
        """A 429 while (client, mailbox) must wait. It counts as a violation unless the
        request had arrived (``received``, monotonic) before the answer that opened the
        window went out: a concurrent request already on the wire could not have known."""
        with self._lock:
            remaining = self._wait_left((client, mailbox))
            if remaining is None:
                return None
            opened = self._opened.get((client, mailbox), 0.0)
        in_flight = received is not None and received < opened
        self.stats.add("in_flight_refusals" if in_flight else "retry_after_violations")
        if not in_flight:
            self.stats.late(time.monotonic() - opened)
        return Verdict(
            429,
            "Throttling.RetryAfter",
            "request sent before the Retry-After of an earlier answer elapsed",
            max(remaining, 0.001) if self.faults.retry_after_s is not None else None,
        )

    def enter(self, tenant: str) -> Verdict | None:
        with self._lock:
            over, in_flight = self._enter(tenant, self.faults.per_tenant_concurrency)
            if over:
                verdict: Verdict | None = Verdict(
                    429,
                    "Throttling.Concurrency",
                    "too many concurrent requests for this organisation",
                    self.faults.retry_after_s,
                )
            else:
                verdict = None
        self.stats.concurrency(tenant, in_flight)
        return verdict

    def leave(self, tenant: str) -> None:
        with self._lock:
            self._leave(tenant)

    def random_fault(self) -> Verdict | None:
        with self._lock:
            roll = self._rng.random()
        if roll < self.faults.rate_429:
            return Verdict(
                429,
                "Throttling",
                "request was denied due to flow control",
                self.faults.retry_after_s,
            )
        if roll < self.faults.rate_429 + self.faults.rate_5xx:
            status = self.faults.status_5xx
            return Verdict(
                status,
                "ServiceUnavailable" if status == 503 else "InternalError",
                "the service is temporarily unavailable",
                self.faults.retry_after_s,
            )
        return None

    def penalize(self, client: str, mailbox: str | None, seconds: float) -> None:
        if mailbox is None:
            return
        with self._lock:
            key = (client, mailbox)
            if self._wait_left(key) is None:  # a new window: when its first answer went out
                self._opened[key] = time.monotonic()
            self._hold(key, seconds)
