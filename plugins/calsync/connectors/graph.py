"""Office 365 through Microsoft Graph (global and China clouds), via the Azure provider's hook.

The connection is the provider's ``msgraph`` type: login = client id, password = client secret,
extras ``tenant_id`` (and, for a private endpoint or an emulator, ``authority``, ``base_url``,
``allowed_hosts``, ``verify``). The two clouds differ only by login host, Graph host and scope,
filled in here from the integration type when the connection does not set them (F13).

Reads use ``calendarView`` (recurring series arrive as occurrences, E4) with
``Prefer: outlook.timezone="UTC"`` (every timed value is parsed as UTC, all-day values are
floating dates and taken as such), ``odata.maxpagesize`` paging and immutable ids (E11).
Throttling: the hook's HTTP client carries kiota's retry middleware, which honours
Retry-After on 429/503/504; calsync does not stack a second request-level retry on it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from calsync.config import IntegrationConfig, resolve_timezone
from calsync.connectors.base import (
    CALSYNC_PROPERTY_NAME,
    CALSYNC_PROPERTY_SET,
    EventWrite,
    SuiteConnector,
    write_differences,
)
from calsync.connectors.graph_batch import GraphBatcher
from calsync.errors import ConnectorError, MailboxNotFound
from calsync.model import Attendee, SuiteEvent, Window

log = logging.getLogger(__name__)

_JSON = {"Content-Type": "application/json"}

PER_MAILBOX = 4  # Graph's concurrent requests per app and mailbox


@dataclass(frozen=True)
class Cloud:
    login_host: str
    graph_host: str

    @property
    def scope(self) -> str:
        return f"{self.graph_host}/.default"


CLOUDS = {
    "office365_global": Cloud("https://login.microsoftonline.com", "https://graph.microsoft.com"),
    "office365_cn": Cloud(
        "https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"
    ),
}

SELECT = ",".join(
    [
        "id",
        "iCalUId",
        "subject",
        "body",
        "start",
        "end",
        "isAllDay",
        "location",
        "locations",
        "attendees",
        "organizer",
        "type",
        "seriesMasterId",
        "originalStart",
        "originalStartTimeZone",
        "isCancelled",
        "sensitivity",
        "showAs",
        "importance",
        "categories",
        "changeKey",
        "lastModifiedDateTime",
        "webLink",
    ]
)


# calsync's marker: a single-value extended property on every event it creates (E11).
MARKER_ID = f"String {{{CALSYNC_PROPERTY_SET}}} Name {CALSYNC_PROPERTY_NAME}"
EXPAND_MARKER = f"singleValueExtendedProperties($filter=id eq '{MARKER_ID}')"


def _graph_zone(iana: str) -> str:
    """The Windows name Graph knows best for an IANA zone (CLDR table), else the IANA name."""
    from tzlocal.windows_tz import tz_win

    return tz_win.get(iana, iana)


def graph_body(event: EventWrite, default_zone: str) -> dict[str, Any]:
    """The Graph JSON of an event calsync writes (times in the event's own zone)."""
    zone = event.timezone or default_zone
    if event.all_day:
        assert event.start_date is not None and event.end_date is not None
        start = {
            "dateTime": f"{event.start_date.isoformat()}T00:00:00",
            "timeZone": _graph_zone(zone),
        }
        end = {"dateTime": f"{event.end_date.isoformat()}T00:00:00", "timeZone": _graph_zone(zone)}
    else:
        import zoneinfo

        assert event.start is not None and event.end is not None
        local = zoneinfo.ZoneInfo(zone)
        fmt = "%Y-%m-%dT%H:%M:%S"
        start = {
            "dateTime": event.start.astimezone(local).strftime(fmt),
            "timeZone": _graph_zone(zone),
        }
        end = {"dateTime": event.end.astimezone(local).strftime(fmt), "timeZone": _graph_zone(zone)}
    location: dict[str, Any] = {"displayName": event.location}
    rooms = [a for a in event.attendees if a.kind == "resource" and a.email]
    if len(rooms) == 1:  # the room booked: Outlook shows it as the meeting's room
        location["locationEmailAddress"] = rooms[0].email
        location["locationType"] = "conferenceRoom"
    body: dict[str, Any] = {
        "subject": event.subject,
        "body": {
            "contentType": "HTML" if event.body_type == "html" else "Text",
            "content": event.body,
        },
        "start": start,
        "end": end,
        "isAllDay": event.all_day,
        "location": location,
        "sensitivity": event.sensitivity,
        # Rooms go as attendees of type "resource" (Graph books them through their mailbox).
        "attendees": [
            {
                "type": a.kind,
                "emailAddress": {"address": a.email, "name": a.name or a.email},
            }
            for a in event.attendees
        ],
    }
    if event.key:
        body["singleValueExtendedProperties"] = [{"id": MARKER_ID, "value": event.key}]
    return body


def parse_graph_datetime(value: str) -> dt.datetime:
    """A Graph ``dateTime`` rendered in UTC (7 fractional digits, no offset) as aware UTC."""
    text = value.rstrip("Z")
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def _zone(name: str | None, fallback: str) -> str:
    if not name or name in ("tzone://Microsoft/Utc", "tzone://Microsoft/Custom"):
        return fallback
    return _known_zone(name) or fallback


@functools.lru_cache(maxsize=512)
def _known_zone(name: str) -> str | None:
    """The IANA name of a zone name Graph sent, None when unknown (a few names per tenant:
    cached, as every event of a read carries one)."""
    try:
        return resolve_timezone(name)
    except ValueError:
        return None


def _address(node: dict[str, Any] | None) -> tuple[str, str]:
    email = ((node or {}).get("emailAddress") or {}) if node else {}
    return (email.get("address") or "").strip().lower(), (email.get("name") or "").strip()


def normalize_event(item: dict[str, Any], default_zone: str) -> SuiteEvent:
    """A Graph event (read with ``outlook.timezone="UTC"``) as a :class:`SuiteEvent`.

    Raises ValueError naming the problem for an event that cannot be understood.
    """
    suite_id = item.get("id")
    if not suite_id:
        raise ValueError("event without an id")
    start_raw = (item.get("start") or {}).get("dateTime")
    end_raw = (item.get("end") or {}).get("dateTime")
    if not start_raw or not end_raw:
        raise ValueError("event without start or end")
    all_day = bool(item.get("isAllDay"))
    start = parse_graph_datetime(start_raw)
    end = parse_graph_datetime(end_raw)
    if end < start:
        raise ValueError(f"end {end_raw} is before start {start_raw}")
    organizer_email, organizer_name = _address(item.get("organizer"))
    attendees = []
    for node in item.get("attendees") or []:
        email, name = _address(node)
        if not email:
            continue
        kind = (
            node.get("type")
            if node.get("type") in ("required", "optional", "resource")
            else "required"
        )
        response = ((node.get("status") or {}).get("response")) or "none"
        attendees.append(Attendee(email=email, name=name, kind=kind, response=response))
    location = item.get("location") or {}
    room_email = (location.get("locationEmailAddress") or "").strip().lower()
    if room_email and all(a.email != room_email for a in attendees):
        attendees.append(
            Attendee(email=room_email, name=location.get("displayName") or "", kind="resource")
        )
    body = item.get("body") or {}
    original_start = item.get("originalStart")
    event_type = item.get("type") or "singleInstance"
    return SuiteEvent(
        suite_id=suite_id,
        ical_uid=item.get("iCalUId") or suite_id,
        subject=item.get("subject") or "",
        start=None if all_day else start,
        end=None if all_day else end,
        all_day=all_day,
        # All-day values are floating dates: the date part as sent, never converted.
        start_date=dt.date.fromisoformat(start_raw[:10]) if all_day else None,
        end_date=dt.date.fromisoformat(end_raw[:10]) if all_day else None,
        timezone=_zone(item.get("originalStartTimeZone"), default_zone),
        location=(location.get("displayName") or "").strip(),
        body=body.get("content") or "",
        body_type="html" if (body.get("contentType") or "").lower() == "html" else "text",
        organizer=Attendee(organizer_email, organizer_name, "required", "organizer")
        if organizer_email
        else None,
        attendees=attendees,
        series_id=item.get("seriesMasterId"),
        original_start=parse_graph_datetime(original_start)
        if original_start and event_type in ("occurrence", "exception")
        else None,
        event_type=event_type,
        is_cancelled=bool(item.get("isCancelled")),
        sensitivity=item.get("sensitivity") or "normal",
        show_as=item.get("showAs") or "busy",
        importance=item.get("importance") or "normal",
        categories=list(item.get("categories") or []),
        change_key=item.get("changeKey") or "",
        last_modified=parse_graph_datetime(item["lastModifiedDateTime"])
        if item.get("lastModifiedDateTime")
        else None,
        calsync_key=_marker(item),
        extra={"web_link": item.get("webLink") or ""},
    )


def _marker(item: dict[str, Any]) -> str | None:
    for prop in item.get("singleValueExtendedProperties") or []:
        if str(prop.get("id", "")).lower() == MARKER_ID.lower():
            return prop.get("value")
    return None


def _graph_instant(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class GraphConnector(SuiteConnector):
    """Office 365 via :class:`KiotaRequestAdapterHook` on the integration's connection.

    Mailbox requests go out through JSON ``$batch`` (``graph_batch``): concurrent reads and
    writes share round trips, 20 to a batch, and a throttled sub-request is retried alone
    after its Retry-After. ``use_batch = False`` sends each request on its own.
    """

    markers_in_changes = False  # delta returns no extended properties (forward reads them)

    use_batch = True

    def __init__(self, config: IntegrationConfig) -> None:
        super().__init__(config)
        self.cloud = CLOUDS[config.type]
        params = config.office365
        assert params is not None
        self.page_size = params.page_size
        self.timeout = params.request_timeout_s
        self._hook: Any = None
        self._connected = False
        self._connecting: asyncio.Lock | None = None  # made in the event loop that uses it
        self._gates: dict[str, Any] = {}  # mailbox → asyncio.Lock (see _mailbox_gate)
        self._batcher: GraphBatcher | None = None  # made in the event loop that uses it
        self._batcher_loop: asyncio.AbstractEventLoop | None = None

    def _get_hook(self) -> Any:
        if self._hook is None:
            from calsync.connectors.graph_hook import cloud_hook

            self._hook = cloud_hook(self.config.connection_id, self.cloud, self.timeout)
        return self._hook

    async def _ready_hook(self) -> Any:
        """The hook, its connection resolved: an undefined connection is the integration's
        fault, not a mailbox's (and it must not read as "mailbox not found")."""
        from airflow.providers.common.compat.sdk import AirflowNotFoundException

        hook = self._get_hook()
        if self._connected:
            return hook
        # One at a time: the first requests of a run arrive together, and each would build a
        # request adapter of its own (an HTTP client and a login each; the hook keeps the last).
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if not self._connected:
                try:
                    await hook.get_async_conn()
                except AirflowNotFoundException:
                    raise ConnectorError(
                        f"Airflow connection {self.config.connection_id!r} is not defined",
                        retriable=False,
                    ) from None
                self._connected = True
        return hook

    async def _get(
        self, url: str, query: dict[str, str] | None, body_type: str | None = None
    ) -> dict[str, Any]:
        from airflow.providers.common.compat.sdk import AirflowException, AirflowNotFoundException
        from azure.core.exceptions import ClientAuthenticationError

        hook = await self._ready_hook()
        prefer = f'outlook.timezone="UTC", odata.maxpagesize={self.page_size}, IdType="ImmutableId"'
        if body_type:
            prefer += f', outlook.body-content-type="{body_type}"'
        headers = {"Prefer": prefer}
        try:
            response = await self._run(hook, url=url, query_parameters=query, headers=headers)
        except AirflowNotFoundException:
            raise
        except Unreachable as exc:
            raise ConnectorError(str(exc)) from None
        except ClientAuthenticationError as exc:
            code = getattr(getattr(exc, "error", None), "code", None) or "login refused"
            raise ConnectorError(
                f"Office 365 login refused for connection {self.config.connection_id!r} "
                f"({code}): check tenant id, client id and secret",
                status=401,
                retriable=False,
            ) from None
        except PermissionError as exc:
            raise ConnectorError(
                f"Graph refused the request (401/403): check the app's permissions "
                f"(Calendars.ReadWrite) on connection {self.config.connection_id!r}: "
                f"{_error_text(exc)}",
                status=401,
            ) from None
        except AirflowException as exc:
            raise ConnectorError(f"Graph request failed: {_error_text(exc)}") from None
        except ValueError as exc:  # e.g. kiota refusing a Retry-After it cannot parse
            raise ConnectorError(f"Graph request failed: {exc}") from None
        except OSError as exc:
            raise ConnectorError(f"Graph unreachable: {type(exc).__name__}: {exc}") from None
        if not isinstance(response, dict):
            raise ConnectorError(f"Graph answered a non-JSON body ({type(response).__name__})")
        return response

    def _mailbox_gate(self, url: str) -> Any:
        """One request in flight per mailbox, for requests sent on their own (``use_batch``
        off). kiota's retry middleware sleeps out a 429/503's Retry-After inside
        ``hook.run``; a second request to the mailbox sent meanwhile would come before the
        Retry-After elapsed (Graph throttles per app and mailbox). Holding the mailbox for the
        whole call, retries included, keeps every request behind it."""
        import contextlib

        mailbox = _mailbox_of(url)
        if mailbox is None:
            return contextlib.nullcontext()
        gate = self._gates.get(mailbox)
        if gate is None:
            gate = self._gates[mailbox] = asyncio.Lock()
        return gate

    def _get_batcher(self, hook: Any) -> GraphBatcher:
        loop = asyncio.get_running_loop()
        if self._batcher is None or self._batcher_loop is not loop:

            async def send(payload: dict[str, Any]) -> Any:
                # orjson: the provider would encode the dict with json.dumps, ~5× slower on a
                # batch of 20 event bodies.
                return await hook.run(
                    url="$batch", method="POST", data=orjson.dumps(payload), headers=_JSON
                )

            self._batcher = GraphBatcher(send, per_mailbox=PER_MAILBOX)
            self._batcher_loop = loop
        return self._batcher

    async def _batched(
        self,
        hook: Any,
        mailbox: str,
        url: str,
        method: str = "GET",
        query_parameters: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        data: Any = None,
    ) -> Any:
        """One request through ``$batch``; its answer as ``hook.run`` gives it (the JSON body,
        {} for none), its failure as the hook's exception for that status."""
        from urllib.parse import urlencode

        from airflow.exceptions import AirflowBadRequest
        from airflow.providers.common.compat.sdk import AirflowException, AirflowNotFoundException

        if url.lower().startswith("http"):  # a nextLink/deltaLink: it must be this endpoint's
            base = str((await hook.get_async_conn()).base_url).rstrip("/") + "/"
            if not url.lower().startswith(base.lower()):
                raise ConnectorError(
                    f"Graph paging link to another endpoint refused: {url.split('?')[0][:120]}",
                    retriable=False,
                )
            url = url[len(base) :]
        if query_parameters:
            url += "?" + urlencode(query_parameters, quote_via=quote, safe="$")
        # The adapter (and token) this request goes out with, to retire it on a 401.
        adapter = hook.cached_request_adapters.get(hook.conn_id, (None, None))[1]
        answer = await self._get_batcher(hook).request(
            mailbox, method, "/" + url.lstrip("/"), headers, data
        )
        if 200 <= answer.status < 300:
            return answer.body if answer.body is not None else {}
        message = answer.body or f"HTTP {answer.status}"
        if answer.status == 400:
            raise AirflowBadRequest(message)
        if answer.status in (401, 403):
            if adapter is not None:
                hook._retire(adapter)  # the next attempt logs in afresh
            raise PermissionError(message)
        if answer.status == 404:
            raise AirflowNotFoundException(message)
        raise AirflowException(message)

    def _refuse_untrusted(self, exc: BaseException) -> None:
        """A certificate that does not verify is no outage: say so, and where the CA goes."""
        text = _short(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            raise ConnectorError(
                f"TLS to Office 365 failed for connection {self.config.connection_id!r}: {text} "
                "(a private CA goes into the connection's extra 'verify' as the path of a CA "
                "bundle)",
                retriable=False,
            ) from None

    async def _run(self, hook: Any, **request: Any) -> Any:
        """``hook.run`` with transparent re-authentication: a 401/403 (an access token that
        expired or was revoked mid-run) retires the hook's request adapter, so the request is
        repeated with a new token (a 401 means it was not carried out).
        A suite that cannot be reached raises :class:`Unreachable` with a short reason."""
        from azure.core.exceptions import ServiceRequestError, ServiceResponseError

        # Three tries: the first requests of a run may each have built an adapter of their own
        # (the hook caches the last one), so a retry can meet a second stale token once.
        mailbox = _mailbox_of(str(request.get("url") or ""))
        for attempt in (1, 2, 3):
            try:
                if self.use_batch and mailbox is not None:
                    return await self._batched(hook, mailbox, **request)
                async with self._mailbox_gate(str(request.get("url") or "")):
                    return await hook.run(**request)
            except PermissionError:
                if attempt == 3:
                    raise
                log.info("Graph answered 401/403: re-authenticating and repeating the request")
            except RuntimeError as exc:  # a retired adapter's client closed under the request
                if attempt == 3 or "closed" not in str(exc):
                    raise
            except (ServiceRequestError, ServiceResponseError) as exc:
                self._refuse_untrusted(exc)
                raise Unreachable(f"Office 365 login endpoint unreachable: {_short(exc)}") from None
            except Exception as exc:
                if _is_transport_error(exc):
                    self._refuse_untrusted(exc)
                    raise Unreachable(f"Graph unreachable: {_short(exc)}") from None
                raise
        raise AssertionError("unreachable")

    async def list_events(self, mailbox: str, window: Window) -> list[SuiteEvent]:
        from airflow.providers.common.compat.sdk import AirflowNotFoundException

        lo, hi = window.bounds_utc()
        url: str | None = f"users/{quote(mailbox, safe='@')}/calendarView"
        query: dict[str, str] | None = {
            "startDateTime": _graph_instant(lo),
            "endDateTime": _graph_instant(hi),
            "$select": SELECT,
            "$expand": EXPAND_MARKER,
            "$top": str(self.page_size),
        }
        events: dict[str, SuiteEvent] = {}
        problems: list[tuple[dict[str, Any], str]] = []
        seen_links: set[str] = set()
        try:
            while url:
                page = await self._get(url, query)
                for item in page.get("value") or []:
                    try:
                        event = normalize_event(item, window.timezone)
                    except ValueError as exc:
                        problems.append((item, str(exc)))
                        continue
                    events[event.suite_id] = event  # a duplicate across pages counts once
                next_link = page.get("@odata.nextLink")
                if next_link in seen_links:
                    raise ConnectorError(f"Graph paging loops on {mailbox}: nextLink repeated")
                if next_link:
                    seen_links.add(next_link)
                url, query = next_link, None
        except AirflowNotFoundException:
            raise MailboxNotFound(mailbox) from None
        result = list(events.values())
        for item, reason in problems:
            result.append(_unreadable(item, reason))
        return result

    # --- writes (reverse sync) -------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        query: Any = None,
        missing_ok: bool = False,
    ) -> Any:
        from airflow.providers.common.compat.sdk import AirflowException, AirflowNotFoundException

        headers = {"Prefer": 'outlook.timezone="UTC", IdType="ImmutableId"'}
        try:
            return await self._run(
                await self._ready_hook(),
                url=url,
                method=method,
                data=body,
                headers=headers,
                query_parameters=query,
            )
        except Unreachable as exc:
            raise ConnectorError(f"Graph {method}: {exc}") from None
        except AirflowNotFoundException as exc:
            if missing_ok:
                return None
            raise ConnectorError(
                f"Graph {method}: not found: {_error_text(exc)}", status=404, retriable=False
            ) from None
        except AirflowException as exc:
            raise ConnectorError(f"Graph {method} failed: {_error_text(exc)}") from None
        except PermissionError as exc:
            raise ConnectorError(
                f"Graph refused {method}: {_error_text(exc)}", status=401
            ) from None
        except (OSError, ValueError) as exc:
            raise ConnectorError(f"Graph {method} failed: {type(exc).__name__}: {exc}") from None

    def _events_url(self, mailbox: str, suite_id: str | None = None) -> str:
        base = f"users/{quote(mailbox, safe='@')}/events"
        return f"{base}/{quote(suite_id, safe='')}" if suite_id else base

    async def find_by_key(self, mailbox: str, key: str) -> SuiteEvent | None:
        escaped = key.replace("'", "''")
        query = {
            "$filter": f"singleValueExtendedProperties/any(ep: ep/id eq '{MARKER_ID}' "
            f"and ep/value eq '{escaped}')",
            "$expand": EXPAND_MARKER,
        }
        page = await self._send("GET", self._events_url(mailbox), query=query)
        items = (page or {}).get("value") or []
        return normalize_event(items[0], self.config.timezone) if items else None

    async def get_event(
        self, mailbox: str, suite_id: str, *, body_type: str | None = None
    ) -> SuiteEvent | None:
        """``GET /users/{mailbox}/events/{id}`` (occurrence ids too) with the marker; None on
        a 404 for the item (ErrorItemNotFound), MailboxNotFound on one for the user.
        ``body_type`` ("text"/"html") asks Graph for the body in that form."""
        from airflow.providers.common.compat.sdk import AirflowNotFoundException

        query = {"$select": SELECT, "$expand": EXPAND_MARKER}
        try:
            item = await self._get(self._events_url(mailbox, suite_id), query, body_type)
        except AirflowNotFoundException as exc:
            if _error_code(exc).lower() in MAILBOX_ERROR_CODES:
                raise MailboxNotFound(mailbox) from None
            return None
        try:
            return normalize_event(item, self.config.timezone)
        except ValueError as exc:
            return _unreadable(item, str(exc))

    async def create_event(self, mailbox: str, event: EventWrite) -> SuiteEvent:
        """Idempotent: an event carrying the key is found first; Graph's ``transactionId``
        guards the window between a lost reply and the retry too. ``known_new``: no earlier
        create can exist, so no lookup (one request instead of two)."""
        if event.key and not event.known_new:
            found = await self.find_by_key(mailbox, event.key)
            if found is not None:
                return found
        body = graph_body(event, self.config.timezone)
        if event.key:
            body["transactionId"] = event.key[:100]
        created = normalize_event(
            await self._send("POST", self._events_url(mailbox), body), self.config.timezone
        )
        # Graph returns extended properties only when expanded: the marker is the one sent.
        created.calsync_key = created.calsync_key or event.key or None
        return created

    async def update_event(self, mailbox: str, suite_id: str, event: EventWrite) -> SuiteEvent:
        """PATCH in place, with only what differs from the event as it is now.

        Graph sends a meeting update to the attendees on every PATCH of an organiser's
        meeting, so an update that changes nothing sends no PATCH at all (the event is
        returned as read), and the attendee list goes only when it changed (invitations to
        added attendees, cancellations to dropped ones are Graph's doing then). The event is
        read with its body in the write's form (Exchange keeps bodies as HTML), so an
        unchanged text body compares equal."""
        current = await self.get_event(mailbox, suite_id, body_type=event.body_type)
        if current is None:
            raise ConnectorError(
                f"Graph PATCH: event {suite_id[:24]}… is no longer in {mailbox}",
                status=404,
                retriable=False,
            )
        changed = write_differences(current, event)
        if not changed:
            return current
        full = graph_body(event, self.config.timezone)
        body: dict[str, Any] = {}
        for aspect, keys in PATCH_FIELDS.items():
            if aspect in changed:
                body.update({k: full[k] for k in keys if k in full})
        if "attendees" in changed:  # the room in the location follows the attendees
            body["location"] = full["location"]
        updated = normalize_event(
            await self._send("PATCH", self._events_url(mailbox, suite_id), body),
            self.config.timezone,
        )
        updated.calsync_key = updated.calsync_key or event.key or current.calsync_key
        return updated

    async def delete_event(self, mailbox: str, suite_id: str) -> None:
        await self._send("DELETE", self._events_url(mailbox, suite_id), missing_ok=True)

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.aclose()
            self._batcher = None
        if self._hook is not None:
            await self._hook.close()
            self._hook = None
            self._connected = False

    # --- incremental reads (E7): calendarView delta -------------------------------------

    async def list_changes(self, mailbox: str, window: Window, state: str | None) -> ChangeSet:
        """Changes since ``state`` through ``calendarView/delta``.

        ``state`` is what a previous call returned: ``{"deltaLink", "window"}`` as JSON (the
        window a Graph delta round is bound to). No state, an unreadable one, or one of another
        window starts a new round: a full read of the window (``full=True``). An expired token
        (410 SyncStateNotFound) does the same. Otherwise the deltaLink is followed and the
        created/updated events and the removed ids are returned (``full=False``). Thin
        occurrences of a series are completed from the series' instances in the window (one
        request per changed series). Graph's delta takes no ``$select``/``$expand``, so single
        events read here carry no ``calsync_key``.
        """
        from airflow.providers.common.compat.sdk import AirflowNotFoundException

        from calsync.connectors.base import ChangeSet

        prior = parse_delta_state(state)
        if prior is not None and prior["window"] != window_key(window):
            prior = None  # the window moved: a delta round is bound to its window (E15)
        if prior is not None and not await self._is_current_endpoint(prior["deltaLink"]):
            log.info("mailbox %s: the stored deltaLink is for another endpoint", mailbox)
            prior = None
        try:
            if prior is not None:
                try:
                    events, removed, link = await self._delta_round(
                        mailbox, window, prior["deltaLink"]
                    )
                    return ChangeSet(events, removed, delta_state(link, window), full=False)
                except SyncStateGone:
                    log.info(
                        "mailbox %s: the delta token expired (410); reading the window in full",
                        mailbox,
                    )
            events, _, link = await self._delta_round(mailbox, window, None)
        except AirflowNotFoundException:
            raise MailboxNotFound(mailbox) from None
        return ChangeSet(events, [], delta_state(link, window), full=True)

    async def _is_current_endpoint(self, link: str) -> bool:
        """Whether a stored deltaLink points at the connection's Graph endpoint (a changed
        base URL, e.g. a moved private endpoint, starts a new round instead of failing)."""
        hook = await self._ready_hook()
        adapter = await hook.get_async_conn()  # resolved and cached by now
        return link.lower().startswith(str(adapter.base_url).lower())

    async def _delta_page(self, url: str, query: dict[str, str] | None) -> dict[str, Any]:
        try:
            return await self._get(url, query)
        except ConnectorError as exc:
            if _sync_state_gone(exc):
                raise SyncStateGone(str(exc)) from None
            raise

    async def _delta_round(
        self, mailbox: str, window: Window, link: str | None
    ) -> tuple[list[SuiteEvent], list[str], str]:
        """Follow one delta round to its deltaLink: (events, removed ids, the deltaLink)."""
        url: str | None = link
        query: dict[str, str] | None = None
        if link is None:
            lo, hi = window.bounds_utc()
            url = f"users/{quote(mailbox, safe='@')}/calendarView/delta"
            query = {"startDateTime": _graph_instant(lo), "endDateTime": _graph_instant(hi)}
        upserts: dict[str, dict[str, Any]] = {}
        removed: dict[str, None] = {}
        seen_links: set[str] = set()
        delta_link = ""
        while url:
            page = await self._delta_page(url, query)
            for item in page.get("value") or []:
                item_id = item.get("id")
                if not item_id:
                    continue
                if "@removed" in item:
                    upserts.pop(item_id, None)
                    removed[item_id] = None
                else:
                    removed.pop(item_id, None)
                    upserts[item_id] = item
            next_link = page.get("@odata.nextLink")
            if next_link:
                if next_link in seen_links:
                    raise ConnectorError(
                        f"Graph delta paging loops on {mailbox}: nextLink repeated"
                    )
                seen_links.add(next_link)
                url, query = next_link, None
                continue
            delta_link = page.get("@odata.deltaLink") or ""
            if not delta_link:
                raise ConnectorError(
                    f"Graph delta on {mailbox}: the last page has neither a nextLink nor a "
                    "deltaLink"
                )
            url = None
        await self._complete_occurrences(mailbox, window, upserts)
        events: list[SuiteEvent] = []
        for item in upserts.values():
            try:
                events.append(normalize_event(item, window.timezone))
            except ValueError as exc:
                events.append(_unreadable(item, str(exc)))
        return events, list(removed), delta_link

    async def _complete_occurrences(
        self, mailbox: str, window: Window, upserts: dict[str, dict[str, Any]]
    ) -> None:
        """Replace thin occurrences (id, seriesMasterId, type, start, end: what delta sends)
        by the full ones from ``/events/{series}/instances`` over the window (E13). One that
        the series no longer has in the window changed after the delta was taken: it is left
        out, and the next delta reports it."""
        from airflow.providers.common.compat.sdk import AirflowNotFoundException

        thin: dict[str, list[str]] = {}
        for item_id, item in upserts.items():
            if _is_thin(item):
                thin.setdefault(str(item.get("seriesMasterId") or ""), []).append(item_id)
        if not thin:
            return
        lo, hi = window.bounds_utc()
        for series_id, ids in thin.items():
            found: dict[str, dict[str, Any]] = {}
            if series_id:
                url: str | None = (
                    f"users/{quote(mailbox, safe='@')}/events/{quote(series_id, safe='')}/instances"
                )
                query: dict[str, str] | None = {
                    "startDateTime": _graph_instant(lo),
                    "endDateTime": _graph_instant(hi),
                    "$select": SELECT,
                    "$expand": EXPAND_MARKER,
                    "$top": str(self.page_size),
                }
                seen_links: set[str] = set()
                try:
                    while url:
                        page = await self._get(url, query)
                        for item in page.get("value") or []:
                            if item.get("id"):
                                found[item["id"]] = item
                        next_link = page.get("@odata.nextLink")
                        if next_link in seen_links:
                            raise ConnectorError(
                                f"Graph paging loops on {mailbox}: nextLink repeated"
                            )
                        if next_link:
                            seen_links.add(next_link)
                        url, query = next_link, None
                except AirflowNotFoundException:
                    found = {}  # the series is gone: the next delta removes its occurrences
            for item_id in ids:
                full = found.get(item_id)
                if full is not None:
                    upserts[item_id] = full
                else:
                    del upserts[item_id]


def _mailbox_of(url: str) -> str | None:
    """The mailbox a Graph URL addresses (``users/{mailbox}/...``), lower-cased, or None."""
    import re
    from urllib.parse import unquote

    found = re.search(r"(?:^|/)users/([^/?]+)", url)
    return unquote(found.group(1)).lower() if found else None


class Unreachable(Exception):
    """The suite (token endpoint or Graph) could not be reached at all."""


def _is_transport_error(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.TransportError)


def _short(exc: BaseException) -> str:
    """An exception's text without object reprs (``<ssl.SSLContext object at 0x…>``)."""
    import re

    text = re.sub(r"\s*\S*<[^<>]* at 0x[0-9a-f]+>", "", str(exc) or type(exc).__name__)
    return f"{type(exc).__name__}: {' '.join(text.split())}"[:300]


def _unreadable(item: dict[str, Any], reason: str) -> SuiteEvent:
    """A placeholder the engine logs as failed: one bad event never sinks the mailbox."""
    event = SuiteEvent(
        suite_id=str(item.get("id") or "?"),
        ical_uid=str(item.get("iCalUId") or item.get("id") or "?"),
        subject=str(item.get("subject") or "")[:200],
        start=None,
        end=None,
    )
    event.extra["unreadable"] = reason
    return event


# What a PATCH carries for each aspect ``write_differences`` reports.
PATCH_FIELDS: dict[str, tuple[str, ...]] = {
    "subject": ("subject",),
    "body": ("body",),
    "times": ("start", "end", "isAllDay"),
    "location": ("location",),
    "attendees": ("attendees",),
    "sensitivity": ("sensitivity",),
    "key": ("singleValueExtendedProperties",),
}

# 404 codes that mean the user (mailbox), not the item, is unknown.
MAILBOX_ERROR_CODES = frozenset(
    {"errorinvaliduser", "mailboxnotenabledforrestapi", "errornonexistentmailbox"}
)


def _error_code(exc: BaseException) -> str:
    """The ``error.code`` of the body the hook raised with, or ""."""
    arg = exc.args[0] if exc.args else None
    if isinstance(arg, dict):
        err = arg.get("error") if isinstance(arg.get("error"), dict) else arg
        return str(err.get("code") or "")
    return ""


def _error_text(exc: BaseException) -> str:
    """The suite's error code and message, never request headers (no tokens in logs)."""
    arg = exc.args[0] if exc.args else exc
    if isinstance(arg, dict):
        err = arg.get("error") if isinstance(arg.get("error"), dict) else arg
        code = err.get("code") or err.get("error") or ""
        message = err.get("message") or err.get("error_description") or ""
        return f"{code}: {message}".strip(": ")[:500]
    return str(arg)[:500]


# --- calendarView delta state -------------------------------------------------------------

# Error codes Graph answers (410) for a delta token it no longer knows.
SYNC_STATE_CODES = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})


class SyncStateGone(ConnectorError):
    """The delta token expired or is unknown (410 SyncStateNotFound): start a new round."""


def window_key(window: Window) -> dict[str, str]:
    return {
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        "timezone": window.timezone,
    }


def delta_state(delta_link: str, window: Window) -> str:
    """The state ``list_changes`` returns: the round's deltaLink and the window it is bound to,
    as a small JSON string."""
    import json

    return json.dumps(
        {"deltaLink": delta_link, "window": window_key(window)}, separators=(",", ":")
    )


def parse_delta_state(state: str | None) -> dict[str, Any] | None:
    """The parsed state, or None when there is none or it is not one of ours (a new round)."""
    import json

    if not state:
        return None
    try:
        data = json.loads(state)
    except ValueError:
        return None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("deltaLink"), str)
        or not data["deltaLink"]
        or not isinstance(data.get("window"), dict)
    ):
        return None
    return data


def _is_thin(item: dict[str, Any]) -> bool:
    """A plain occurrence as delta sends it: no iCalUId/subject, only its place in the series."""
    return bool(item.get("seriesMasterId")) and ("iCalUId" not in item or "subject" not in item)


def _sync_state_gone(exc: ConnectorError) -> bool:
    """Whether a failed Graph request was a 410 for an unknown sync state (the hook raises the
    error body; ``_get`` keeps it as the context of its ConnectorError)."""
    cause = exc.__cause__ or exc.__context__
    payload = cause.args[0] if cause is not None and cause.args else None
    if isinstance(payload, dict):
        error = payload.get("error") if isinstance(payload.get("error"), dict) else payload
        code = str(error.get("code") or "").lower()
        return code in SYNC_STATE_CODES
    return False


# Down here, not in the import block: that block belongs to the write path's edits.
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from calsync.connectors.base import ChangeSet
