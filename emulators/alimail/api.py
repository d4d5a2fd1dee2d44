"""The routes of the Alibaba Mail emulator, built from the wire format in
``calsync.connectors.alimail_wire`` (so a correction there moves the emulator too):

    POST   /oauth2/v2.0/token                                      client-credentials tokens
    GET    /v2/users/{user}/calendars                              ListCalendars
    GET    /v2/users/{user}/calendars/{calendar}/eventsview        EventView (window, paged)
    POST   /v2/users/{user}/calendars/{calendar}/events            CreateEvent
    GET|PATCH|DELETE /v2/users/{user}/calendars/{calendar}/events/{event}

Every API call: bearer check (401), Retry-After window check, per-tenant concurrency cap,
latency, ``fail_next``, random faults, then the handler. Errors: ``{"code", "message",
"requestId"}``. Paging is keyset-based on (start, id): an event that does not change is never
repeated nor skipped, whatever happens between two pages.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

from calsync.connectors import alimail_wire as wire
from emulators.alimail.auth import Apps
from emulators.alimail.faults import Stats, Throttle, Verdict, retry_after_text
from emulators.alimail.store import AlimailError, Instance, Store, bad_request, parse_instant

JSON_TYPE = "application/json;charset=UTF-8"


@dataclass
class Request:
    method: str
    target: str
    headers: Message
    body: bytes = b""
    received: float = field(default_factory=time.monotonic)  # when the request was read

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        query = self.target.split("?", 1)[1] if "?" in self.target else ""
        return dict(parse_qsl(query, keep_blank_values=True))

    def json(self) -> Any:
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise bad_request("the body is not JSON") from None


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        if self.body is None:
            return b""
        self.headers.setdefault("Content-Type", JSON_TYPE)
        return orjson.dumps(self.body, option=orjson.OPT_NON_STR_KEYS)  # UTF-8, fast


def api_error(status: int, code: str, message: str) -> Response:
    request_id = str(uuid.uuid4()).upper()
    return Response(
        status,
        {wire.ERR_CODE[0]: code, wire.ERR_MESSAGE[0]: message, wire.ERR_REQUEST_ID[0]: request_id},
        {"x-acs-request-id": request_id},
    )


def _route_pattern(template: str) -> re.Pattern[str]:
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
    return re.compile(f"^{regex}/?$")


Handler = Callable[[Request, str, dict[str, str]], Response]


class AlimailApi:
    def __init__(
        self, store: Store, apps: Apps, throttle: Throttle, stats: Stats, page_size: int
    ) -> None:
        self.store = store
        self.apps = apps
        self.throttle = throttle
        self.stats = stats
        self.page_size = page_size
        self.routes: list[tuple[str, re.Pattern[str], str, Handler]] = [
            ("GET", _route_pattern(wire.CALENDARS_PATH), "calendars_list", self._calendars),
            ("GET", _route_pattern(wire.EVENT_VIEW_PATH), "events_view", self._view),
            ("POST", _route_pattern(wire.EVENTS_PATH), "event_create", self._create),
            ("GET", _route_pattern(wire.EVENT_PATH), "event_get", self._get),
            (wire.UPDATE_METHOD, _route_pattern(wire.EVENT_PATH), "event_update", self._update),
            ("DELETE", _route_pattern(wire.EVENT_PATH), "event_delete", self._delete),
        ]

    # --- dispatch ---

    def token(self, req: Request) -> Response:
        self.stats.request("token", None)
        spec = self.throttle.take_fail_next(req.method, req.target)
        if spec is not None and not spec.after:
            response = Response(spec.status, {"error": "temporarily_unavailable"})
            if spec.status in (429, 503) and self.throttle.faults.retry_after_s is not None:
                response.headers["Retry-After"] = retry_after_text(
                    self.throttle.faults.retry_after_s
                )
            return self._finish(response)
        form = dict(parse_qsl(req.body.decode("utf-8", "replace")))
        status, body = self.apps.issue(form)
        if status == 200:
            self.stats.add("tokens_issued")
        else:
            self.stats.add("token_refusals")
        return self._finish(Response(status, body, {"Cache-Control": "no-store"}))

    def handle(self, req: Request) -> Response:
        path = req.path
        match = None
        kind, handler, params = "unknown", None, {}
        for method, pattern, route_kind, route_handler in self.routes:
            found = pattern.match(path)
            if found:
                match = found
                if method == req.method:
                    kind, handler = route_kind, route_handler
                    params = {k: unquote(v) for k, v in found.groupdict().items()}
                    break
                kind = "wrong_method"
        user = params.get("user") or (unquote(match.group("user")) if match else "")
        mailbox = user.strip().lower() or None
        self.stats.request(kind, mailbox)
        client, reason = self.apps.app_for(req.headers.get("Authorization"))
        if client is None:
            self.stats.add("unauthorized")
            response = api_error(401, wire.CODE_INVALID_TOKEN, reason)
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return self._finish(response)
        if handler is None:
            status = 405 if kind == "wrong_method" else 404
            return self._finish(api_error(status, "NotFound", f"no route {req.method} {path}"))
        scope = mailbox or ""
        verdict = self.throttle.check_window(client, scope, req.received)
        if verdict is not None:
            return self._finish(self._verdict(verdict, client, scope))
        verdict = self.throttle.enter(client)
        if verdict is not None:
            return self._finish(self._verdict(verdict, client, scope))
        try:
            latency = self.throttle.faults.latency_ms
            if latency > 0:
                time.sleep(latency / 1000)
            spec = self.throttle.take_fail_next(req.method, req.target)
            if spec is not None and not spec.after:
                return self._finish(self._verdict(self._forced(spec.status), client, scope))
            if spec is None:
                verdict = self.throttle.random_fault()
                if verdict is not None:
                    return self._finish(self._verdict(verdict, client, scope))
            try:
                response = handler(req, user, params)
            except AlimailError as exc:
                response = api_error(exc.status, exc.code, exc.message)
            if spec is not None:  # carried out, then failed: an ambiguous write
                response = self._verdict(self._forced(spec.status), client, scope)
            return self._finish(response)
        finally:
            self.throttle.leave(client)

    def _finish(self, response: Response) -> Response:
        self.stats.status(response.status)
        return response

    def _verdict(self, verdict: Verdict, client: str, mailbox: str) -> Response:
        response = api_error(verdict.status, verdict.code, verdict.message)
        if verdict.retry_after is not None:
            response.headers["Retry-After"] = retry_after_text(round(verdict.retry_after, 3))
            self.throttle.penalize(client, mailbox, verdict.retry_after)
        return response

    def _forced(self, status: int) -> Verdict:
        codes = {429: wire.CODE_THROTTLED, 503: wire.CODE_SERVICE_UNAVAILABLE}
        retry = self.throttle.faults.retry_after_s if status in (429, 503) else None
        return Verdict(status, codes.get(status, wire.CODE_INTERNAL), "injected fault", retry)

    @staticmethod
    def _notify(req: Request) -> bool:
        return req.query.get(wire.NOTIFY_PARAM, "false").strip().lower() in ("true", "1", "yes")

    # --- handlers ---

    def _calendars(self, req: Request, user: str, params: dict[str, str]) -> Response:
        return Response(200, {wire.CALENDARS_KEY: self.store.calendars(user)})

    def _view(self, req: Request, user: str, params: dict[str, str]) -> Response:
        query = req.query
        start, end = query.get(wire.VIEW_START), query.get(wire.VIEW_END)
        if not start or not end:
            raise bad_request(f"{wire.VIEW_START} and {wire.VIEW_END} are required")
        lo, hi = parse_instant(start), parse_instant(end)
        if hi <= lo:
            raise bad_request(f"{wire.VIEW_END} must be after {wire.VIEW_START}")
        try:
            size = int(query.get(wire.PAGE_SIZE) or self.page_size)
        except ValueError:
            raise bad_request(f"{wire.PAGE_SIZE} must be an integer") from None
        if size < 1:
            raise bad_request(f"{wire.PAGE_SIZE} must be positive")
        size = min(size, self.page_size, wire.PAGE_SIZE_MAX)
        instances = self.store.view(user, params["calendar"], lo, hi)
        cursor = query.get(wire.PAGE_CURSOR) or ""
        if cursor:
            after = _decode_cursor(cursor, lo, hi)
            instances = [i for i in instances if i.sort_key > after]
        page, rest = instances[:size], instances[size:]
        body: dict[str, Any] = {
            wire.PAGE_ITEMS[0]: [_render(i) for i in page],
            wire.PAGE_HAS_MORE: bool(rest),
            wire.PAGE_NEXT[0]: _encode_cursor(page[-1], lo, hi) if rest else "",
        }
        return Response(200, body)

    def _body(self, req: Request) -> dict[str, Any]:
        body = req.json()
        if isinstance(body, dict) and isinstance(body.get(wire.EVENT_WRAPPER), dict):
            body = body[wire.EVENT_WRAPPER]  # wrapped as documented for messages; bare accepted
        if not isinstance(body, dict):
            raise bad_request("the body must be an event object")
        return body

    def _create(self, req: Request, user: str, params: dict[str, str]) -> Response:
        event = self.store.create(user, params["calendar"], self._body(req), self._notify(req))
        return Response(200, {wire.EVENT_WRAPPER: event})

    def _get(self, req: Request, user: str, params: dict[str, str]) -> Response:
        event = self.store.get(user, params["calendar"], params["event"])
        return Response(200, {wire.EVENT_WRAPPER: event})

    def _update(self, req: Request, user: str, params: dict[str, str]) -> Response:
        event = self.store.update(
            user, params["calendar"], params["event"], self._body(req), self._notify(req)
        )
        return Response(200, {wire.EVENT_WRAPPER: event})

    def _delete(self, req: Request, user: str, params: dict[str, str]) -> Response:
        self.store.delete(user, params["calendar"], params["event"], self._notify(req))
        return Response(204)


def _render(instance: Instance) -> dict[str, Any]:
    return instance.data


def _window_tag(lo: dt.datetime, hi: dt.datetime) -> str:
    return f"{lo.timestamp():.0f}-{hi.timestamp():.0f}"


def _encode_cursor(last: Instance, lo: dt.datetime, hi: dt.datetime) -> str:
    start, event_id = last.sort_key
    raw = json.dumps({"s": start.isoformat(), "i": event_id, "w": _window_tag(lo, hi)})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, lo: dt.datetime, hi: dt.datetime) -> tuple[dt.datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
        if data["w"] != _window_tag(lo, hi):
            raise ValueError("cursor of another window")
        return dt.datetime.fromisoformat(data["s"]), str(data["i"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise bad_request(f"invalid {wire.PAGE_CURSOR}") from None
