"""The token endpoint and bearer checks of the Alibaba Mail emulator.

``POST /oauth2/v2.0/token`` with the client-credentials form (app id / app secret) answers
``{access_token, token_type, expires_in}``. Tokens are opaque, valid ``token_lifetime_s``
(short values make renewal testable) or until ``expire_all()``. Errors take the OAuth shape
``{"error", "error_description"}`` and never echo the secret.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from calsync.connectors import alimail_wire as wire

TOKEN_LIFETIME_S = 7200.0


@dataclass(frozen=True)
class Token:
    app_id: str
    expires_at: float


class Apps:
    """The apps (one tenant each) allowed to get tokens."""

    def __init__(self, app_id: str, app_secret: str, lifetime_s: float = TOKEN_LIFETIME_S):
        self.apps: dict[str, str] = {app_id: app_secret}
        self.lifetime_s = lifetime_s
        self._tokens: dict[str, Token] = {}
        self._lock = threading.Lock()

    def add_app(self, app_id: str, app_secret: str) -> None:
        self.apps[app_id] = app_secret

    def issue(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Answer the token request: (status, JSON body)."""
        if form.get("grant_type") != wire.TOKEN_GRANT_TYPE:
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": "only client_credentials is supported",
            }
        app_id = form.get(wire.TOKEN_FORM_ID) or ""
        secret = form.get(wire.TOKEN_FORM_SECRET) or ""
        known = self.apps.get(app_id)
        if known is None or not hmac.compare_digest(known.encode(), secret.encode()):
            return 401, {
                "error": "invalid_client",
                "error_description": "client authentication failed (unknown app or bad secret)",
            }
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = Token(app_id, time.monotonic() + self.lifetime_s)
        lifetime = self.lifetime_s
        return 200, {
            wire.TOKEN_ACCESS: token,
            wire.TOKEN_TYPE: "bearer",
            wire.TOKEN_EXPIRES_IN: int(lifetime) if float(lifetime).is_integer() else lifetime,
        }

    def app_for(self, header: str | None) -> tuple[str | None, str]:
        """(app id, "") for a valid ``Authorization: bearer <token>``, else (None, reason)."""
        if not header:
            return None, "missing Authorization header"
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None, "Authorization must be 'bearer <token>'"
        with self._lock:
            found = self._tokens.get(token.strip())
        if found is None:
            return None, "access token is invalid"
        if time.monotonic() >= found.expires_at:
            return None, "access token expired"
        return found.app_id, ""

    def expire_all(self) -> None:
        with self._lock:
            self._tokens = {t: Token(v.app_id, 0.0) for t, v in self._tokens.items()}
