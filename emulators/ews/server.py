"""The HTTP(S) server and ``EwsEmulator``, the object tests and the demo hold.

A stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive (every response carries
Content-Length), one thread per connection, TLS from ``emulators.tls`` when a ``tls_dir`` is
given. One route: ``POST /EWS/Exchange.asmx`` (case-insensitive), SOAP 1.1.

Authentication (``auth``): ``"basic"``, ``"ntlm"`` or ``"both"`` (default). The handler object
lives as long as its connection, so an NTLM handshake authenticates that connection.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulators.common.http import EmulatorHandler, EmulatorServer, ServedEmulator
from emulators.ews import auth as ntlm
from emulators.ews.faults import Faults, Stats, Throttle, Verdict
from emulators.ews.service import WRITE_OPERATIONS, Service, SoapFault
from emulators.ews.store import Record, Store
from emulators.ews.wire import (
    XML_TYPE,
    BadRequest,
    ServerVersion,
    child,
    envelope,
    fault,
    local,
    parse_xml,
)
from emulators.tls import TlsFiles, ensure_tls

log = logging.getLogger("emulators.ews")

ENDPOINT = "/ews/exchange.asmx"
DEFAULT_SERVICE_LOGIN = "svc-calsync@contoso.com"
DEFAULT_SERVICE_PASSWORD = "Svc-Calsync-Passw0rd!"  # a test secret, the emulator's own


@dataclass
class Account:
    login: str
    password: str
    mailbox: str | None = None
    impersonate: bool = False


class _Handler(EmulatorHandler):
    server_version = "Microsoft-IIS/10.0"
    logger = log
    server: _Server
    # the handler lives as long as its connection: an NTLM handshake authenticates that
    ntlm_login: str | None = None
    ntlm_challenge: bytes | None = None

    def do_POST(self) -> None:
        body = self.read_body()
        received = time.monotonic()  # before any throttling answer sent meanwhile, or not
        emu = self.server.emulator
        if self.path.split("?", 1)[0].lower() != ENDPOINT:
            self.send(404, b"Not Found", {"Content-Type": "text/plain"})
            return
        login, scheme, challenge_header = self._authenticate(emu)
        if login is None:
            emu.stats.status(401)
            emu.stats.request("(auth)", "", None, "401")
            headers: list[tuple[str, str]] = [("Content-Type", "text/html")]
            if challenge_header:
                headers.append(("WWW-Authenticate", challenge_header))
            else:
                if emu.auth in ("ntlm", "both"):
                    headers.append(("WWW-Authenticate", "NTLM"))
                if emu.auth in ("basic", "both"):
                    headers.append(("WWW-Authenticate", f'Basic realm="{emu.host}"'))
            self.send(401, b"401 - Unauthorized: Access is denied.", headers)
            return
        try:
            status, payload, extra = emu.serve(body, login, scheme, received)
        except Exception as exc:  # a bug in the emulator: answer, keep serving
            log.exception("emulator error")
            status, extra = 500, {}
            payload = fault(
                "ErrorInternalServerError", f"emulator error: {exc!r}", emu.version, "Exchange2016"
            )
        emu.stats.status(status)
        self.send(status, payload, {"Content-Type": XML_TYPE, **extra})

    def do_GET(self) -> None:
        self.read_body()
        self.send(405, b"Method Not Allowed", {"Content-Type": "text/plain", "Allow": "POST"})

    def _authenticate(self, emu: EwsEmulator) -> tuple[str | None, str, str | None]:
        """(login or None, scheme, a WWW-Authenticate value to send with the 401)."""
        header = self.headers.get("Authorization") or ""
        scheme = header.split(" ", 1)[0].lower()
        if scheme == "basic" and emu.auth in ("basic", "both"):
            pair = ntlm.parse_basic(header)
            if pair and emu.check_password(*pair):
                emu.stats.scheme("basic")
                return emu.canonical_login(pair[0]), "basic", None
            return None, "basic", None
        if scheme in ("ntlm", "negotiate") and emu.auth in ("ntlm", "both"):
            try:
                token = base64.b64decode(header.split(" ", 1)[1].strip())
                kind = ntlm.message_type(token)
                if kind == 1:
                    message, self.ntlm_challenge = ntlm.challenge(token, emu.ntlm_domain)
                    self.ntlm_login = None
                    return None, "ntlm", f"NTLM {base64.b64encode(message).decode()}"
                if kind == 3 and self.ntlm_challenge is not None:
                    found = emu.check_ntlm(ntlm.parse_authenticate(token), self.ntlm_challenge)
                    self.ntlm_challenge = None
                    if found:
                        self.ntlm_login = found
                        emu.stats.scheme("ntlm")
                        return found, "ntlm", None
            except (IndexError, ValueError):
                pass
            self.ntlm_login = None
            return None, "ntlm", None
        if not header and self.ntlm_login is not None:
            return self.ntlm_login, "ntlm", None
        return None, scheme or "none", None


class _Server(EmulatorServer):
    handler_class = _Handler


class EwsEmulator(ServedEmulator):
    """A local Exchange Web Services endpoint (calendar subset); see the package docstring."""

    server_class = _Server
    thread_name = "ews-emulator"

    def __init__(
        self,
        tls_dir: Path | str | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        service_login: str = DEFAULT_SERVICE_LOGIN,
        service_password: str = DEFAULT_SERVICE_PASSWORD,
        impersonation_allowed: bool = True,
        auth: str = "both",
        latency_ms: float = 0,
        seed: int = 0,
        ntlm_domain: str = "CONTOSO",
        version: ServerVersion | None = None,
    ) -> None:
        if auth not in ("basic", "ntlm", "both"):
            raise ValueError("auth must be 'basic', 'ntlm' or 'both'")
        self.tls_dir = Path(tls_dir) if tls_dir else None
        self.host = host
        self._requested_port = port
        self.auth = auth
        self.ntlm_domain = ntlm_domain
        self.version = version or ServerVersion()
        self.impersonation_allowed = impersonation_allowed
        self.service_login = service_login
        self._default_latency_ms = latency_ms
        self.stats = Stats()
        self.faults = Faults(latency_ms=latency_ms)
        self.throttle = Throttle(self.faults, self.stats, seed)
        self.store = Store()
        self.service = Service(self)
        self._accounts: dict[str, Account] = {}
        self._accounts_lock = threading.Lock()
        self.set_password(service_login, service_password, impersonate=True)
        self.tls: TlsFiles | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def _server_tls(self) -> TlsFiles | None:
        if self.tls_dir is not None:
            self.tls = ensure_tls(self.tls_dir)
        return self.tls

    def reset(self) -> None:
        """Empty store, records and messages; default faults; zeroed stats; impersonation
        allowed again. Accounts stay."""
        self.store.clear()
        self.faults.update(**Faults(latency_ms=self._default_latency_ms).as_dict())
        self.stats.reset()
        self.throttle.reset()
        self.impersonation_allowed = True

    def load_seed(self, seed: dict[str, Any] | Path | str) -> dict[str, int]:
        if not isinstance(seed, dict):
            seed = json.loads(Path(seed).read_text(encoding="utf-8"))
        return self.store.load_seed(seed)  # type: ignore[arg-type]

    seed = load_seed

    # --- accounts ---

    def set_password(
        self, login: str, password: str, mailbox: str | None = None, impersonate: bool = False
    ) -> None:
        """Create or change an account. ``mailbox``: the mailbox this login owns (user mode; the
        login may differ from the address, F21); ``impersonate``: it holds the
        ApplicationImpersonation right (still subject to ``impersonation_allowed``)."""
        with self._accounts_lock:
            self._accounts[ntlm.normalize_login(login)] = Account(
                login, password, mailbox.strip().lower() if mailbox else None, impersonate
            )

    def remove_account(self, login: str) -> None:
        with self._accounts_lock:
            self._accounts.pop(ntlm.normalize_login(login), None)

    def canonical_login(self, login: str) -> str:
        account = self._accounts.get(ntlm.normalize_login(login))
        return account.login if account else login

    def check_password(self, login: str, password: str) -> bool:
        with self._accounts_lock:
            account = self._accounts.get(ntlm.normalize_login(login))
        return account is not None and account.password == password

    def check_ntlm(self, message: ntlm.Authenticate, challenge: bytes) -> str | None:
        wanted = (message.domain.strip().lower(), message.user.strip().lower())
        with self._accounts_lock:
            accounts = list(self._accounts.values())
        for account in accounts:
            if wanted in ntlm.ntlm_identities(account.login) and ntlm.verify_v2(
                message, account.password, challenge
            ):
                return account.login
        return None

    def may_impersonate(self, login: str) -> bool:
        account = self._accounts.get(ntlm.normalize_login(login))
        return bool(self.impersonation_allowed and account and account.impersonate)

    def mailbox_of_login(self, login: str) -> str | None:
        account = self._accounts.get(ntlm.normalize_login(login))
        if account and account.mailbox:
            return account.mailbox
        candidate = login.strip().lower()
        if self.store.has_mailbox(candidate) and not (account and account.impersonate):
            return candidate
        return None

    # --- records ---

    @property
    def records(self) -> list[Record]:
        with self.store.lock:
            return list(self.store.records)

    @property
    def messages(self) -> list[Any]:
        with self.store.lock:
            return list(self.store.messages)

    def folder(self, mailbox: str, folder: str) -> list[dict[str, Any]]:
        """Items of one folder of a mailbox: calendar, inbox, sentitems, deleteditems,
        recoverableitemsdeletions."""
        return self.store.events(mailbox, folder)

    # --- addresses ---

    @property
    def scheme(self) -> str:
        return "https" if self.tls_dir is not None else "http"

    @property
    def service_endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/EWS/Exchange.asmx"

    @property
    def ca_file(self) -> Path | None:
        if self.tls_dir is None:
            return None
        if self.tls is None:
            self.tls = ensure_tls(self.tls_dir)
        return self.tls.ca_file

    def airflow_conn_json(self, login: str | None = None, password: str | None = None) -> str:
        """``AIRFLOW_CONN_<ID>`` of a connection holding the service account."""
        account = self._accounts[ntlm.normalize_login(login or self.service_login)]
        return json.dumps(
            {
                "conn_type": "generic",
                "host": self.service_endpoint,
                "login": account.login,
                "password": password if password is not None else account.password,
            }
        )

    def state(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "service_endpoint": self.service_endpoint,
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "service_login": self.service_login,
            "auth": self.auth,
            "airflow_conn_json": self.airflow_conn_json(),
            "pid": os.getpid(),
        }

    # --- serving ---

    def serve(
        self, body: bytes, login: str, scheme: str, received: float | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        """(status, payload, headers) for one authenticated SOAP request (``received``: when
        it had arrived, monotonic; tells a request already on the wire from a violation)."""
        api_version = "Exchange2016"
        operation = "(unparsed)"
        try:
            root = parse_xml(body)
            if local(root.tag) != "Envelope":
                raise BadRequest("not a SOAP envelope")
            header = child(root, "Header")
            version = child(header, "RequestServerVersion")
            if version is not None:
                api_version = version.get("Version") or api_version
            soap_body = child(root, "Body")
            op = next(iter(soap_body), None) if soap_body is not None else None
            if op is None:
                raise BadRequest("empty SOAP body")
            operation = local(op.tag)
        except BadRequest as exc:
            self.stats.request(operation, login, None, "ErrorSchemaValidation")
            return 500, fault("ErrorSchemaValidation", str(exc), self.version, api_version), {}
        verdict = self.throttle.enter()
        if verdict is not None:
            return self._fault_answer(verdict, operation, login, api_version)
        try:
            return self._serve_entered(op, header, login, scheme, operation, api_version, received)
        finally:
            self.throttle.leave()

    def _serve_entered(
        self,
        op: Any,
        header: Any,
        login: str,
        scheme: str,
        operation: str,
        api_version: str,
        received: float | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        if self.faults.latency_ms:
            time.sleep(self.faults.latency_ms / 1000)
        verdict = self.throttle.verdict(operation, login, received)
        if verdict is not None:
            return self._fault_answer(verdict, operation, login, api_version)
        try:
            ctx = self.service.context(header, login, scheme)
            result = self.service.handle(op, ctx)
        except SoapFault as exc:
            self.stats.request(operation, login, None, exc.code)
            if operation in WRITE_OPERATIONS:
                self.store.add_record(
                    Record(
                        self.store.next_record_seq(),
                        operation,
                        login,
                        scheme,
                        None,
                        "",
                        {},
                        error=exc.code,
                    )
                )
            return 500, fault(exc.code, exc.message, self.version, api_version), {}
        except BadRequest as exc:
            self.stats.request(operation, login, None, "ErrorSchemaValidation")
            return 500, fault("ErrorSchemaValidation", str(exc), self.version, api_version), {}
        mailbox = next(iter(sorted(ctx.mailboxes)), ctx.acting)
        self.stats.request(operation, login, mailbox, "ok")
        return 200, envelope(result, self.version, api_version), {}

    def _fault_answer(
        self, verdict: Verdict, operation: str, login: str, api_version: str
    ) -> tuple[int, bytes, dict[str, str]]:
        if verdict.kind == "busy":
            self.stats.add("server_busy")
            self.stats.request(operation, login, None, "ErrorServerBusy")
            payload = fault(
                "ErrorServerBusy",
                "The server cannot service this request right now. Try again later.",
                self.version,
                api_version,
                [("BackOffMilliseconds", str(verdict.back_off_ms or 0))],
            )
            return 500, payload, {}
        if verdict.kind == "http":
            self.stats.request(operation, login, None, str(verdict.status))
            headers = {"Content-Type": "text/html"}
            if verdict.retry_after_s:
                headers["Retry-After"] = str(verdict.retry_after_s)
            return verdict.status, b"Service Unavailable", headers
        self.stats.request(operation, login, None, verdict.code)
        return 500, fault(verdict.code, f"injected {verdict.code}", self.version, api_version), {}
