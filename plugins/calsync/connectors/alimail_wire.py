"""The Alibaba Mail V2 (阿里企业邮箱) open API wire format calsync implements — in ONE place.

Everything the connector and the emulator know about paths, parameter names, field names,
paging cursors, time formats and error bodies lives here, each value marked with where it
comes from, so a correction after a look at the real API is a one-line change here (the
emulator in ``emulators/alimail`` imports these names too, so it follows).

Sources (stored copies read 2026-11-30):

[D1] "API开放平台代码示例:获取访问凭证" / "API Open Platform code example: Get an access
     credential", https://help.aliyun.com/document_detail/2855420.html (en:
     https://help.aliyun.com/en/document_detail/2855420.html) — token request and the keys read
     from its answer.
[D2] "API开放平台场景示例:获取日历、查询视图并获取日程" / "Get a calendar, query a view, and get
     an event", https://help.aliyun.com/document_detail/2856495.html (en:
     https://help.aliyun.com/en/document_detail/2856495.html) — ListCalendars, EventView,
     GetEvent; the operation reference it links is
     https://mailhelp.aliyun.com/openapi/index.html#/operations/alimailpb_alimail_mailagent_open_EventService_EventView
     (not in the stored copies: a JavaScript page).
[D3] "API访问服务器地址", https://www.alibabacloud.com/help/zh/alibaba-mail/latest/api-access-server-address
     and https://help.aliyun.com/zh/document_detail/3022213.html — the hosts per site.
[D4] "API开放平台场景示例:创建草稿并发送邮件", https://help.aliyun.com/document_detail/2856076.html
     — single resources travel wrapped (``{"message": {...}}`` for CreateMessage).
[P1] Public clients of the same API family (read, not copied): list operations page with
     ``cursor`` + ``size`` (max 100) and answer ``hasMore`` + ``nextCursor``; addresses are
     ``{"email", "name"}``; error bodies carry ``code``/``detailErrorCode``, ``message`` /
     ``developerMessage`` and ``requestId``.

Marked ``[assumed]`` below: not visible in any stored source. The event body (field names and
time format), the write paths and verbs, the notification switch and the error codes follow
the conventions of [D2]/[D4]/[P1] and of Microsoft Graph, which this API mirrors closely
(``mailFolders``, ``internetMessageId``, ``$select``, ``/oauth2/v2.0/token``). Readers in the
connector accept every alias listed here, so an answer that differs in naming still parses.
"""

# ruff: noqa: S105  (names of token fields, not secrets)
from __future__ import annotations

from typing import Any, Final

# --- hosts and authentication -------------------------------------------------------------

DEFAULT_ENDPOINT: Final = "https://alimail-cn.aliyuncs.com"  # [D2][D3] China site
REGION_ENDPOINTS: Final = {  # [D3]
    "cn": "https://alimail-cn.aliyuncs.com",
    "sg": "https://alimail-sg.aliyuncs.com",
    "hk": "https://alimail-hk.aliyuncs.com",
    "de": "https://alimail-de.aliyuncs.com",
    "us": "https://alimail-us.aliyuncs.com",
    "xc": "https://mail-open.xc.aliyun.com",  # 国产化版本 (domestic-stack edition)
}

TOKEN_PATH: Final = "/oauth2/v2.0/token"  # [D1] POST, application/x-www-form-urlencoded
TOKEN_GRANT_TYPE: Final = "client_credentials"  # [D1] form: grant_type, client_id, client_secret
TOKEN_FORM_ID: Final = "client_id"  # [D1] the app id
TOKEN_FORM_SECRET: Final = "client_secret"  # [D1] the app secret
TOKEN_ACCESS: Final = "access_token"  # [D1] answer keys
TOKEN_TYPE: Final = "token_type"  # [D1]
TOKEN_EXPIRES_IN: Final = "expires_in"  # [D1] seconds
AUTH_SCHEME: Final = "bearer"  # [D1][D2] "Authorization: bearer <token>" (lower case as sent)

# --- paths (users addressed by e-mail address in the path) ---------------------------------

API_PREFIX: Final = "/v2"
CALENDARS_PATH: Final = "/v2/users/{user}/calendars"  # [D2] GET: ListCalendars
EVENT_VIEW_PATH: Final = "/v2/users/{user}/calendars/{calendar}/eventsview"  # [D2] GET: EventView
EVENTS_PATH: Final = "/v2/users/{user}/calendars/{calendar}/events"  # [assumed] POST: CreateEvent
EVENT_PATH: Final = "/v2/users/{user}/calendars/{calendar}/events/{event}"  # [assumed] GetEvent
# (GET, [D2] names the operation), UpdateEvent (PATCH, [assumed]), DeleteEvent (DELETE)
UPDATE_METHOD: Final = "PATCH"  # [assumed] Graph-style partial update

# --- ListCalendars answer -----------------------------------------------------------------

CALENDARS_KEY: Final = "calendars"  # [D2] response.json()["calendars"]
CALENDAR_ID: Final = ("id", "calendarId")  # [assumed] aliases, first found wins
CALENDAR_NAME: Final = ("name", "displayName", "summary")  # [assumed]
# How the user's default calendar ("我的日历" / "my calendar") is recognised, in order: a true
# flag, a type value, then a well-known name; else the first calendar listed. [assumed]
CALENDAR_DEFAULT_FLAGS: Final = ("isDefault", "isDefaultCalendar", "default", "primary")
CALENDAR_TYPE: Final = ("type", "calendarType")
CALENDAR_DEFAULT_TYPES: Final = frozenset({"default", "primary", "personal_default"})
CALENDAR_DEFAULT_NAMES: Final = frozenset({"我的日历", "my calendar", "calendar", "日历"})

# --- EventView (a window, recurring series expanded, cursor paging) ------------------------

VIEW_START: Final = "startTime"  # [assumed] [D2] sets "the start and end dates"
VIEW_END: Final = "endTime"  # [assumed]
PAGE_CURSOR: Final = "cursor"  # [P1] request: "" or absent on the first page
PAGE_SIZE: Final = "size"  # [P1] request: at most PAGE_SIZE_MAX
PAGE_SIZE_MAX: Final = 100  # [P1]
PAGE_ITEMS: Final = ("events", "value", "items")  # answer: the list ("events" [assumed])
PAGE_NEXT: Final = ("nextCursor", "cursor")  # [P1] answer: the next page's cursor
PAGE_HAS_MORE: Final = "hasMore"  # [P1] answer: more pages follow


def view_instant(value: Any) -> str:
    """A window bound as sent: ISO 8601 in UTC with a ``Z`` (an aware datetime). [assumed]"""
    import datetime as dt

    assert isinstance(value, dt.datetime) and value.tzinfo is not None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- single resources ---------------------------------------------------------------------

EVENT_WRAPPER: Final = "event"  # [D4] by analogy with {"message": {...}}: body and answer

# --- the event ----------------------------------------------------------------------------
# Each tuple lists the names accepted on read, the first one is what calsync writes.

EV_ID: Final = ("id", "eventId")
EV_UID: Final = ("iCalUId", "iCalUid", "icalUid", "uid", "iCalUID")
EV_SUBJECT: Final = ("subject", "summary", "title")
EV_BODY: Final = ("body", "description", "content")  # {"contentType", "content"} or a string
BODY_CONTENT: Final = ("content", "text", "value")
BODY_TYPE: Final = ("contentType", "type", "format")  # "text" / "html"
EV_START: Final = ("start", "startTime")
EV_END: Final = ("end", "endTime")
# A time value: {"dateTime": local wall time, "timeZone": IANA or Windows name}, or an ISO
# string with an offset, or {"date": "YYYY-MM-DD"} / a bare date for all-day events, or epoch
# milliseconds. calsync writes {"dateTime": "YYYY-MM-DDTHH:MM:SS", "timeZone": IANA}.
TIME_DATETIME: Final = ("dateTime", "datetime", "time")
TIME_DATE: Final = ("date",)
TIME_ZONE: Final = ("timeZone", "timezone", "tz")
WALL_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S"
EV_ALL_DAY: Final = ("isAllDay", "allDay", "isAllDayEvent")
ALL_DAY_AS_DATE: Final = False  # write all-day as midnight dateTimes + isAllDay (Graph-style)
EV_ZONE: Final = ("timeZone", "originalStartTimeZone")  # event-level zone, when sent
EV_LOCATION: Final = ("location",)  # a string or {"displayName"} / {"name"}
LOCATION_NAME: Final = ("displayName", "name", "address")
EV_ORGANIZER: Final = ("organizer",)
EV_ATTENDEES: Final = ("attendees",)
# An address: {"email", "name"} [P1], Graph's {"emailAddress": {"address", "name"}} accepted.
ADDR_EMAIL: Final = ("email", "address", "emailAddress")
ADDR_NAME: Final = ("name", "displayName")
ATT_TYPE: Final = ("type", "attendeeType", "role")  # required / optional / resource
# Rooms [assumed]: no stored source shows how the API books a meeting room. calsync writes a
# room as an attendee with type "resource" (Graph's convention, which this API mirrors), and
# the write's ``location`` (reverse sync puts the room's name there) as ``location``. That is
# the fallback too: a server that ignores the type takes the room as a plain attendee, so the
# room's mailbox is still invited and the meeting still shows where it is (read back, such a
# room is then a "required" attendee). On read these type values (lower-cased) mean a room:
ATT_RESOURCE_TYPES: Final = frozenset({"resource", "room", "meetingroom", "meeting_room"})
ATT_RESPONSE: Final = ("status", "responseStatus", "response", "partStat")
RESPONSE_VALUES: Final = {  # wire value (lower-cased) -> SuiteEvent response
    "accepted": "accepted",
    "accept": "accepted",
    "declined": "declined",
    "decline": "declined",
    "tentative": "tentativelyAccepted",
    "tentativelyaccepted": "tentativelyAccepted",
    "needsaction": "none",
    "needs-action": "none",
    "notresponded": "none",
    "none": "none",
    "organizer": "organizer",
}
EV_SERIES_ID: Final = ("seriesMasterId", "recurringEventId", "seriesId")
EV_ORIGINAL_START: Final = ("originalStart", "originalStartTime", "recurrenceId")
EV_TYPE: Final = ("type", "eventType")  # singleInstance / occurrence / exception / seriesMaster
EV_CANCELLED: Final = ("isCancelled", "cancelled")
EV_STATUS: Final = ("status",)  # "cancelled" counts as cancelled
EV_SENSITIVITY: Final = ("sensitivity", "visibility", "privacy")
EV_SHOW_AS: Final = ("showAs", "freeBusyStatus", "transparency")
EV_IMPORTANCE: Final = ("importance", "priority")
EV_CATEGORIES: Final = ("categories",)
# The event's version and modification time [assumed: neither is visible in [D2]; names after
# Graph, then the usual alternatives]. ``SuiteEvent.change_key`` is the first of
# EV_CHANGE_KEY present (an opaque string that must change on every modification: the
# emulator sends a new random "changeKey" each time); when the answer carries none of them,
# the connector uses the raw last-modified value instead (it changes on every modification
# too, at the server's time resolution). ``last_modified`` is the first of EV_LAST_MODIFIED,
# read as an ISO 8601 instant (a value without an offset is UTC) or epoch milliseconds.
# "sequence" (iCalendar SEQUENCE) comes last: it only moves on significant changes.
EV_CHANGE_KEY: Final = ("changeKey", "etag", "version", "sequence")
EV_LAST_MODIFIED: Final = ("lastModifiedDateTime", "lastModifiedTime", "updateTime", "updated")
EV_WEB_LINK: Final = ("webLink", "htmlLink")
EV_RECURRENCE: Final = ("recurrence",)

# --- writes -------------------------------------------------------------------------------

# The send-notification switch of F14, sent as a query parameter on create, update and
# delete ("true"/"false"). [assumed]
NOTIFY_PARAM: Final = "sendNotification"
# A custom property for calsync's key, if the API turns out to keep one (undocumented, so
# None: nothing unknown is sent; the key travels as a marker line in the body instead).
CUSTOM_PROPERTY_FIELD: Final[str | None] = None
CUSTOM_PROPERTY_READ: Final = ("extendedProperties", "extensions", "customProperties")

# --- errors -------------------------------------------------------------------------------

ERR_CODE: Final = ("code", "detailErrorCode", "errorCode", "error")  # [P1], OAuth "error"
ERR_MESSAGE: Final = ("message", "developerMessage", "error_description", "msg")  # [P1]
ERR_REQUEST_ID: Final = ("requestId", "request_id", "traceId")  # [P1]
# A 404 whose code mentions one of these is an unknown mailbox; any other 404 on an event path
# is the event. [assumed]
MAILBOX_NOT_FOUND_HINTS: Final = ("user", "account", "mailbox")
# Codes that mean "this event does not exist" whatever the HTTP status (Alibaba Cloud APIs
# often answer 400 for an unknown id); compared lower-cased. [assumed]
EVENT_NOT_FOUND_CODES: Final = frozenset(
    {"eventnotfound", "event.notfound", "itemnotfound", "notfound"}
)
# Codes that mean "this calendar does not exist"; compared lower-cased. [assumed]
CALENDAR_NOT_FOUND_CODES: Final = frozenset({"calendarnotfound", "calendar.notfound"})
# The codes the emulator answers with (the real ones are not documented). [assumed]
CODE_USER_NOT_FOUND: Final = "UserNotFound"
CODE_EVENT_NOT_FOUND: Final = "EventNotFound"
CODE_CALENDAR_NOT_FOUND: Final = "CalendarNotFound"
CODE_INVALID_TOKEN: Final = "InvalidAccessToken"
CODE_THROTTLED: Final = "Throttling"
CODE_CONCURRENCY: Final = "Throttling.Concurrency"
CODE_INVALID_PARAMETER: Final = "InvalidParameter"
CODE_SERVICE_UNAVAILABLE: Final = "ServiceUnavailable"
CODE_INTERNAL: Final = "InternalError"


def first(node: Any, names: tuple[str, ...], default: Any = None) -> Any:
    """The value of the first of ``names`` present (not None) in a dict; lenient on shape."""
    if not isinstance(node, dict):
        return default
    for name in names:
        value = node.get(name)
        if value is not None:
            return value
    return default


def error_fields(body: Any) -> tuple[str, str, str]:
    """(code, message, request id) of an error body of any of the shapes above."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = {**body, **body["error"]}

    def pick(names: tuple[str, ...]) -> str:
        for name in names:
            value = body.get(name) if isinstance(body, dict) else None
            if value not in (None, "") and not isinstance(value, dict | list):
                return str(value)
        return ""

    return pick(ERR_CODE)[:120], pick(ERR_MESSAGE)[:400], pick(ERR_REQUEST_ID)[:80]
