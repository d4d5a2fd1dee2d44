"""A private CA and a server certificate for 127.0.0.1/localhost, kept in a directory.

``ensure_tls(dir)`` makes them with ``trustme`` on first use and reuses them afterwards, so a
client that trusted the CA once (a CA bundle written by the demo, say) keeps working across
emulator restarts. A lock file serialises concurrent first starts.

``client_context(ca_file)`` is the client side: an ``ssl.SSLContext`` trusting that CA that one
``httpx.Client`` can use from many threads at once (see ``StableAlpnContext``).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path  # PEM of the CA certificate: what clients trust
    cert_file: Path  # PEM chain of the server certificate
    key_file: Path  # PEM private key of the server certificate

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context for HTTP/1.1 with this certificate."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


class StableAlpnContext(ssl.SSLContext):
    """An ``SSLContext`` whose ALPN list, once set, is not set again to the same value.

    httpcore calls ``ssl_context.set_alpn_protocols(...)`` on the client's (shared) context for
    every new connection. CPython then frees the context's ALPN buffer in OpenSSL
    (``SSL_CTX_set_alpn_protos``) while another thread may be in ``SSL_new`` on the same context,
    which runs with the GIL released and copies that buffer: a use-after-free. The copy then holds
    malloc's free-list bytes, the ClientHello carries a malformed ALPN extension and the server
    rightly answers with a ``decode_error`` alert (``httpx.ConnectError: [SSL:
    TLSV1_ALERT_DECODE_ERROR]``), now and then, when threads open connections at the same time.
    Setting the same list again is a no-op here, so the buffer is never freed under a reader.
    """

    _alpn: tuple[str, ...] | None = None

    def set_alpn_protocols(self, alpn_protocols: Iterable[str]) -> None:
        protocols = tuple(alpn_protocols)
        if protocols == self._alpn:
            return
        super().set_alpn_protocols(protocols)  # a change is still racy: set it before sharing
        self._alpn = protocols


def client_context(
    ca_file: Path | str, alpn_protocols: Iterable[str] = ("http/1.1",)
) -> ssl.SSLContext:
    """A client context trusting ``ca_file`` (like ``ssl.create_default_context(cafile=...)``),
    safe to share between threads through one httpx client; see ``StableAlpnContext``."""
    ctx = StableAlpnContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.set_alpn_protocols(alpn_protocols)  # what httpcore will ask for (http2: add "h2")
    return ctx


def _files(directory: Path) -> TlsFiles:
    return TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")


def _usable(files: TlsFiles) -> bool:
    """The files exist, the certificate is valid now and covers every name in HOSTS."""
    try:
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        x509.load_pem_x509_certificate(files.ca_file.read_bytes())
        if not files.key_file.read_bytes().strip():
            return False
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc - dt.timedelta(days=1):
            return False
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    names = set(san.get_values_for_type(x509.DNSName))
    names |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return all(host in names for host in HOSTS)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


def ensure_tls(directory: Path | str) -> TlsFiles:
    """The CA and server certificate in ``directory``, made on first use, reused afterwards."""
    import trustme  # test/dev dependency: imported only when certificates are needed

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = _files(directory)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _usable(files):
            return files
        ca = trustme.CA(organization_name="calsync emulator CA")
        cert = ca.issue_cert(*HOSTS)
        _write(files.key_file, cert.private_key_pem.bytes(), 0o600)
        _write(files.cert_file, b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        _write(files.ca_file, ca.cert_pem.bytes())  # last: its presence marks a complete set
    return files
