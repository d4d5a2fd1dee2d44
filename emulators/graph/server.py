"""The HTTPS server and ``GraphEmulator``, the object tests and the demo hold.

A stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive (every response carries
Content-Length), one daemon thread per connection, TLS from ``emulators.tls`` (the handshake
runs in the connection's thread, not in the accept loop). Routes:

    POST /{tenant}/oauth2/v2.0/token                 client-credentials tokens
    GET  /{tenant}/v2.0/.well-known/openid-configuration, /common/discovery/instance
    /v1.0/...                                        Graph (emulators.graph.api)
    /_emulator/...                                   control (emulators.graph.control)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from emulators.common.http import EmulatorHandler, EmulatorServer, ServedEmulator
from emulators.graph.api import GraphApi
from emulators.graph.auth import Authority
from emulators.graph.control import ControlApi
from emulators.graph.faults import Faults, Stats, Throttle, retry_after_text
from emulators.graph.store import Store
from emulators.graph.wire import Request, Response, graph_error
from emulators.tls import TlsFiles, ensure_tls

log = logging.getLogger("emulators.graph")

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
DEFAULT_CLIENT_SECRET = "s3cr3t"  # a test secret, the emulator's only one


class _Handler(EmulatorHandler):
    server_version = "GraphEmulator/1.0"
    logger = log
    server: _Server

    def _serve(self) -> None:
        body = self.read_body()
        request = Request(
            self.command,
            self.path,
            self.headers,
            body,
            host=self.headers.get("Host") or self.server.emulator.netloc,
        )
        try:
            response = self.server.emulator.dispatch(request)
        except Exception as exc:  # a bug in the emulator: answer, keep serving
            log.exception("emulator error on %s %s", self.command, self.path)
            response = graph_error(500, "generalException", f"emulator error: {exc!r}")
        request_id = self.headers.get("client-request-id") or str(uuid.uuid4())
        headers = {"request-id": request_id, "client-request-id": request_id, **response.headers}
        self.send(response.status, response.payload(), headers)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve


class _Server(EmulatorServer):
    handler_class = _Handler
    # listen backlog: a burst of connects beyond it overflows the accept queue and, with SYN
    # cookies, some connections are reset (ECONNRESET) and others wait for SYN retransmits.
    # Benchmarks open thousands at once; the kernel caps this at net.core.somaxconn.
    request_queue_size = 4096


class GraphEmulator(ServedEmulator):
    """A local Microsoft Graph (calendar subset) over HTTPS; see the package docstring."""

    server_class = _Server
    thread_name = "graph-emulator"

    def __init__(
        self,
        tls_dir: Path | str,
        port: int = 0,
        client_id: str = "calsync-client",
        client_secret: str = DEFAULT_CLIENT_SECRET,
        tenant_id: str = "tenant-1",
        page_size: int = 50,
        latency_ms: float = 0,
        seed: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.tls_dir = Path(tls_dir)
        self.host = host
        self._requested_port = port
        self.client_id = client_id
        self.tenant_id = tenant_id
        self.page_size = page_size
        self._default_latency_ms = latency_ms
        self.stats = Stats()
        self.faults = Faults(latency_ms=latency_ms)
        self.store = Store(stats=self.stats)
        self.throttle = Throttle(self.faults, self.stats, seed)
        self.authority_state = Authority(tenant_id, client_id, client_secret)
        self.api = GraphApi(self.store, self.authority_state, self.throttle, self.stats, page_size)
        self.control = ControlApi(self)
        self.tls: TlsFiles | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def _server_tls(self) -> TlsFiles:
        self.tls = ensure_tls(self.tls_dir)
        return self.tls

    def reset(self) -> None:
        """Empty store, default faults, zeroed stats and throttling state (tokens stay valid)."""
        self.store.clear()
        defaults = Faults(latency_ms=self._default_latency_ms)
        self.faults.update(**{k: v for k, v in defaults.as_dict().items()})
        self.stats.reset()
        self.throttle.reset()

    def expire_tokens(self) -> None:
        """Every token issued so far is expired: the API answers 401 until a new one is used."""
        self.authority_state.expire_all()

    def load_seed(self, seed: dict[str, Any] | Path | str) -> dict[str, int]:
        """Load seed JSON (a dict or a file path); see ``Store.load_seed``."""
        if not isinstance(seed, dict):
            seed = json.loads(Path(seed).read_text(encoding="utf-8"))
        return self.store.load_seed(seed)  # type: ignore[arg-type]

    seed = load_seed

    # --- addresses ---

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def authority(self) -> str:
        return f"https://{self.netloc}"

    @property
    def base_url(self) -> str:
        return f"{self.authority}/v1.0/"

    @property
    def ca_file(self) -> Path:
        if self.tls is None:
            self.tls = ensure_tls(self.tls_dir)
        return self.tls.ca_file

    def connection_extras(self) -> dict[str, str]:
        """Extras of an Airflow ``msgraph`` connection that points the provider's hook here."""
        return {
            "tenant_id": self.tenant_id,
            "authority": self.authority,
            "allowed_hosts": self.host,
            "scopes": GRAPH_SCOPE,
            "base_url": self.base_url,
            "verify": str(self.ca_file),
            "api_version": "v1.0",
        }

    def airflow_conn_json(self) -> str:
        """The value of ``AIRFLOW_CONN_<ID>`` for such a connection."""
        return json.dumps(
            {
                "conn_type": "msgraph",
                "login": self.client_id,
                "password": self.authority_state.client_secret,
                "extra": self.connection_extras(),
            }
        )

    def state(self) -> dict[str, Any]:
        """What the CLI prints when ready."""
        return {
            "port": self.port,
            "base_url": self.base_url,
            "authority": self.authority,
            "ca_file": str(self.ca_file),
            "tenant_id": self.tenant_id,
            "client_id": self.client_id,
            "connection_extras": self.connection_extras(),
            "airflow_conn_json": self.airflow_conn_json(),
            "pid": os.getpid(),
        }

    # --- requests ---

    def dispatch(self, req: Request) -> Response:
        parts = req.segments
        head = parts[0] if parts else ""
        if head == "_emulator":
            return self.control.handle(req)
        if head in ("v1.0", "beta"):
            return self.api.handle(req)
        return self._login(req, parts)

    def _login(self, req: Request, parts: list[str]) -> Response:
        if req.method == "POST" and len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            self.stats.request("token", None)
            status = self.throttle.take_fail_next(req.target)
            if status is not None:
                response = Response(status, {"error": "temporarily_unavailable"})
                if status in (429, 503):
                    response.headers["Retry-After"] = retry_after_text(self.faults.retry_after_s)
            else:
                form = dict(parse_qsl(req.body.decode("utf-8", "replace")))
                code, body = self.authority_state.issue(parts[0], form)
                response = Response(code, body, {"Cache-Control": "no-store, no-cache"})
        elif req.method == "GET" and parts[1:] in (
            ["v2.0", ".well-known", "openid-configuration"],
            [".well-known", "openid-configuration"],
        ):
            self.stats.request("discovery", None)
            response = Response(
                200, self.authority_state.openid_configuration(self._base(req), parts[0])
            )
        elif req.method == "GET" and parts[1:] == ["discovery", "instance"]:
            self.stats.request("discovery", None)
            response = Response(
                200,
                self.authority_state.instance_discovery(self._base(req), req.host or self.netloc),
            )
        else:
            self.stats.request("unknown", None)
            response = graph_error(404, "NotFound", f"No route for {req.method} {req.raw_path}")
        self.stats.status(response.status)
        return response

    def _base(self, req: Request) -> str:
        return f"https://{req.host or self.netloc}"
