"""The Graph emulator over real HTTPS: login, auth, calendarView (window, paging, time zones,
series), delivery to attendees, writes, faults and throttling, control API and CLI."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from emulators.graph import GraphEmulator
from emulators.graph.recurrence import occurrence_dates
from emulators.tls import ensure_tls
from tests.emulators.conftest import GraphClient

ROOT = Path(__file__).resolve().parents[2]
A, B, C, ROOM = "alice@contoso.com", "bob@contoso.com", "carol@contoso.com", "room1@contoso.com"
PROP = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name calsync_oa_id"


def event(subject: str, start: str, end: str, zone: str = "UTC", **fields: Any) -> dict[str, Any]:
    return {
        "subject": subject,
        "start": {"dateTime": start, "timeZone": zone},
        "end": {"dateTime": end, "timeZone": zone},
        **fields,
    }


def person(address: str, kind: str = "required") -> dict[str, Any]:
    return {"type": kind, "emailAddress": {"address": address, "name": address.split("@")[0]}}


def day_event(subject: str, day: str, zone: str = "Asia/Shanghai") -> dict[str, Any]:
    first = dt.date.fromisoformat(day)
    return event(
        subject,
        f"{first}T00:00:00",
        f"{first + dt.timedelta(days=1)}T00:00:00",
        zone,
        isAllDay=True,
    )


# --- TLS ------------------------------------------------------------------------------------


def test_tls_files_are_made_once_and_reused(tmp_path: Path) -> None:
    first = ensure_tls(tmp_path)
    cert_bytes = first.cert_file.read_bytes()
    again = ensure_tls(tmp_path)
    assert again == first and again.cert_file.read_bytes() == cert_bytes
    cert = x509.load_pem_x509_certificate(cert_bytes)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    first.cert_file.write_text("garbage")
    assert ensure_tls(tmp_path).cert_file.read_bytes() not in (b"garbage", cert_bytes)


# --- login and auth -------------------------------------------------------------------------


def test_token_endpoint_issues_tokens_and_refuses_bad_clients(client: GraphClient) -> None:
    good = client.request_token()
    assert good.status_code == 200
    body = good.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599
    assert body["ext_expires_in"] == 3599 and len(body["access_token"]) > 30
    assert client.request_token().json()["access_token"] != body["access_token"]

    bad = client.request_token(client_secret="wr0ng-Secret-value")
    assert bad.status_code == 401
    assert bad.json()["error"] == "invalid_client"
    assert "AADSTS7000215" in bad.json()["error_description"]
    assert "wr0ng-Secret-value" not in bad.text and "s3cr3t" not in bad.text

    unknown = client.request_token(client_id="someone-else")
    assert unknown.status_code == 401 and "AADSTS700016" in unknown.json()["error_description"]
    assert "s3cr3t" not in unknown.text
    assert client.request_token(grant_type="password").json()["error"] == "unsupported_grant_type"
    assert client.request_token(scope="User.Read").json()["error"] == "invalid_scope"
    other_tenant = client.http.post(
        f"{client.emu.authority}/tenant-2/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": "calsync-client"},
    )
    assert other_tenant.status_code == 400


def test_api_requires_a_valid_bearer_token(client: GraphClient, emu: GraphEmulator) -> None:
    path = f"users/{A}/calendarView"
    params = {"startDateTime": "2026-12-01T00:00:00Z", "endDateTime": "2026-12-02T00:00:00Z"}
    anonymous = client.call("GET", path, auth=False, params=params)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "InvalidAuthenticationToken"
    forged = client.call(
        "GET", path, auth=False, params=params, headers={"Authorization": "Bearer x"}
    )
    assert forged.status_code == 401
    assert client.call("GET", path, params=params).status_code == 200

    emu.expire_tokens()
    expired = client.call("GET", path, params=params)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    client._token = None  # a new token works again
    assert client.call("GET", path, params=params).status_code == 200


# --- calendarView -----------------------------------------------------------------------------


def test_calendar_view_returns_what_overlaps_the_window(
    client: GraphClient, emu: GraphEmulator
) -> None:
    day = "2026-12-01"
    for subject, start, end in [
        ("ends at window start", "09:00", "10:00"),
        ("starts at window end", "12:00", "13:00"),
        ("spans the window", "08:00", "14:00"),
        ("inside", "10:30", "11:00"),
        ("overlaps the start", "09:30", "10:30"),
        ("zero length at start", "10:00", "10:00"),
        ("zero length at end", "12:00", "12:00"),
    ]:
        emu.store.add_event(A, event(subject, f"{day}T{start}:00", f"{day}T{end}:00"))
    emu.store.add_event(A, event("next day", "2026-12-02T10:30:00", "2026-12-02T11:00:00"))
    emu.store.add_event(
        A, event("shanghai 18:45", f"{day}T18:45:00", f"{day}T19:00:00", "Asia/Shanghai")
    )
    emu.store.add_event(B, event("bob's", f"{day}T10:30:00", f"{day}T11:00:00"))
    expected = [  # sorted by start
        "spans the window",
        "overlaps the start",
        "zero length at start",
        "inside",
        "shanghai 18:45",
    ]
    for start, end in [
        ("2026-12-01T10:00:00Z", "2026-12-01T12:00:00Z"),
        ("2026-12-01T18:00:00+08:00", "2026-12-01T20:00:00+08:00"),
        ("2026-12-01T10:00:00", "2026-12-01T12:00:00"),  # no offset: UTC
        ("2026-12-01T10:00:00.0000000Z", "2026-12-01T12:00:00.0000000Z"),
    ]:
        events, _ = client.view(A, start, end)
        assert [e["subject"] for e in events] == expected, (start, end)


def test_calendar_view_errors(client: GraphClient) -> None:
    missing = client.call("GET", f"users/{A}/calendarView", params={"startDateTime": "2026-12-01"})
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "ErrorInvalidParameter"
    garbage = client.call(
        "GET",
        f"users/{A}/calendarView",
        params={"startDateTime": "yesterday", "endDateTime": "2026-12-02T00:00:00Z"},
    )
    assert garbage.status_code == 400
    unknown = client.call(
        "GET",
        "users/nobody@contoso.com/calendarView",
        params={"startDateTime": "2026-12-01T00:00:00Z", "endDateTime": "2026-12-02T00:00:00Z"},
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        **unknown.json()["error"],
        "code": "ErrorInvalidUser",
        "message": "The requested user 'nobody@contoso.com' is invalid.",
    }


def test_paging_follows_next_links_without_loss_or_duplicates(
    client: GraphClient, emu: GraphEmulator
) -> None:
    made = [
        emu.store.add_event(  # pairs share a start: ties are ordered by id
            A, event(f"e{i:02}", f"2026-12-01T{i // 2:02}:00:00", f"2026-12-01T{i // 2:02}:30:00")
        )
        for i in range(23)
    ]
    window = ("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z")
    events, pages = client.view(A, *window, prefer="odata.maxpagesize=5", top="7")
    assert [len(p.json()["value"]) for p in pages] == [5, 5, 5, 5, 3]
    assert "odata.maxpagesize=5" in pages[0].headers["Preference-Applied"]
    for page in pages[:-1]:
        link = page.json()["@odata.nextLink"]
        assert link.startswith(f"{emu.base_url}users/{A}/calendarView?") and "$skiptoken=" in link
    assert "@odata.nextLink" not in pages[-1].json()
    ids = [e["id"] for e in events]
    assert sorted(ids) == sorted(m["id"] for m in made) and len(set(ids)) == 23
    starts = [(e["start"]["dateTime"], e["id"]) for e in events]
    assert starts == sorted(starts)
    again, _ = client.view(A, *window, top="4")
    assert [e["id"] for e in again] == ids

    # a change while paging neither repeats nor loses the unchanged events
    first = client.call(
        "GET",
        f"users/{A}/calendarView",
        params={"startDateTime": window[0], "endDateTime": window[1], "$top": "6"},
    ).json()
    emu.store.add_event(A, event("early newcomer", "2026-12-01T00:00:00", "2026-12-01T00:05:00"))
    emu.store.delete_event(A, ids[-1])
    seen = [e["id"] for e in first["value"]]
    link = first["@odata.nextLink"]
    while link:
        page = client.call("GET", link).json()
        seen += [e["id"] for e in page["value"]]
        link = page.get("@odata.nextLink")
    assert seen == ids[:-1]


@pytest.mark.parametrize(
    ("prefer_zone", "label", "timed_start"),
    [
        (None, "UTC", "2026-12-01T01:00:00.0000000"),
        ("UTC", "UTC", "2026-12-01T01:00:00.0000000"),
        ("Asia/Shanghai", "Asia/Shanghai", "2026-12-01T09:00:00.0000000"),
        ("America/New_York", "America/New_York", "2026-11-30T20:00:00.0000000"),
        ("China Standard Time", "China Standard Time", "2026-12-01T09:00:00.0000000"),
    ],
)
def test_prefer_timezone_renders_timed_events_and_never_shifts_all_day(
    client: GraphClient, emu: GraphEmulator, prefer_zone: str | None, label: str, timed_start: str
) -> None:
    emu.store.add_event(
        A, event("timed", "2026-12-01T09:00:00", "2026-12-01T10:00:00", "Asia/Shanghai")
    )
    emu.store.add_event(A, day_event("all day", "2026-12-02"))
    prefer = f'outlook.timezone="{prefer_zone}"' if prefer_zone else None
    events, pages = client.view(A, "2026-11-30T00:00:00Z", "2026-12-04T00:00:00Z", prefer=prefer)
    timed, all_day = events
    assert timed["start"] == {"dateTime": timed_start, "timeZone": label}
    assert timed["originalStartTimeZone"] == "Asia/Shanghai"
    assert all_day["isAllDay"] is True
    assert all_day["start"] == {"dateTime": "2026-12-02T00:00:00.0000000", "timeZone": label}
    assert all_day["end"] == {"dateTime": "2026-12-03T00:00:00.0000000", "timeZone": label}
    applied = pages[0].headers.get("Preference-Applied")
    assert applied == (f'outlook.timezone="{prefer_zone}"' if prefer_zone else None)


# --- series ---------------------------------------------------------------------------------


def test_daily_series_with_an_exception_and_a_cancelled_occurrence(
    client: GraphClient, emu: GraphEmulator
) -> None:
    master = emu.store.add_event(
        A,
        event(
            "Stand-up",
            "2026-12-01T09:30:00",
            "2026-12-01T09:45:00",
            "Asia/Shanghai",
            attendees=[person(B)],
            recurrence={
                "pattern": {"type": "daily", "interval": 1},
                "range": {"type": "numbered", "startDate": "2026-12-01", "numberOfOccurrences": 5},
            },
        ),
    )
    emu.store.modify_occurrence(
        A,
        master["id"],
        dt.date(2026, 12, 3),
        {
            "subject": "Stand-up (moved)",
            "start": {"dateTime": "2026-12-03T11:00:00", "timeZone": "Asia/Shanghai"},
            "end": {"dateTime": "2026-12-03T11:15:00", "timeZone": "Asia/Shanghai"},
        },
    )
    emu.store.modify_occurrence(  # only the start: the occurrence keeps its own end
        A, master["id"], "2026-12-05", {"start": {"dateTime": "2026-12-05T09:00:00+08:00"}}
    )
    emu.store.cancel_occurrence(A, master["id"], "2026-12-04T09:30:00")  # wall time, series zone
    prefer = 'outlook.timezone="Asia/Shanghai"'
    window = ("2026-11-30T00:00:00Z", "2026-12-10T00:00:00Z")
    events, _ = client.view(A, *window, prefer=prefer)
    assert [(e["start"]["dateTime"][:16], e["type"]) for e in events] == [
        ("2026-12-01T09:30", "occurrence"),
        ("2026-12-02T09:30", "occurrence"),
        ("2026-12-03T11:00", "exception"),
        ("2026-12-05T09:00", "exception"),  # numbered: the cancelled one still counts
    ]
    assert events[3]["end"]["dateTime"] == "2026-12-05T09:45:00.0000000"
    assert {e["seriesMasterId"] for e in events} == {master["id"]}
    assert events[2]["subject"] == "Stand-up (moved)"
    assert events[2]["originalStart"] == "2026-12-03T01:30:00Z"
    uids = [e["iCalUId"] for e in events]
    assert len(set(uids)) == 4 and master["iCalUId"] not in uids
    assert len({e["id"] for e in events} | {master["id"]}) == 5
    again, _ = client.view(A, *window, prefer=prefer)
    assert [(e["id"], e["iCalUId"]) for e in again] == [(e["id"], e["iCalUId"]) for e in events]
    one = client.call("GET", f"users/{A}/events/{events[1]['id']}", prefer=prefer)
    assert one.status_code == 200 and one.json()["start"] == events[1]["start"]
    assert client.call("GET", f"users/{A}/events/{master['id']}").json()["type"] == "seriesMaster"

    # Bob's copy: same occurrence uids, the move arrived, the cancelled one shows as cancelled
    bob, _ = client.view(B, *window, prefer=prefer)
    assert [e["iCalUId"] for e in bob if not e["isCancelled"]] == uids
    (cancelled,) = [e for e in bob if e["isCancelled"]]
    assert cancelled["originalStart"] == "2026-12-04T01:30:00Z"
    assert cancelled["subject"] == "Canceled: Stand-up"
    assert [e["subject"] for e in bob if e["type"] == "exception" and not e["isCancelled"]] == [
        "Stand-up (moved)",
        "Stand-up",
    ]


def test_weekly_series_keeps_its_wall_time_across_a_dst_change(
    client: GraphClient, emu: GraphEmulator
) -> None:
    emu.store.add_event(
        A,
        event(
            "Weekly NY",
            "2026-10-26T09:00:00",
            "2026-10-26T10:00:00",
            "America/New_York",
            recurrence={
                "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
                "range": {"type": "endDate", "startDate": "2026-10-26", "endDate": "2026-11-16"},
            },
        ),
    )
    window = ("2026-10-01T00:00:00Z", "2026-12-01T00:00:00Z")
    utc, _ = client.view(A, *window, prefer='outlook.timezone="UTC"')
    assert [e["start"]["dateTime"] for e in utc] == [
        "2026-10-26T13:00:00.0000000",  # EDT
        "2026-11-02T14:00:00.0000000",  # EST from 1 November
        "2026-11-09T14:00:00.0000000",
        "2026-11-16T14:00:00.0000000",
    ]
    local, _ = client.view(A, *window, prefer='outlook.timezone="America/New_York"')
    assert {e["start"]["dateTime"][11:] for e in local} == {"09:00:00.0000000"}
    assert {e["end"]["dateTime"][11:] for e in local} == {"10:00:00.0000000"}


def _dates(recurrence: dict[str, Any], until: str = "2027-12-31") -> list[str]:
    return [d.isoformat() for d in occurrence_dates(recurrence, dt.date.fromisoformat(until))]


def test_recurrence_patterns() -> None:
    every_other_day = {
        "pattern": {"type": "daily", "interval": 2},
        "range": {"type": "numbered", "startDate": "2026-12-01", "numberOfOccurrences": 3},
    }
    assert _dates(every_other_day) == ["2026-12-01", "2026-12-03", "2026-12-05"]
    tue_thu_fortnightly = {
        "pattern": {"type": "weekly", "interval": 2, "daysOfWeek": ["thursday", "tuesday"]},
        "range": {"type": "endDate", "startDate": "2026-12-01", "endDate": "2026-12-31"},
    }
    assert _dates(tue_thu_fortnightly) == [
        "2026-12-01",
        "2026-12-03",
        "2026-12-15",
        "2026-12-17",
        "2026-12-29",
        "2026-12-31",
    ]
    month_end = {
        "pattern": {"type": "absoluteMonthly", "interval": 1, "dayOfMonth": 31},
        "range": {"type": "numbered", "startDate": "2026-01-31", "numberOfOccurrences": 4},
    }
    assert _dates(month_end) == ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30"]
    last_friday = {
        "pattern": {
            "type": "relativeMonthly",
            "interval": 1,
            "daysOfWeek": ["friday"],
            "index": "last",
        },
        "range": {"type": "noEnd", "startDate": "2026-12-01"},
    }
    assert _dates(last_friday, until="2027-02-28") == ["2026-12-25", "2027-01-29", "2027-02-26"]


# --- delivery and writes --------------------------------------------------------------------


def test_delivery_gives_attendees_copies_with_the_same_ical_uid(emu: GraphEmulator) -> None:
    meeting = emu.store.add_event(
        A,
        event(
            "Review",
            "2026-12-01T09:00:00",
            "2026-12-01T10:00:00",
            attendees=[person(B), person(ROOM, "resource"), person("partner@fabrikam.com")],
        ),
    )
    assert meeting["isOrganizer"] is True and meeting["type"] == "singleInstance"
    (bob,) = emu.store.events(B)
    (room,) = emu.store.events(ROOM)
    assert emu.store.events(C) == []
    for copy in (bob, room):
        assert copy["iCalUId"] == meeting["iCalUId"] and copy["id"] != meeting["id"]
        assert copy["isOrganizer"] is False
        assert copy["organizer"]["emailAddress"]["address"] == A
    assert (bob["responseStatus"]["response"], bob["showAs"]) == ("notResponded", "tentative")
    assert room["responseStatus"]["response"] == "accepted"
    assert emu.stats["invitations_sent"] == {A: 3}

    updated = emu.store.update_event(A, meeting["id"], {"subject": "Review v2"})
    assert updated["changeKey"] != meeting["changeKey"]
    assert emu.store.events(B)[0]["subject"] == "Review v2"
    assert emu.store.events(B)[0]["changeKey"] != bob["changeKey"]
    assert emu.stats["updates_sent"] == {A: 3}

    emu.store.update_event(A, meeting["id"], {"attendees": [person(C), person(ROOM, "resource")]})
    assert emu.store.events(B)[0]["isCancelled"] is True  # dropped from the meeting
    assert emu.store.events(C)[0]["iCalUId"] == meeting["iCalUId"]

    emu.store.delete_event(A, meeting["id"])
    assert emu.store.events(A) == []
    for mailbox in (C, ROOM):
        (left,) = emu.store.events(mailbox)
        assert left["isCancelled"] is True and left["subject"] == "Canceled: Review v2"
    assert emu.stats["cancellations_sent"] == {A: 2 + 2}  # bob + partner, then carol + room

    moved = emu.store.add_event(A, event("Move me", "2026-12-02T09:00:00", "2026-12-02T10:00:00"))
    new_id = emu.store.move_event(A, moved["id"])
    assert new_id != moved["id"] and [e["id"] for e in emu.store.events(A)] == [new_id]
    assert emu.store.events(A)[0]["iCalUId"] == moved["iCalUId"]


def test_stored_items_share_nothing_with_the_request_or_each_other(emu: GraphEmulator) -> None:
    body = event(
        "Shared",
        "2026-12-01T09:00:00",
        "2026-12-01T10:00:00",
        attendees=[person(B), person(C)],
        categories=["Blue"],
    )
    meeting = emu.store.add_event(A, body)
    body["attendees"][0]["emailAddress"]["name"] = "changed in the request"
    body["categories"].append("Red")
    emu.store.update_event(B, emu.store.events(B)[0]["id"], {"categories": ["Green"]})
    carol = emu.store.events(C)[0]
    carol["attendees"].clear()  # a rendered copy is the caller's to change

    assert emu.store.events(A)[0]["attendees"][0]["emailAddress"]["name"] == "bob"
    assert emu.store.events(A)[0]["categories"] == ["Blue"] == meeting["categories"]
    assert emu.store.events(B)[0]["categories"] == ["Green"]
    assert emu.store.events(C)[0]["categories"] == []
    assert len(emu.store.events(C)[0]["attendees"]) == 2


def test_transaction_id_makes_create_idempotent(client: GraphClient, emu: GraphEmulator) -> None:
    body = event(
        "Created by calsync",
        "2026-12-01T09:00:00",
        "2026-12-01T10:00:00",
        "Asia/Shanghai",
        attendees=[person(B)],
        transactionId="calsync-oa-42",
    )
    first = client.call("POST", f"users/{A}/events", json=body)
    second = client.call("POST", f"users/{A}/events", json=body)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["transactionId"] == "calsync-oa-42"
    assert len(emu.store.events(A)) == 1 and len(emu.store.events(B)) == 1
    assert emu.stats["invitations_sent"] == {A: 1}
    assert emu.stats["transaction_replays"] == 1
    other = client.call("POST", f"users/{A}/events", json={**body, "transactionId": "other"})
    assert other.json()["id"] != first.json()["id"] and len(emu.store.events(A)) == 2


def test_get_patch_delete_and_extended_properties(client: GraphClient, emu: GraphEmulator) -> None:
    created = client.call(
        "POST",
        f"users/{A}/events",
        json=event(
            "With marker",
            "2026-12-01T09:00:00",
            "2026-12-01T10:00:00",
            singleValueExtendedProperties=[{"id": PROP, "value": "oa-42"}],
        ),
    ).json()
    event_id = created["id"]
    plain = client.call("GET", f"users/{A}/events/{event_id}").json()
    assert "singleValueExtendedProperties" not in plain
    expanded = client.call(
        "GET",
        f"users/{A}/events/{event_id}",
        params={"$expand": f"singleValueExtendedProperties($filter=id eq '{PROP}')"},
    ).json()
    assert expanded["singleValueExtendedProperties"] == [{"id": PROP, "value": "oa-42"}]

    def lookup(value: str) -> list[str]:
        flt = f"singleValueExtendedProperties/any(ep: ep/id eq '{PROP}' and ep/value eq '{value}')"
        response = client.call("GET", f"users/{A}/events", params={"$filter": flt})
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.json()["value"]]

    assert lookup("oa-42") == [event_id] and lookup("oa-43") == []

    patched = client.call(
        "PATCH",
        f"users/{A}/events/{event_id}",
        json={"subject": "Renamed"},
        prefer='IdType="ImmutableId"',
    )
    assert patched.status_code == 200 and patched.json()["subject"] == "Renamed"
    assert patched.json()["changeKey"] != created["changeKey"]
    assert 'IdType="ImmutableId"' in patched.headers["Preference-Applied"]
    assert client.call("DELETE", f"users/{A}/events/{event_id}").status_code == 204
    gone = client.call("GET", f"users/{A}/events/{event_id}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "ErrorItemNotFound"
    bad = client.call("POST", f"users/{A}/events", json={"subject": "no times"})
    assert bad.status_code == 400


# --- faults and throttling --------------------------------------------------------------------


def _view_once(client: GraphClient, mailbox: str = A) -> httpx.Response:
    return client.call(
        "GET",
        f"users/{mailbox}/calendarView",
        params={"startDateTime": "2026-12-01T00:00:00Z", "endDateTime": "2026-12-02T00:00:00Z"},
    )


def test_retry_after_is_given_and_early_returns_are_counted(
    client: GraphClient, emu: GraphEmulator
) -> None:
    emu.faults.retry_after_s = 0.2
    emu.faults.fail_next = [("calendarView", 503), ("nomatch", 500)]
    unavailable = _view_once(client)
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "0.2"
    assert unavailable.json()["error"]["code"] == "ServiceUnavailable"
    assert _view_once(client, B).status_code == 200  # another mailbox is not affected
    too_early = _view_once(client)
    assert too_early.status_code == 429 and "Retry-After" in too_early.headers
    time.sleep(0.25)
    assert _view_once(client).status_code == 200
    assert emu.faults.fail_next == [("nomatch", 500)]  # consumed once, the other kept

    emu.faults.rate_429 = 1.0
    emu.faults.retry_after_s = 1
    throttled = _view_once(client)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
    assert throttled.json()["error"]["code"] == "TooManyRequests"
    emu.faults.rate_429 = 0
    emu.throttle.reset()  # forget the 1 s window instead of waiting it out
    assert _view_once(client).status_code == 200
    stats = emu.stats.snapshot()
    assert (stats["unavailable_503"], stats["throttled_429"]) == (1, 2)
    assert stats["retry_after_violations"] == 1
    assert stats["by_kind"]["calendarView"] == 6


def test_per_mailbox_concurrency_limit(client: GraphClient, emu: GraphEmulator) -> None:
    emu.faults.per_mailbox_concurrency = 2
    emu.faults.latency_ms = 300
    client.token  # noqa: B018 - fetch the token before the threads start
    results: list[httpx.Response] = []
    barrier = threading.Barrier(6)

    def one(mailbox: str) -> None:
        barrier.wait()
        results.append(_view_once(client, mailbox))

    threads = [threading.Thread(target=one, args=(m,)) for m in [A] * 4 + [B] * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    by_mailbox: dict[str, list[int]] = {}
    for response in results:
        mailbox = response.request.url.path.split("/")[3]
        by_mailbox.setdefault(mailbox, []).append(response.status_code)
    assert sorted(by_mailbox[A]) == [200, 200, 429, 429]
    assert by_mailbox[B] == [200, 200]
    throttled = [r for r in results if r.status_code == 429]
    # the first refusal is the concurrency cap; a second one may already land in the
    # Retry-After window the first opened (then it counts as a violation)
    codes = sorted(r.json()["error"]["code"] for r in throttled)
    assert codes in (["ApplicationThrottled"] * 2, ["ApplicationThrottled", "TooManyRequests"])
    assert emu.stats["retry_after_violations"] == codes.count("TooManyRequests")
    assert {r.headers["Retry-After"] for r in throttled} == {"1"}
    seen = emu.stats["max_concurrency_seen"]  # peak in flight, the refused request included
    assert seen[A] in (3, 4) and seen[B] == 2


@pytest.mark.parametrize("shared", [False, True], ids=["own-clients", "one-shared-client"])
def test_many_concurrent_tls_clients(client: GraphClient, emu: GraphEmulator, shared: bool) -> None:
    """200 clients at once, each on a fresh TLS connection, all answered: the listen backlog
    holds the burst, and threads sharing one client open connections without the ALPN race
    (see ``emulators.tls.StableAlpnContext``)."""
    count = 200
    mailboxes = [f"load{i}@contoso.com" for i in range(count)]
    for address in mailboxes:
        emu.store.add_mailbox(address, address)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    clients = [
        GraphClient(emu, token=client.token, timeout=60, limits=limits)
        for _ in range(1 if shared else count)
    ]
    barrier = threading.Barrier(count)
    outcomes: list[int | str] = []

    def one(i: int) -> None:
        barrier.wait()
        try:
            outcomes.append(_view_once(clients[0 if shared else i], mailboxes[i]).status_code)
        except httpx.HTTPError as exc:
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for each in clients:
            each.close()
    assert sorted(outcomes, key=str) == [200] * count
    assert emu.stats["by_kind"]["calendarView"] == count


# --- control API, seed, CLI ------------------------------------------------------------------


def test_control_api(client: GraphClient, emu: GraphEmulator) -> None:
    control = f"{emu.authority}/_emulator"
    made = client.http.post(
        f"{control}/mailboxes/{C}/events?deliver=false",
        json=event("Quiet", "2026-12-01T09:00:00", "2026-12-01T10:00:00", attendees=[person(B)]),
    )
    assert made.status_code == 201 and emu.store.events(B) == []
    event_id = made.json()["id"]
    patched = client.http.patch(f"{control}/mailboxes/{C}/events/{event_id}", json={"subject": "X"})
    assert patched.json()["subject"] == "X"
    faults = client.http.post(f"{control}/faults", json={"fail_next": [["calendarView", 500]]})
    assert faults.json()["fail_next"] == [["calendarView", 500]]
    assert emu.faults.fail_next == [("calendarView", 500)]
    assert _view_once(client, C).status_code == 500
    assert client.http.delete(f"{control}/mailboxes/{C}/events/{event_id}").status_code == 204
    stats = client.http.get(f"{control}/stats").json()
    assert stats["by_kind"] == {"token": 1, "calendarView": 1}  # control calls are not counted
    seeded = client.http.post(
        f"{control}/seed",
        json={
            "mailboxes": {
                "dave@contoso.com": {
                    "events": [event("S", "2026-12-01T01:00:00", "2026-12-01T02:00:00")]
                }
            }
        },
    )
    assert seeded.json() == {"mailboxes": 1, "events": 1}
    assert client.http.post(f"{control}/reset").status_code == 200
    assert emu.store.mailboxes() == [] and emu.stats["requests"] == 0
    assert client.http.post(f"{control}/faults", json={"nonsense": 1}).status_code == 400


def test_seed_with_series_exceptions_and_delivery(emu: GraphEmulator) -> None:
    emu.reset()
    emu.seed(
        {
            "mailboxes": {
                A: {
                    "events": [
                        event(
                            "Daily",
                            "2026-12-01T09:00:00",
                            "2026-12-01T09:30:00",
                            "Asia/Shanghai",
                            iCalUId="seeded-uid-1",
                            attendees=[person(B)],
                            recurrence={
                                "pattern": {"type": "daily", "interval": 1},
                                "range": {
                                    "type": "endDate",
                                    "startDate": "2026-12-01",
                                    "endDate": "2026-12-05",
                                },
                            },
                            cancelledOccurrences=["2026-12-02"],
                            exceptionOccurrences=[
                                {"originalStart": "2026-12-03", "subject": "Daily*"}
                            ],
                        )
                    ]
                },
                B: {"displayName": "Bob B.", "events": []},  # exists before A's events arrive
            }
        }
    )
    (master,) = emu.store.events(A)
    assert master["type"] == "seriesMaster" and master["cancelledOccurrences"] == [
        "2026-12-02T01:00:00Z"
    ]
    assert [x["subject"] for x in master["exceptionOccurrences"]] == ["Daily*"]
    assert len(emu.store.events(B)) == 1
    assert emu.stats["invitations_sent"] == {}  # seeding sends no notifications
    lo = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    hi = dt.datetime(2026, 12, 10, tzinfo=dt.UTC)
    assert len(emu.store.calendar_view(A, lo, hi)) == 4
    bob = emu.store.calendar_view(B, lo, hi)
    assert [i.data["isCancelled"] for i in bob].count(True) == 1
    # a given iCalUId is kept; occurrences derive theirs from it and the original date
    assert master["iCalUId"] == "seeded-uid-1"
    uids = [f"seeded-uid-1_202612{d:02}" for d in (1, 2, 3, 4, 5)]
    assert [i.data["iCalUId"] for i in bob] == uids
    assert [i.data["iCalUId"] for i in emu.store.calendar_view(A, lo, hi)] == uids[:1] + uids[2:]


def test_demo_seed_loads(emu: GraphEmulator) -> None:
    from scripts.demo_data import graph_seed

    people = [(f"user{i}@contoso.com", f"User {i}") for i in range(5)]
    counts = emu.seed(graph_seed(dt.date(2026, 12, 1), people))
    assert counts["mailboxes"] == 7 and counts["events"] >= 8
    assert emu.store.events("meeting01@contoso.com")  # the room got its copy


def test_cli_runs_in_the_foreground_and_stops_on_sigterm(tmp_path: Path, tls_dir: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "mailboxes": {
                    A: {"events": [event("S", "2026-12-01T01:00:00", "2026-12-01T02:00:00")]}
                }
            }
        )
    )
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulators.graph",
            "--port",
            "0",
            "--tls-dir",
            str(tls_dir),
            "--seed",
            str(seed),
            "--state-file",
            str(state),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert json.loads(state.read_text()) == ready
        assert ready["base_url"] == f"https://127.0.0.1:{ready['port']}/v1.0/"
        assert ready["authority"] == f"https://127.0.0.1:{ready['port']}"
        conn = json.loads(ready["airflow_conn_json"])
        assert conn["conn_type"] == "msgraph" and conn["extra"]["verify"] == ready["ca_file"]
        import ssl

        verify = ssl.create_default_context(cafile=ready["ca_file"])
        with httpx.Client(verify=verify) as http:
            token = http.post(
                f"{ready['authority']}/tenant-1/oauth2/v2.0/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": "calsync-client",
                    "client_secret": "s3cr3t",
                    "scope": "https://graph.microsoft.com/.default",
                },
            ).json()["access_token"]
            view = http.get(
                f"{ready['base_url']}users/{A}/calendarView",
                params={
                    "startDateTime": "2026-12-01T00:00:00Z",
                    "endDateTime": "2026-12-02T00:00:00Z",
                },
                headers={"Authorization": f"Bearer {token}"},
            )
        assert [e["subject"] for e in view.json()["value"]] == ["S"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(5)
        finally:
            proc.kill()
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    assert not state.exists()
