"""The Exchange connector against the EWS emulator: real exchangelib over real HTTPS.

Reads (window, series with modified/deleted occurrences, all-day, zones incl. DST), writes
(idempotent create, find by key, update in place, delete) in every invitation / delete /
cancellation mode with the emulator's records asserted, impersonation vs user mode, the
mailbox-domain check, NTLM, TLS trust, throttling within a bounded wait, SyncFolderItems
incremental reads, and no password in any error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from calsync.accounts import Account as PersonalAccount
from calsync.config import IntegrationConfig
from calsync.connectors.base import (
    CALSYNC_PROPERTY_NAME,
    CALSYNC_PROPERTY_SET,
    EventWrite,
    connector_for,
)
from calsync.connectors.exchange import ExchangeConnector, SyncState
from calsync.connectors.exchange_raw import T
from calsync.errors import AccountMissing, ConnectorError, MailboxNotFound
from calsync.model import Attendee, SuiteEvent, Window
from emulators.ews import EwsEmulator

A, B, C, ROOM, ZHAO = (
    "alice@contoso.com",
    "bob@contoso.com",
    "carol@contoso.com",
    "room1@contoso.com",
    "zhao4b@contoso.com",
)
SVC_LOGIN = "svc-calsync@contoso.com"
SVC_PASSWORD = "Ews-SVC-secret-9f3c-Zq7"  # distinctive: errors are scanned for it
CONN = "calsync_ews_test"
WINDOW = Window(dt.date(2026, 11, 30), dt.date(2026, 12, 6), "Asia/Shanghai")
R = TypeVar("R")


def run(coro: Coroutine[Any, Any, R]) -> R:
    return asyncio.run(coro)


def set_conn(conn_id: str, emu: EwsEmulator, login: str, password: str, **extra: Any) -> None:
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
        {
            "conn_type": "generic",
            "login": login,
            "password": password,
            "extra": {"max_wait_s": 5, "total_wait_s": 8, **extra},
        }
    )


@pytest.fixture(scope="module")
def ews_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EwsEmulator]:
    emu = EwsEmulator(
        tls_dir=tmp_path_factory.mktemp("ews-tls"),
        service_login=SVC_LOGIN,
        service_password=SVC_PASSWORD,
    ).start()
    set_conn(CONN, emu, SVC_LOGIN, SVC_PASSWORD)
    yield emu
    emu.stop()
    os.environ.pop(f"AIRFLOW_CONN_{CONN.upper()}", None)


@pytest.fixture
def emu(ews_server: EwsEmulator) -> EwsEmulator:
    ews_server.reset()
    for address in (A, B, C, ZHAO):
        ews_server.store.add_mailbox(address, address.split("@")[0].title())
    ews_server.store.add_mailbox(ROOM, "Room 1", kind="Room")
    return ews_server


def make_config(emu: EwsEmulator, conn_id: str = CONN, **exchange: Any) -> IntegrationConfig:
    return IntegrationConfig.model_validate(
        {
            "id": "ews_it",
            "name": "EWS integration test",
            "type": "exchange",
            "connection_id": conn_id,
            "timezone": exchange.pop("timezone", "Asia/Shanghai"),
            "execution": {"concurrency": 4},
            "exchange": {
                "server": emu.service_endpoint,
                "ca_bundle": str(emu.ca_file),
                **exchange,
            },
        }
    )


async def using(
    config: IntegrationConfig,
    work: Callable[[ExchangeConnector], Coroutine[Any, Any, R]],
    accounts: Any = None,
) -> R:
    connector = connector_for(config, accounts)
    assert isinstance(connector, ExchangeConnector)
    async with connector:
        return await work(connector)


def call(config: IntegrationConfig, method: str, *args: Any, accounts: Any = None) -> Any:
    return run(using(config, lambda c: getattr(c, method)(*args), accounts))


def seed_calendar(emu: EwsEmulator) -> dict[str, Any]:
    store = emu.store
    review = store.add_event(
        A,
        {
            "subject": "Review",
            "start": "2026-12-01T09:00:00",
            "end": "2026-12-01T10:00:00",
            "timezone": "China Standard Time",
            "location": "Room 1",
            "body": "<p>agenda</p>",
            "required_attendees": [B],
            "optional_attendees": [C],
            "resources": [ROOM],
            "sensitivity": "Private",
            "legacy_free_busy_status": "OOF",
            "categories": ["Blue"],
        },
    )
    daily = store.add_event(
        A,
        {
            "subject": "Stand-up",
            "start": "2026-12-01T11:00:00",
            "end": "2026-12-01T11:15:00",
            "timezone": "China Standard Time",
            "required_attendees": [B],
            "recurrence": {
                "pattern": {"type": "daily", "interval": 1},
                "range": {"type": "numbered", "numberOfOccurrences": 10},
            },
            "deleted_occurrences": ["2026-12-02T11:00:00"],
            "modified_occurrences": [
                {
                    "original_start": "2026-12-03T11:00:00",
                    "subject": "Stand-up (moved)",
                    "start": "2026-12-03T15:00:00",
                    "end": "2026-12-03T15:30:00",
                }
            ],
        },
    )
    holiday = store.add_event(
        A, {"subject": "Holiday", "start": "2026-12-04", "end": "2026-12-06", "timezone": "UTC"}
    )
    outside = store.add_event(
        A, {"subject": "Later", "start": "2026-12-20T09:00:00", "end": "2026-12-20T10:00:00"}
    )
    return {"review": review, "daily": daily, "holiday": holiday, "outside": outside}


# --- reading ------------------------------------------------------------------------------


def test_list_window_with_series_all_day_and_fields(emu: EwsEmulator) -> None:
    seeded = seed_calendar(emu)
    events = call(make_config(emu), "list_events", A, WINDOW)
    by_subject: dict[str, list[SuiteEvent]] = {}
    for event in events:
        by_subject.setdefault(event.subject, []).append(event)
    assert "Later" not in by_subject  # outside the window
    review = by_subject["Review"][0]
    assert review.suite_id == seeded["review"]["id"]
    assert review.start == dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)
    assert review.end == dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)
    assert review.timezone == "Asia/Shanghai"
    assert review.event_type == "singleInstance" and review.original_start is None
    assert review.ical_uid == seeded["review"]["uid"]
    assert review.organizer is not None and review.organizer.email == A
    assert {(a.email, a.kind) for a in review.attendees} == {
        (B, "required"),
        (C, "optional"),
        (ROOM, "resource"),
    }
    assert next(a for a in review.attendees if a.email == ROOM).response == "accepted"
    assert review.location == "Room 1"
    assert (review.body, review.body_type) == ("<p>agenda</p>", "html")
    assert (review.sensitivity, review.show_as, review.categories) == ("private", "oof", ["Blue"])
    assert review.change_key and review.last_modified is not None
    assert review.calsync_key is None
    # the series: 3 of the 5 window days (Dec 2 deleted), the moved one an exception
    standups = sorted(by_subject["Stand-up"], key=lambda e: e.start)
    moved = by_subject["Stand-up (moved)"]
    assert [e.start.day for e in standups] == [1, 4, 5, 6]
    assert len(moved) == 1 and moved[0].event_type == "exception"
    assert moved[0].start == dt.datetime(2026, 12, 3, 7, 0, tzinfo=dt.UTC)
    assert moved[0].original_start == dt.datetime(2026, 12, 3, 3, 0, tzinfo=dt.UTC)
    for event in [*standups, *moved]:
        assert event.series_id == seeded["daily"]["id"]
        assert event.ical_uid == seeded["daily"]["uid"]
        assert event.original_start is not None
    assert all(e.event_type == "occurrence" for e in standups)
    assert len({e.identity_key for e in [*standups, *moved]}) == 5
    # all-day: dates as entered, never shifted (created in UTC, read in a +08:00 window)
    holiday = by_subject["Holiday"][0]
    assert holiday.all_day and holiday.start is None and holiday.end is None
    assert (holiday.start_date, holiday.end_date) == (dt.date(2026, 12, 4), dt.date(2026, 12, 6))
    assert holiday.timezone == "Etc/UTC"


def test_dst_zone_series_and_all_day(emu: EwsEmulator) -> None:
    emu.store.add_event(
        A,
        {
            "subject": "Weekly Berlin",
            "start": "2026-03-23T09:00:00",
            "end": "2026-03-23T10:00:00",
            "timezone": "W. Europe Standard Time",
            "recurrence": {
                "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
                "range": {"type": "endDate", "endDate": "2026-04-06"},
            },
        },
    )
    emu.store.add_event(
        A,
        {
            "subject": "DST day off",
            "start": "2026-03-29",
            "end": "2026-03-30",
            "timezone": "Europe/Berlin",
        },
    )
    window = Window(dt.date(2026, 3, 20), dt.date(2026, 4, 10), "Europe/Berlin")
    events = call(make_config(emu, timezone="Europe/Berlin"), "list_events", A, window)
    weekly = sorted((e for e in events if e.subject == "Weekly Berlin"), key=lambda e: e.start)
    # 09:00 wall time is 08:00Z in CET and 07:00Z in CEST (from 29 March)
    assert [(e.start.month, e.start.day, e.start.hour) for e in weekly] == [
        (3, 23, 8),
        (3, 30, 7),
        (4, 6, 7),
    ]
    assert all(e.timezone == "Europe/Berlin" for e in weekly)
    day_off = next(e for e in events if e.subject == "DST day off")
    assert (day_off.start_date, day_off.end_date) == (dt.date(2026, 3, 29), dt.date(2026, 3, 30))


def test_window_read_from_raw_xml_equals_exchangelib_items(emu: EwsEmulator) -> None:
    """``_view`` reads GetItem answers straight from XML (``exchange_raw``); every field must
    be what ``normalize_item`` makes of exchangelib's CalendarItem for the same items."""
    import dataclasses

    from calsync.connectors.exchange import READ_FIELDS, normalize_item

    seed_calendar(emu)
    emu.store.add_event(
        B,
        {"subject": "Berlin day", "start": "2026-12-02", "end": "2026-12-04",
         "timezone": "Europe/Berlin"},
    )  # fmt: skip
    config = make_config(emu)
    start = dt.datetime(2026, 12, 3, 9, tzinfo=dt.UTC)
    marked = EventWrite(
        subject="Marked 标记",
        start=start,
        end=start + dt.timedelta(hours=1),
        body="line one\nline two",
        attendees=[Attendee(C, "Carol", "optional")],
        key="calsync:ews_it:42",
    )
    call(config, "create_event", B, marked)

    async def both(connector: ExchangeConnector) -> list[tuple[list[Any], list[Any]]]:
        def read(mailbox: str) -> tuple[list[Any], list[Any]]:
            account, _ = connector._account(mailbox)
            lo, hi = connector._ews_bounds(WINDOW)
            items = account.calendar.view(start=lo, end=hi).only(*READ_FIELDS)
            old = [normalize_item(i, config.timezone) for i in items]
            return old, connector._view(account, WINDOW)

        await connector.list_events(A, WINDOW)  # settings and connection loaded
        return [await asyncio.to_thread(read, m) for m in (A, B, C, ROOM)]

    compared: list[SuiteEvent] = []
    for old, new in run(using(config, both)):
        by_id = {e.suite_id: dataclasses.asdict(e) for e in new}
        assert len(by_id) == len(new) == len(old)
        for event in old:
            assert by_id[event.suite_id] == dataclasses.asdict(event)
            compared.append(event)
    # what was compared covers the cases: series, all-day in two zones, marker, attendees
    assert {e.event_type for e in compared} >= {"singleInstance", "occurrence", "exception"}
    assert {e.timezone for e in compared if e.all_day} >= {"Etc/UTC", "Europe/Berlin"}
    assert any(e.calsync_key == "calsync:ews_it:42" for e in compared)
    assert any(e.body_type == "text" for e in compared)
    assert any(a.kind == "resource" for e in compared for a in e.attendees)


def test_unknown_mailbox_is_mailbox_not_found(emu: EwsEmulator) -> None:
    with pytest.raises(MailboxNotFound):
        call(make_config(emu), "list_events", "nobody@contoso.com", WINDOW)


# --- writing ------------------------------------------------------------------------------


def oa_event(key: str = "oa-1", **fields: Any) -> EventWrite:
    values: dict[str, Any] = {
        "subject": "From the OA",
        "start": dt.datetime(2026, 12, 2, 2, 0, tzinfo=dt.UTC),
        "end": dt.datetime(2026, 12, 2, 3, 0, tzinfo=dt.UTC),
        "location": "Room 1",
        "body": "<p>details</p>",
        "body_type": "html",
        "attendees": [Attendee(B, "Bob"), Attendee(ROOM, "Room 1", "resource")],
        "key": key,
    }
    values.update(fields)
    return EventWrite(**values)


def records(emu: EwsEmulator, operation: str) -> list[Any]:
    return [r for r in emu.records if r.operation == operation]


def test_create_is_idempotent_found_by_key_updated_in_place_and_deleted(emu: EwsEmulator) -> None:
    config = make_config(emu)

    async def scenario(c: ExchangeConnector) -> dict[str, Any]:
        made = await c.create_event(A, oa_event())
        again = await c.create_event(A, oa_event())  # a retry after a crash
        found = await c.find_by_key(A, "oa-1")
        missing = await c.find_by_key(A, "no-such-key")
        changed = await c.update_event(A, made.suite_id, oa_event(subject="Renamed"))
        same = await c.update_event(A, made.suite_id, oa_event(subject="Renamed"))
        await c.delete_event(A, made.suite_id)
        await c.delete_event(A, made.suite_id)  # already gone: fine
        return locals()

    out = run(using(config, scenario))
    made, again, found = out["made"], out["again"], out["found"]
    assert made.calsync_key == "oa-1" and made.subject == "From the OA"
    assert again.suite_id == made.suite_id and found is not None
    assert found.suite_id == made.suite_id and out["missing"] is None
    assert len(records(emu, "CreateItem")) == 1
    assert made.start == dt.datetime(2026, 12, 2, 2, 0, tzinfo=dt.UTC)
    assert made.timezone == "Asia/Shanghai"
    assert (made.body, made.body_type, made.location) == ("<p>details</p>", "html", "Room 1")
    assert {(a.email, a.kind) for a in made.attendees} == {(B, "required"), (ROOM, "resource")}
    changed, same = out["changed"], out["same"]
    assert changed.suite_id == made.suite_id and changed.subject == "Renamed"
    assert changed.change_key != made.change_key
    updates = records(emu, "UpdateItem")
    assert len(updates) == 1 and updates[0].changed_fields == ["subject"]  # nothing else
    assert same.change_key == changed.change_key
    deletes = records(emu, "DeleteItem")
    assert [d.error for d in deletes] == [None, "ErrorItemNotFound"]
    assert emu.store.find_by_uid(A, made.ical_uid) == []


def test_a_create_is_one_request_and_describes_the_item_as_a_read_would(emu: EwsEmulator) -> None:
    """calsync sets the meeting's UID, so CreateItem's answer (id and change key) completes
    what was written: no GetItem after it. What it returns agrees with a read of the item, and
    the attendee's copy carries the same UID (one meeting for forward sync)."""
    config = make_config(emu, invitation_mode="SendOnlyToAll")
    write = oa_event(key="k-one", attendees=[Attendee(B, "Bob")])
    made = call(config, "create_event", A, write)
    assert emu.stats.by_operation["CreateItem"] == 1
    assert emu.stats.by_operation["GetItem"] == 0
    got = call(config, "get_event", A, made.suite_id)
    assert got is not None
    same = ("suite_id", "ical_uid", "identity_key", "change_key", "start", "end", "all_day",
            "start_date", "end_date", "timezone", "subject", "calsync_key")  # fmt: skip
    assert {f: getattr(made, f) for f in same} == {f: getattr(got, f) for f in same}
    assert made.organizer is not None and got.organizer is not None
    assert made.organizer.email == got.organizer.email == A
    assert [a.email for a in made.attendees] == [a.email for a in got.attendees] == [B]
    assert [c["id"] for c in emu.store.find_by_uid(B, made.ical_uid)]  # the invitation's copy


def test_created_item_carries_marker_zone_and_windows_name(emu: EwsEmulator) -> None:
    config = make_config(emu)  # the write's zone wins (the engine fills it from the config)
    write = oa_event(key="k-ny", attendees=[], timezone="America/New_York")
    made = call(config, "create_event", A, write)
    stored = emu.store.get(A, made.suite_id)
    assert stored["timezone"] == "Eastern Standard Time"  # the integration's zone, Windows name
    assert stored["extended_properties"] == [
        {
            "PropertySetId": CALSYNC_PROPERTY_SET,
            "PropertyName": CALSYNC_PROPERTY_NAME,
            "PropertyType": "String",
            "value": "k-ny",
        }
    ]
    assert made.timezone == "America/New_York"


def test_all_day_write_round_trip(emu: EwsEmulator) -> None:
    config = make_config(emu)
    event = oa_event(
        key="day",
        start=None,
        end=None,
        all_day=True,
        start_date=dt.date(2026, 12, 3),
        end_date=dt.date(2026, 12, 5),
        attendees=[],
    )
    made = call(config, "create_event", A, event)
    assert made.all_day and (made.start_date, made.end_date) == (
        dt.date(2026, 12, 3),
        dt.date(2026, 12, 5),
    )
    stored = emu.store.get(A, made.suite_id)
    assert (stored["start_date"], stored["end_date"]) == ("2026-12-03", "2026-12-05")
    assert stored["start"] == "2026-12-02T16:00:00Z"  # midnight in Shanghai
    moved = call(
        config,
        "update_event",
        A,
        made.suite_id,
        oa_event(
            key="day",
            start=None,
            end=None,
            all_day=True,
            start_date=dt.date(2026, 12, 4),
            end_date=dt.date(2026, 12, 5),
            attendees=[],
        ),
    )
    assert moved.suite_id == made.suite_id
    assert (moved.start_date, moved.end_date) == (dt.date(2026, 12, 4), dt.date(2026, 12, 5))


@pytest.mark.parametrize("mode", ["SendToNone", "SendOnlyToAll", "SendToAllAndSaveCopy"])
def test_invitation_modes_on_create_and_update(emu: EwsEmulator, mode: str) -> None:
    config = make_config(emu, invitation_mode=mode)
    attendees = [Attendee(B), Attendee("ext@partner.example"), Attendee(ROOM, kind="resource")]

    async def scenario(c: ExchangeConnector) -> SuiteEvent:
        made = await c.create_event(A, oa_event(attendees=attendees))
        await c.update_event(A, made.suite_id, oa_event(attendees=attendees, subject="Moved on"))
        return made

    made = run(using(config, scenario))
    create, update = records(emu, "CreateItem")[0], records(emu, "UpdateItem")[0]
    assert create.modes["SendMeetingInvitations"] == mode
    assert update.modes["SendMeetingInvitationsOrCancellations"] == mode
    assert create.login == SVC_LOGIN and create.impersonating == A
    bob_copies = emu.store.find_by_uid(B, made.ical_uid)
    if mode == "SendToNone":
        assert create.messages == [] and update.messages == []
        assert bob_copies == []  # only the organiser sees it
        assert emu.folder(A, "sentitems") == []
        return
    everyone = sorted([B, "ext@partner.example", ROOM])
    assert sorted(create.recipients("invitation")) == everyone
    assert sorted(update.recipients("update")) == everyone
    assert len(bob_copies) == 1 and bob_copies[0]["subject"] == "Moved on"
    assert bob_copies[0]["id"] != made.suite_id and bob_copies[0]["is_organizer"] is False
    assert [m["message_kind"] for m in emu.folder(B, "inbox")] == ["invitation", "update"]
    sent = emu.folder(A, "sentitems")
    if mode == "SendToAllAndSaveCopy":
        assert [s["message_kind"] for s in sent] == ["invitation", "update"]
        assert create.saved_copy_ids == [sent[0]["id"]]
    else:
        assert sent == [] and create.saved_copy_ids == []


@pytest.mark.parametrize(
    ("delete_mode", "folder"),
    [
        ("HardDelete", None),
        ("SoftDelete", "recoverableitemsdeletions"),
        ("MoveToDeletedItems", "deleteditems"),
    ],
)
def test_delete_modes(emu: EwsEmulator, delete_mode: str, folder: str | None) -> None:
    config = make_config(emu, delete_mode=delete_mode, invitation_mode="SendOnlyToAll")
    made = call(config, "create_event", A, oa_event(attendees=[]))
    call(config, "delete_event", A, made.suite_id)
    record = records(emu, "DeleteItem")[0]
    assert record.modes["DeleteType"] == delete_mode
    assert emu.folder(A, "calendar") == []
    where = {name: emu.folder(A, name) for name in ("deleteditems", "recoverableitemsdeletions")}
    if folder is None:
        assert record.deleted_to == "gone" and not any(where.values())
    else:
        assert record.deleted_to == folder
        assert [i["subject"] for i in where[folder]] == ["From the OA"]
        assert all(not items for name, items in where.items() if name != folder)


@pytest.mark.parametrize("mode", ["SendToNone", "SendOnlyToAll", "SendToAllAndSaveCopy"])
def test_cancellation_modes(emu: EwsEmulator, mode: str) -> None:
    config = make_config(emu, invitation_mode="SendOnlyToAll", cancellation_mode=mode)
    made = call(config, "create_event", A, oa_event(attendees=[Attendee(B), Attendee(C)]))
    call(config, "delete_event", A, made.suite_id)
    record = records(emu, "DeleteItem")[0]
    assert record.modes["SendMeetingCancellations"] == mode
    copies = emu.store.find_by_uid(B, made.ical_uid) + emu.store.find_by_uid(C, made.ical_uid)
    assert len(copies) == 2  # attendees keep an item either way...
    if mode == "SendToNone":  # ...still a live meeting to them
        assert record.messages == []
        assert all(not c["is_cancelled"] and c["subject"] == "From the OA" for c in copies)
        assert record.attendee_copies == {B: "kept", C: "kept"}
    else:  # ...shown as cancelled
        assert sorted(record.recipients("cancellation")) == [B, C]
        assert all(c["is_cancelled"] and c["subject"].startswith("Canceled: ") for c in copies)
    saved = [s for s in emu.folder(A, "sentitems") if s["message_kind"] == "cancellation"]
    assert len(saved) == (1 if mode == "SendToAllAndSaveCopy" else 0)


def test_update_of_one_occurrence_stays_in_place(emu: EwsEmulator) -> None:
    seed_calendar(emu)
    config = make_config(emu)
    events = call(config, "list_events", A, WINDOW)
    target = next(e for e in events if e.subject == "Stand-up" and e.start.day == 4)
    write = EventWrite(
        subject="Stand-up (longer)",
        start=target.start,
        end=target.start + dt.timedelta(minutes=45),
        attendees=[Attendee(B)],
    )
    changed = call(config, "update_event", A, target.suite_id, write)
    assert changed.suite_id == target.suite_id and changed.event_type == "exception"
    assert changed.original_start == target.original_start
    assert records(emu, "CreateItem") == [] and records(emu, "DeleteItem") == []


def test_get_event_of_occurrences_and_of_what_is_gone(emu: EwsEmulator) -> None:
    seeded = seed_calendar(emu)
    config = make_config(emu)
    events = call(config, "list_events", A, WINDOW)
    plain = next(e for e in events if e.subject == "Stand-up" and e.start.day == 4)
    moved = next(e for e in events if e.subject == "Stand-up (moved)")
    for listed in (plain, moved):
        got = call(config, "get_event", A, listed.suite_id)
        assert got is not None and got.suite_id == listed.suite_id
        assert (got.event_type, got.original_start) == (listed.event_type, listed.original_start)
        assert got.series_id == seeded["daily"]["id"]
        assert got.change_key == listed.change_key and got.last_modified == listed.last_modified
    review = call(config, "get_event", A, seeded["review"]["id"])
    assert review is not None and review.series_id is None
    assert {(a.email, a.kind) for a in review.attendees} >= {(ROOM, "resource")}
    call(config, "delete_event", A, plain.suite_id)  # one occurrence
    assert call(config, "get_event", A, plain.suite_id) is None
    call(config, "delete_event", A, seeded["review"]["id"])  # moved to Deleted Items: new id
    assert call(config, "get_event", A, seeded["review"]["id"]) is None


# --- access modes -------------------------------------------------------------------------


def test_impersonation_mode_acts_as_each_mailbox(emu: EwsEmulator) -> None:
    seed_calendar(emu)
    config = make_config(emu)

    async def scenario(c: ExchangeConnector) -> None:
        await asyncio.gather(c.list_events(A, WINDOW), c.list_events(B, WINDOW))
        await c.create_event(C, oa_event(attendees=[]))

    run(using(config, scenario))
    assert set(emu.stats.by_login) == {SVC_LOGIN}
    assert {A, B, C} <= set(emu.stats.by_mailbox)
    record = records(emu, "CreateItem")[0]
    assert (record.login, record.impersonating, record.mailbox) == (SVC_LOGIN, C, C)


def test_creates_in_turn_for_several_mailboxes_land_in_each_ones_calendar(
    emu: EwsEmulator,
) -> None:
    """A create's target folder element is built once per mailbox and reused: creates that
    alternate between mailboxes still land in each one's own calendar."""
    config = make_config(emu)
    order = [A, B, A, C, B, C]

    async def scenario(c: ExchangeConnector) -> list[str]:
        writes = [oa_event(key=f"turn-{i}", attendees=[]) for i in range(len(order))]
        return [(await c.create_event(m, w)).suite_id for m, w in zip(order, writes, strict=True)]

    made = run(using(config, scenario))
    assert [r.mailbox for r in records(emu, "CreateItem")] == order
    assert [emu.store.owner_of(suite_id) for suite_id in made] == order


def test_creates_asked_together_for_a_mailbox_leave_in_one_create_item(emu: EwsEmulator) -> None:
    """New events asked for one mailbox at the same time go in one CreateItem (another
    mailbox's in its own); each caller gets its own event, as a create on its own gives it."""
    config = make_config(emu)
    writes = [oa_event(key=f"together-{i}", subject=f"Together {i}") for i in range(6)]
    for write in writes:
        write.known_new = True
    mailboxes = [A, A, A, A, B, B]

    async def scenario(c: ExchangeConnector) -> list[SuiteEvent]:
        return list(
            await asyncio.gather(
                *(c.create_event(m, w) for m, w in zip(mailboxes, writes, strict=True))
            )
        )

    before = emu.stats.by_operation["CreateItem"]
    made = run(using(config, scenario))
    assert emu.stats.by_operation["CreateItem"] - before == 2  # one request per mailbox
    assert [emu.store.owner_of(e.suite_id) for e in made] == mailboxes
    assert len({e.suite_id for e in made}) == 6
    for event, write, mailbox in zip(made, writes, mailboxes, strict=True):
        assert event.subject == write.subject and event.calsync_key == write.key
        assert event.organizer is not None and event.organizer.email == mailbox
        assert emu.store.get(mailbox, event.suite_id)["subject"] == write.subject


def test_an_item_refused_in_a_shared_create_item_fails_alone(emu: EwsEmulator) -> None:
    """EWS answers each item of a CreateItem on its own: the refused one is that caller's
    error (mapped, named), the others are made."""
    config = make_config(emu)

    async def scenario(c: ExchangeConnector) -> list[Any]:
        good = c._item_element(oa_event(key="shared-good"))
        bad = c._item_element(oa_event(key="shared-bad"))
        bad.tag = T + "Message"  # the emulator makes calendar items only
        return await c._send_creates(A, [good, bad])

    made, refused = run(using(config, scenario))
    assert isinstance(made, SuiteEvent) and emu.store.owner_of(made.suite_id) == A
    assert isinstance(refused, ConnectorError)
    assert "ErrorInvalidRequest" in str(refused) and A in str(refused)
    assert "unreachable" not in str(refused)  # an answer of Exchange, not a lost connection


def test_user_mode_uses_each_users_own_account(emu: EwsEmulator) -> None:
    emu.set_password("zhao4@exchange.com", "Zhao-own-pw-1", mailbox=ZHAO)
    emu.set_password(A, "Alice-own-pw-2", mailbox=A)
    config = make_config(emu, access_mode="user")
    vault = {
        ZHAO: PersonalAccount("zhao4@exchange.com", "Zhao-own-pw-1"),
        A: PersonalAccount(A, "Alice-own-pw-2"),
    }
    made = call(config, "create_event", ZHAO, oa_event(attendees=[]), accounts=vault.get)
    record = records(emu, "CreateItem")[0]
    assert (record.login, record.impersonating, record.mailbox) == (
        "zhao4@exchange.com",
        None,
        ZHAO,
    )
    assert emu.store.get(ZHAO, made.suite_id)["subject"] == "From the OA"
    assert call(config, "list_events", A, WINDOW, accounts=vault.get) == []
    assert SVC_LOGIN not in emu.stats.by_login  # the service account is never used
    with pytest.raises(AccountMissing) as missing:
        call(config, "list_events", B, WINDOW, accounts=vault.get)
    assert not missing.value.retriable and B in str(missing.value)
    with pytest.raises(AccountMissing):
        call(config, "list_events", B, WINDOW)  # no lookup at all
    # a personal account may only open its own mailbox
    with pytest.raises(ConnectorError) as denied:
        call(config, "list_events", B, WINDOW, accounts=lambda _m: vault[A])
    assert denied.value.status == 403 and not denied.value.retriable


def test_impersonation_refused_is_a_clear_non_retriable_error(emu: EwsEmulator) -> None:
    emu.impersonation_allowed = False
    with pytest.raises(ConnectorError) as refused:
        call(make_config(emu), "list_events", A, WINDOW)
    assert refused.value.status == 403 and not refused.value.retriable
    assert "ApplicationImpersonation" in str(refused.value) and CONN in str(refused.value)
    assert emu.stats.impersonation_denied == 1


def test_mailbox_domain_check(emu: EwsEmulator) -> None:
    config = make_config(emu, check_mailbox_domain=True, domain="contoso.com")
    assert call(config, "list_events", A, WINDOW) == []
    before = emu.stats.requests
    with pytest.raises(ConnectorError) as outside:
        call(config, "list_events", "mallory@evil.example", WINDOW)
    assert not outside.value.retriable and "contoso.com" in str(outside.value)
    assert emu.stats.requests == before  # refused before any request
    unchecked = make_config(emu, check_mailbox_domain=False, domain="contoso.com")
    with pytest.raises(MailboxNotFound):
        call(unchecked, "list_events", "mallory@evil.example", WINDOW)


def test_ntlm_domain_authentication(emu: EwsEmulator) -> None:
    emu.set_password("CONTOSO\\svc-ntlm", "Ntlm-Svc-pw-77", impersonate=True)
    set_conn("calsync_ews_ntlm", emu, "svc-ntlm", "Ntlm-Svc-pw-77", ntlm_domain="CONTOSO")
    config = make_config(emu, "calsync_ews_ntlm", domain_auth=True)
    seed_calendar(emu)
    events = call(config, "list_events", A, WINDOW)
    assert {e.subject for e in events} >= {"Review", "Holiday"}
    assert emu.stats.auth_schemes.get("ntlm", 0) >= 1 and "basic" not in emu.stats.auth_schemes
    assert set(emu.stats.by_login) == {"CONTOSO\\svc-ntlm"}
    set_conn("calsync_ews_ntlm_bad", emu, "svc-ntlm", "wrong-Ntlm-pw", ntlm_domain="CONTOSO")
    with pytest.raises(ConnectorError) as refused:
        call(make_config(emu, "calsync_ews_ntlm_bad", domain_auth=True), "list_events", A, WINDOW)
    assert refused.value.status == 401 and not refused.value.retriable
    assert "wrong-Ntlm-pw" not in _everything(refused.value)


# --- errors, TLS ----------------------------------------------------------------------------


def _everything(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.args)


def test_login_failure_names_the_connection_never_the_password(emu: EwsEmulator) -> None:
    wrong = "Wrong-Password-4711-xyz"
    set_conn("calsync_ews_bad", emu, SVC_LOGIN, wrong)
    started = time.monotonic()
    with pytest.raises(ConnectorError) as refused:
        call(make_config(emu, "calsync_ews_bad"), "list_events", A, WINDOW)
    assert time.monotonic() - started < 3  # a 401 is not retried as throttling
    assert refused.value.status == 401 and not refused.value.retriable
    assert "calsync_ews_bad" in str(refused.value)
    assert wrong not in _everything(refused.value) and SVC_PASSWORD not in _everything(
        refused.value
    )
    missing = make_config(emu, "calsync_ews_no_such_conn")
    with pytest.raises(ConnectorError) as absent:
        call(missing, "list_events", A, WINDOW)
    assert not absent.value.retriable and "calsync_ews_no_such_conn" in str(absent.value)


def test_unreachable_server_is_retriable(emu: EwsEmulator) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = make_config(emu, server=f"http://127.0.0.1:{port}/EWS/Exchange.asmx", ca_bundle=None)
    started = time.monotonic()
    with pytest.raises(ConnectorError) as down:
        call(config, "list_events", A, WINDOW)
    assert down.value.retriable and time.monotonic() - started < 5


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()}")


def test_no_credential_in_logs_even_at_debug(emu: EwsEmulator) -> None:
    import base64

    from airflow.sdk import BaseHook  # noqa: F401 - Airflow configures logging on import

    seed_calendar(emu)
    collect = _Collect()
    watched = [logging.getLogger(n) for n in ("exchangelib", "calsync", "requests", "urllib3")]
    saved = [(lg.level, lg.disabled) for lg in watched]
    # Airflow's logging setup may have disabled loggers that existed before it: revive
    # exchangelib's, so its DEBUG dumps (headers, XML) would really be emitted but for the filter
    revived = [
        lg
        for name, lg in logging.root.manager.loggerDict.items()
        if name.startswith("exchangelib") and isinstance(lg, logging.Logger) and lg.disabled
    ]
    for lg in revived:
        lg.disabled = False
    for lg in watched:
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
        lg.addHandler(collect)
    try:
        emu.faults.back_off_ms = 200
        emu.faults.fail_next = [("GetItem", "ErrorServerBusy")]
        call(make_config(emu), "list_events", A, WINDOW)
        emu.set_password("zhao4@exchange.com", "Zhao-own-pw-1", mailbox=ZHAO)
        wrong = PersonalAccount("zhao4@exchange.com", "Zhao-WRONG-pw-9")
        with pytest.raises(ConnectorError) as refused:
            call(make_config(emu, access_mode="user"), "list_events", ZHAO, WINDOW,
                 accounts=lambda _m: wrong)  # fmt: skip
    finally:
        for lg, (level, disabled) in zip(watched, saved, strict=True):
            lg.removeHandler(collect)
            lg.setLevel(level)
            lg.disabled = disabled
        for lg in revived:
            lg.disabled = True
    assert refused.value.status == 401 and "zhao4@exchange.com" in str(refused.value)
    logged = "\n".join(collect.lines) + _everything(refused.value)
    assert any(line.startswith("exchangelib") for line in collect.lines)  # the loggers were live
    assert "back off" in logged  # exchangelib's own warning still shows
    basic = base64.b64encode(f"{SVC_LOGIN}:{SVC_PASSWORD}".encode()).decode()
    for secret in (SVC_PASSWORD, "Zhao-WRONG-pw-9", basic):
        assert secret not in logged


def test_tls_is_verified_by_default(tmp_path: Path) -> None:
    other = EwsEmulator(tls_dir=tmp_path / "tls", service_password=SVC_PASSWORD).start()
    try:
        other.store.add_mailbox(A)
        set_conn("calsync_ews_tls", other, SVC_LOGIN, SVC_PASSWORD)
        untrusted = make_config(other, "calsync_ews_tls", ca_bundle=None)
        with pytest.raises(ConnectorError) as failed:
            call(untrusted, "list_events", A, WINDOW)
        assert not failed.value.retriable and "ca_bundle" in str(failed.value)
        assert other.stats.requests == 0
        trusted = make_config(other, "calsync_ews_tls")
        assert call(trusted, "list_events", A, WINDOW) == []
    finally:
        other.stop()


# --- throttling -----------------------------------------------------------------------------


def _gaps(emu: EwsEmulator, operation: str) -> list[float]:
    times = [entry.at for entry in emu.stats.log if entry.operation == operation]
    return [b - a for a, b in itertools.pairwise(times)]


def test_server_busy_back_off_is_honoured(emu: EwsEmulator) -> None:
    seed_calendar(emu)
    emu.faults.back_off_ms = 400
    emu.faults.fail_next = [("FindItem", "ErrorServerBusy")]
    events = call(make_config(emu), "list_events", A, WINDOW)
    assert {e.subject for e in events} >= {"Review", "Holiday"}
    assert emu.stats.server_busy == 1 and emu.stats.backoff_violations == 0
    assert _gaps(emu, "FindItem")[0] >= 0.4


def test_503_retry_after_is_honoured(emu: EwsEmulator) -> None:
    seed_calendar(emu)
    emu.faults.retry_after_s = 1
    emu.faults.fail_next = [("GetItem", 503)]
    events = call(make_config(emu), "list_events", A, WINDOW)
    assert len(events) == 7
    assert emu.stats.unavailable_503 == 1 and emu.stats.backoff_violations == 0
    assert _gaps(emu, "GetItem")[0] >= 1.0


def test_throttling_wait_is_bounded(emu: EwsEmulator) -> None:
    set_conn("calsync_ews_budget", emu, SVC_LOGIN, SVC_PASSWORD, max_wait_s=2, total_wait_s=1.5)
    config = make_config(emu, "calsync_ews_budget")
    emu.faults.rate_server_busy = 1.0
    emu.faults.back_off_ms = 400
    started = time.monotonic()
    with pytest.raises(ConnectorError) as busy:
        call(config, "list_events", A, WINDOW)
    elapsed = time.monotonic() - started
    assert busy.value.retriable and busy.value.status == 503
    assert 1.0 <= elapsed < 3.0, elapsed
    assert emu.stats.backoff_violations == 0
    emu.faults.back_off_ms = 10_000  # one wait above max_wait: fail at once
    emu.throttle.reset()
    started = time.monotonic()
    with pytest.raises(ConnectorError) as too_long:
        call(config, "list_events", A, WINDOW)
    assert too_long.value.retriable and time.monotonic() - started < 1.5


def test_shrinking_the_session_pool_never_waits_for_a_session() -> None:
    """exchangelib 5.6 shrinks its session pool on ErrorServerBusy while holding the pool's
    lock, taking a session with get_session(): with every session in use, that re-enters
    the lock through increase_poolsize and the thread (and the connector) hangs. calsync's
    replacement (exchange_transport.install_pool_fix) retires an idle session only."""
    import threading

    from exchangelib import BASIC, Configuration, Credentials, Version
    from exchangelib.protocol import Protocol
    from exchangelib.version import Build

    import calsync.connectors.exchange  # noqa: F401 - installs the fix

    config = Configuration(
        service_endpoint="http://127.0.0.1:9/EWS/Exchange.asmx",
        credentials=Credentials("pool-test@contoso.com", "x"),
        auth_type=BASIC,
        version=Version(build=Build(15, 1, 2507, 6)),
        max_connections=4,
    )
    protocol = Protocol(config=config)
    try:
        busy = [protocol.get_session(), protocol.get_session()]  # size 2 of 4, none idle
        shrunk = threading.Event()
        worker = threading.Thread(
            target=lambda: (protocol.decrease_poolsize(), shrunk.set()), daemon=True
        )
        worker.start()
        assert shrunk.wait(5), "decrease_poolsize hung with every session in use"
        assert protocol.session_pool_size == 2  # nothing idle to retire
        protocol.release_session(busy.pop())
        protocol.decrease_poolsize()
        assert protocol.session_pool_size == 1
        protocol.release_session(busy.pop())
    finally:
        protocol.close()
        del Protocol[config]


# --- incremental ----------------------------------------------------------------------------


def apply(events: dict[str, SuiteEvent], changes: Any) -> dict[str, SuiteEvent]:
    if changes.full:
        return {e.suite_id: e for e in changes.events}
    out = dict(events)
    for suite_id in changes.removed:
        out.pop(suite_id, None)
    for event in changes.events:
        out[event.suite_id] = event
    return out


def view(events: dict[str, SuiteEvent]) -> set[tuple[Any, ...]]:
    return {
        (e.suite_id, e.subject, e.start, e.start_date, e.is_cancelled, e.series_id)
        for e in events.values()
    }


def test_a_new_round_finds_the_series_masters_in_its_sync_pages(emu: EwsEmulator) -> None:
    """A first sync state pages through every item anyway: the recurring masters come from
    those pages (one FindItem, the window's view), and the series ids are a full read's."""
    seeded = seed_calendar(emu)
    config = make_config(emu)
    listed = {e.suite_id: e.series_id for e in call(config, "list_events", A, WINDOW)}
    assert seeded["daily"]["id"] in listed.values()
    before = dict(emu.stats.by_operation)
    first = call(config, "list_changes", A, WINDOW, None)
    spent = {k: v - before.get(k, 0) for k, v in emu.stats.by_operation.items()}
    assert first.full
    assert {e.suite_id: e.series_id for e in first.events} == listed
    assert spent["FindItem"] == 1 and spent["GetItem"] == 1 and spent["SyncFolderItems"] >= 1


def test_sync_folder_items_incremental_equals_a_full_read(emu: EwsEmulator) -> None:
    seeded = seed_calendar(emu)
    config = make_config(emu)
    store = emu.store

    async def scenario(c: ExchangeConnector) -> dict[str, Any]:
        first = await c.list_changes(A, WINDOW, None)
        mirror = apply({}, first)
        quiet = await c.list_changes(A, WINDOW, first.state)
        # changes: a new single, an edited one, a deleted one, one outside the window, an
        # edited and a deleted occurrence, an all-day event moved out of the window
        store.add_event(
            A, {"subject": "New", "start": "2026-12-05T09:00:00", "end": "2026-12-05T09:30:00"}
        )
        store.update_event(A, seeded["review"]["id"], {"subject": "Review v2"})
        store.delete_event(A, seeded["outside"]["id"])
        store.add_event(
            A, {"subject": "Far", "start": "2027-01-20T09:00:00", "end": "2027-01-20T10:00:00"}
        )
        store.modify_occurrence(
            A, seeded["daily"]["id"], "2026-12-05T11:00:00", {"subject": "Stand-up Sat"}
        )
        store.cancel_occurrence(A, seeded["daily"]["id"], "2026-12-06T11:00:00")
        store.update_event(A, seeded["holiday"]["id"], {"start": "2026-12-24", "end": "2026-12-25"})
        second = await c.list_changes(A, WINDOW, quiet.state)
        mirror = apply(apply(mirror, quiet), second)
        fresh = await c.list_events(A, WINDOW)
        # the whole series goes
        store.delete_event(A, seeded["daily"]["id"])
        third = await c.list_changes(A, WINDOW, second.state)
        mirror_after = apply(mirror, third)
        fresh_after = await c.list_events(A, WINDOW)
        return locals()

    out = run(using(config, scenario))
    first, quiet, second, third = out["first"], out["quiet"], out["second"], out["third"]
    assert first.full and first.state and SyncState.decode(first.state) is not None
    assert not quiet.full and quiet.events == [] and quiet.removed == []
    assert not second.full
    assert {e.subject for e in second.events} >= {"New", "Review v2", "Stand-up Sat"}
    assert "Far" not in {e.subject for e in second.events}
    assert seeded["holiday"]["id"] in second.removed  # moved out of the window
    assert view(out["mirror"]) == view({e.suite_id: e for e in out["fresh"]})
    assert not third.full and seeded["daily"]["id"] in third.removed
    assert view(out["mirror_after"]) == view({e.suite_id: e for e in out["fresh_after"]})
    assert not any(e.subject.startswith("Stand-up") for e in out["fresh_after"])
    assert emu.stats.by_operation["SyncFolderItems"] >= 4


def test_sync_state_fallbacks_read_in_full(emu: EwsEmulator) -> None:
    seed_calendar(emu)
    config = make_config(emu)

    async def scenario(c: ExchangeConnector) -> dict[str, Any]:
        first = await c.list_changes(A, WINDOW, None)
        emu.store.invalidate_sync_states()  # expired on the server (ErrorInvalidSyncStateData)
        expired = await c.list_changes(A, WINDOW, first.state)
        garbage = await c.list_changes(A, WINDOW, "not-a-state")
        moved = Window(WINDOW.start + dt.timedelta(days=1), WINDOW.end + dt.timedelta(days=1),
                       WINDOW.timezone)  # fmt: skip
        rebased = await c.list_changes(A, moved, garbage.state)
        after = await c.list_changes(A, moved, rebased.state)
        fresh = await c.list_events(A, moved)
        return locals()

    out = run(using(config, scenario))
    ids = lambda events: sorted(e.suite_id for e in events)  # noqa: E731
    for name in ("expired", "garbage"):
        assert out[name].full and ids(out[name].events) == ids(out["first"].events), name
    assert out["rebased"].full and ids(out["rebased"].events) == ids(out["fresh"])
    assert not out["after"].full and out["after"].events == []
    invalid = [e for e in emu.stats.log if e.operation == "SyncFolderItems"]
    assert len(invalid) >= 5


def test_normalize_all_day_without_zone_keeps_dates() -> None:
    from exchangelib import CalendarItem, EWSDate

    from calsync.connectors.exchange import normalize_item

    item = CalendarItem(
        id="AAMk-test",
        changekey="ck",
        subject="Offsite",
        start=EWSDate(2026, 12, 7),
        end=EWSDate(2026, 12, 8),  # exchangelib's inclusive end
        is_all_day=True,
        type="Single",
        uid="uid-1",
    )
    event = normalize_item(item, "Asia/Shanghai")
    assert (event.start_date, event.end_date) == (dt.date(2026, 12, 7), dt.date(2026, 12, 9))
    assert event.timezone == "Asia/Shanghai" and event.ical_uid == "uid-1"
