"""HTTP for the Alibaba Mail connector: credentials, the token cache, the retry policy and a
small synchronous client on ``requests`` (run in the connector's thread pool).

Policy: 429, 408 and 5xx are retried, honouring Retry-After (seconds or an HTTP date) and
backing off with jitter without it, until the next wait would take the *operation* (a whole
window read, a create with its look-ups) past ``max_total_wait_s``: then a retriable
ConnectorError. A TLS failure, a refused login (400/401/403 from the token endpoint) or a
second 401 is final at once and names the Airflow connection.

Why a retry loop of our own and not urllib3's ``Retry``: calsync needs a bound on the *total*
time spent waiting (urllib3 caps each sleep, not the sum), a refreshed token after a 401 (a
transport-level retry would resend the stale header), and a create that is never blindly
re-sent after an ambiguous failure (the connector looks for its marker first). Every
attempt is also counted per request kind, which the tests and the logs use.

Secrets: the app secret is only ever put in the token request's form body. Error messages
name the Airflow connection, never the secret or a token; a token is never logged.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from calsync.connectors import alimail_wire as wire
from calsync.connectors.http_env import EnvOnceSession
from calsync.errors import ConnectorError

log = logging.getLogger(__name__)

RETRIABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# A request the server refused without acting on it: safe to send again, even a create.
REFUSED_STATUSES = frozenset({429, 503})
RETRY_AFTER_SLACK_S = 0.05  # arrive just after the Retry-After, never just before


@dataclass(frozen=True)
class Credentials:
    """What the Airflow connection holds (F15): app id = login, app secret = password."""

    app_id: str
    app_secret: str = field(repr=False)
    verify: bool | str = True  # True: the system CAs; a path: a CA bundle (e.g. the emulator's)
    extras: Mapping[str, Any] = field(default_factory=dict)


def load_credentials(conn_id: str) -> Credentials:
    """Read the connection through Airflow (metadata DB, secrets backend or AIRFLOW_CONN_*).

    Extras: ``verify`` (path of a CA bundle to trust; ``false`` is refused: TLS is always
    verified), ``page_size``, ``timeout_s``, ``max_retry_wait_s``, ``max_attempts``.
    """
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # AirflowNotFoundException and friends: name the id, nothing else
        raise ConnectorError(
            f"Airflow connection {conn_id!r} for Alibaba Mail not found or unreadable "
            f"({type(exc).__name__})",
            retriable=False,
        ) from None
    extras = dict(conn.extra_dejson or {})
    if not conn.login or not conn.password:
        raise ConnectorError(
            f"Airflow connection {conn_id!r} needs the Alibaba Mail app id as login and the "
            "app secret as password",
            retriable=False,
        )
    return Credentials(conn.login, conn.password, _verify(extras.get("verify"), conn_id), extras)


def _verify(value: Any, conn_id: str) -> bool | str:
    if value is None or value is True or (isinstance(value, str) and value.lower() == "true"):
        return True
    if value is False or (isinstance(value, str) and value.lower() in ("false", "0", "no")):
        raise ConnectorError(
            f"connection {conn_id!r}: extra 'verify' cannot switch TLS verification off; give "
            "the path of a CA bundle to trust instead",
            retriable=False,
        )
    return str(value)


class _HeaderOnly(requests.auth.AuthBase):
    """The session's auth: none beyond the token calsync puts in the Authorization header.
    Without one, requests looks up ``~/.netrc`` on every request (a file check per request)
    and a machine entry there for the API host would replace the token with Basic auth."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


@dataclass(frozen=True)
class RetryPolicy:
    """Request-level retries (E5): honour Retry-After, back off without it, and give up once
    the next wait would exceed ``max_total_wait_s`` (or after ``max_attempts``)."""

    max_total_wait_s: float = 60.0
    max_attempts: int = 8
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        if retry_after is not None:
            return max(0.0, retry_after) + RETRY_AFTER_SLACK_S
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(cap / 2, cap)


class MailboxLocks:
    """One request in flight per mailbox, retries included. Alibaba's Retry-After holds for
    the (app, mailbox), not only for the request it answered: a second thread's request to
    the mailbox, sent while the first sleeps out its Retry-After, would come too early (the
    Graph connector holds its mailboxes the same way). A Retry-After outlives the request
    that was given it when its retries run out: the mailbox's next request, whichever
    operation sends it, waits for it too (``defer``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._not_before: dict[str, float] = {}  # monotonic time of the mailbox's next request

    @contextlib.contextmanager
    def hold(self, mailbox: str | None) -> Iterator[None]:
        if mailbox is None:
            yield
            return
        with self._lock:
            lock = self._locks.setdefault(mailbox, threading.Lock())
        with lock:
            with self._lock:
                wait = self._not_before.pop(mailbox, 0.0) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            yield

    def defer(self, mailbox: str | None, seconds: float) -> None:
        """The mailbox's next request goes no earlier than ``seconds`` from now."""
        if mailbox is None:
            return
        with self._lock:
            until = time.monotonic() + seconds
            self._not_before[mailbox] = max(self._not_before.get(mailbox, 0.0), until)


_MAILBOX_IN_PATH = re.compile(r"^/v2/users/([^/]+)")


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number (fractions allowed) or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Throttled(Exception):
    """Internal: a retriable answer (status, code, Retry-After seconds or None)."""

    def __init__(self, status: int | None, code: str, retry_after: float | None) -> None:
        super().__init__(status, code)
        self.status = status
        self.code = code
        self.retry_after = retry_after


class AmbiguousWrite(ConnectorError):
    """A non-idempotent request failed in a way that may have left it done (5xx other than
    503, timeout or reset after sending): the caller checks before sending it again."""


@dataclass
class ApiError(Exception):
    """A final, non-2xx answer of the API (after retries and the token refresh)."""

    status: int
    code: str
    message: str
    request_id: str = ""

    def __str__(self) -> str:
        rid = f", request {self.request_id}" if self.request_id else ""
        return f"HTTP {self.status} {self.code or 'error'}: {self.message}{rid}".strip()


class TokenCache:
    """One bearer token per connector, renewed shortly before it expires and once after a
    401. Thread-safe: concurrent callers wait for a single renewal."""

    def __init__(self, fetch: Callable[[], tuple[str, float]]) -> None:
        self._fetch = fetch
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.issued = 0  # tokens fetched so far (tests, logs)

    def get(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                token, lifetime = self._fetch()
                # Renew with a margin: 10% of the lifetime, at most 60 s.
                margin = min(60.0, lifetime * 0.1)
                self._token, self._renew_at = token, time.monotonic() + lifetime - margin
                self.issued += 1
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (if still current) after the API refused it."""
        with self._lock:
            if self._token == token:
                self._token = None


class AlimailHttp:
    """Token + retries around one ``requests.Session``; every method is blocking."""

    def __init__(
        self,
        endpoint: str,
        credentials: Credentials,
        conn_id: str,
        *,
        policy: RetryPolicy | None = None,
        timeout_s: float = 30.0,
        pool_size: int = 8,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.conn_id = conn_id
        self._credentials = credentials
        self.policy = policy or RetryPolicy()
        self.timeout_s = timeout_s
        self.session = EnvOnceSession()
        self.session.auth = _HeaderOnly()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=2, pool_maxsize=max(2, pool_size), max_retries=0
        )
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        # Passed on every request: requests lets REQUESTS_CA_BUNDLE override session.verify.
        self.verify = credentials.verify
        self.tokens = TokenCache(self._fetch_token)
        self.attempts: dict[str, int] = {}
        self.waited_s = 0.0
        self._stats_lock = threading.Lock()
        self._local = threading.local()  # the wait spent by the current operation (per thread)
        self.mailboxes = MailboxLocks()

    @contextlib.contextmanager
    def operation(self) -> Iterator[None]:
        """One connector operation (a window read, a create...): every request made inside
        shares the policy's total wait, however many pages or lookups it takes."""
        outer = getattr(self._local, "waited", None)
        if outer is None:
            self._local.waited = 0.0
        try:
            yield
        finally:
            if outer is None:
                del self._local.waited

    def close(self) -> None:
        self.session.close()

    # --- token ---

    def _fetch_token(self) -> tuple[str, float]:
        form = {
            "grant_type": wire.TOKEN_GRANT_TYPE,
            wire.TOKEN_FORM_ID: self._credentials.app_id,
            wire.TOKEN_FORM_SECRET: self._credentials.app_secret,
        }

        def send() -> requests.Response:
            return self.session.post(
                self.endpoint + wire.TOKEN_PATH,
                data=form,
                headers={"Accept": "application/json"},
                timeout=self.timeout_s,
                verify=self.verify,
            )

        response = self._with_retries("token", send, idempotent=True)
        body = _json(response)
        if response.status_code in (400, 401, 403):
            code, _, _ = wire.error_fields(body)
            raise ConnectorError(
                f"Alibaba Mail login refused for connection {self.conn_id!r} "
                f"({code or response.status_code}): check the app id and secret (login and "
                "password of that connection) and the app's API permissions",
                status=response.status_code,
                retriable=False,
            )
        token = wire.first(body, (wire.TOKEN_ACCESS,))
        if response.status_code >= 300 or not token:
            code, message, _ = wire.error_fields(body)
            raise ConnectorError(
                f"Alibaba Mail token request failed for connection {self.conn_id!r}: HTTP "
                f"{response.status_code} {code} {message}".strip(),
                status=response.status_code,
            )
        try:
            lifetime = float(wire.first(body, (wire.TOKEN_EXPIRES_IN,), 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        return str(token), max(1.0, lifetime)

    # --- requests ---

    def call(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        idempotent: bool = True,
    ) -> tuple[int, Any]:
        """One API call with auth and retries: (status, parsed JSON or None) for a 2xx or a
        final 404; ApiError for any other final answer; ConnectorError when retries ran out.
        """
        url = self.endpoint + path
        refreshed = False
        while True:
            token = self.tokens.get()

            def send(token: str = token) -> requests.Response:
                return self._send(method, url, params, json_body, token)

            found = _MAILBOX_IN_PATH.match(path)
            mailbox = found.group(1) if found else None
            with self.mailboxes.hold(mailbox):
                response = self._with_retries(kind, send, idempotent=idempotent, mailbox=mailbox)
            if response.status_code == 401 and not refreshed:
                # Expired or revoked before its time: renew once and send again.
                self.tokens.invalidate(token)
                refreshed = True
                log.info("Alibaba Mail answered 401 to %s; renewing the token once", kind)
                continue
            body = _json(response)
            if 200 <= response.status_code < 300 or response.status_code == 404:
                if response.status_code == 404:
                    code, message, rid = wire.error_fields(body)
                    raise ApiError(404, code, message, rid)
                return response.status_code, body
            code, message, rid = wire.error_fields(body)
            if response.status_code == 401:
                raise ConnectorError(
                    f"Alibaba Mail refused the token of connection {self.conn_id!r} twice "
                    f"({code or 401}): check the app's API permissions",
                    status=401,
                    retriable=False,
                )
            raise ApiError(response.status_code, code, message, rid)

    def _send(
        self, method: str, url: str, params: dict[str, str] | None, json_body: Any, token: str
    ) -> requests.Response:
        """One API request, prepared here and handed to the session's adapter.

        ``Session.request`` costs about a third of a request's client CPU on top of the
        adapter (merging session cookies, hooks and settings into a fresh request, then
        cookie and redirect handling on the answer), paid once per change on a reverse
        drain. The API takes none of it: auth is the token header, and an answer is never a
        redirect to follow (nor may the token follow one). Kept from requests: URL
        preparation, the session's headers, the proxy and CA environment
        (``EnvOnceSession``), the adapter's pool, TLS and exceptions. Should the API ever set
        a cookie, it is kept in the session and every later request takes requests' own path,
        which sends it back."""
        session = self.session
        headers = {"Authorization": f"{wire.AUTH_SCHEME} {token}", "Accept": "application/json"}
        if session.cookies:
            return session.request(
                method,
                url,
                params=params,
                json=json_body,
                headers=headers,
                timeout=self.timeout_s,
                verify=self.verify,
                allow_redirects=False,
            )
        prepared = requests.PreparedRequest()
        prepared.prepare_method(method)
        prepared.prepare_url(url, params)
        prepared.headers = CaseInsensitiveDict(session.headers)
        prepared.headers.update(headers)
        if json_body is not None:
            prepared.body = orjson.dumps(json_body)
            prepared.headers["Content-Type"] = "application/json"
        # what requests sends for a bodiless POST/PUT/PATCH, and a body's length
        if prepared.body is not None or prepared.method not in ("GET", "HEAD"):
            prepared.headers["Content-Length"] = str(len(prepared.body or b""))
        settings = session.merge_environment_settings(url, {}, False, self.verify, None)
        response = session.get_adapter(url).send(
            prepared,
            stream=False,
            timeout=self.timeout_s,
            verify=settings["verify"],
            cert=settings["cert"],
            proxies=settings["proxies"],
        )
        if response.cookies:
            session.cookies.update(response.cookies)
        return response

    def _with_retries(
        self,
        kind: str,
        send: Callable[[], requests.Response],
        *,
        idempotent: bool,
        mailbox: str | None = None,
    ) -> requests.Response:
        """Send until the answer is not retriable, honouring Retry-After within the policy's
        total wait. Non-idempotent requests are re-sent only after a refusal (429/503)."""
        shared = getattr(self._local, "waited", None) is not None
        waited = self._local.waited if shared else 0.0
        attempt = 0
        while True:
            attempt += 1
            self._count(kind)
            try:
                response = send()
            except requests.exceptions.SSLError as exc:
                # Not transient: a CA that is not trusted, a wrong host name, an old protocol.
                reason = str(exc.args[0] if exc.args else exc)
                raise ConnectorError(
                    f"TLS handshake with {self.endpoint} failed for connection "
                    f"{self.conn_id!r}: {_tls_reason(reason)} (a private CA goes into the "
                    "connection's extra 'verify' as the path of a CA bundle)",
                    retriable=False,
                ) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                sent = not _never_sent(exc)
                if not idempotent and sent:
                    raise AmbiguousWrite(
                        f"Alibaba Mail {kind}: no answer ({type(exc).__name__})", retriable=True
                    ) from None
                failure = Throttled(None, type(exc).__name__, None)
            else:
                status = response.status_code
                if status not in RETRIABLE_STATUSES:
                    return response
                code, _, _ = wire.error_fields(_json(response))
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                if retry_after is not None:  # held for the mailbox, whether or not we retry
                    self.mailboxes.defer(mailbox, retry_after + RETRY_AFTER_SLACK_S)
                if not idempotent and status not in REFUSED_STATUSES:
                    raise AmbiguousWrite(
                        f"Alibaba Mail {kind}: HTTP {status} {code}".strip(), status=status
                    )
                failure = Throttled(status, code, retry_after)
                response.close()
            delay = self.policy.delay(attempt, failure.retry_after)
            if attempt >= self.policy.max_attempts or waited + delay > self.policy.max_total_wait_s:
                what = f"HTTP {failure.status}" if failure.status else failure.code
                down = "" if failure.status else f"unreachable at {self.endpoint}: "
                raise ConnectorError(
                    f"Alibaba Mail {down}{kind} still failing after {attempt} attempt(s) and "
                    f"{waited:.1f}s of waiting in this "
                    f"{'operation' if shared else 'request'} ({what}"
                    + (f", Retry-After {failure.retry_after:g}s" if failure.retry_after else "")
                    + f"; the wait budget is {self.policy.max_total_wait_s:g}s)",
                    status=failure.status,
                    retriable=True,
                )
            log.info(
                "Alibaba Mail %s: %s, retrying in %.2fs (attempt %d)",
                kind,
                f"HTTP {failure.status} {failure.code}".strip() if failure.status else failure.code,
                delay,
                attempt + 1,
            )
            time.sleep(delay)
            waited += delay
            if shared:
                self._local.waited = waited
            with self._stats_lock:
                self.waited_s += delay

    def _count(self, kind: str) -> None:
        with self._stats_lock:
            self.attempts[kind] = self.attempts.get(kind, 0) + 1


def user_path(template: str, user: str, **parts: str) -> str:
    """A path with the mailbox address and ids percent-encoded (``@`` kept readable)."""
    encoded = {k: quote(v, safe="") for k, v in parts.items()}
    return template.format(user=quote(user, safe="@"), **encoded)


def _never_sent(exc: Exception) -> bool:
    """The request cannot have reached the server (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _tls_reason(text: str) -> str:
    for hint in ("CERTIFICATE_VERIFY_FAILED", "hostname", "WRONG_VERSION_NUMBER", "UNSUPPORTED"):
        if hint.lower() in text.lower():
            start = text.lower().index(hint.lower())
            return text[start : start + 120].split("'")[0].split(")")[0]
    return text[:160]


def _json(response: requests.Response) -> Any:
    content = response.content
    if not content:
        return None
    try:  # orjson: a view page of 100 events parses in a third of json's time
        return orjson.loads(content)
    except orjson.JSONDecodeError:  # not UTF-8, NaN, a huge integer: as requests reads it
        pass
    try:
        return response.json()
    except ValueError:
        return {"message": response.text[:200]}
