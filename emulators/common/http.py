"""The HTTP(S) server the emulators run on, and its start/stop lifecycle.

A stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive, one daemon thread per
connection, TLS from ``emulators.tls`` when given (the handshake runs in the connection's
thread, not in the accept loop). Open connections are tracked so ``stop()`` can cut them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self

from emulators.tls import TlsFiles

IDLE_TIMEOUT_S = 120  # an idle keep-alive connection is closed after this


class EmulatorHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1, TLS handshake in the connection's thread, quiet on hang-ups."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    logger: ClassVar[logging.Logger] = logging.getLogger("emulators")
    server: EmulatorServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.track(self.connection, False)

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            super().handle()

    def read_body(self) -> bytes:
        """The request body, by Content-Length or chunked."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send(self, status: int, body: bytes, headers: Any) -> None:
        """Status, ``headers`` (a dict or (name, value) pairs), Content-Length and ``body``."""
        self.send_response(status)
        items = headers.items() if isinstance(headers, dict) else headers
        for name, value in items:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        self.logger.info("%s " + format, self.address_string(), *args)


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256
    handler_class: ClassVar[type[EmulatorHandler]] = EmulatorHandler

    def __init__(self, address: tuple[str, int], emulator: Any, tls: TlsFiles | None) -> None:
        super().__init__(address, self.handler_class)
        self.emulator = emulator
        if tls is not None:
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
            return  # clients hanging up or failing TLS are not emulator errors
        super().handle_error(request, client_address)


class ServedEmulator:
    """``start()``/``stop()``/``with``/``port`` of an emulator object serving in a thread.

    A subclass sets ``server_class`` and ``thread_name`` and, in ``__init__``, ``host``,
    ``_requested_port``, ``tls``, ``_server`` and ``_thread``; ``_server_tls()`` says which
    certificate to serve with (None: plain HTTP).
    """

    server_class: ClassVar[type[EmulatorServer]]
    thread_name: ClassVar[str]
    host: str
    _requested_port: int
    tls: TlsFiles | None
    _server: EmulatorServer | None
    _thread: threading.Thread | None

    def _server_tls(self) -> TlsFiles | None:
        raise NotImplementedError

    def start(self) -> Self:
        """Serve in a background thread; returns self once the port is listening."""
        if self._server is not None:
            return self
        tls = self._server_tls()
        self._server = self.server_class((self.host, self._requested_port), self, tls)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.thread_name}-{self.port}",
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return int(self._server.server_address[1])
