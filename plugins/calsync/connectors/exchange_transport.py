"""Transport details of the Exchange connector: endpoint, TLS trust, retry budget, log hygiene.

- ``endpoint_for``: the F12 server host (IP or name) → ``https://{host}/EWS/Exchange.asmx``; a
  full ``http(s)://`` URL is taken as is (tests, emulators, non-default paths or ports).
- ``trust_ca_bundle``: exchangelib builds its HTTP adapters from the class attribute
  ``BaseProtocol.HTTP_ADAPTER_CLS``. Ours verifies TLS against the CA bundle registered for the
  request's host:port and leaves every other host on the default trust store; verification is
  never switched off.
- ``BoundedFaultTolerance``: exchangelib's ``FaultTolerance`` honours ErrorServerBusy's
  ``BackOffMilliseconds`` and a 503's ``Retry-After``, but ``max_wait`` caps each single wait,
  not their sum, and a 401 is retried as if it were throttling. This subclass keeps a total
  budget per calling thread (``begin()`` before an operation) — a back-off that would end past
  it raises ``RateLimitError`` at once, and a shared back-off inherited from another thread
  never sleeps past it — and treats 401 as the login failure it is.
- ``install_pool_fix``: on ErrorServerBusy exchangelib 5.6 shrinks the session pool
  (``BaseProtocol.decrease_poolsize``) by taking a session with ``get_session()`` while holding
  the pool's non-reentrant lock. With every session in use by other threads, ``get_session``
  calls ``increase_poolsize``, which waits for that same lock: the thread deadlocks, and every
  thread of the connector after it (found by the reverse drain against a busy EWS emulator).
  The replacement retires an *idle* session only, never waiting while it holds the lock.
- ``install_fast_bodies``: exchangelib parses every SOAP answer from
  ``response.iter_content()``, whose default chunk size is one byte: a 100-item GetItem answer
  (~1 MB) went through a million Python-level reads, the larger part of the connector's CPU.
  Our adapter hands exchangelib responses that iterate in 64 KiB chunks (same bytes, same
  streaming parser).
- ``install_env_once``: exchangelib's sessions become ``http_env.EnvOnceSession`` (the proxy
  and CA environment read once per origin, not for every request: ~0.18 ms each).
- ``install_log_filter``: exchangelib's DEBUG dumps of each request carry its headers
  (``Authorization``) and mailbox XML; they are dropped so no credential reaches a log (F15).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from typing import Any, ClassVar
from urllib.parse import urlsplit

import requests.adapters
from exchangelib.errors import RateLimitError, SessionPoolMinSizeReached, UnauthorizedError
from exchangelib.protocol import BaseProtocol, FaultTolerance
from exchangelib.version import Build

from calsync.connectors.http_env import EnvOnceSession

EWS_PATH = "/EWS/Exchange.asmx"


def endpoint_for(server: str) -> str:
    """The EWS service endpoint of an Exchange server host, or the URL as given."""
    value = server.strip()
    if value.lower().startswith(("http://", "https://")):
        parts = urlsplit(value)
        return value if parts.path not in ("", "/") else f"{value.rstrip('/')}{EWS_PATH}"
    host = value.strip("/")
    if ":" in host and not host.startswith("[") and host.count(":") > 1:
        host = f"[{host}]"  # a bare IPv6 address
    return f"https://{host}{EWS_PATH}"


def netloc(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


class _TrustMixin:
    """Verify TLS against the CA bundle registered for the request's host:port."""

    bundles: ClassVar[dict[str, str]] = {}

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        bundle = self.bundles.get(netloc(request.url))
        if bundle and kwargs.get("verify", True) is not False:
            kwargs["verify"] = bundle
        return super().send(request, *args, **kwargs)  # type: ignore[misc]


BODY_CHUNK = 1 << 16


class _ChunkedResponse(requests.Response):
    """A response whose ``iter_content()`` yields 64 KiB chunks unless told otherwise."""

    def iter_content(
        self, chunk_size: int | None = BODY_CHUNK, decode_unicode: bool = False
    ) -> Any:
        return super().iter_content(chunk_size, decode_unicode)


class _FastBodyMixin:
    def build_response(self, req: Any, resp: Any) -> Any:
        response = super().build_response(req, resp)  # type: ignore[misc]
        if type(response) is requests.Response:
            response.__class__ = _ChunkedResponse
        return response


_install_lock = threading.Lock()


def _install_adapter(mixin: type) -> None:
    """Put ``mixin`` into exchangelib's HTTP adapter class (once; the caller holds the lock)."""
    current = BaseProtocol.HTTP_ADAPTER_CLS
    if issubclass(current, mixin):
        return
    base = current if issubclass(current, requests.adapters.HTTPAdapter) else None
    BaseProtocol.HTTP_ADAPTER_CLS = type(
        f"Calsync{mixin.__name__.strip('_')}Adapter",
        (mixin, base or requests.adapters.HTTPAdapter),
        {},
    )


def install_fast_bodies() -> None:
    """Make exchangelib read SOAP answers in 64 KiB chunks, in this process (idempotent)."""
    with _install_lock:
        _install_adapter(_FastBodyMixin)


def trust_ca_bundle(endpoint: str, ca_bundle: str) -> None:
    """Trust ``ca_bundle`` (a PEM file) for ``endpoint``'s host:port, in this process."""
    with _install_lock:
        _install_adapter(_TrustMixin)
        _TrustMixin.bundles[netloc(endpoint)] = ca_bundle


class BoundedFaultTolerance(FaultTolerance):
    """FaultTolerance with a total back-off budget per operation and 401 as a login failure."""

    def __init__(self, max_wait: float, total_wait: float) -> None:
        super().__init__(max_wait=max_wait)
        self.total_wait = total_wait
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._local = threading.local()

    def begin(self) -> None:
        """Start the budget of one operation in the calling thread."""
        self._local.deadline = time.monotonic() + self.total_wait

    def end(self) -> None:
        self._local.deadline = None

    def _remaining(self) -> float | None:
        deadline = getattr(self._local, "deadline", None)
        return None if deadline is None else deadline - time.monotonic()

    @property
    def back_off_until(self) -> dt.datetime | None:
        # Read before every request. A back-off another thread was given that outlasts this
        # operation's budget ends the operation: waking early would send inside the window
        # the server asked for (E5), which it answers busy again.
        until = super().back_off_until
        remaining = self._remaining()
        if until is None or remaining is None:
            return until
        wait = (until - dt.datetime.now()).total_seconds()
        if wait > max(0.0, remaining):
            raise RateLimitError(
                f"throttled: the server's back-off ({wait:.1f}s) outlasts what is left of the "
                f"{self.total_wait:g}s budget",
                wait=wait,
            )
        return until

    @back_off_until.setter
    def back_off_until(self, value: dt.datetime | None) -> None:
        with self._back_off_lock:
            self._back_off_until = value

    def back_off(self, seconds: float | None) -> None:
        wait = self.DEFAULT_BACKOFF if seconds is None else seconds
        remaining = self._remaining()
        if remaining is not None and wait > remaining:
            raise RateLimitError(
                f"throttled: a back-off of {wait:g}s exceeds what is left of the "
                f"{self.total_wait:g}s budget",
                wait=wait,
            )
        super().back_off(seconds)

    def raise_response_errors(self, response: Any) -> None:
        if response.status_code == 401:
            raise UnauthorizedError(f"Invalid credentials for {response.url}")
        super().raise_response_errors(response)


def _decrease_poolsize(self: Any) -> None:
    """``BaseProtocol.decrease_poolsize`` without the self-deadlock: retire one idle session
    (the pool keeps at least one); when all are in use, leave the size as it is — the retry
    policy's back-off still slows the caller down."""
    if self._session_pool_size <= 1:
        raise SessionPoolMinSizeReached("Session pool size cannot be decreased further")
    with self._session_pool_lock:
        if self._session_pool_size <= 1:
            return
        try:
            session = self._session_pool.get(block=False)
        except queue.Empty:
            return  # every session is in use; exchangelib would block here holding the lock
        self._session_pool_size -= 1
    self.close_session(session)


def install_pool_fix() -> None:
    """Replace exchangelib's deadlock-prone pool shrinking, in this process (idempotent)."""
    with _install_lock:
        BaseProtocol.decrease_poolsize = _decrease_poolsize  # type: ignore[method-assign]


_plain_raw_session = BaseProtocol.raw_session.__func__  # type: ignore[attr-defined]


def _raw_session(cls: type, prefix: str, *args: Any, **kwargs: Any) -> Any:
    session = _plain_raw_session(cls, prefix, *args, **kwargs)
    if type(session) is requests.Session:  # an OAuth2Session keeps its class
        session.__class__ = EnvOnceSession
    return session


def install_env_once() -> None:
    """Make exchangelib's sessions read the proxy/CA environment once per origin
    (``http_env``), in this process (idempotent)."""
    with _install_lock:
        BaseProtocol.raw_session = classmethod(_raw_session)  # type: ignore[method-assign,assignment]


class _DropRequestDumps(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO


_filter = _DropRequestDumps()


def install_log_filter() -> None:
    """Drop exchangelib's DEBUG request/response dumps (they carry Authorization headers)."""
    for name in (
        "exchangelib.util",
        "exchangelib.util.xml",
        "exchangelib.protocol",
        "exchangelib.services.common",
    ):
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)


def parse_build(text: str | None, default: Build) -> Build:
    """``"15.1.2507.6"`` (or fewer parts) as a Build; ``default`` when empty."""
    if not text:
        return default
    parts = [int(p) for p in str(text).strip().split(".") if p != ""]
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"not an Exchange build number: {text!r} (e.g. 15.1.2507.6)")
    return Build(*parts)
