"""The login side: the client-credentials token endpoint, bearer checks and the discovery
documents MSAL asks for (instance discovery, OpenID configuration).

Tokens are opaque random strings, valid for ``expires_in`` seconds or until
``expire_all()``. Error replies follow Entra ID's shape; a secret is never echoed.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

TOKEN_LIFETIME_S = 3599


@dataclass(frozen=True)
class Token:
    client_id: str
    expires_at: float


def _aad_error(status: int, error: str, code: str, text: str) -> tuple[int, dict[str, Any]]:
    trace = str(uuid.uuid4())
    return status, {
        "error": error,
        "error_description": f"{code}: {text} Trace ID: {trace} Correlation ID: {uuid.uuid4()} "
        f"Timestamp: {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}",
        "error_codes": [int(code.removeprefix("AADSTS"))],
        "trace_id": trace,
    }


class Authority:
    """One tenant with one confidential client."""

    def __init__(self, tenant_id: str, client_id: str, client_secret: str) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self._tokens: dict[str, Token] = {}
        self._lock = threading.Lock()

    def issue(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Answer ``POST /{tenant}/oauth2/v2.0/token``: (status, JSON body)."""
        if tenant.lower() not in (self.tenant_id.lower(), "organizations"):
            return _aad_error(
                400,
                "invalid_request",
                "AADSTS90002",
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID.",
            )
        if form.get("grant_type") != "client_credentials":
            return _aad_error(
                400,
                "unsupported_grant_type",
                "AADSTS70003",
                "The app requested an unsupported grant type.",
            )
        client_id = form.get("client_id", "")
        if not hmac.compare_digest(client_id.encode(), self.client_id.encode()):
            return _aad_error(
                401,
                "invalid_client",
                "AADSTS700016",
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'.",
            )
        secret = form.get("client_secret", "")
        if not hmac.compare_digest(secret.encode(), self.client_secret.encode()):
            return _aad_error(
                401,
                "invalid_client",
                "AADSTS7000215",
                f"Invalid client secret provided. Ensure the secret being sent in the request "
                f"is the client secret value, not the client secret ID, for a secret added to "
                f"app '{client_id}'.",
            )
        if not form.get("scope", "").strip().endswith("/.default"):
            return _aad_error(
                400,
                "invalid_scope",
                "AADSTS1002012",
                "The provided value for scope is not valid. Client credential flows must have "
                "a scope value with /.default suffixed to the resource identifier.",
            )
        token = secrets.token_urlsafe(48)
        with self._lock:
            self._tokens[token] = Token(client_id, time.monotonic() + TOKEN_LIFETIME_S)
        return 200, {
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_S,
            "ext_expires_in": TOKEN_LIFETIME_S,
            "access_token": token,
        }

    def client_for(self, authorization: str | None) -> tuple[str | None, str]:
        """(client id, "") for a valid ``Authorization: Bearer`` header, else (None, reason)."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return None, "Access token is empty."
        token = self._tokens.get(authorization[7:].strip())
        if token is None:
            return None, "IDX14100: JWT is not well formed, there are no dots (.)."
        if time.monotonic() >= token.expires_at:
            return None, "Lifetime validation failed, the token is expired."
        return token.client_id, ""

    def expire_all(self) -> None:
        with self._lock:
            self._tokens = {k: Token(v.client_id, 0.0) for k, v in self._tokens.items()}

    # --- discovery ---

    def openid_configuration(self, base: str, tenant: str) -> dict[str, Any]:
        issuer = f"{base}/{self.tenant_id}/v2.0"
        return {
            "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{base}/oidc/userinfo",
            "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/{tenant}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid"],
            "tenant_region_scope": "WW",
            "cloud_instance_name": "emulator",
            "cloud_graph_host_name": "graph.emulator",
            "msgraph_host": "graph.emulator",
        }

    def instance_discovery(self, base: str, host: str) -> dict[str, Any]:
        openid = f"{base}/{self.tenant_id}/v2.0/.well-known/openid-configuration"
        return {
            "tenant_discovery_endpoint": openid,
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }
