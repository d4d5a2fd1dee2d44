"""Fault injection, throttling and request statistics of the EWS emulator.

``Faults`` are settable at any time (attributes or ``update(**fields)``):

- ``latency_ms``: sleep before answering each EWS request;
- ``rate_server_busy``: probability of a SOAP fault ``ErrorServerBusy`` carrying
  ``BackOffMilliseconds`` = ``back_off_ms`` (HTTP 500, as Exchange sends it);
- ``rate_503``: probability of an HTTP 503 with ``Retry-After: retry_after_s``;
- ``fail_next``: ``(operation, fault)`` pairs consumed once, in order, by the first request of
  that operation (``"*"``: any): fault ``"ErrorServerBusy"``, ``503``, ``500``, ``401`` or any
  other EWS response code (answered as a SOAP fault with that code).

- ``per_tenant_concurrency``: requests in flight at once (Exchange's ``EWSMaxConcurrency``
  throttling budget, 27 by default, charged to the calling account: with calsync's one service
  account, the tenant's limit; 0 = no limit). One more is answered ``ErrorServerBusy`` with
  ``BackOffMilliseconds`` = ``back_off_ms`` and counted in ``stats.concurrency_refused``.

After a busy or 503 answer the login is told to wait; a request from it before that time
elapsed counts in ``stats.backoff_violations`` and is answered busy again (one that had
already arrived when that answer went out, on the wire before the client could know, is
answered busy too but counts in ``stats.in_flight_refusals``).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from emulators.common.throttle import StatsBase, ThrottleBase


@dataclass
class Faults:
    latency_ms: float = 0.0
    rate_server_busy: float = 0.0
    back_off_ms: int = 1000
    rate_503: float = 0.0
    retry_after_s: int = 1
    fail_next: list[tuple[str, Any]] = field(default_factory=list)
    per_tenant_concurrency: int = 27

    def update(self, **values: Any) -> None:
        known = {f.name for f in fields(self)}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown fault field {name!r}; known: {sorted(known)}")
            if name == "fail_next":
                value = [_entry(e) for e in value or []]
            elif name in ("back_off_ms", "retry_after_s", "per_tenant_concurrency"):
                value = int(value)
            else:
                value = float(value)
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _entry(entry: Any) -> tuple[str, Any]:
    if isinstance(entry, dict):
        return str(entry.get("operation", "*")), entry["fault"]
    operation, fault = entry
    return str(operation), fault


@dataclass(frozen=True)
class Verdict:
    """A fault to answer with: ``kind`` "busy" (SOAP fault), "http" (status) or "code"."""

    kind: str
    status: int = 500
    code: str = "ErrorServerBusy"
    back_off_ms: int | None = None
    retry_after_s: int | None = None


@dataclass(frozen=True)
class LoggedRequest:
    at: float  # time.monotonic()
    operation: str
    login: str
    mailbox: str | None
    outcome: str  # "ok", "ErrorServerBusy", "503", "401", an error code...


class Stats(StatsBase):
    """Counters; read them as attributes or ``snapshot()`` (``stats["server_busy"]`` too)."""

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.by_operation: Counter[str] = Counter()
            self.by_status: Counter[int] = Counter()
            self.by_login: Counter[str] = Counter()
            self.by_mailbox: Counter[str] = Counter()
            self.server_busy = 0
            self.unavailable_503 = 0
            self.unauthorized_401 = 0
            self.backoff_violations = 0
            self.in_flight_refusals = 0
            self.impersonation_denied = 0
            self.concurrency_refused = 0
            self.max_concurrency_seen = 0
            self.auth_schemes: Counter[str] = Counter()
            self.log: list[LoggedRequest] = []

    def request(self, operation: str, login: str, mailbox: str | None, outcome: str) -> None:
        with self._lock:
            self.requests += 1
            self.by_operation[operation] += 1
            if login:
                self.by_login[login] += 1
            if mailbox:
                self.by_mailbox[mailbox] += 1
            self.log.append(LoggedRequest(time.monotonic(), operation, login, mailbox, outcome))

    def status(self, status: int) -> None:
        with self._lock:
            self.by_status[status] += 1
            if status == 503:
                self.unavailable_503 += 1
            elif status == 401:
                self.unauthorized_401 += 1

    def concurrency(self, in_flight: int, refused: bool) -> None:
        with self._lock:
            self.max_concurrency_seen = max(self.max_concurrency_seen, in_flight)
            if refused:
                self.concurrency_refused += 1

    def scheme(self, name: str) -> None:
        with self._lock:
            self.auth_schemes[name] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "by_operation": dict(self.by_operation),
                "by_status": {str(k): v for k, v in self.by_status.items()},
                "by_login": dict(self.by_login),
                "by_mailbox": dict(self.by_mailbox),
                "server_busy": self.server_busy,
                "unavailable_503": self.unavailable_503,
                "unauthorized_401": self.unauthorized_401,
                "backoff_violations": self.backoff_violations,
                "in_flight_refusals": self.in_flight_refusals,
                "impersonation_denied": self.impersonation_denied,
                "concurrency_refused": self.concurrency_refused,
                "max_concurrency_seen": self.max_concurrency_seen,
                "auth_schemes": dict(self.auth_schemes),
            }


class Throttle(ThrottleBase):
    """Applies ``Faults``; one per emulator, shared by the handler threads."""

    faults: Faults
    stats: Stats

    def __init__(self, faults: Faults, stats: Stats, seed: int = 0) -> None:
        super().__init__(faults, stats, seed)
        self._opened: dict[str, float] = {}  # when each login's back-off window opened

    def verdict(self, operation: str, login: str, received: float | None = None) -> Verdict | None:
        """The fault to answer this request with, if any (and remembers back-off windows).
        A request inside a window is answered busy; it counts as a violation unless it had
        arrived (``received``) before the answer that opened the window went out."""
        with self._lock:
            left = self._wait_left(login)
            if left is not None:
                in_flight = received is not None and received < self._opened.get(login, 0.0)
                self.stats.add("in_flight_refusals" if in_flight else "backoff_violations")
                return Verdict("busy", back_off_ms=max(1, int(left * 1000)))
            chosen = None
            for index, (wanted, fault) in enumerate(self.faults.fail_next):
                if wanted in ("*", operation):
                    del self.faults.fail_next[index]
                    chosen = self._from_fault(fault)
                    break
            if chosen is None:
                roll = self._rng.random()
                if roll < self.faults.rate_server_busy:
                    chosen = Verdict("busy", back_off_ms=self.faults.back_off_ms)
                elif roll < self.faults.rate_server_busy + self.faults.rate_503:
                    chosen = Verdict("http", 503, "503", retry_after_s=self.faults.retry_after_s)
            if chosen is not None:
                wait = (
                    chosen.back_off_ms / 1000
                    if chosen.back_off_ms
                    else chosen.retry_after_s
                    if chosen.retry_after_s
                    else 0
                )
                if wait:
                    self._opened[login] = time.monotonic()
                    self._hold(login, wait)
            return chosen

    def enter(self) -> Verdict | None:
        """Count a request in flight for the tenant; ErrorServerBusy when that is over
        ``per_tenant_concurrency`` (no back-off window is opened: the requests already in
        flight are served, and the refused one is counted in ``concurrency_refused``)."""
        cap = self.faults.per_tenant_concurrency
        with self._lock:
            over, in_flight = self._enter("tenant", cap if cap > 0 else 1 << 30)
        self.stats.concurrency(in_flight, over)
        return Verdict("busy", back_off_ms=self.faults.back_off_ms) if over else None

    def leave(self) -> None:
        with self._lock:
            self._leave("tenant")

    def _from_fault(self, fault: Any) -> Verdict:
        if fault == "ErrorServerBusy":
            return Verdict("busy", back_off_ms=self.faults.back_off_ms)
        if isinstance(fault, int) or (isinstance(fault, str) and fault.isdigit()):
            status = int(fault)
            retry = self.faults.retry_after_s if status == 503 else None
            return Verdict("http", status, str(status), retry_after_s=retry)
        return Verdict("code", 500, str(fault))
