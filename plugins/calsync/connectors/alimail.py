"""Alibaba Enterprise Mail V2 (阿里企业邮箱) through its open REST API (F14).

Wire format (details, aliases and sources in ``calsync.connectors.alimail_wire``, the one
place to correct them):

- Token [D1]: ``POST {endpoint}/oauth2/v2.0/token``, form ``grant_type=client_credentials``,
  ``client_id`` (app id), ``client_secret`` (app secret) → ``{access_token, token_type,
  expires_in}``; calls carry ``Authorization: bearer <token>``.
- Calendars [D2]: ``GET /v2/users/{email}/calendars`` → ``{"calendars": [{id, name, ...}]}``.
- Window [D2]: ``GET /v2/users/{email}/calendars/{calendarId}/eventsview?startTime=…&endTime=…
  &size=…&cursor=…`` → ``{"events": [...], "hasMore", "nextCursor"}`` (parameter and paging
  names [assumed] after the API family's list operations [P1]); recurring series come back as
  occurrences.
- One event [D2 names GetEvent; paths assumed]: ``GET|PATCH|DELETE
  /v2/users/{email}/calendars/{calendarId}/events/{id}``; create ``POST …/events``; bodies and
  answers wrapped as ``{"event": {...}}`` [D4 by analogy]; ``sendNotification=true|false`` as a
  query parameter on every write [assumed].
- Event [assumed, Graph-like, read leniently]: ``id``, ``iCalUId``, ``subject``, ``body``
  ``{contentType, content}``, ``start``/``end`` ``{dateTime (local wall time), timeZone}`` or
  ``{date}``, ``isAllDay``, ``location {displayName}``, ``organizer {email, name}``,
  ``attendees [{email, name, type, status: {response}}]``, ``seriesMasterId``,
  ``originalStart``, ``type``, ``isCancelled``, ``changeKey``, ``lastModifiedDateTime``.
  Unknown fields are ignored; an event that cannot be understood becomes an "unreadable"
  placeholder that the engine logs as failed, never a failed mailbox.
- Version [assumed]: ``change_key`` is ``changeKey`` (or an alias), else the raw
  last-modified value; ``last_modified`` is ``lastModifiedDateTime`` (or an alias) in UTC.
- Rooms [assumed]: an attendee ``{"type": "resource"}``, with ``location`` written as given
  (the fallback if the server ignores the type); ``room``/``meetingRoom`` read as rooms too.

Sources: [D1] https://help.aliyun.com/document_detail/2855420.html (get an access credential),
[D2] https://help.aliyun.com/document_detail/2856495.html (get a calendar, query a view, get an
event; operation reference https://mailhelp.aliyun.com/openapi/index.html), [D3]
https://www.alibabacloud.com/help/zh/alibaba-mail/latest/api-access-server-address and
https://help.aliyun.com/zh/document_detail/3022213.html (hosts per site), [D4]
https://help.aliyun.com/document_detail/2856076.html (wrapped single resources), [P1] public
clients of the same API (cursor paging, ``{email, name}`` addresses, error bodies).

calsync's marker (E11, idempotent create): the API documents no custom properties, so the key
travels as a marker line at the end of the body — ``[calsync:KEY]`` (an HTML body gets it in
its own ``<p>``). Reads take the key from it and strip it, so the OA never sees it and content
hashes stay stable; updates write it again. Chosen over a lookup by start/end/subject/organiser
because that lookup is ambiguous for look-alike events and breaks as soon as someone edits the
time or title — the marker survives moves and edits and makes ``find_by_key`` exact. Its cost:
the line is visible in the suite, and a user who deletes it turns the event into an unmarked
one (the link table's suite id still finds it). If the API turns out to keep custom
properties, set ``alimail_wire.CUSTOM_PROPERTY_FIELD`` and the key is written there too.

The connector is synchronous ``requests`` code run in a thread pool of its own (sized to the
integration's read concurrency), behind the async interface: simple, debuggable code with
real connection pooling, and no second HTTP stack to trust. Retries, tokens and TLS: see
``calsync.connectors.alimail_http``.

There is no change feed in this API, so every read is the window's view. ``list_changes``
returns it as a full change set (``full=True``: planned as a full read) whose state remembers
the mailbox's calendar id and a digest of the view as the server sent it (every event, every
field, the calendar and the bounds: ``view_digest``). A scheduled run then costs one view
request per mailbox (plus paging), not a calendar listing first; and a view whose digest is
the state's is not normalised at all: the change set is empty and partial (``full=False``:
nothing changed), so the engine plans nothing and writes nothing for that mailbox. A view that
differs in anything is read and planned in full. A remembered calendar that is gone (deleted,
or the folder renamed) is looked up again and the read retried once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson

from calsync.config import IntegrationConfig, resolve_timezone
from calsync.connectors import alimail_wire as wire
from calsync.connectors.alimail_http import (
    AlimailHttp,
    AmbiguousWrite,
    ApiError,
    Credentials,
    RetryPolicy,
    load_credentials,
    user_path,
)
from calsync.connectors.base import (
    CALSYNC_PROPERTY_NAME,
    CalendarIds,
    ChangeSet,
    EventWrite,
    SuiteConnector,
    write_differences,
)
from calsync.errors import ConnectorError, MailboxNotFound
from calsync.model import Attendee, SuiteEvent, Window

log = logging.getLogger(__name__)

MAX_PAGES = 1000  # a window never needs more; more means the server's cursor loops
FIND_HORIZON_PAST_DAYS = 60  # find_by_key without a time hint scans this far back...
FIND_HORIZON_FUTURE_DAYS = 400  # ...and this far ahead,
FIND_CHUNK_DAYS = 31  # one view request per this many days
T = TypeVar("T")
CREATE_ATTEMPTS = 3  # re-sends of a create after ambiguous failures (each checked first)

# --- the marker -----------------------------------------------------------------------------

KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:@/+=-]{1,200}")
_MARKER = re.compile(r"\[calsync:([A-Za-z0-9_.:@/+=-]{1,200})\]")
_MARKER_HTML = re.compile(
    r"\s*<p\b[^>]*>\s*\[calsync:[A-Za-z0-9_.:@/+=-]{1,200}\]\s*</p>\s*", re.IGNORECASE
)
_MARKER_LINE = re.compile(r"(?:\r?\n)*[ \t]*\[calsync:[A-Za-z0-9_.:@/+=-]{1,200}\][ \t]*(?:\r?\n)?")


def marker(key: str) -> str:
    if not KEY_PATTERN.fullmatch(key):
        raise ValueError(f"calsync key {key!r} has characters the body marker cannot carry")
    return f"[calsync:{key}]"


def add_marker(body: str, body_type: str, key: str) -> str:
    """The body with calsync's marker as its last line (or paragraph)."""
    body = strip_marker(body, body_type)[0]
    if not key:
        return body
    if body_type == "html":
        return f'{body}<p style="color:#999;font-size:10px">{marker(key)}</p>'
    return f"{body}\n\n{marker(key)}" if body else marker(key)


def strip_marker(body: str, body_type: str) -> tuple[str, str | None]:
    """(body without the marker, the key it carried or None)."""
    found = _MARKER.search(body or "")
    if not found:
        return body or "", None
    key = found.group(1)
    if body_type == "html":
        cleaned = _MARKER_HTML.sub("", body)
        cleaned = _MARKER.sub("", cleaned)
    else:
        # At the end (where calsync puts it) it goes with its blank line; a marker a user
        # moved into the middle leaves a line break, so the lines around it stay apart.
        cleaned = _MARKER_LINE.sub(
            lambda m: "" if not body[m.end() :].strip() else "\n", body
        ).rstrip()
    return cleaned, key


# --- reading --------------------------------------------------------------------------------


def _zone_name(name: Any, fallback: str) -> str:
    if not name or not isinstance(name, str):
        return fallback
    return _known_zone(name.strip()) or fallback


@functools.lru_cache(maxsize=512)
def _known_zone(name: str) -> str | None:
    """The IANA name of a zone name the suite sent, None when unknown (every time value of a
    read carries one: resolved once per name)."""
    try:
        return resolve_timezone(name)
    except ValueError:
        return None


def _zoneinfo(name: str) -> dt.tzinfo:
    import zoneinfo

    return zoneinfo.ZoneInfo(name)


def parse_time(value: Any, zone: str) -> tuple[dt.datetime | None, dt.date | None, str | None]:
    """A wire time value → (aware datetime or None, its date as written, its zone or None).

    Accepts ``{"dateTime", "timeZone"}`` (wall time in that zone, or with its own offset),
    ``{"date"}``, an ISO string, or epoch milliseconds. Raises ValueError if unreadable.
    """
    tz_name = None
    if isinstance(value, dict):
        tz_name = wire.first(value, wire.TIME_ZONE)
        date_value = wire.first(value, wire.TIME_DATE)
        raw = wire.first(value, wire.TIME_DATETIME)
        if raw is None and date_value is not None:
            day = dt.date.fromisoformat(str(date_value)[:10])
            return None, day, tz_name
        value = raw
    if isinstance(value, bool) or value is None:
        raise ValueError("no time value")
    if isinstance(value, int | float):
        instant = dt.datetime.fromtimestamp(value / 1000, dt.UTC)
        return instant, instant.date(), tz_name
    text = str(value).strip()
    if len(text) == 10:  # a bare date
        return None, dt.date.fromisoformat(text), tz_name
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    if "." in text:  # Graph-like 7-digit fractions
        head, _, tail = text.partition(".")
        digits = re.match(r"\d*", tail).group(0)  # type: ignore[union-attr]
        text = f"{head}.{digits[:6].ljust(6, '0')}{tail[len(digits) :]}"
    parsed = dt.datetime.fromisoformat(text)
    wall_date = parsed.date()
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_zoneinfo(_zone_name(tz_name, zone)))
    return parsed.astimezone(dt.UTC), wall_date, tz_name


_MIDNIGHT = re.compile(r"T00:00(?::00(?:\.0*)?)?(?:Z|[+-]\d\d:?\d\d)?$")


def _all_day_date(
    raw: Any, instant: dt.datetime | None, written: dt.date | None, zone: str
) -> dt.date:
    """The date of an all-day bound, never shifted: the date as written when the value is a
    date or a midnight wall time (in whatever zone or offset it was written); an instant that
    is not midnight where written (an all-day value rendered in UTC, say) is read in the
    event's zone, the only reading that gives back a whole day."""
    assert written is not None
    if instant is None:
        return written
    text = wire.first(raw, wire.TIME_DATETIME) if isinstance(raw, dict) else raw
    if isinstance(text, str) and _MIDNIGHT.search(text.strip()):
        return written
    return instant.astimezone(_zoneinfo(zone)).date()


def _address(node: Any) -> tuple[str, str]:
    if isinstance(node, str):
        return node.strip().lower(), ""
    if not isinstance(node, dict):
        return "", ""
    email = wire.first(node, wire.ADDR_EMAIL, "")
    name = wire.first(node, wire.ADDR_NAME, "")
    if isinstance(email, dict):  # Graph's {"emailAddress": {"address", "name"}}
        name = name or wire.first(email, wire.ADDR_NAME, "")
        email = wire.first(email, wire.ADDR_EMAIL, "")
    return str(email or "").strip().lower(), str(name or "").strip()


def _response(node: dict[str, Any]) -> str:
    value = wire.first(node, wire.ATT_RESPONSE)
    if isinstance(value, dict):
        value = wire.first(value, ("response", "status", "value"))
    return wire.RESPONSE_VALUES.get(str(value or "none").strip().lower(), "none")


def _text(value: Any) -> str:
    if isinstance(value, dict):
        value = wire.first(value, wire.LOCATION_NAME, "")
    return str(value or "").strip()


def _key_from_properties(item: dict[str, Any]) -> str | None:
    for name in wire.CUSTOM_PROPERTY_READ:
        node = item.get(name)
        if isinstance(node, dict) and isinstance(node.get(CALSYNC_PROPERTY_NAME), str):
            return node[CALSYNC_PROPERTY_NAME]
        if isinstance(node, list):
            for prop in node:
                if isinstance(prop, dict) and CALSYNC_PROPERTY_NAME in str(prop.get("name", "")):
                    return str(prop.get("value") or "") or None
    return None


def normalize_event(item: dict[str, Any], default_zone: str) -> SuiteEvent:
    """An Alibaba Mail event (any of the shapes in ``alimail_wire``) as a :class:`SuiteEvent`.

    Timed events get aware UTC datetimes; all-day events get their dates as written, never
    converted. Raises ValueError naming the problem for an event that cannot be understood.
    """
    if not isinstance(item, dict):
        raise ValueError("event is not an object")
    suite_id = wire.first(item, wire.EV_ID)
    if not suite_id:
        raise ValueError("event without an id")
    start_raw, end_raw = wire.first(item, wire.EV_START), wire.first(item, wire.EV_END)
    if start_raw is None or end_raw is None:
        raise ValueError("event without start or end")
    event_zone_raw = wire.first(item, wire.EV_ZONE)
    if isinstance(start_raw, dict):
        event_zone_raw = wire.first(start_raw, wire.TIME_ZONE) or event_zone_raw
    zone = _zone_name(event_zone_raw, default_zone)
    start, start_day, _ = parse_time(start_raw, zone)
    end, end_day, _ = parse_time(end_raw, zone)
    all_day = bool(wire.first(item, wire.EV_ALL_DAY, False)) or (start is None and end is None)
    if all_day:
        start_day = _all_day_date(start_raw, start, start_day, zone)
        end_day = _all_day_date(end_raw, end, end_day, zone)
        if end_day < start_day:
            raise ValueError(f"all-day end {end_day} is before start {start_day}")
        if end_day == start_day:  # an inclusive end date: make it exclusive as everywhere
            end_day = start_day + dt.timedelta(days=1)
    elif start is None or end is None:
        raise ValueError("event mixes a date and a date-time")
    elif end < start:
        raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")

    body_node = wire.first(item, wire.EV_BODY, "")
    if isinstance(body_node, dict):
        body_text = str(wire.first(body_node, wire.BODY_CONTENT, "") or "")
        kind = str(wire.first(body_node, wire.BODY_TYPE, "") or "").lower()
    else:
        body_text = str(body_node or "")
        kind = "html" if re.search(r"<(p|div|br|html|span)\b", body_text, re.I) else "text"
    body_type = "html" if kind == "html" else "text"
    body, key = strip_marker(body_text, body_type)
    key = _key_from_properties(item) or key

    organizer_email, organizer_name = _address(wire.first(item, wire.EV_ORGANIZER))
    attendees: list[Attendee] = []
    for node in wire.first(item, wire.EV_ATTENDEES) or []:
        email, name = _address(node)
        if not email:
            continue
        raw_kind = str(
            wire.first(node, wire.ATT_TYPE, "required") if isinstance(node, dict) else ""
        )
        raw_kind = raw_kind.strip().lower()
        kind_value = (
            "resource"
            if raw_kind in wire.ATT_RESOURCE_TYPES
            else "optional"
            if raw_kind == "optional"
            else "required"
        )
        response = _response(node) if isinstance(node, dict) else "none"
        attendees.append(Attendee(email, name, kind_value, response))  # type: ignore[arg-type]

    event_type = str(wire.first(item, wire.EV_TYPE, "") or "singleInstance")
    if event_type not in ("singleInstance", "occurrence", "exception", "seriesMaster"):
        event_type = "singleInstance"
    series_id = wire.first(item, wire.EV_SERIES_ID)
    original_raw = wire.first(item, wire.EV_ORIGINAL_START)
    original_start = None
    if original_raw is not None and (series_id or event_type in ("occurrence", "exception")):
        original_start, _, _ = parse_time(original_raw, zone)
        if series_id and event_type == "singleInstance":
            event_type = "occurrence"
    status = str(wire.first(item, wire.EV_STATUS, "") or "").lower()
    cancelled = bool(wire.first(item, wire.EV_CANCELLED, False)) or status in (
        "cancelled",
        "canceled",
    )
    last_modified = None
    raw_lm = wire.first(item, wire.EV_LAST_MODIFIED)
    if raw_lm is not None:
        try:
            last_modified, _, _ = parse_time(raw_lm, "UTC")
        except ValueError:
            last_modified = None
    # The version the server gives, else its modification time (see alimail_wire).
    change_key = wire.first(item, wire.EV_CHANGE_KEY)
    if change_key in (None, "") and raw_lm not in (None, ""):
        change_key = f"lm:{raw_lm}"
    categories = wire.first(item, wire.EV_CATEGORIES) or []
    return SuiteEvent(
        suite_id=str(suite_id),
        ical_uid=str(wire.first(item, wire.EV_UID) or suite_id),
        subject=str(wire.first(item, wire.EV_SUBJECT, "") or ""),
        start=None if all_day else start,
        end=None if all_day else end,
        all_day=all_day,
        start_date=start_day if all_day else None,
        end_date=end_day if all_day else None,
        timezone=zone,
        location=_text(wire.first(item, wire.EV_LOCATION, "")),
        body=body,
        body_type=body_type,
        organizer=Attendee(organizer_email, organizer_name, "required", "organizer")
        if organizer_email
        else None,
        attendees=attendees,
        series_id=str(series_id) if series_id else None,
        original_start=original_start,
        event_type=event_type,
        is_cancelled=cancelled,
        sensitivity=str(wire.first(item, wire.EV_SENSITIVITY, "normal") or "normal").lower(),
        show_as=str(wire.first(item, wire.EV_SHOW_AS, "busy") or "busy"),
        importance=str(wire.first(item, wire.EV_IMPORTANCE, "normal") or "normal").lower(),
        categories=[str(c) for c in categories] if isinstance(categories, list) else [],
        change_key=str(change_key or ""),
        last_modified=last_modified,
        calsync_key=key,
        extra={
            "calendar_id": str(item.get("calendarId") or ""),
            "web_link": str(wire.first(item, wire.EV_WEB_LINK, "") or ""),
        },
    )


def unreadable(item: Any, reason: str) -> SuiteEvent:
    """A placeholder the engine logs as failed: one bad event never sinks the mailbox."""
    node = item if isinstance(item, dict) else {}
    suite_id = str(wire.first(node, wire.EV_ID) or "?")
    event = SuiteEvent(
        suite_id=suite_id,
        ical_uid=str(wire.first(node, wire.EV_UID) or suite_id),
        subject=str(wire.first(node, wire.EV_SUBJECT, "") or "")[:200],
        start=None,
        end=None,
    )
    event.extra["unreadable"] = reason
    return event


# --- writing --------------------------------------------------------------------------------


def _wall(value: dt.datetime, zone: str) -> dict[str, str]:
    local = value.astimezone(_zoneinfo(zone)) if value.tzinfo else value
    return {wire.TIME_DATETIME[0]: local.strftime(wire.WALL_TIME_FORMAT), wire.TIME_ZONE[0]: zone}


def event_payload(event: EventWrite, zone: str | None = None) -> dict[str, Any]:
    """The wire body of an event calsync writes (create and full update)."""
    zone = zone or event.timezone or "Asia/Shanghai"
    if event.all_day:
        first_day = event.start_date or (event.start.date() if event.start else None)
        last_day = event.end_date or (event.end.date() if event.end else None)
        if first_day is None:
            raise ValueError("an all-day event needs start_date")
        if last_day is None or last_day <= first_day:
            last_day = first_day + dt.timedelta(days=1)
        if wire.ALL_DAY_AS_DATE:
            start: dict[str, str] = {wire.TIME_DATE[0]: first_day.isoformat()}
            end: dict[str, str] = {wire.TIME_DATE[0]: last_day.isoformat()}
        else:
            start = {wire.TIME_DATETIME[0]: f"{first_day}T00:00:00", wire.TIME_ZONE[0]: zone}
            end = {wire.TIME_DATETIME[0]: f"{last_day}T00:00:00", wire.TIME_ZONE[0]: zone}
    else:
        if event.start is None or event.end is None:
            raise ValueError("a timed event needs start and end")
        start, end = _wall(event.start, zone), _wall(event.end, zone)
    attendees = [
        {
            wire.ADDR_EMAIL[0]: a.email,
            wire.ADDR_NAME[0]: a.name or a.email,
            wire.ATT_TYPE[0]: a.kind,
        }
        for a in event.attendees
        if a.email
    ]
    payload: dict[str, Any] = {
        wire.EV_SUBJECT[0]: event.subject,
        wire.EV_BODY[0]: {
            wire.BODY_TYPE[0]: event.body_type,
            wire.BODY_CONTENT[0]: add_marker(event.body, event.body_type, event.key),
        },
        wire.EV_START[0]: start,
        wire.EV_END[0]: end,
        wire.EV_ALL_DAY[0]: bool(event.all_day),
        wire.EV_LOCATION[0]: {wire.LOCATION_NAME[0]: event.location},
        wire.EV_ATTENDEES[0]: attendees,
        wire.EV_SENSITIVITY[0]: event.sensitivity,
    }
    if wire.CUSTOM_PROPERTY_FIELD and event.key:
        payload[wire.CUSTOM_PROPERTY_FIELD] = {CALSYNC_PROPERTY_NAME: event.key}
    return payload


# --- the connector ---------------------------------------------------------------------------


class AlimailConnector(SuiteConnector):
    """Alibaba Mail V2 for one integration: app id/secret from ``config.connection_id``."""

    def __init__(
        self,
        config: IntegrationConfig,
        *,
        credentials: Credentials | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(config)
        params = config.alimail
        assert params is not None
        self.params = params
        self.endpoint = (params.endpoint or wire.DEFAULT_ENDPOINT).rstrip("/")
        self._credentials = credentials  # None: read the Airflow connection on first use
        self._policy = policy
        self._http: AlimailHttp | None = None
        self._http_lock = threading.Lock()
        self._calendars: dict[str, str] = {}  # mailbox -> calendar id of the configured folder
        self._calendar_locks: dict[str, threading.Lock] = {}
        self._listed: set[str] = set()  # mailboxes whose id in _calendars was listed here
        self._remembered: dict[str, str] = {}  # ids earlier runs listed (use_calendar_ids)
        self._gone: dict[str, str] = {}  # mailbox -> a remembered id the suite says is gone
        workers = max(4, config.execution.concurrency)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="calsync-alimail")
        self._workers = workers
        self.page_size = wire.PAGE_SIZE_MAX

    # --- plumbing ---

    def _client(self) -> AlimailHttp:
        if self._http is not None:
            return self._http
        # The first operations start together in the pool's threads: one client for all of
        # them (two would keep two token caches and two sets of mailbox locks, and a mailbox's
        # Retry-After seen by one would not hold the other back).
        with self._http_lock:
            if self._http is not None:
                return self._http
            creds = self._credentials or load_credentials(self.config.connection_id)
            extras = creds.extras
            policy = self._policy or RetryPolicy(
                max_total_wait_s=float(extras.get("max_retry_wait_s", 60)),
                max_attempts=int(extras.get("max_attempts", 8)),
            )
            self.page_size = max(1, min(int(extras.get("page_size", 100)), wire.PAGE_SIZE_MAX))
            self._http = AlimailHttp(
                self.endpoint,
                creds,
                self.config.connection_id,
                policy=policy,
                timeout_s=float(extras.get("timeout_s", 30)),
                pool_size=self._workers,
            )
        return self._http

    @property
    def http(self) -> AlimailHttp:
        """The HTTP client (token cache, attempt counters), created on first use."""
        return self._client()

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one operation in the pool; its requests share one wait budget."""

        def operation() -> Any:
            with self._client().operation():
                return fn(*args, **kwargs)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, operation)

    def _notify(self) -> dict[str, str]:
        return {wire.NOTIFY_PARAM: "true" if self.params.send_notifications else "false"}

    def _fail(self, mailbox: str, what: str, exc: ApiError) -> ConnectorError:
        if exc.status == 404 and any(h in exc.code.lower() for h in wire.MAILBOX_NOT_FOUND_HINTS):
            return MailboxNotFound(mailbox)
        retriable = exc.status >= 500 or exc.status in (408, 429)
        if exc.status == 403:
            return ConnectorError(
                f"Alibaba Mail refused {what} for {mailbox} ({exc}): check the API permissions "
                f"of the app of connection {self.config.connection_id!r}",
                status=403,
                retriable=False,
            )
        return ConnectorError(
            f"Alibaba Mail {what} failed for {mailbox}: {exc}",
            status=exc.status,
            retriable=retriable,
        )

    # --- calendars ---

    @property
    def calendar_name(self) -> str:
        return self.params.calendar_folder or ""

    def use_calendar_ids(self, ids: Mapping[str, str]) -> None:
        with self._http_lock:
            self._remembered.update(ids)

    def calendar_ids(self) -> CalendarIds:
        with self._http_lock:
            found = {m: self._calendars[m] for m in self._listed if m in self._calendars}
            gone = {m: i for m, i in self._gone.items() if m not in found}
        return CalendarIds(found, gone)

    def _calendar_id(self, mailbox: str) -> str:
        cached = self._calendars.get(mailbox)
        if cached is not None:
            return cached
        with self._http_lock:
            remembered = self._remembered.get(mailbox)
            if remembered is not None:  # believed until the suite says otherwise (_in_calendar)
                return self._calendars.setdefault(mailbox, remembered)
            # One listing per mailbox: the writes a drain has in flight for it wait for the first.
            lock = self._calendar_locks.setdefault(mailbox, threading.Lock())
        with lock:
            cached = self._calendars.get(mailbox)
            if cached is not None:
                return cached
            return self._list_calendar_id(mailbox)

    def _list_calendar_id(self, mailbox: str) -> str:
        http = self._client()
        try:
            _, body = http.call("calendars", "GET", user_path(wire.CALENDARS_PATH, mailbox))
        except ApiError as exc:
            if exc.status == 404:
                raise MailboxNotFound(mailbox) from None
            raise self._fail(mailbox, "listing calendars", exc) from None
        calendars = [c for c in wire.first(body, (wire.CALENDARS_KEY,), []) if isinstance(c, dict)]
        chosen = pick_calendar(calendars, self.params.calendar_folder)
        if chosen is None:
            names = ", ".join(repr(str(wire.first(c, wire.CALENDAR_NAME, "?"))) for c in calendars)
            wanted = self.params.calendar_folder or "the default calendar"
            raise ConnectorError(
                f"calendar folder {wanted!r} not found in mailbox {mailbox} (it has: "
                f"{names or 'no calendars'})",
                retriable=False,
            )
        calendar_id = str(wire.first(chosen, wire.CALENDAR_ID))
        with self._http_lock:
            self._calendars[mailbox] = calendar_id
            self._listed.add(mailbox)
            if self._gone.get(mailbox) == calendar_id:  # listed again: not gone after all
                del self._gone[mailbox]
        return calendar_id

    def _listed_id(self, mailbox: str) -> str | None:
        """The mailbox's calendar id if this connector listed it (not an earlier run)."""
        with self._http_lock:
            return self._calendars.get(mailbox) if mailbox in self._listed else None

    def _relist(self, mailbox: str, doubted: str) -> str:
        """Look the calendar up again after the suite cast doubt on ``doubted``: gone, or
        an event not in it. Another thread's fresh listing meanwhile is taken as it is."""
        with self._http_lock:
            if self._remembered.get(mailbox) == doubted:  # first, so no one takes it back
                del self._remembered[mailbox]
                self._gone[mailbox] = doubted
            if self._calendars.get(mailbox) == doubted:
                del self._calendars[mailbox]
                self._listed.discard(mailbox)
            lock = self._calendar_locks.setdefault(mailbox, threading.Lock())
        with lock:
            fresh = self._listed_id(mailbox)
            if fresh is not None:
                return fresh
            return self._list_calendar_id(mailbox)

    def _in_calendar(
        self,
        mailbox: str,
        what: str,
        attempt: Callable[[str], T],
        *,
        names_event: bool = True,
    ) -> T:
        """``attempt(calendar id)`` in the mailbox's calendar; its ApiErrors are sorted here.

        An answer that the calendar is gone means nothing was done: the calendar is looked up
        again and the attempt made once more. On a path that ``names_event``, an answer that
        the event is not there raises ``_EventGone``; under a calendar id an earlier run
        looked up it is believed only once a listing confirms that id (the folder may have
        been renamed or the default calendar changed since), else the attempt is made in the
        calendar listed. Any other answer is a ConnectorError."""

        def event_gone(exc: ApiError) -> bool:
            return names_event and not _is_calendar_gone(exc) and _is_event_gone(exc)

        calendar_id = self._calendar_id(mailbox)
        try:
            return attempt(calendar_id)
        except ApiError as exc:
            doubted_event = event_gone(exc)
            if doubted_event:
                if self._listed_id(mailbox) == calendar_id:
                    raise _EventGone from None
                log.info(
                    "%s: event not in the calendar %s an earlier run looked up: listing again",
                    mailbox,
                    calendar_id,
                )
            elif _is_calendar_gone(exc):
                log.info("calendar %s of %s is gone: looking it up again", calendar_id, mailbox)
            else:
                raise self._fail(mailbox, what, exc) from None
        fresh = self._relist(mailbox, calendar_id)
        if doubted_event and fresh == calendar_id:  # the same calendar: the event is gone
            raise _EventGone
        try:
            return attempt(fresh)
        except ApiError as exc:
            if event_gone(exc):
                raise _EventGone from None
            raise self._fail(mailbox, what, exc) from None

    # --- reads ---

    def _view(
        self,
        mailbox: str,
        lo: dt.datetime,
        hi: dt.datetime,
        remembered: str | None = None,
        last_digest: str | None = None,
    ) -> tuple[list[SuiteEvent] | None, str, str]:
        """(the window's events, the calendar read, the view's digest); the events are None
        when the digest is ``last_digest`` (the view is the one read then). ``remembered``: a
        calendar id from an earlier run, used without listing calendars; if it is gone, they
        are listed again."""
        calendar_id = self._calendars.get(mailbox) or remembered or self._calendar_id(mailbox)
        try:
            items = self._view_items(mailbox, calendar_id, lo, hi)
        except _CalendarGone:
            log.info("calendar %s of %s is gone: looking it up again", calendar_id, mailbox)
            calendar_id = self._relist(mailbox, calendar_id)
            items = self._view_items(mailbox, calendar_id, lo, hi)
        self._calendars.setdefault(mailbox, calendar_id)  # this task's writes use it
        digest = view_digest(calendar_id, lo, hi, items)
        if digest == last_digest:
            return None, calendar_id, digest
        return self._normalized(items, calendar_id), calendar_id, digest

    def _normalized(self, items: list[Any], calendar_id: str) -> list[SuiteEvent]:
        events: dict[str, SuiteEvent] = {}
        problems: list[SuiteEvent] = []
        for item in items:
            try:
                event = normalize_event(item, self.config.timezone)
            except (ValueError, TypeError, KeyError) as exc:
                problems.append(unreadable(item, str(exc)))
                continue
            event.extra["calendar_id"] = event.extra.get("calendar_id") or calendar_id
            events[event.suite_id] = event  # a duplicate across pages counts once
        return list(events.values()) + problems

    def _view_items(
        self, mailbox: str, calendar_id: str, lo: dt.datetime, hi: dt.datetime
    ) -> list[Any]:
        """The view's events as the server sent them, every page."""
        http = self._client()
        path = user_path(wire.EVENT_VIEW_PATH, mailbox, calendar=calendar_id)
        out: list[Any] = []
        cursor = ""
        seen: set[str] = set()
        for _page in range(MAX_PAGES):
            query = {
                wire.VIEW_START: wire.view_instant(lo),
                wire.VIEW_END: wire.view_instant(hi),
                wire.PAGE_SIZE: str(self.page_size),
            }
            if cursor:
                query[wire.PAGE_CURSOR] = cursor
            try:
                _, body = http.call("events_view", "GET", path, params=query)
            except ApiError as exc:
                failure = self._fail(mailbox, "reading the calendar view", exc)
                if not cursor and _is_calendar_gone(exc):
                    raise _CalendarGone(str(failure), status=exc.status, retriable=False) from None
                raise failure from None
            items = wire.first(body, wire.PAGE_ITEMS, [])
            if not isinstance(items, list):
                raise ConnectorError(f"Alibaba Mail view of {mailbox}: no event list in answer")
            out.extend(items)
            next_cursor = str(wire.first(body, wire.PAGE_NEXT, "") or "")
            has_more = wire.first(body, (wire.PAGE_HAS_MORE,))
            more = bool(has_more) if has_more is not None else bool(next_cursor and items)
            if not more:
                return out
            if not next_cursor or next_cursor in seen:
                raise ConnectorError(
                    f"Alibaba Mail paging loops on {mailbox}: "
                    + ("cursor repeated" if next_cursor else "hasMore without a cursor")
                )
            seen.add(next_cursor)
            cursor = next_cursor
        raise ConnectorError(f"Alibaba Mail paging of {mailbox} exceeded {MAX_PAGES} pages")

    async def list_events(self, mailbox: str, window: Window) -> list[SuiteEvent]:
        lo, hi = window.bounds_utc()
        events, _, _ = await self._run(self._view, mailbox, lo, hi)
        assert events is not None  # no digest to match
        return _in_window(events, window)

    async def list_changes(self, mailbox: str, window: Window, state: str | None) -> ChangeSet:
        """The window's view (module docstring: no change feed), reading the calendar the
        state remembers: a full change set, or an empty partial one when the view is the one
        the state's digest describes."""
        lo, hi = window.bounds_utc()
        calendar, digest = _from_state(state)
        events, calendar_id, digest = await self._run(self._view, mailbox, lo, hi, calendar, digest)
        state = json.dumps({STATE_CALENDAR: calendar_id, STATE_VIEW: digest}, separators=(",", ":"))
        if events is None:
            return ChangeSet([], [], state, full=False)
        return ChangeSet(_in_window(events, window), [], state, full=True)

    def _get(self, mailbox: str, suite_id: str) -> SuiteEvent | None:
        try:
            return self._in_calendar(
                mailbox,
                f"reading event {suite_id}",
                lambda cid: self._get_in(mailbox, cid, suite_id),
            )
        except _EventGone:
            return None

    def _get_in(self, mailbox: str, calendar_id: str, suite_id: str) -> SuiteEvent | None:
        path = user_path(wire.EVENT_PATH, mailbox, calendar=calendar_id, event=suite_id)
        _, body = self._client().call("event_get", "GET", path)
        item = _unwrap(body)
        try:
            event = normalize_event(item, self.config.timezone)
        except (ValueError, TypeError, KeyError) as exc:
            return unreadable(item, str(exc))
        event.extra["calendar_id"] = event.extra.get("calendar_id") or calendar_id
        return event

    def _find(self, mailbox: str, key: str, lo: dt.datetime, hi: dt.datetime) -> SuiteEvent | None:
        step = dt.timedelta(days=FIND_CHUNK_DAYS)
        start = lo
        while start < hi:
            stop = min(hi, start + step)
            for event in self._view(mailbox, start, stop)[0]:
                if event.calsync_key == key:
                    return event
            start = stop
        return None

    async def find_by_key(
        self,
        mailbox: str,
        key: str,
        *,
        around: tuple[dt.datetime, dt.datetime] | None = None,
    ) -> SuiteEvent | None:
        """The event carrying calsync's ``key`` in its marker, or None.

        The API has no search by property, so this reads calendar views: ``around`` (the
        event's start and end, as create passes them) makes it one request; without it a
        horizon of FIND_HORIZON_PAST_DAYS back and FIND_HORIZON_FUTURE_DAYS ahead is read.
        """
        if around is not None:
            lo = around[0] - dt.timedelta(days=1)
            hi = around[1] + dt.timedelta(days=1)
        else:
            now = dt.datetime.now(dt.UTC)
            lo = now - dt.timedelta(days=FIND_HORIZON_PAST_DAYS)
            hi = now + dt.timedelta(days=FIND_HORIZON_FUTURE_DAYS)
        return await self._run(self._find, mailbox, key, lo, hi)

    # --- writes ---

    def _span(self, event: EventWrite) -> tuple[dt.datetime, dt.datetime]:
        if event.all_day:
            assert event.start_date is not None
            zone = _zoneinfo(event.timezone or self.config.timezone)
            lo = dt.datetime.combine(event.start_date, dt.time(), tzinfo=zone)
            last = event.end_date or event.start_date + dt.timedelta(days=1)
            hi = dt.datetime.combine(last, dt.time(), tzinfo=zone)
            return lo.astimezone(dt.UTC), hi.astimezone(dt.UTC)
        assert event.start is not None and event.end is not None
        return event.start.astimezone(dt.UTC), event.end.astimezone(dt.UTC)

    def _create(self, mailbox: str, event: EventWrite) -> SuiteEvent:
        if event.key:
            marker(event.key)  # refuse a key the marker cannot carry before anything is sent
        if event.key and not event.known_new:
            found = self._find(mailbox, event.key, *self._widen(self._span(event)))
            if found is not None:
                log.info(
                    "%s: event with key %s exists already (%s)", mailbox, event.key, found.suite_id
                )
                return found
        body = {wire.EVENT_WRAPPER: event_payload(event, event.timezone)}
        return self._in_calendar(
            mailbox,
            "creating an event",
            lambda cid: self._create_in(mailbox, cid, event, body),
            names_event=False,
        )

    def _create_in(
        self, mailbox: str, calendar_id: str, event: EventWrite, body: dict[str, Any]
    ) -> SuiteEvent:
        path = user_path(wire.EVENTS_PATH, mailbox, calendar=calendar_id)
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                _, answer = self._client().call(
                    "event_create",
                    "POST",
                    path,
                    params=self._notify(),
                    json_body=body,
                    idempotent=False,
                )
            except AmbiguousWrite as exc:
                # The create may have happened: look for the marker before sending it again.
                if event.key:
                    found = self._find(mailbox, event.key, *self._widen(self._span(event)))
                    if found is not None:
                        return found
                if attempt == CREATE_ATTEMPTS or not event.key:
                    raise ConnectorError(
                        f"Alibaba Mail create for {mailbox} failed: {exc}", status=exc.status
                    ) from None
                continue
            item = _unwrap(answer)
            if isinstance(item, dict) and wire.first(item, wire.EV_ID):
                created = normalize_event(item, self.config.timezone)
                return created
            raise ConnectorError(f"Alibaba Mail create for {mailbox}: answer without an event id")
        raise AssertionError("unreachable")

    @staticmethod
    def _widen(span: tuple[dt.datetime, dt.datetime]) -> tuple[dt.datetime, dt.datetime]:
        return span[0] - dt.timedelta(days=1), span[1] + dt.timedelta(days=1)

    async def create_event(self, mailbox: str, event: EventWrite) -> SuiteEvent:
        """Create idempotently: an event already carrying ``event.key`` is returned as is."""
        return await self._run(self._create, mailbox, event)

    def _update(self, mailbox: str, suite_id: str, event: EventWrite) -> SuiteEvent:
        current = self._get(mailbox, suite_id)
        if current is None:
            raise ConnectorError(
                f"Alibaba Mail event {suite_id} of {mailbox} is gone",
                status=404,
                retriable=False,
            )
        if not event.key and current.calsync_key:  # keep the marker the event already has
            event = _with_key(event, current.calsync_key)
        if "unreadable" not in current.extra and not write_differences(current, event):
            return current  # nothing to change: no write, so no notification goes out
        body = {wire.EVENT_WRAPPER: event_payload(event, event.timezone)}

        def update_in(calendar_id: str) -> Any:
            path = user_path(wire.EVENT_PATH, mailbox, calendar=calendar_id, event=suite_id)
            return self._client().call(
                "event_update", wire.UPDATE_METHOD, path, params=self._notify(), json_body=body
            )[1]

        try:
            answer = self._in_calendar(mailbox, f"updating event {suite_id}", update_in)
        except _EventGone:
            raise ConnectorError(
                f"Alibaba Mail event {suite_id} of {mailbox} is gone", status=404, retriable=False
            ) from None
        item = _unwrap(answer)
        if isinstance(item, dict) and wire.first(item, wire.EV_ID):
            return normalize_event(item, self.config.timezone)
        updated = self._get(mailbox, suite_id)
        if updated is None:
            raise ConnectorError(f"Alibaba Mail event {suite_id} of {mailbox} vanished", status=404)
        return updated

    async def update_event(self, mailbox: str, suite_id: str, event: EventWrite) -> SuiteEvent:
        """Update in place (never delete + re-create); the marker is kept."""
        return await self._run(self._update, mailbox, suite_id, event)

    def _delete(self, mailbox: str, suite_id: str) -> None:
        def delete_in(calendar_id: str) -> None:
            path = user_path(wire.EVENT_PATH, mailbox, calendar=calendar_id, event=suite_id)
            self._client().call("event_delete", "DELETE", path, params=self._notify())

        with contextlib.suppress(_EventGone):  # already gone: the wanted state
            self._in_calendar(mailbox, f"deleting event {suite_id}", delete_in)

    async def delete_event(self, mailbox: str, suite_id: str) -> None:
        await self._run(self._delete, mailbox, suite_id)

    async def get_event(self, mailbox: str, suite_id: str) -> SuiteEvent | None:
        """One event (or occurrence) by id: GetEvent on the configured calendar. None when it
        is gone (a 404 not about the user, or an event-not-found code; see alimail_wire)."""
        return await self._run(self._get, mailbox, suite_id)

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            http.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _EventGone(Exception):
    """Internal: the suite says the event is not in the calendar (from _in_calendar)."""


class _CalendarGone(ConnectorError):
    """The calendar id a view was asked for does not exist (any more)."""


STATE_CALENDAR = "calendar"  # list_changes' state: {"calendar": <id>, "view": <digest>}
STATE_VIEW = "view"


def _from_state(state: str | None) -> tuple[str | None, str | None]:
    """(calendar id, view digest) a state remembers; None for what it lacks or for a state
    not understood."""
    try:
        found = json.loads(state) if state else None
    except ValueError:
        return None, None
    if not isinstance(found, dict):
        return None, None
    calendar_id, digest = found.get(STATE_CALENDAR), found.get(STATE_VIEW)
    return (
        calendar_id if isinstance(calendar_id, str) and calendar_id else None,
        digest if isinstance(digest, str) and digest and calendar_id else None,
    )


def view_digest(calendar_id: str, lo: dt.datetime, hi: dt.datetime, items: list[Any]) -> str:
    """A digest of a view as the server sent it: the calendar, the bounds and every event
    with every field (keys sorted, so their order in the answer does not matter, the events'
    order does: the server sorts them)."""
    raw = orjson.dumps(
        [calendar_id, lo.isoformat(), hi.isoformat(), items],
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
        default=repr,
    )
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _in_window(events: list[SuiteEvent], window: Window) -> list[SuiteEvent]:
    return [
        e
        for e in events
        if "unreadable" in e.extra or window.overlaps(e.start, e.end, e.start_date, e.end_date)
    ]


def pick_calendar(calendars: list[dict[str, Any]], folder: str | None) -> dict[str, Any] | None:
    """The configured folder by name (case-insensitive) or id; None: the default calendar."""
    usable = [c for c in calendars if wire.first(c, wire.CALENDAR_ID)]
    if folder:
        wanted = folder.strip().casefold()
        for calendar in usable:
            name = str(wire.first(calendar, wire.CALENDAR_NAME, "") or "").strip().casefold()
            if name == wanted or str(wire.first(calendar, wire.CALENDAR_ID)) == folder.strip():
                return calendar
        return None
    for calendar in usable:
        if any(calendar.get(flag) is True for flag in wire.CALENDAR_DEFAULT_FLAGS):
            return calendar
    for calendar in usable:
        kind = str(wire.first(calendar, wire.CALENDAR_TYPE, "") or "").lower()
        if kind in wire.CALENDAR_DEFAULT_TYPES:
            return calendar
    for calendar in usable:
        name = str(wire.first(calendar, wire.CALENDAR_NAME, "") or "").strip().casefold()
        if name in wire.CALENDAR_DEFAULT_NAMES:
            return calendar
    return usable[0] if usable else None


def _unwrap(body: Any) -> Any:
    if isinstance(body, dict) and isinstance(body.get(wire.EVENT_WRAPPER), dict):
        return body[wire.EVENT_WRAPPER]
    return body


def _is_mailbox_error(exc: ApiError) -> bool:
    return any(h in exc.code.lower() for h in wire.MAILBOX_NOT_FOUND_HINTS)


def _is_calendar_gone(exc: ApiError) -> bool:
    """Whether an error means the calendar in the path does not exist (any more)."""
    return exc.code.strip().lower() in wire.CALENDAR_NOT_FOUND_CODES


def _is_event_gone(exc: ApiError) -> bool:
    """Whether an error on an event path means the event does not exist (not the user)."""
    if exc.code.strip().lower() in wire.EVENT_NOT_FOUND_CODES:
        return True
    return exc.status == 404 and not _is_mailbox_error(exc)


def _with_key(event: EventWrite, key: str) -> EventWrite:
    import dataclasses

    return dataclasses.replace(event, key=key)
