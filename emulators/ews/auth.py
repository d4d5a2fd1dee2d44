"""HTTP authentication of the EWS emulator: Basic and NTLM (NTLMv2, connection-bound).

Accounts are (login, password) pairs, the login as the client gives it: an address
(``svc@contoso.com``) or ``DOMAIN\\user``. Basic compares the login case-insensitively. NTLM runs
the 401 handshake (NEGOTIATE → CHALLENGE → AUTHENTICATE) on one connection, checks the NTLMv2
response against the account's password (MD4 of UTF-16LE, implemented here because OpenSSL 3
no longer offers it) and then treats the connection as that login, as IIS does. Only what is
needed to verify a client is implemented: no signing or sealing, no MIC check.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import struct
import time
from dataclasses import dataclass

SIGNATURE = b"NTLMSSP\x00"
NEGOTIATE_UNICODE = 0x00000001
REQUEST_TARGET = 0x00000004
NEGOTIATE_NTLM = 0x00000200
TARGET_TYPE_DOMAIN = 0x00010000
NEGOTIATE_TARGET_INFO = 0x00800000
NEGOTIATE_VERSION = 0x02000000


# --- MD4 (RFC 1320) ---------------------------------------------------------------------------


def _rotl(x: int, n: int) -> int:
    x &= 0xFFFFFFFF
    return ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF


def md4(data: bytes) -> bytes:
    length = (len(data) * 8) & 0xFFFFFFFFFFFFFFFF
    data += b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack("<Q", length)
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for offset in range(0, len(data), 64):
        x = struct.unpack("<16I", data[offset : offset + 64])
        aa, bb, cc, dd = a, b, c, d

        def f(x_: int, y: int, z: int) -> int:
            return (x_ & y) | (~x_ & z)

        def g(x_: int, y: int, z: int) -> int:
            return (x_ & y) | (x_ & z) | (y & z)

        def h(x_: int, y: int, z: int) -> int:
            return x_ ^ y ^ z

        for i in (0, 4, 8, 12):
            a = _rotl(a + f(b, c, d) + x[i], 3)
            d = _rotl(d + f(a, b, c) + x[i + 1], 7)
            c = _rotl(c + f(d, a, b) + x[i + 2], 11)
            b = _rotl(b + f(c, d, a) + x[i + 3], 19)
        for i in (0, 1, 2, 3):
            a = _rotl(a + g(b, c, d) + x[i] + 0x5A827999, 3)
            d = _rotl(d + g(a, b, c) + x[i + 4] + 0x5A827999, 5)
            c = _rotl(c + g(d, a, b) + x[i + 8] + 0x5A827999, 9)
            b = _rotl(b + g(c, d, a) + x[i + 12] + 0x5A827999, 13)
        for i in (0, 2, 1, 3):
            a = _rotl(a + h(b, c, d) + x[i] + 0x6ED9EBA1, 3)
            d = _rotl(d + h(a, b, c) + x[i + 8] + 0x6ED9EBA1, 9)
            c = _rotl(c + h(d, a, b) + x[i + 4] + 0x6ED9EBA1, 11)
            b = _rotl(b + h(c, d, a) + x[i + 12] + 0x6ED9EBA1, 15)
        a, b, c, d = (
            (a + aa) & 0xFFFFFFFF,
            (b + bb) & 0xFFFFFFFF,
            (c + cc) & 0xFFFFFFFF,
            (d + dd) & 0xFFFFFFFF,
        )
    return struct.pack("<4I", a, b, c, d)


def nt_hash(password: str) -> bytes:
    return md4(password.encode("utf-16-le"))


# --- NTLM messages ----------------------------------------------------------------------------


class NtlmError(ValueError):
    pass


def _field(message: bytes, at: int) -> bytes:
    length, _, offset = struct.unpack_from("<HHI", message, at)
    if offset + length > len(message):
        raise NtlmError("field outside the message")
    return message[offset : offset + length]


def message_type(token: bytes) -> int:
    if len(token) < 12 or not token.startswith(SIGNATURE):
        raise NtlmError("not an NTLM message")
    return int(struct.unpack_from("<I", token, 8)[0])


def _av_pairs(domain: str, computer: str) -> bytes:
    def pair(av_id: int, value: bytes) -> bytes:
        return struct.pack("<HH", av_id, len(value)) + value

    filetime = int((time.time() + 11644473600) * 10_000_000)
    return b"".join(
        [
            pair(2, domain.encode("utf-16-le")),
            pair(1, computer.encode("utf-16-le")),
            pair(4, f"{domain.lower()}.local".encode("utf-16-le")),
            pair(3, f"{computer.lower()}.{domain.lower()}.local".encode("utf-16-le")),
            pair(7, struct.pack("<Q", filetime)),
            pair(0, b""),
        ]
    )


def challenge(
    negotiate: bytes, domain: str = "CONTOSO", computer: str = "EXCH01"
) -> tuple[bytes, bytes]:
    """(CHALLENGE message, server challenge) answering a NEGOTIATE message."""
    if message_type(negotiate) != 1:
        raise NtlmError("expected an NTLM NEGOTIATE message")
    client_flags = struct.unpack_from("<I", negotiate, 12)[0]
    flags = (
        client_flags
        | NEGOTIATE_UNICODE
        | REQUEST_TARGET
        | NEGOTIATE_NTLM
        | TARGET_TYPE_DOMAIN
        | NEGOTIATE_TARGET_INFO
        | NEGOTIATE_VERSION
    ) & ~0x00000002  # never OEM
    server_challenge = secrets.token_bytes(8)
    target = domain.encode("utf-16-le")
    info = _av_pairs(domain, computer)
    header_len = 56
    msg = (
        SIGNATURE
        + struct.pack("<I", 2)
        + struct.pack("<HHI", len(target), len(target), header_len)
        + struct.pack("<I", flags)
        + server_challenge
        + b"\x00" * 8
        + struct.pack("<HHI", len(info), len(info), header_len + len(target))
        + bytes([10, 0])
        + struct.pack("<H", 17763)
        + b"\x00\x00\x00\x0f"
        + target
        + info
    )
    return msg, server_challenge


@dataclass(frozen=True)
class Authenticate:
    domain: str
    user: str
    nt_response: bytes


def parse_authenticate(token: bytes) -> Authenticate:
    if message_type(token) != 3 or len(token) < 64:
        raise NtlmError("expected an NTLM AUTHENTICATE message")
    flags = struct.unpack_from("<I", token, 60)[0]
    encoding = "utf-16-le" if flags & NEGOTIATE_UNICODE else "latin-1"
    return Authenticate(
        domain=_field(token, 28).decode(encoding, "replace"),
        user=_field(token, 36).decode(encoding, "replace"),
        nt_response=_field(token, 20),
    )


def verify_v2(auth: Authenticate, password: str, server_challenge: bytes) -> bool:
    """Whether the NTLMv2 response was made with ``password`` for our challenge."""
    if len(auth.nt_response) <= 24:  # NTLMv1: refused, as hardened servers do
        return False
    key = hmac.new(
        nt_hash(password), (auth.user.upper() + auth.domain).encode("utf-16-le"), "md5"
    ).digest()
    proof, blob = auth.nt_response[:16], auth.nt_response[16:]
    expected = hmac.new(key, server_challenge + blob, "md5").digest()
    return hmac.compare_digest(proof, expected)


# --- accounts ---------------------------------------------------------------------------------


def normalize_login(login: str) -> str:
    return login.strip().lower()


def ntlm_identities(login: str) -> set[tuple[str, str]]:
    """(domain, user) pairs, lower-cased, under which an account may present itself over NTLM."""
    login = normalize_login(login)
    if "\\" in login:
        domain, user = login.split("\\", 1)
        return {(domain, user)}
    return {("", login)}


def parse_basic(header: str) -> tuple[str, str] | None:
    try:
        raw = base64.b64decode(header.split(" ", 1)[1].strip(), validate=True).decode("utf-8")
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
    if ":" not in raw:
        return None
    login, password = raw.split(":", 1)
    return login, password
