"""The Alibaba Mail wire format against the vendor's public documentation, and the pure
functions of the connector: normalize_event (lenient on field names and time shapes),
event_payload, the body marker, the default-calendar choice and error bodies. No network.

What the stored documentation shows is request code, not JSON answers: the samples below are
the vendor's own lines (URLs, headers, the keys its code reads), copied with their source.
No vendor JSON sample of an event was available; event shapes are tested as the variants the
reader accepts (see ``calsync.connectors.alimail_wire``)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from calsync.connectors import alimail_wire as wire
from calsync.connectors.alimail import (
    add_marker,
    event_payload,
    normalize_event,
    pick_calendar,
    strip_marker,
)
from calsync.connectors.alimail_http import parse_retry_after, user_path
from calsync.connectors.base import EventWrite
from calsync.model import Attendee

UTC = dt.UTC

# --- the vendor's documentation ----------------------------------------------------------------

# https://help.aliyun.com/document_detail/2855420.html ("获取访问凭证", Python sample), verbatim:
DOC_TOKEN_LINES = """
    interface_url = "https://alimail-cn.aliyuncs.com/oauth2/v2.0/token"
    headers = {'Content-Type': 'application/x-www-form-urlencoded'}
    data = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": client_secret
    }
"""
# Same page, a key its code reads from the answer (the stored copy shows no JSON answer; that
# ``expires_in`` follows is cut off there and seen in public clients [P1]):
DOC_TOKEN_READ = """
        token_type = response_json["token_type"]
"""

# https://help.aliyun.com/document_detail/2856495.html ("获取日历、查询视图并获取日程"), verbatim:
DOC_CALENDAR_LINES = """
    url = f"https://alimail-cn.aliyuncs.com/v2/users/{v_name}/calendars"
    headers = {'Content-Type': 'application/json', 'Authorization': 'bearer ' + access_token}
    return response.json()["calendars"]
    url = f"https://alimail-cn.aliyuncs.com/v2/users/{v_name}/calendars/{v_calendar_id}/eventsview"
"""

# https://www.alibabacloud.com/help/zh/alibaba-mail/latest/api-access-server-address and
# https://help.aliyun.com/zh/document_detail/3022213.html, the "Host地址" rows:
DOC_HOSTS = """
alimail-sg.aliyuncs.com alimail-hk.aliyuncs.com alimail-de.aliyuncs.com alimail-us.aliyuncs.com
alimail-cn.aliyuncs.com mail-open.xc.aliyun.com
"""


def test_token_request_matches_the_documentation() -> None:
    assert f'"{wire.DEFAULT_ENDPOINT}{wire.TOKEN_PATH}"' in DOC_TOKEN_LINES
    assert f'"grant_type": "{wire.TOKEN_GRANT_TYPE}"' in DOC_TOKEN_LINES
    assert f'"{wire.TOKEN_FORM_ID}": client_id' in DOC_TOKEN_LINES
    assert f'"{wire.TOKEN_FORM_SECRET}": client_secret' in DOC_TOKEN_LINES
    assert "application/x-www-form-urlencoded" in DOC_TOKEN_LINES
    assert f'response_json["{wire.TOKEN_TYPE}"]' in DOC_TOKEN_READ


def test_calendar_paths_match_the_documentation() -> None:
    base = wire.DEFAULT_ENDPOINT
    calendars = base + wire.CALENDARS_PATH.replace("{user}", "{v_name}")
    view = base + wire.EVENT_VIEW_PATH.replace("{user}", "{v_name}").replace(
        "{calendar}", "{v_calendar_id}"
    )
    assert f'url = f"{calendars}"' in DOC_CALENDAR_LINES
    assert f'url = f"{view}"' in DOC_CALENDAR_LINES
    assert f'response.json()["{wire.CALENDARS_KEY}"]' in DOC_CALENDAR_LINES
    assert f"'Authorization': '{wire.AUTH_SCHEME} ' + access_token" in DOC_CALENDAR_LINES
    # Addresses go into the path as the documentation does it (the @ kept).
    assert user_path(wire.CALENDARS_PATH, "zhang.san@example.com") == (
        "/v2/users/zhang.san@example.com/calendars"
    )
    assert user_path(wire.EVENT_PATH, "a@b.cn", calendar="c/1", event="e 1").endswith(
        "/calendars/c%2F1/events/e%201"
    )


def test_region_hosts_match_the_documentation() -> None:
    hosts = {h.removeprefix("https://") for h in wire.REGION_ENDPOINTS.values()}
    assert hosts == set(DOC_HOSTS.split())


# --- events, as the reader accepts them -----------------------------------------------------------


def graph_like() -> dict[str, Any]:
    """The shape calsync writes and the emulator answers with."""
    return {
        "id": "ev_1",
        "calendarId": "cal_1",
        "iCalUId": "uid-1@alimail",
        "subject": "周会",
        "body": {"contentType": "text", "content": "议程\n\n[calsync:oa-3:17]"},
        "start": {"dateTime": "2026-12-02T09:00:00", "timeZone": "Asia/Shanghai"},
        "end": {"dateTime": "2026-12-02T10:30:00", "timeZone": "Asia/Shanghai"},
        "isAllDay": False,
        "location": {"displayName": "会议室01"},
        "organizer": {"email": "Zhang.San@Example.com", "name": "张三"},
        "attendees": [
            {
                "email": "li.si@example.com",
                "name": "李四",
                "type": "optional",
                "status": {"response": "Accepted"},
            },
            {"email": "room01@example.com", "name": "会议室01", "type": "resource"},
            {"email": "", "name": "nobody"},
        ],
        "changeKey": "ck1",
        "lastModifiedDateTime": "2026-11-30T08:00:00.1234567Z",
        "someNewField": {"ignored": True},
    }


def test_normalize_graph_like_event() -> None:
    event = normalize_event(graph_like(), "Asia/Shanghai")
    assert event.suite_id == "ev_1" and event.ical_uid == "uid-1@alimail"
    assert event.start == dt.datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
    assert event.end == dt.datetime(2026, 12, 2, 2, 30, tzinfo=UTC)
    assert not event.all_day and event.timezone == "Asia/Shanghai"
    assert event.body == "议程" and event.calsync_key == "oa-3:17"
    assert event.location == "会议室01"
    assert event.organizer == Attendee("zhang.san@example.com", "张三", "required", "organizer")
    assert event.attendees == [
        Attendee("li.si@example.com", "李四", "optional", "accepted"),
        Attendee("room01@example.com", "会议室01", "resource", "none"),
    ]
    assert event.change_key == "ck1"
    assert event.last_modified == dt.datetime(2026, 11, 30, 8, 0, 0, 123456, tzinfo=UTC)
    assert event.extra["calendar_id"] == "cal_1"


def test_normalize_other_naming_variants() -> None:
    google_like = {
        "eventId": "ev_2",
        "uid": "u2",
        "summary": "Offsite",
        "description": "<p>Bring laptops</p>",
        "start": {"date": "2026-12-05"},
        "end": {"date": "2026-12-06"},
        "location": "Hangzhou",
        "organizer": {"emailAddress": {"address": "Boss@Example.com", "name": "Boss"}},
        "attendees": [{"emailAddress": {"address": "a@example.com"}, "responseStatus": "declined"}],
        "status": "cancelled",
    }
    event = normalize_event(google_like, "Asia/Shanghai")
    assert event.suite_id == "ev_2" and event.subject == "Offsite"
    assert event.all_day and event.start is None and event.end is None
    assert (event.start_date, event.end_date) == (dt.date(2026, 12, 5), dt.date(2026, 12, 6))
    assert event.body_type == "html" and event.location == "Hangzhou"
    assert event.organizer is not None and event.organizer.email == "boss@example.com"
    assert event.attendees == [Attendee("a@example.com", "", "required", "declined")]
    assert event.is_cancelled


def test_normalize_times_offsets_millis_and_windows_zones() -> None:
    offset = {"id": "a", "start": "2026-12-02T09:00:00+08:00", "end": "2026-12-02T10:00:00Z"}
    event = normalize_event(offset, "Asia/Shanghai")
    assert event.start == dt.datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
    assert event.end == dt.datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    millis = {"id": "b", "startTime": 1796173200000, "endTime": 1796176800000}
    event = normalize_event(millis, "Asia/Shanghai")
    assert event.start == dt.datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
    windows = {
        "id": "c",
        "start": {"dateTime": "2026-07-01T09:00:00.0000000", "timeZone": "Pacific Standard Time"},
        "end": {"dateTime": "2026-07-01T10:00:00.0000000", "timeZone": "Pacific Standard Time"},
    }
    event = normalize_event(windows, "Asia/Shanghai")
    assert event.timezone == "America/Los_Angeles"
    assert event.start == dt.datetime(2026, 7, 1, 16, 0, tzinfo=UTC)  # PDT, UTC-7
    floating = {"id": "d", "start": "2026-12-02T09:00:00", "end": "2026-12-02T10:00:00"}
    assert normalize_event(floating, "Europe/Berlin").start == dt.datetime(
        2026, 12, 2, 8, 0, tzinfo=UTC
    )


def test_all_day_dates_are_never_shifted() -> None:
    midnight = {
        "id": "x",
        "isAllDay": True,
        "start": {"dateTime": "2026-12-31T00:00:00", "timeZone": "Pacific/Kiritimati"},
        "end": {"dateTime": "2027-01-01T00:00:00", "timeZone": "Pacific/Kiritimati"},
    }
    event = normalize_event(midnight, "Asia/Shanghai")
    assert (event.start_date, event.end_date) == (dt.date(2026, 12, 31), dt.date(2027, 1, 1))
    utc_rendered = {  # 2026-12-03 in Shanghai, sent as UTC instants
        "id": "z",
        "isAllDay": True,
        "timeZone": "Asia/Shanghai",
        "start": "2026-12-02T16:00:00Z",
        "end": "2026-12-03T16:00:00Z",
    }
    event = normalize_event(utc_rendered, "Europe/Berlin")
    assert (event.start_date, event.end_date) == (dt.date(2026, 12, 3), dt.date(2026, 12, 4))
    floating_utc = {
        "id": "w",
        "isAllDay": True,
        "start": "2026-12-03T00:00:00Z",
        "end": "2026-12-04T00:00:00Z",
    }
    event = normalize_event(floating_utc, "America/New_York")  # never the 2nd in New York
    assert (event.start_date, event.end_date) == (dt.date(2026, 12, 3), dt.date(2026, 12, 4))
    inclusive = {"id": "y", "allDay": True, "start": "2026-12-31", "end": "2026-12-31"}
    event = normalize_event(inclusive, "Asia/Shanghai")
    assert event.end_date == dt.date(2027, 1, 1)  # an inclusive end made exclusive


def test_occurrences_carry_series_and_original_start() -> None:
    item = {
        "id": "m_20261203",
        "subject": "standup",
        "type": "occurrence",
        "seriesMasterId": "m",
        "originalStart": "2026-12-03T01:00:00Z",
        "start": {"dateTime": "2026-12-03T09:00:00", "timeZone": "Asia/Shanghai"},
        "end": {"dateTime": "2026-12-03T09:15:00", "timeZone": "Asia/Shanghai"},
    }
    event = normalize_event(item, "Asia/Shanghai")
    assert event.series_id == "m" and event.event_type == "occurrence"
    assert event.original_start == dt.datetime(2026, 12, 3, 1, 0, tzinfo=UTC)
    assert event.identity_key.endswith("|2026-12-03T01:00:00+00:00")


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"subject": "no id", "start": "2026-12-01", "end": "2026-12-02"}, "without an id"),
        ({"id": "1", "start": {"dateTime": "2026-12-01T09:00:00"}}, "without start or end"),
        ({"id": "1", "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T09:00:00Z"}, "before"),
        ({"id": "1", "start": "2026-12-01T10:00:00Z", "end": "tomorrow"}, "Invalid"),
        ({"id": "1", "start": "2026-12-02", "end": "2026-12-02T10:00:00Z"}, "mixes"),
    ],
)
def test_unreadable_events_raise_value_error(item: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalize_event(item, "Asia/Shanghai")


# --- the marker --------------------------------------------------------------------------------


def test_marker_in_text_and_html_bodies() -> None:
    text = add_marker("Line 1\nLine 2", "text", "oa-1:5")
    assert text == "Line 1\nLine 2\n\n[calsync:oa-1:5]"
    assert strip_marker(text, "text") == ("Line 1\nLine 2", "oa-1:5")
    assert add_marker(text, "text", "oa-1:5") == text  # written again, never twice
    assert add_marker("", "text", "k") == "[calsync:k]"
    html = add_marker("<p>Hi</p>", "html", "oa-1:6")
    assert strip_marker(html, "html") == ("<p>Hi</p>", "oa-1:6")
    # A server that drops the paragraph's attributes or the whole element keeps the text.
    assert strip_marker("<p>Hi</p><div>[calsync:oa-1:6]</div>", "html") == (
        "<p>Hi</p><div></div>",
        "oa-1:6",
    )
    assert strip_marker("no marker here", "text") == ("no marker here", None)
    assert strip_marker("a\n\n[calsync:k]\nb", "text") == ("a\nb", "k")  # moved by a user
    assert add_marker("body", "text", "") == "body"
    with pytest.raises(ValueError, match="cannot carry"):
        add_marker("body", "text", "has space")


def test_payload_round_trips_through_the_reader() -> None:
    write = EventWrite(
        subject="评审",
        start=dt.datetime(2026, 12, 2, 1, 0, tzinfo=UTC),
        end=dt.datetime(2026, 12, 2, 2, 0, tzinfo=UTC),
        timezone="Europe/Berlin",
        location="3F",
        body="Agenda",
        attendees=[Attendee("b@example.com", "B"), Attendee("r@example.com", "", "resource")],
        key="oa-9:1",
    )
    payload = event_payload(write)
    assert payload["start"] == {"dateTime": "2026-12-02T02:00:00", "timeZone": "Europe/Berlin"}
    assert payload["body"]["content"].endswith("[calsync:oa-9:1]")
    assert payload["attendees"][1] == {
        "email": "r@example.com",
        "name": "r@example.com",
        "type": "resource",
    }
    read = normalize_event({"id": "n", **payload}, "Asia/Shanghai")
    assert (read.start, read.end) == (write.start, write.end)
    assert (read.body, read.calsync_key, read.location) == ("Agenda", "oa-9:1", "3F")
    all_day = EventWrite(
        subject="d",
        start=None,
        end=None,
        all_day=True,
        start_date=dt.date(2026, 12, 5),
        timezone="Asia/Shanghai",
    )
    payload = event_payload(all_day)
    assert payload["isAllDay"] is True
    assert payload["end"] == {"dateTime": "2026-12-06T00:00:00", "timeZone": "Asia/Shanghai"}


# --- calendars, errors, Retry-After ------------------------------------------------------------


def test_default_calendar_choice() -> None:
    flagged = [{"id": "1", "name": "Team"}, {"id": "2", "name": "我的日历", "isDefault": True}]
    assert pick_calendar(flagged, None)["id"] == "2"
    typed = [{"id": "1", "name": "x"}, {"id": "2", "name": "y", "type": "primary"}]
    assert pick_calendar(typed, None)["id"] == "2"
    named = [{"id": "1", "displayName": "Team"}, {"calendarId": "2", "displayName": "我的日历"}]
    assert pick_calendar(named, None)["calendarId"] == "2"
    assert pick_calendar([{"id": "9", "name": "only"}], None)["id"] == "9"
    assert pick_calendar(flagged, " team ")["id"] == "1"
    assert pick_calendar(flagged, "2")["id"] == "2"
    assert pick_calendar(flagged, "nope") is None
    assert pick_calendar([], None) is None


def test_error_bodies_of_every_known_shape() -> None:
    assert wire.error_fields({"code": "UserNotFound", "message": "m", "requestId": "r"}) == (
        "UserNotFound",
        "m",
        "r",
    )
    assert wire.error_fields(
        {"detailErrorCode": "INVALID", "message": "", "developerMessage": "dm"}
    ) == ("INVALID", "dm", "")
    assert wire.error_fields({"error": "invalid_client", "error_description": "bad"}) == (
        "invalid_client",
        "bad",
        "",
    )
    assert wire.error_fields({"error": {"code": "X", "message": "y"}})[:2] == ("X", "y")
    assert wire.error_fields(None) == ("", "", "")


def test_retry_after_values() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = (dt.datetime.now(UTC) + dt.timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 < parse_retry_after(later) <= 30  # type: ignore[operator]


def test_wire_module_is_the_only_place_with_paths() -> None:
    """The connector and the emulator take every path from alimail_wire."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for path in [
        root / "plugins/calsync/connectors/alimail.py",
        *sorted((root / "emulators/alimail").glob("*.py")),
    ]:
        assert not re.search(r"[\"']/v2/users", path.read_text(encoding="utf-8")), path


def test_version_fields_and_their_fallback() -> None:
    base = {
        "id": "e1",
        "subject": "s",
        "start": {"dateTime": "2026-12-01T09:00:00", "timeZone": "Asia/Shanghai"},
        "end": {"dateTime": "2026-12-01T10:00:00", "timeZone": "Asia/Shanghai"},
    }
    event = normalize_event(
        {**base, "changeKey": "ck1", "lastModifiedDateTime": "2026-12-01T01:02:03.456789Z"}, "UTC"
    )
    assert event.change_key == "ck1"
    assert event.last_modified == dt.datetime(2026, 12, 1, 1, 2, 3, 456789, tzinfo=UTC)
    # epoch milliseconds, and no version field: the modification time stands in for it
    event = normalize_event({**base, "updateTime": 1764550923000}, "UTC")
    assert event.last_modified == dt.datetime.fromtimestamp(1764550923, UTC)
    assert event.change_key == "lm:1764550923000"
    event = normalize_event({**base, "etag": "W/9"}, "UTC")
    assert (event.change_key, event.last_modified) == ("W/9", None)


def test_rooms_are_written_as_resource_attendees_and_read_back_as_rooms() -> None:
    write = EventWrite(
        subject="s",
        start=dt.datetime(2026, 12, 1, 1, tzinfo=UTC),
        end=dt.datetime(2026, 12, 1, 2, tzinfo=UTC),
        location="4F",
        attendees=[Attendee("b@example.com"), Attendee("room@example.com", "4F", "resource")],
    )
    payload = event_payload(write, "Asia/Shanghai")
    assert payload["attendees"][1] == {
        "email": "room@example.com",
        "name": "4F",
        "type": "resource",
    }
    assert payload["location"] == {"displayName": "4F"}
    for value in ("resource", "Room", "meetingRoom"):
        item = {**payload, "id": "e1", "attendees": [{"email": "r@example.com", "type": value}]}
        assert normalize_event(item, "UTC").attendees[0].kind == "resource"


def test_what_counts_as_an_event_that_is_gone() -> None:
    from calsync.connectors.alimail import _is_event_gone
    from calsync.connectors.alimail_http import ApiError

    assert _is_event_gone(ApiError(404, wire.CODE_EVENT_NOT_FOUND, "gone"))
    assert _is_event_gone(ApiError(404, "", "no body"))
    assert _is_event_gone(ApiError(400, "EventNotFound", "unknown id"))  # status aside
    assert not _is_event_gone(ApiError(404, wire.CODE_USER_NOT_FOUND, "no such user"))
    assert not _is_event_gone(ApiError(400, wire.CODE_INVALID_PARAMETER, "bad"))
