"""Graph v1.0 calendar routes, behind bearer auth, throttling and injected faults.

    GET    /v1.0/users/{user}                                  the user
    GET    /v1.0/users/{user}[/calendar]/calendarView          window, series expanded, paged
    GET    /v1.0/users/{user}[/calendar]/calendarView/delta    a delta round over a window (below)
    GET    /v1.0/users/{user}[/calendar]/events                singles and masters ($filter:
           singleValueExtendedProperties/any(ep: ep/id eq '..' and ep/value eq '..'), or
           iCalUId eq '..')
    POST   /v1.0/users/{user}[/calendar]/events                create (transactionId: idempotent)
    GET|PATCH|DELETE /v1.0/users/{user}/events/{id}            one item, occurrence ids included
    GET    /v1.0/users/{user}/events/{id}/instances            a series' occurrences in a window

Paging is by key (start, id): a ``$skiptoken`` names the last item of the previous page, so
concurrent changes neither repeat nor skip an unchanged event.

calendarView delta, as Graph v1.0 documents it: the first request names the window
(startDateTime, endDateTime) and returns every instance in it; pages follow
``@odata.nextLink`` (``$skiptoken``), the last page carries ``@odata.deltaLink``
(``$deltatoken``). Following a deltaLink returns what changed in the token's window since:
created or updated instances, and ``{"id", "@removed": {"reason": "deleted"}}`` for those that
left it (deleted, cancelled, moved out, re-identified). Plain occurrences of a series come thin
(id, seriesMasterId, type, start, end: the client completes them from the series); exceptions
and single instances come in full. A token is bound to its mailbox and window (a request that
names another window with it is refused, 400); an unknown or expired token answers
``410 SyncStateNotFound`` (``Store.expire_delta_tokens`` expires them all). ``$select`` is
ignored, ``$expand``/``$filter``/``$orderby``/``$search`` are refused, as on Graph.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from emulators.graph.auth import Authority
from emulators.graph.faults import Stats, Throttle, Verdict, retry_after_text
from emulators.graph.render import (
    expanded_property_ids,
    parse_prefer,
    render_delta_item,
    render_event,
)
from emulators.graph.store import GraphError, Instance, Store, bad_request, html_to_text
from emulators.graph.timezones import UTC, UnknownTimeZone, parse_instant, resolve_zone
from emulators.graph.wire import Request, Response, graph_error

_PROPERTY_FILTER = re.compile(
    r"^\s*singleValueExtendedProperties/any\(\s*(\w+)\s*:\s*\1/id\s+eq\s+'((?:[^']|'')*)'\s+"
    r"and\s+\1/value\s+eq\s+'((?:[^']|'')*)'\s*\)\s*$",
    re.IGNORECASE,
)
_UID_FILTER = re.compile(r"^\s*iCalUId\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

Handler = Callable[[Request, str, list[str]], Response]


class GraphApi:
    def __init__(
        self,
        store: Store,
        authority: Authority,
        throttle: Throttle,
        stats: Stats,
        page_size: int,
    ) -> None:
        self.store = store
        self.authority = authority
        self.throttle = throttle
        self.stats = stats
        self.page_size = page_size
        from emulators.graph.batch import BatchApi

        self.batch = BatchApi(self)

    # --- dispatch ---

    def _route(self, method: str, parts: list[str]) -> tuple[str, Handler | None, list[str]]:
        """(kind for the stats, handler or None for a wrong method, extra path parts)."""
        if parts and parts[0] == "calendar":  # /calendar/x is the default calendar's x
            parts = parts[1:]
        if not parts:
            return "user_get", self._user if method == "GET" else None, []
        head, rest = parts[0].lower(), parts[1:]
        if head == "calendarview" and not rest:
            return "calendarView", self._calendar_view if method == "GET" else None, []
        if head == "calendarview" and len(rest) == 1 and rest[0].lower() in ("delta", "delta()"):
            return "calendarView_delta", self._delta if method == "GET" else None, []
        if head == "events" and not rest:
            if method == "POST":
                return "events_create", self._create, []
            return "events_list", self._list if method == "GET" else None, []
        if head == "events" and len(rest) == 1:
            kinds: dict[str, tuple[str, Handler]] = {
                "GET": ("event_get", self._get),
                "PATCH": ("event_update", self._update),
                "DELETE": ("event_delete", self._delete),
            }
            kind, handler = kinds.get(method, ("event_other", None))  # type: ignore[arg-type]
            return kind, handler, rest
        if head == "events" and len(rest) == 2 and rest[1].lower() == "instances":
            return "instances", self._instances if method == "GET" else None, rest[:1]
        return "unknown", None, []

    def handle(self, req: Request) -> Response:
        segments = req.segments
        parts = segments[1:]
        if parts == ["$batch"]:
            self.stats.batch()
            client, reason = self.authority.client_for(req.headers.get("Authorization"))
            if client is None:
                return self._finish(self.unauthorized(reason))
            if req.method != "POST":
                return self._finish(
                    graph_error(
                        405, "ErrorInvalidRequest", f"The method {req.method} is not allowed."
                    )
                )
            return self._finish(self.batch.handle(req, client))
        if len(parts) < 2 or parts[0].lower() != "users":
            self.stats.request("unknown", None)
            return self._finish(
                graph_error(
                    400, "BadRequest", f"Resource not found for the segment '{'/'.join(parts)}'."
                )
            )
        kind, _, _ = self._route(req.method, parts[2:])
        mailbox = self._mailbox_key(parts[1])
        self.stats.request(kind, mailbox)
        self.expire_tokens_when_due()
        client, reason = self.authority.client_for(req.headers.get("Authorization"))
        if client is None:
            return self._finish(self.unauthorized(reason))
        verdict = self.throttle.check_window(client, mailbox)
        if verdict is not None:
            return self._finish(self._verdict(verdict, client, mailbox))
        verdict = self.throttle.enter(mailbox)
        if verdict is not None:
            return self._finish(self._verdict(verdict, client, mailbox))
        try:
            latency = self.throttle.faults.latency_ms
            if latency > 0:
                time.sleep(latency / 1000)
            return self._finish(self.serve_entered(req, client, mailbox))
        finally:
            self.throttle.leave(mailbox)

    def expire_tokens_when_due(self) -> None:
        """``faults.expire_tokens_after``: the tokens expire once that many requests came."""
        faults = self.throttle.faults
        if faults.expire_tokens_after and self.stats.requests >= faults.expire_tokens_after:
            faults.expire_tokens_after = 0
            self.authority.expire_all()

    def route(self, req: Request) -> tuple[str, str, str]:
        """(stats kind, user as addressed, mailbox key) of a ``/v1.0/users/...`` request."""
        parts = req.segments[1:]
        if len(parts) < 2 or parts[0].lower() != "users":
            return "unknown", "", ""
        kind, _, _ = self._route(req.method, parts[2:])
        return kind, parts[1], self._mailbox_key(parts[1])

    def serve_entered(self, req: Request, client: str, mailbox: str) -> Response:
        """A request already authenticated, inside the Retry-After window check and counted in
        flight for its mailbox: injected faults, then the route. Not counted in the stats."""
        parts = req.segments[1:]
        if len(parts) < 2 or parts[0].lower() != "users":
            return graph_error(
                400, "BadRequest", f"Resource not found for the segment '{'/'.join(parts)}'."
            )
        kind, handler, args = self._route(req.method, parts[2:])
        status = self.throttle.take_fail_next(req.target)
        if status is not None:
            return self._verdict(self._forced(status), client, mailbox)
        verdict = self.throttle.random_fault()
        if verdict is not None:
            return self._verdict(verdict, client, mailbox)
        if handler is None:
            return self._no_route(req, kind)
        try:
            return handler(req, parts[1], args)
        except GraphError as exc:
            return graph_error(exc.status, exc.code, exc.message)

    @staticmethod
    def unauthorized(reason: str) -> Response:
        response = graph_error(401, "InvalidAuthenticationToken", reason)
        response.headers["WWW-Authenticate"] = 'Bearer realm="", error="invalid_token"'
        return response

    def _mailbox_key(self, user: str) -> str:
        try:
            return self.store.mailbox(user).email
        except GraphError:
            return user.strip().lower()

    def _finish(self, response: Response) -> Response:
        self.stats.status(response.status)
        return response

    def verdict_response(self, verdict: Verdict, client: str, mailbox: str) -> Response:
        return self._verdict(verdict, client, mailbox)

    def _verdict(self, verdict: Verdict, client: str, mailbox: str) -> Response:
        response = graph_error(verdict.status, verdict.code, verdict.message)
        if verdict.retry_after is not None:
            response.headers["Retry-After"] = retry_after_text(verdict.retry_after)
            self.throttle.penalize(client, mailbox, verdict.retry_after)
        return response

    def _forced(self, status: int) -> Verdict:
        codes = {
            400: ("BadRequest", "Injected failure."),
            401: ("InvalidAuthenticationToken", "Injected failure: token rejected."),
            403: ("ErrorAccessDenied", "Access is denied. Check credentials and try again."),
            404: ("ErrorItemNotFound", "The specified object was not found in the store."),
            429: ("TooManyRequests", "Too many requests (injected)."),
            503: ("ServiceUnavailable", "The service is temporarily unavailable (injected)."),
            504: ("GatewayTimeout", "Gateway timeout (injected)."),
        }
        code, message = codes.get(status, ("generalException", "Injected failure."))
        retry = self.throttle.faults.retry_after_s if status in (429, 503) else None
        return Verdict(status, code, message, retry)

    @staticmethod
    def _no_route(req: Request, kind: str) -> Response:
        if kind == "unknown":
            return graph_error(
                400, "BadRequest", f"Resource not found for the segment in '{req.raw_path}'."
            )
        return graph_error(405, "ErrorInvalidRequest", f"The method {req.method} is not allowed.")

    # --- shared helpers ---

    def _box(self, user: str) -> str:
        return self.store.mailbox(user).email

    @staticmethod
    def _window(req: Request) -> tuple[dt.datetime, dt.datetime]:
        query = req.query
        if not query.get("startdatetime") or not query.get("enddatetime"):
            raise bad_request(
                "This request requires a time window specified by the query string parameters "
                "StartDateTime and EndDateTime.",
                "ErrorInvalidParameter",
            )
        try:
            lo, hi = parse_instant(query["startdatetime"]), parse_instant(query["enddatetime"])
        except ValueError:
            raise bad_request(
                "The value of StartDateTime or EndDateTime is not a valid date-time.",
                "ErrorInvalidParameter",
            ) from None
        if hi < lo:
            raise bad_request(
                "The parameter 'EndDateTime' must be later than 'StartDateTime'.",
                "ErrorInvalidParameter",
            )
        return lo, hi

    @staticmethod
    def _prefs(req: Request) -> dict[str, str]:
        return parse_prefer(req.header_values("Prefer"))

    def _render_options(self, req: Request) -> tuple[dict[str, Any], list[str], dict[str, str]]:
        """(render_event keyword arguments, applied preferences, all preferences)."""
        prefs = self._prefs(req)
        applied = []
        zone: dt.tzinfo = UTC
        label = "UTC"
        requested = prefs.get("outlook.timezone")
        if requested:
            try:
                zone, label = resolve_zone(requested), requested
                applied.append(f'outlook.timezone="{requested}"')
            except UnknownTimeZone:
                pass  # Graph falls back to UTC
        if prefs.get("idtype", "").lower() == "immutableid":
            applied.append('IdType="ImmutableId"')
        if prefs.get("outlook.body-content-type", "").lower() in ("text", "html"):
            applied.append(
                f'outlook.body-content-type="{prefs["outlook.body-content-type"].lower()}"'
            )
        query = req.query
        select = None
        if query.get("select"):
            select = {s.strip() for s in query["select"].split(",") if s.strip()}
        options = {
            "zone": zone,
            "zone_label": label,
            "select": select,
            "property_ids": expanded_property_ids(query.get("expand")),
        }
        return options, applied, prefs

    @staticmethod
    def _body_type(event: dict[str, Any], prefs: dict[str, str]) -> dict[str, Any]:
        """Honour ``Prefer: outlook.body-content-type="text"`` for HTML bodies."""
        body = event.get("body")
        wanted = prefs.get("outlook.body-content-type", "").lower()
        if wanted == "text" and isinstance(body, dict) and body.get("contentType") == "html":
            event["body"] = {"contentType": "text", "content": html_to_text(body["content"])}
        return event

    def _one(self, req: Request, instance: Instance, status: int = 200) -> Response:
        options, applied, prefs = self._render_options(req)
        event = self._body_type(render_event(instance, **options), prefs)
        user = req.segments[2] if len(req.segments) > 2 else ""
        event = {
            "@odata.context": f"https://{req.host}/v1.0/$metadata#users('{quote(user)}')/events/$entity",
            **event,
        }
        return Response(status, event, self._applied(applied))

    @staticmethod
    def _applied(applied: list[str]) -> dict[str, str]:
        return {"Preference-Applied": ", ".join(applied)} if applied else {}

    def _page(self, req: Request, instances: list[Instance], context: str) -> Response:
        options, applied, prefs = self._render_options(req)
        query = req.query
        size = self.page_size
        limits = []
        if query.get("top"):
            try:
                limits.append(int(query["top"]))
            except ValueError:
                raise bad_request("Invalid $top value.", "BadRequest") from None
        if prefs.get("odata.maxpagesize"):
            try:
                limits.append(int(prefs["odata.maxpagesize"]))
                applied.append(f"odata.maxpagesize={int(prefs['odata.maxpagesize'])}")
            except ValueError:
                pass
        size = max(1, min([size, *limits]))
        if query.get("skiptoken"):
            after = _decode_skiptoken(query["skiptoken"])
            instances = [i for i in instances if _key(i) > after]
        page, more = instances[:size], len(instances) > size
        body: dict[str, Any] = {
            "@odata.context": f"https://{req.host}/v1.0/$metadata#{context}",
            "value": [self._body_type(render_event(i, **options), prefs) for i in page],
        }
        if more:
            body["@odata.nextLink"] = self._next_link(req, _encode_skiptoken(_key(page[-1])))
        return Response(200, body, self._applied(applied))

    @staticmethod
    def _next_link(req: Request, token: str) -> str:
        items = [(k, v) for k, v in req.query_items if k.lower().lstrip("$") != "skiptoken"]
        items.append(("$skiptoken", token))
        return f"https://{req.host}{req.raw_path}?{urlencode(items, quote_via=quote, safe='$')}"

    # --- routes ---

    def _user(self, req: Request, user: str, args: list[str]) -> Response:
        box = self.store.mailbox(user)
        return Response(
            200,
            {
                "@odata.context": f"https://{req.host}/v1.0/$metadata#users/$entity",
                "id": box.user_id,
                "displayName": box.display_name,
                "mail": box.email,
                "userPrincipalName": box.email,
            },
        )

    def _calendar_view(self, req: Request, user: str, args: list[str]) -> Response:
        email = self._box(user)
        lo, hi = self._window(req)
        instances = self.store.calendar_view(email, lo, hi)
        return self._page(req, instances, f"users('{quote(user)}')/calendarView")

    def _delta(self, req: Request, user: str, args: list[str]) -> Response:
        email = self._box(user)
        query = req.query
        unsupported = sorted({"expand", "filter", "orderby", "search"} & query.keys())
        if unsupported:
            raise bad_request(
                f"The query option(s) {', '.join('$' + q for q in unsupported)} are not supported "
                "with delta on calendarView.",
                "ErrorInvalidUrlQuery",
            )
        if query.get("skiptoken"):
            round_id, offset = _decode_delta_skiptoken(query["skiptoken"])
        elif query.get("deltatoken"):
            token = query["deltatoken"]
            bound = self.store.delta_window(token)
            named = query.get("startdatetime") or query.get("enddatetime")
            if bound is not None and named and self._window(req) != bound:
                raise bad_request(
                    "The delta token belongs to another startDateTime/endDateTime: start a "
                    "new round for a new window.",
                    "ErrorInvalidParameter",
                )
            round_id, offset = self.store.delta_follow(email, token), 0
        else:
            lo, hi = self._window(req)
            round_id, offset = self.store.delta_start(email, lo, hi), 0
        options, applied, prefs = self._render_options(req)
        size = self.page_size
        if prefs.get("odata.maxpagesize"):
            try:
                size = max(1, min(size, int(prefs["odata.maxpagesize"])))
                applied.append(f"odata.maxpagesize={size}")
            except ValueError:
                pass
        entries, following, token = self.store.delta_page(email, round_id, offset, size)
        body: dict[str, Any] = {
            "@odata.context": f"https://{req.host}/v1.0/$metadata#Collection(event)",
            "value": [
                self._body_type(render_delta_item(e, options["zone"], options["zone_label"]), prefs)
                for e in entries
            ],
        }
        base = f"https://{req.host}{req.raw_path}"
        if following is not None:
            body["@odata.nextLink"] = (
                f"{base}?$skiptoken={_encode_delta_skiptoken(round_id, following)}"
            )
        else:
            body["@odata.deltaLink"] = f"{base}?$deltatoken={token}"
        return Response(200, body, self._applied(applied))

    def _instances(self, req: Request, user: str, args: list[str]) -> Response:
        email = self._box(user)
        lo, hi = self._window(req)
        instances = self.store.series_instances(email, args[0], lo, hi)
        return self._page(req, instances, f"users('{quote(user)}')/events('{args[0]}')/instances")

    def _list(self, req: Request, user: str, args: list[str]) -> Response:
        email = self._box(user)
        expression = req.query.get("filter")
        if not expression:
            instances = self.store.items(email)
        elif match := _PROPERTY_FILTER.match(expression):
            prop_id, value = (g.replace("''", "'") for g in match.group(2, 3))
            instances = self.store.find_by_property(email, prop_id, value)
        elif match := _UID_FILTER.match(expression):
            instances = self.store.find_by_uid(email, match.group(1).replace("''", "'"))
        else:
            raise bad_request(
                f"The emulator supports only singleValueExtendedProperties/any(...) and "
                f"iCalUId eq '...' filters on events, not: {expression}",
                "ErrorInvalidUrlQueryFilter",
            )
        return self._page(req, instances, f"users('{quote(user)}')/events")

    def _event_body(self, req: Request) -> dict[str, Any]:
        try:
            body = req.json()
        except (ValueError, UnicodeDecodeError):
            raise bad_request(
                "Unable to deserialize the request body.", "UnableToDeserializePostBody"
            ) from None
        if not isinstance(body, dict):
            raise bad_request("Empty Payload. JSON content expected.", "BadRequest")
        return body

    def _create(self, req: Request, user: str, args: list[str]) -> Response:
        email = self._box(user)
        created, replayed = self.store.create_event(
            email, self._event_body(req), deliver=True, shared=True
        )
        if replayed:
            self.stats.add("transaction_replays")
        return self._one(req, self.store.get_instance(email, created["id"]), 201)

    def _get(self, req: Request, user: str, args: list[str]) -> Response:
        return self._one(req, self.store.get_instance(self._box(user), args[0]))

    def _update(self, req: Request, user: str, args: list[str]) -> Response:
        email = self._box(user)
        self.store.update_event(email, args[0], self._event_body(req), deliver=True)
        return self._one(req, self.store.get_instance(email, args[0]))

    def _delete(self, req: Request, user: str, args: list[str]) -> Response:
        self.store.delete_event(self._box(user), args[0], deliver=True)
        return Response(204)


def _key(instance: Instance) -> tuple[int, str]:
    micros = (instance.timing.start - _EPOCH) // dt.timedelta(microseconds=1)
    return micros, instance.data["id"]


def _encode_skiptoken(key: tuple[int, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _decode_skiptoken(token: str) -> tuple[int, str]:
    try:
        micros, event_id = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(micros), str(event_id)
    except (ValueError, TypeError):
        raise bad_request("The $skiptoken is not valid.", "ErrorInvalidUrlQuery") from None


def _encode_delta_skiptoken(round_id: str, offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([round_id, offset]).encode()).decode().rstrip("=")


def _decode_delta_skiptoken(token: str) -> tuple[str, int]:
    try:
        round_id, offset = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return str(round_id), int(offset)
    except (ValueError, TypeError):
        raise GraphError(
            410, "SyncStateNotFound", "The $skiptoken is not valid: restart the synchronization."
        ) from None
