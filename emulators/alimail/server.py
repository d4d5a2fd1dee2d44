"""The HTTPS server and ``AlimailEmulator``, the object tests and the demo hold.

A stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive (every answer carries a
Content-Length), one daemon thread per connection, TLS from ``emulators.tls`` (private CA,
made once per directory and reused). Routes: the token endpoint and ``/v2/...`` (see
``emulators.alimail.api``) and a small control API under ``/_emulator/`` (no auth, not
counted):

    GET  /_emulator/stats                     the stats snapshot
    GET  /_emulator/faults | POST (JSON)      read or change faults
    POST /_emulator/reset                     empty store, default faults, zero stats
    POST /_emulator/seed (JSON)               load seed JSON (see Store.load_seed)
    GET  /_emulator/events?mailbox=a@b.c      stored events of a mailbox
    POST /_emulator/expire-tokens             every issued token answers 401 from now on
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from calsync.connectors import alimail_wire as wire
from emulators.alimail.api import AlimailApi, Request, Response, api_error
from emulators.alimail.auth import TOKEN_LIFETIME_S, Apps
from emulators.alimail.faults import Faults, Stats, Throttle
from emulators.alimail.store import AlimailError, Store
from emulators.tls import TlsFiles, ensure_tls

log = logging.getLogger("emulators.alimail")

DEFAULT_APP_ID = "calsync-app"
DEFAULT_APP_SECRET = "alimail-s3cr3t"  # a test secret, the emulator's only one
IDLE_TIMEOUT_S = 120


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AlimailEmulator/1.0"
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)
        self.connection.do_handshake()  # type: ignore[attr-defined]

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.track(self.connection, False)

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            super().handle()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        request = Request(self.command, self.path, self.headers, body)
        try:
            response = self.server.emulator.dispatch(request)
        except Exception as exc:  # an emulator bug: answer, keep serving
            log.exception("emulator error on %s %s", self.command, self.path)
            response = api_error(500, wire.CODE_INTERNAL, f"emulator error: {exc!r}")
        payload = response.payload()
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], emulator: AlimailEmulator, tls: TlsFiles):
        super().__init__(address, _Handler)
        self.emulator = emulator
        self.socket = tls.server_context().wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            (self._connections.add if open_ else self._connections.discard)(conn)

    def close_connections(self) -> None:
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class AlimailEmulator:
    """A local Alibaba Mail V2 open API (calendar subset) over HTTPS.

    ``store`` (mailboxes, calendars, events), ``faults``, ``stats``; ``start()``, ``stop()``,
    ``reset()``; ``endpoint`` (``https://127.0.0.1:PORT``), ``ca_file`` (the CA to trust).
    """

    def __init__(
        self,
        tls_dir: Path | str,
        port: int = 0,
        app_id: str = DEFAULT_APP_ID,
        app_secret: str = DEFAULT_APP_SECRET,
        token_lifetime_s: float = TOKEN_LIFETIME_S,
        page_size: int = 100,
        latency_ms: float = 0,
        seed: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.tls_dir = Path(tls_dir)
        self.host = host
        self._requested_port = port
        self.app_id = app_id
        self._default_latency_ms = latency_ms
        self.stats = Stats()
        self.faults = Faults(latency_ms=latency_ms)
        self.store = Store(stats=self.stats)
        self.throttle = Throttle(self.faults, self.stats, seed)
        self.apps = Apps(app_id, app_secret, token_lifetime_s)
        self.api = AlimailApi(self.store, self.apps, self.throttle, self.stats, page_size)
        self.tls: TlsFiles | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> AlimailEmulator:
        if self._server is not None:
            return self
        self.tls = ensure_tls(self.tls_dir)
        self._server = _Server((self.host, self._requested_port), self, self.tls)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"alimail-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> AlimailEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Empty store, default faults, zeroed stats and throttling state (tokens stay valid)."""
        self.store.clear()
        self.faults.update(
            **{k: v for k, v in Faults(latency_ms=self._default_latency_ms).as_dict().items()}
        )
        self.stats.reset()
        self.throttle.reset()

    def expire_tokens(self) -> None:
        """Every token issued so far answers 401 from now on."""
        self.apps.expire_all()

    @property
    def token_lifetime_s(self) -> float:
        return self.apps.lifetime_s

    @token_lifetime_s.setter
    def token_lifetime_s(self, value: float) -> None:
        self.apps.lifetime_s = float(value)

    def load_seed(self, seed: dict[str, Any] | Path | str) -> dict[str, int]:
        if not isinstance(seed, dict):
            seed = json.loads(Path(seed).read_text(encoding="utf-8"))
        return self.store.load_seed(seed)  # type: ignore[arg-type]

    # --- addresses ---

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        if self.tls is None:
            self.tls = ensure_tls(self.tls_dir)
        return self.tls.ca_file

    def connection_extras(self) -> dict[str, str]:
        return {"verify": str(self.ca_file)}

    def airflow_conn_json(self) -> str:
        """The value of ``AIRFLOW_CONN_<ID>``: login = app id, password = app secret."""
        return json.dumps(
            {
                "conn_type": "generic",
                "login": self.app_id,
                "password": self.apps.apps[self.app_id],
                "extra": self.connection_extras(),
            }
        )

    def state(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "endpoint": self.endpoint,
            "ca_file": str(self.ca_file),
            "app_id": self.app_id,
            "connection_extras": self.connection_extras(),
            "airflow_conn_json": self.airflow_conn_json(),
            "pid": os.getpid(),
        }

    # --- requests ---

    def dispatch(self, req: Request) -> Response:
        if req.path.startswith("/_emulator/"):
            return self._control(req)
        if req.path.rstrip("/") == wire.TOKEN_PATH and req.method == "POST":
            return self.api.token(req)
        return self.api.handle(req)

    def _control(self, req: Request) -> Response:
        action = req.path[len("/_emulator/") :].strip("/")
        try:
            if action == "stats" and req.method == "GET":
                return Response(200, self.stats.snapshot())
            if action == "faults" and req.method == "GET":
                return Response(200, self.faults.as_dict())
            if action == "faults" and req.method == "POST":
                self.faults.update(**(req.json() or {}))
                return Response(200, self.faults.as_dict())
            if action == "reset" and req.method == "POST":
                self.reset()
                return Response(204)
            if action == "seed" and req.method == "POST":
                return Response(200, self.store.load_seed(req.json() or {}))
            if action == "events" and req.method == "GET":
                return Response(200, {"events": self.store.events(req.query.get("mailbox", ""))})
            if action == "expire-tokens" and req.method == "POST":
                self.expire_tokens()
                return Response(204)
        except (ValueError, TypeError) as exc:
            return api_error(400, wire.CODE_INVALID_PARAMETER, str(exc))
        except AlimailError as exc:
            return api_error(exc.status, exc.code, exc.message)
        return api_error(404, "NotFound", f"no control route {req.method} {req.path}")
