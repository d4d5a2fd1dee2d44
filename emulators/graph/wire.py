"""Request and response values passed between the HTTP handler and the routes."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

JSON_TYPE = "application/json; odata.metadata=minimal; odata.streaming=true; charset=utf-8"


@dataclass
class Request:
    method: str
    target: str  # path and query as sent
    headers: Message
    body: bytes = b""
    host: str = ""  # authority the client addressed, for absolute links

    @property
    def raw_path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def segments(self) -> list[str]:
        """Decoded path segments (an address sent as ``alice%40contoso.com`` included)."""
        return [unquote(s) for s in self.raw_path.split("/") if s]

    @property
    def query_items(self) -> list[tuple[str, str]]:
        query = self.target.split("?", 1)[1] if "?" in self.target else ""
        return parse_qsl(query, keep_blank_values=True)

    @property
    def query(self) -> dict[str, str]:
        """Query parameters by lower-cased name without ``$`` (Graph reads them so)."""
        return {k.lower().lstrip("$"): v for k, v in self.query_items}

    def json(self) -> Any:
        """The JSON body (None when empty); ValueError when it is not UTF-8 JSON."""
        return orjson.loads(self.body) if self.body.strip() else None

    def header_values(self, name: str) -> list[str]:
        return self.headers.get_all(name) or []


@dataclass
class Response:
    status: int
    body: Any = None  # dict/list → JSON, bytes as is, None → empty
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        self.headers.setdefault("Content-Type", JSON_TYPE)
        # orjson: UTF-8 as json.dumps(ensure_ascii=False) gives it, in a fraction of the CPU
        # (rendering pages is most of what the emulator does under a benchmark).
        return orjson.dumps(self.body, option=orjson.OPT_NON_STR_KEYS)


def graph_error(status: int, code: str, message: str, request_id: str | None = None) -> Response:
    """Graph's error shape: ``{"error": {"code", "message", "innerError"}}``."""
    request_id = request_id or str(uuid.uuid4())
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return Response(
        status,
        {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": now,
                    "request-id": request_id,
                    "client-request-id": request_id,
                },
            }
        },
    )
