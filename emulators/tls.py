"""A private CA and a server certificate for 127.0.0.1/localhost, kept in a directory.

``ensure_tls(dir)`` makes them with ``trustme`` on first use and reuses them afterwards, so a
client that trusted the CA once (a CA bundle written by the demo, say) keeps working across
emulator restarts. A lock file serialises concurrent first starts.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import ssl
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
