import datetime as dt

import pytest

from calsync.connectors.graph import normalize_event, parse_graph_datetime


def graph_event(**kw):
    base = {
        "id": "AAMk1",
        "iCalUId": "040000008200E0",
        "subject": "周会",
        "start": {"dateTime": "2026-12-01T02:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2026-12-01T03:00:00.0000000", "timeZone": "UTC"},
        "isAllDay": False,
        "originalStartTimeZone": "China Standard Time",
        "organizer": {"emailAddress": {"address": "Boss@Contoso.com", "name": "Boss"}},
        "attendees": [
            {
                "type": "required",
                "status": {"response": "accepted"},
                "emailAddress": {"address": "a@contoso.com", "name": "A"},
            },
            {"type": "resource", "emailAddress": {"address": "", "name": "no address"}},
        ],
        "location": {
            "displayName": "一楼会议室101",
            "locationEmailAddress": "Meeting01@contoso.com",
        },
        "body": {"contentType": "html", "content": "<p>hi</p>"},
        "type": "singleInstance",
        "changeKey": "ck1",
    }
    base.update(kw)
    return base


def test_timed_event_is_utc_with_its_zone_mapped_to_iana():
    ev = normalize_event(graph_event(), "UTC")
    assert ev.start == dt.datetime(2026, 12, 1, 2, tzinfo=dt.UTC)
    assert ev.timezone == "Asia/Shanghai"
    assert ev.organizer.email == "boss@contoso.com"
    assert [a.email for a in ev.attendees] == ["a@contoso.com", "meeting01@contoso.com"]
    assert ev.attendees[1].kind == "resource"
    assert ev.body_type == "html" and ev.identity_key == "040000008200E0"


def test_all_day_is_taken_as_dates_never_converted():
    ev = normalize_event(
        graph_event(
            isAllDay=True,
            start={"dateTime": "2026-12-24T00:00:00.0000000", "timeZone": "UTC"},
            end={"dateTime": "2026-12-26T00:00:00.0000000", "timeZone": "UTC"},
        ),
        "Pacific/Auckland",
    )
    assert ev.all_day and ev.start is None
    assert (ev.start_date, ev.end_date) == (dt.date(2026, 12, 24), dt.date(2026, 12, 26))


def test_occurrence_identity_includes_original_start():
    ev = normalize_event(
        graph_event(type="occurrence", seriesMasterId="M1", originalStart="2026-12-01T02:00:00Z"),
        "UTC",
    )
    assert ev.series_id == "M1"
    assert ev.identity_key == "040000008200E0|2026-12-01T02:00:00+00:00"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"end": {"dateTime": "2026-12-01T01:00:00.0000000", "timeZone": "UTC"}}, "before start"),
        ({"start": None}, "without start"),
        ({"id": None}, "without an id"),
    ],
)
def test_bad_events_raise_with_the_reason(patch, message):
    with pytest.raises(ValueError, match=message):
        normalize_event(graph_event(**patch), "UTC")


def test_unknown_original_zone_falls_back_to_the_integration_zone():
    ev = normalize_event(
        graph_event(originalStartTimeZone="Nowhere Standard Time"), "Europe/Berlin"
    )
    assert ev.timezone == "Europe/Berlin"


def test_graph_datetime_precision_and_offsets():
    assert parse_graph_datetime("2026-03-08T07:00:00.1234567") == dt.datetime(
        2026, 3, 8, 7, 0, 0, 123456, tzinfo=dt.UTC
    )
    assert parse_graph_datetime("2026-03-08T07:00:00+08:00") == dt.datetime(
        2026, 3, 7, 23, tzinfo=dt.UTC
    )
