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

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from calsync.connectors import alimail_wire as wire
from emulators.alimail.api import AlimailApi, Request, Response, api_error
from emulators.alimail.auth import TOKEN_LIFETIME_S, Apps
from emulators.alimail.faults import Faults, Stats, Throttle
from emulators.alimail.store import AlimailError, Store
from emulators.common.http import EmulatorHandler, EmulatorServer, ServedEmulator
from emulators.tls import TlsFiles, ensure_tls

log = logging.getLogger("emulators.alimail")

DEFAULT_APP_ID = "calsync-app"
DEFAULT_APP_SECRET = "alimail-s3cr3t"  # a test secret, the emulator's only one


class _Handler(EmulatorHandler):
    server_version = "AlimailEmulator/1.0"
    logger = log
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        request = Request(self.command, self.path, self.headers, body)
        try:
            response = self.server.emulator.dispatch(request)
        except Exception as exc:  # an emulator bug: answer, keep serving
            log.exception("emulator error on %s %s", self.command, self.path)
            response = api_error(500, wire.CODE_INTERNAL, f"emulator error: {exc!r}")
        self.send(response.status, response.payload(), response.headers)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve


class _Server(EmulatorServer):
    handler_class = _Handler


class AlimailEmulator(ServedEmulator):
    """A local Alibaba Mail V2 open API (calendar subset) over HTTPS.

    ``store`` (mailboxes, calendars, events), ``faults``, ``stats``; ``start()``, ``stop()``,
    ``reset()``; ``endpoint`` (``https://127.0.0.1:PORT``), ``ca_file`` (the CA to trust).
    """

    server_class = _Server
    thread_name = "alimail-emulator"

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

    def _server_tls(self) -> TlsFiles:
        self.tls = ensure_tls(self.tls_dir)
        return self.tls

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
