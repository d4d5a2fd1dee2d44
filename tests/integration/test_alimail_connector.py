"""AlimailConnector against the Alibaba Mail emulator over HTTPS: window reads with paging,
all-day and time zones, series, writes (idempotent create, find_by_key, update in place,
delete), folder selection, the notification switch, tokens (cache, renewal, 401), throttling
(Retry-After, bounded wait), 5xx, refused logins, TLS, and the Airflow connection path."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from calsync.connectors.alimail import AlimailConnector
from calsync.connectors.alimail_http import RetryPolicy
from calsync.connectors.base import CalendarIds, ChangeSet, EventWrite, connector_for
from calsync.errors import ConnectorError, MailboxNotFound
from calsync.model import Attendee, SuiteEvent, Window
from emulators.alimail import AlimailEmulator, FailSpec
from emulators.alimail.store import OTHER_CALENDAR

pytest_plugins = ["emulators.alimail.testing"]

A, B, C = "alice@example.com", "bob@example.com", "carol@example.com"
UTC = dt.UTC
WINDOW = Window(dt.date(2026, 12, 1), dt.date(2026, 12, 7), "Asia/Shanghai")
Factory = Callable[..., AlimailConnector]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def timed(subject: str, start: str, end: str, zone: str = "Asia/Shanghai", **more: Any) -> dict:
    return {
        "subject": subject,
        "start": {"dateTime": start, "timeZone": zone},
        "end": {"dateTime": end, "timeZone": zone},
        **more,
    }


def write(subject: str = "OA meeting", key: str = "oa-7:101", **more: Any) -> EventWrite:
    return EventWrite(
        subject=subject,
        start=dt.datetime(2026, 12, 3, 1, 0, tzinfo=UTC),
        end=dt.datetime(2026, 12, 3, 2, 0, tzinfo=UTC),
        body="Agenda",
        key=key,
        attendees=[Attendee(B, "Bob"), Attendee("room1@example.com", "Room 1", "resource")],
        **more,
    )


def by_subject(events: list[SuiteEvent]) -> dict[str, SuiteEvent]:
    return {e.subject: e for e in events}


# --- reads ---------------------------------------------------------------------------------


def test_window_paging_no_duplicates_no_loss(alimail: AlimailEmulator, alimail_connector: Factory):
    for i in range(47):
        day = dt.date(2026, 12, 1) + dt.timedelta(days=i % 7)
        hour = 8 + i % 9
        alimail.store.add_event(
            A, timed(f"e{i:02}", f"{day}T{hour:02}:00:00", f"{day}T{hour:02}:45:00")
        )
    alimail.store.add_event(A, timed("outside", "2026-12-08T09:00:00", "2026-12-08T10:00:00"))
    connector = alimail_connector(extras={"page_size": 6})
    events = run(connector.list_events(A, WINDOW))
    assert sorted(e.subject for e in events) == [f"e{i:02}" for i in range(47)]
    assert len({e.suite_id for e in events}) == 47
    assert alimail.stats["by_kind"]["events_view"] == 8  # 6 a page (the emulator allows 10)
    assert run(connector.list_events(B, WINDOW)) == []


def test_all_day_and_time_zones(alimail: AlimailEmulator, alimail_connector: Factory) -> None:
    store = alimail.store
    store.add_event(A, timed("shanghai", "2026-12-02T09:00:00", "2026-12-02T10:30:00"))
    store.add_event(
        A, timed("new york", "2026-12-02T08:00:00", "2026-12-02T09:00:00", "America/New_York")
    )
    store.add_event(
        A,
        timed(
            "windows name", "2026-12-02T14:00:00", "2026-12-02T15:00:00", "W. Europe Standard Time"
        ),
    )
    store.add_event(
        A,
        {
            "subject": "holiday",
            "isAllDay": True,
            "start": {"date": "2026-12-03"},
            "end": {"date": "2026-12-05"},
        },
    )
    store.add_event(
        A,
        {
            "subject": "berlin day",
            "isAllDay": True,
            "start": {"dateTime": "2026-12-07T00:00:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": "2026-12-08T00:00:00", "timeZone": "Europe/Berlin"},
        },
    )
    connector = alimail_connector()
    got = by_subject(run(connector.list_events(A, WINDOW)))
    assert got["shanghai"].start == dt.datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
    assert got["shanghai"].end == dt.datetime(2026, 12, 2, 2, 30, tzinfo=UTC)
    assert got["shanghai"].timezone == "Asia/Shanghai"
    assert got["new york"].start == dt.datetime(2026, 12, 2, 13, 0, tzinfo=UTC)
    assert got["new york"].timezone == "America/New_York"
    assert got["windows name"].start == dt.datetime(2026, 12, 2, 13, 0, tzinfo=UTC)
    assert got["windows name"].timezone == "Europe/Berlin"
    holiday = got["holiday"]
    assert holiday.all_day and holiday.start is None and holiday.end is None
    assert (holiday.start_date, holiday.end_date) == (dt.date(2026, 12, 3), dt.date(2026, 12, 5))
    # An all-day event in another zone keeps its date (never shifted by 7 hours into the 6th).
    berlin = got["berlin day"]
    assert (berlin.start_date, berlin.end_date) == (dt.date(2026, 12, 7), dt.date(2026, 12, 8))


def test_dst_transition_in_a_non_china_zone(
    alimail: AlimailEmulator, alimail_connector: Factory
) -> None:
    alimail.store.add_event(
        A,
        timed(
            "daily standup",
            "2027-03-26T09:00:00",
            "2027-03-26T09:15:00",
            "Europe/Berlin",
            recurrence={
                "pattern": {"type": "daily"},
                "range": {"type": "numbered", "numberOfOccurrences": 4},
            },
        ),
    )
    window = Window(dt.date(2027, 3, 25), dt.date(2027, 3, 31), "Europe/Berlin")
    events = sorted(run(alimail_connector().list_events(A, window)), key=lambda e: e.start)
    # CET (UTC+1) until Sunday 28 March 2027 02:00, then CEST (UTC+2): wall time stays 09:00.
    assert [e.start.hour for e in events] == [8, 8, 7, 7]
    assert {e.series_id for e in events} == {events[0].series_id}
    assert all(e.event_type == "occurrence" and e.original_start == e.start for e in events)
    assert len({e.identity_key for e in events}) == 4


def test_unknown_mailbox(alimail_connector: Factory) -> None:
    connector = alimail_connector()
    with pytest.raises(MailboxNotFound) as info:
        run(connector.list_events("ghost@example.com", WINDOW))
    assert info.value.retriable is False
    with pytest.raises(MailboxNotFound):
        run(connector.list_changes("ghost@example.com", WINDOW, '{"calendar": "cal-1"}'))


def test_list_changes_reads_in_full_and_remembers_the_calendar_and_the_view(
    alimail: AlimailEmulator, alimail_connector: Factory
) -> None:
    """No change feed: a change set is the whole window (full), and its state spares the
    next run (a new connector, as a new task) the calendar listing and, when the view is the
    one read then, the whole of its work: an empty partial change set."""
    kept = alimail.store.add_event(A, timed("kept", "2026-12-02T09:00:00", "2026-12-02T10:00:00"))
    first = run(alimail_connector().list_changes(A, WINDOW, None))
    assert [e.subject for e in first.events] == ["kept"]
    assert (first.removed, first.full) == ([], True)
    assert alimail.stats["by_kind"] == {"token": 1, "calendars_list": 1, "events_view": 1}

    def spent_on(state: str | None, window: Window = WINDOW) -> tuple[ChangeSet, dict[str, int]]:
        before = dict(alimail.stats["by_kind"])
        changes = run(alimail_connector().list_changes(A, window, state))
        spent = {k: v - before.get(k, 0) for k, v in alimail.stats["by_kind"].items()}
        return changes, {k: v for k, v in spent.items() if v}

    same, spent = spent_on(first.state)
    assert (same.events, same.removed, same.full, same.state) == ([], [], False, first.state)
    assert spent == {"token": 1, "events_view": 1}

    alimail.store.add_event(A, timed("new", "2026-12-03T09:00:00", "2026-12-03T10:00:00"))
    second, spent = spent_on(first.state)
    assert sorted(e.subject for e in second.events) == ["kept", "new"]
    assert second.full and second.state != first.state
    assert spent == {"token": 1, "events_view": 1}
    assert json.loads(second.state)["calendar"] == json.loads(first.state)["calendar"]

    alimail.store.update(A, None, kept["id"], {"subject": "kept, edited"})
    third, _ = spent_on(second.state)
    assert third.full and sorted(e.subject for e in third.events) == ["kept, edited", "new"]

    # the digest covers the bounds: the same events read for another window are read in full
    wider = Window(WINDOW.start - dt.timedelta(days=1), WINDOW.end, WINDOW.timezone)
    moved, _ = spent_on(third.state, wider)
    assert moved.full and len(moved.events) == 2
    unchanged, _ = spent_on(third.state)
    assert not unchanged.full and unchanged.events == []


@pytest.mark.parametrize("state", ['{"calendar": "deleted-calendar"}', "not json", '{"x": 1}'])
def test_a_gone_or_unreadable_remembered_calendar_is_looked_up_again(
    alimail: AlimailEmulator, alimail_connector: Factory, state: str
) -> None:
    alimail.store.add_event(A, timed("kept", "2026-12-02T09:00:00", "2026-12-02T10:00:00"))
    fresh = run(alimail_connector().list_changes(A, WINDOW, None))
    changes = run(alimail_connector().list_changes(A, WINDOW, state))
    assert [e.subject for e in changes.events] == ["kept"]
    assert changes.state == fresh.state


def test_list_changes_follows_the_configured_folder(
    alimail: AlimailEmulator, alimail_connector: Factory
) -> None:
    alimail.store.add_event(
        A, timed("project", "2026-12-02T09:00:00", "2026-12-02T10:00:00"), calendar=OTHER_CALENDAR
    )
    default = run(alimail_connector().list_changes(A, WINDOW, None))
    folder = run(alimail_connector(calendar_folder=OTHER_CALENDAR).list_changes(A, WINDOW, None))
    assert default.events == [] and [e.subject for e in folder.events] == ["project"]
    assert default.state != folder.state


def test_unreadable_event_does_not_sink_the_mailbox(
    alimail: AlimailEmulator, alimail_connector: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    alimail.store.add_event(A, timed("good", "2026-12-02T09:00:00", "2026-12-02T10:00:00"))
    bad = alimail.store.add_event(A, timed("bad", "2026-12-02T11:00:00", "2026-12-02T12:00:00"))
    original = alimail.store.view

    def broken_view(*args: Any) -> Any:
        instances = original(*args)
        for instance in instances:
            if instance.data["id"] == bad["id"]:
                instance.data["end"] = {"dateTime": "garbage", "timeZone": "Asia/Shanghai"}
        return instances

    monkeypatch.setattr(alimail.store, "view", broken_view)
    events = run(alimail_connector().list_events(A, WINDOW))
    assert len(events) == 2
    unreadable = [e for e in events if "unreadable" in e.extra]
    assert [e.suite_id for e in unreadable] == [bad["id"]]


# --- writes --------------------------------------------------------------------------------


def test_create_idempotent_find_update_delete(
    alimail: AlimailEmulator, alimail_connector: Factory
) -> None:
    connector = alimail_connector()
    created = run(connector.create_event(A, write()))
    assert created.calsync_key == "oa-7:101" and created.body == "Agenda"
    assert [a.email for a in created.attendees] == [B, "room1@example.com"]
    assert created.attendees[1].kind == "resource"
    stored = alimail.store.events(A)
    assert len(stored) == 1 and stored[0]["body"]["content"].endswith("[calsync:oa-7:101]")
    # A retry after a crash: the same key finds the event, nothing new is made.
    again = run(connector.create_event(A, write(subject="changed meanwhile")))
    assert again.suite_id == created.suite_id and len(alimail.store.events(A)) == 1
    found = run(connector.find_by_key(A, "oa-7:101"))
    assert found is not None and found.suite_id == created.suite_id
    assert run(connector.find_by_key(A, "oa-7:999")) is None
    near = run(connector.find_by_key(A, "oa-7:101", around=(write().start, write().end)))
    assert near is not None and near.suite_id == created.suite_id
    # Update in place: same id, new content, marker kept even when the write has no key.
    moved = EventWrite(
        subject="Moved",
        start=dt.datetime(2026, 12, 4, 6, 0, tzinfo=UTC),
        end=dt.datetime(2026, 12, 4, 7, 0, tzinfo=UTC),
        body="New agenda",
        location="3F east",
    )
    updated = run(connector.update_event(A, created.suite_id, moved))
    assert updated.suite_id == created.suite_id
    assert (updated.subject, updated.location, updated.body) == ("Moved", "3F east", "New agenda")
    assert updated.calsync_key == "oa-7:101"
    assert updated.start == dt.datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
    assert len(alimail.store.events(A)) == 1
    listed = run(connector.list_events(A, WINDOW))
    assert [(e.suite_id, e.calsync_key, e.body) for e in listed] == [
        (created.suite_id, "oa-7:101", "New agenda")
    ]
    run(connector.delete_event(A, created.suite_id))
    assert alimail.store.events(A) == []
    run(connector.delete_event(A, created.suite_id))  # already gone: fine
    with pytest.raises(ConnectorError) as info:
        run(connector.update_event(A, created.suite_id, moved))
    assert info.value.status == 404 and info.value.retriable is False
    with pytest.raises(MailboxNotFound):
        run(connector.delete_event("ghost@example.com", "x"))


def test_all_day_write_round_trip(alimail: AlimailEmulator, alimail_connector: Factory) -> None:
    connector = alimail_connector()
    event = EventWrite(
        subject="Offsite",
        start=None,
        end=None,
        all_day=True,
        start_date=dt.date(2026, 12, 5),
        end_date=dt.date(2026, 12, 7),
        timezone="Asia/Shanghai",
        body="<p>Bring <b>laptops</b></p>",
        body_type="html",
        key="oa-7:102",
    )
    created = run(connector.create_event(A, event))
    assert created.all_day and (created.start_date, created.end_date) == (
        dt.date(2026, 12, 5),
        dt.date(2026, 12, 7),
    )
    assert created.body == "<p>Bring <b>laptops</b></p>" and created.body_type == "html"
    assert created.calsync_key == "oa-7:102"
    assert run(connector.create_event(A, event)).suite_id == created.suite_id


def test_create_ambiguous_failure_leaves_one_event(
    alimail: AlimailEmulator, alimail_connector: Factory
) -> None:
    connector = alimail_connector()
    # The server creates the event, then answers 502: the retry must not duplicate it.
    alimail.faults.fail_next = [FailSpec("/events", 502, after=True, method="POST")]
    created = run(connector.create_event(A, write()))
    assert len(alimail.store.events(A)) == 1
    assert created.suite_id == alimail.store.events(A)[0]["id"]
    assert alimail.stats["by_kind"]["event_create"] == 1
    # Refused outright (503 + Retry-After): sent again after the wait, one event.
    alimail.faults.retry_after_s = 0.2
    alimail.faults.fail_next = [FailSpec("/events", 503, method="POST")]
    second = run(connector.create_event(A, write(key="oa-7:103")))
    assert {e["id"] for e in alimail.store.events(A)} == {created.suite_id, second.suite_id}
    assert alimail.stats["retry_after_violations"] == 0


def test_calendar_folder_selection(alimail: AlimailEmulator, alimail_connector: Factory) -> None:
    alimail.store.add_event(A, timed("default", "2026-12-02T09:00:00", "2026-12-02T10:00:00"))
    alimail.store.add_event(
        A, timed("project", "2026-12-02T09:00:00", "2026-12-02T10:00:00"), calendar=OTHER_CALENDAR
    )
    default = alimail_connector()
    assert [e.subject for e in run(default.list_events(A, WINDOW))] == ["default"]
    folder = alimail_connector(calendar_folder=OTHER_CALENDAR)
    assert [e.subject for e in run(folder.list_events(A, WINDOW))] == ["project"]
    made = run(folder.create_event(A, write()))
    assert [e["id"] for e in alimail.store.events(A, OTHER_CALENDAR)][-1] == made.suite_id
    missing = alimail_connector(calendar_folder="Nope")
    with pytest.raises(ConnectorError) as info:
        run(missing.list_events(A, WINDOW))
    assert info.value.retriable is False
    assert "'Nope'" in str(info.value) and OTHER_CALENDAR in str(info.value)


def test_calendar_ids_from_an_earlier_run_skip_the_listing(
    alimail: AlimailEmulator, alimail_connector: Factory
) -> None:
    first = alimail_connector()
    made = run(first.create_event(A, write()))
    assert first.http.attempts["calendars"] == 1
    kept = first.calendar_ids()
    assert kept == CalendarIds({A: alimail.store.calendar_id(A)}, {})
    later = alimail_connector()
    later.use_calendar_ids(kept.found)
    got = run(later.get_event(A, made.suite_id))
    assert got is not None and got.suite_id == made.suite_id
    run(later.update_event(A, made.suite_id, write(subject="Moved")))
    run(later.create_event(A, write(key="oa-7:102", known_new=True)))
    run(later.delete_event(A, made.suite_id))
    assert "calendars" not in later.http.attempts
    assert [e["subject"] for e in alimail.store.events(A)] == ["OA meeting"]
    assert later.calendar_ids() == CalendarIds()  # nothing looked up, nothing gone
    # an event really gone from a kept calendar: one listing confirms the id, then believed
    assert run(later.get_event(A, "ev_no_such_event")) is None
    run(later.delete_event(A, "ev_no_such_event"))
    assert later.http.attempts["calendars"] == 1
    assert later.calendar_ids() == kept  # confirmed: kept again, its age restarts


def test_a_kept_calendar_that_is_gone_is_looked_up_again_for_every_operation(
    alimail: AlimailEmulator, alimail_connector: Factory
) -> None:
    """A write to a calendar the suite says is gone was not made: the calendar is listed
    again and the write made in it. A gone calendar is never read as a gone event."""
    setup = alimail_connector()
    kept = run(setup.create_event(B, write(key="oa-7:201")))
    moved = run(setup.create_event(C, write(key="oa-7:301")))
    stale = {A: "gone-a", B: "gone-b", C: "gone-c"}

    def later() -> AlimailConnector:
        connector = alimail_connector()
        connector.use_calendar_ids(stale)
        return connector

    created = run((one := later()).create_event(A, write(key="oa-7:101", known_new=True)))
    assert [e["id"] for e in alimail.store.events(A)] == [created.suite_id]
    assert one.http.attempts["calendars"] == 1
    assert one.calendar_ids() == CalendarIds({A: alimail.store.calendar_id(A)}, {})
    got = run(later().get_event(B, kept.suite_id))  # not None: the event is there
    assert got is not None and got.suite_id == kept.suite_id
    run(later().update_event(C, moved.suite_id, write(subject="Moved", key="oa-7:301")))
    assert [e["subject"] for e in alimail.store.events(C)] == ["Moved"]
    run(later().delete_event(B, kept.suite_id))  # deleted for real, not taken as gone
    assert alimail.store.events(B) == []
    # Gone, and the configured folder no longer there either: the id is to be dropped.
    lost = alimail_connector(calendar_folder="Nope")
    lost.use_calendar_ids({A: "gone-a"})
    with pytest.raises(ConnectorError, match="'Nope'"):
        run(lost.create_event(A, write(key="oa-7:102", known_new=True)))
    assert lost.calendar_ids() == CalendarIds({}, {A: "gone-a"})


def test_a_kept_calendar_that_is_no_longer_the_configured_one_is_not_believed(
    alimail: AlimailEmulator, alimail_connector: Factory
) -> None:
    """The kept id names a calendar that still exists but is not the configured one any
    more (a folder renamed, another default chosen): an event "not found" there is checked
    with one listing, and the read, update or delete happens in the calendar listed."""
    made = {m: run(alimail_connector().create_event(m, write(key=f"oa-7:{n}"))) for n, m in
            enumerate((A, B, C))}  # fmt: skip
    other = {m: alimail.store.calendar_id(m, OTHER_CALENDAR) for m in (A, B, C)}

    def later() -> AlimailConnector:
        connector = alimail_connector()
        connector.use_calendar_ids(other)
        return connector

    reader = later()
    got = run(reader.get_event(A, made[A].suite_id))
    assert got is not None and got.suite_id == made[A].suite_id
    # the listed id is kept in place of the other one
    assert reader.calendar_ids() == CalendarIds({A: alimail.store.calendar_id(A)}, {})
    run(later().update_event(B, made[B].suite_id, write(subject="Moved", key="oa-7:1")))
    assert [e["subject"] for e in alimail.store.events(B)] == ["Moved"]
    run(later().delete_event(C, made[C].suite_id))
    assert alimail.store.events(C) == []


@pytest.mark.parametrize("switch", [True, False])
def test_notification_switch(
    alimail: AlimailEmulator, alimail_connector: Factory, switch: bool
) -> None:
    connector = alimail_connector(send_notifications=switch)
    created = run(connector.create_event(A, write()))
    run(connector.update_event(A, created.suite_id, write(subject="Renamed")))
    run(connector.delete_event(A, created.suite_id))
    if switch:
        assert alimail.stats["invitations_sent"] == {B: 1, "room1@example.com": 1}
        assert alimail.stats["updates_sent"] == {B: 1, "room1@example.com": 1}
        assert alimail.stats["cancellations_sent"] == {B: 1, "room1@example.com": 1}
    else:
        assert alimail.stats["notifications"] == {}


# --- tokens --------------------------------------------------------------------------------


def test_one_token_for_many_calls(alimail: AlimailEmulator, alimail_connector: Factory) -> None:
    connector = alimail_connector()

    async def many() -> None:
        await asyncio.gather(*(connector.list_events(m, WINDOW) for m in (A, B, C) * 3))
        await connector.create_event(A, write())

    run(many())
    assert alimail.stats["tokens_issued"] == 1
    assert connector.http.tokens.issued == 1 and alimail.stats["unauthorized"] == 0


def test_operations_starting_together_share_one_client(
    alimail: AlimailEmulator, alimail_connector: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first operations of a run start at once in the pool's threads while the client is
    still being made (reading the Airflow connection takes a while): they must all get the
    same one — two clients kept two token caches and two sets of mailbox locks, and a
    Retry-After one had seen did not hold the other back."""
    from calsync.connectors import alimail as module

    made: list[Any] = []
    real = module.AlimailHttp

    def slow_client(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(module, "AlimailHttp", slow_client)
    connector = alimail_connector()

    async def together() -> None:
        await asyncio.gather(*(connector.list_events(m, WINDOW) for m in (A, B, C) * 2))

    run(together())
    assert len(made) == 1
    assert alimail.stats["tokens_issued"] == 1


def test_token_renewed_before_expiry(alimail: AlimailEmulator, alimail_connector: Factory):
    alimail.token_lifetime_s = 1.0  # renewed 0.1 s before it runs out
    connector = alimail_connector()
    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # the second renewal would fall due at >= 1.8 s
        run(connector.list_events(A, WINDOW))
        time.sleep(0.1)
    assert alimail.stats["tokens_issued"] == 2
    assert alimail.stats["unauthorized"] == 0  # renewed before it ran out, never refused


def test_token_refreshed_once_after_401(alimail: AlimailEmulator, alimail_connector: Factory):
    connector = alimail_connector()
    run(connector.list_events(A, WINDOW))
    alimail.expire_tokens()  # revoked early: the cached token is now refused
    assert run(connector.list_events(A, WINDOW)) == []
    assert alimail.stats["unauthorized"] == 1 and alimail.stats["tokens_issued"] == 2


def test_wrong_secret_names_the_connection_never_the_secret(
    alimail: AlimailEmulator, alimail_connector: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Totally-Wrong-Secret-991"
    connector = alimail_connector(secret=wrong)
    started = time.monotonic()
    with pytest.raises(ConnectorError) as info:
        run(connector.list_events(A, WINDOW))
    assert time.monotonic() - started < 1  # not retried
    assert info.value.retriable is False and info.value.status == 401
    assert "calsync_alimail_test" in str(info.value)
    assert wrong not in str(info.value) and wrong not in caplog.text
    assert alimail.stats["token_refusals"] == 1
    assert wrong not in repr(connector.http._credentials)


# --- throttling and server errors ---------------------------------------------------------------


def test_429_storm_honours_retry_after(alimail: AlimailEmulator, alimail_connector: Factory):
    for i in range(25):
        day = dt.date(2026, 12, 1) + dt.timedelta(days=i % 7)
        for mailbox in (A, B):
            alimail.store.add_event(mailbox, timed(f"e{i}", f"{day}T09:00:00", f"{day}T09:30:00"))
    alimail.faults.update(rate_429=0.4, retry_after_s=1)
    connector = alimail_connector()

    async def both() -> list[list[SuiteEvent]]:
        return await asyncio.gather(
            connector.list_events(A, WINDOW), connector.list_events(B, WINDOW)
        )

    started = time.monotonic()
    got_a, got_b = run(both())
    elapsed = time.monotonic() - started
    assert len(got_a) == len(got_b) == 25
    assert alimail.stats["throttled_429"] >= 2
    assert alimail.stats["retry_after_violations"] == 0
    assert elapsed < 15


def test_throttling_gives_up_within_the_wait_budget(
    alimail: AlimailEmulator, alimail_connector: Factory
) -> None:
    connector = alimail_connector(policy=RetryPolicy(max_total_wait_s=2.5))
    run(connector.list_events(A, WINDOW))  # token and calendar id cached
    alimail.faults.update(rate_429=1.0, retry_after_s=1)
    started = time.monotonic()
    with pytest.raises(ConnectorError) as info:
        run(connector.list_events(A, WINDOW))
    elapsed = time.monotonic() - started
    assert info.value.retriable is True and info.value.status == 429
    assert 2.0 <= elapsed < 3.5
    assert "Retry-After 1s" in str(info.value)
    assert alimail.stats["retry_after_violations"] == 0


def test_wait_budget_is_per_operation_not_per_request(
    alimail: AlimailEmulator, alimail_connector: Factory
) -> None:
    connector = alimail_connector(policy=RetryPolicy(max_total_wait_s=0.8))
    http = connector.http
    path = f"/v2/users/{A}/calendars"
    alimail.faults.update(retry_after_s=0.3)
    # Three requests, each refused once with Retry-After 0.3 s: fine one by one...
    for _ in range(3):
        alimail.faults.fail_next = [FailSpec("/calendars", 429)]
        assert http.call("calendars", "GET", path)[0] == 200
    # ...but inside one operation they share the 0.8 s budget: the third gives up at once.
    started = time.monotonic()
    with http.operation():
        for _ in range(2):
            alimail.faults.fail_next = [FailSpec("/calendars", 429)]
            http.call("calendars", "GET", path)
        alimail.faults.fail_next = [FailSpec("/calendars", 429)]
        before = http.attempts["calendars"]
        with pytest.raises(ConnectorError, match="in this operation") as info:
            http.call("calendars", "GET", path)
    assert http.attempts["calendars"] == before + 1  # refused once, not waited for
    assert info.value.retriable and time.monotonic() - started < 2
    assert alimail.stats["retry_after_violations"] == 0


def test_retry_after_outlives_an_operation_that_gave_up(
    alimail: AlimailEmulator, alimail_connector: Factory
) -> None:
    """A 429 whose operation ran out of budget still holds its mailbox: the mailbox's next
    request (another operation, another schedule's change) waits out the Retry-After, and
    another mailbox is not held back by it."""
    connector = alimail_connector(policy=RetryPolicy(max_total_wait_s=0.1))
    http = connector.http
    alimail.faults.update(retry_after_s=0.6)
    alimail.faults.fail_next = [FailSpec(f"/users/{A}/calendars", 429)]
    with pytest.raises(ConnectorError, match=r"Retry-After 0\.6s"):
        http.call("calendars", "GET", f"/v2/users/{A}/calendars")
    refused = time.monotonic()
    assert http.call("calendars", "GET", f"/v2/users/{B}/calendars")[0] == 200
    assert time.monotonic() - refused < 0.5  # B is not A's Retry-After
    assert http.call("calendars", "GET", f"/v2/users/{A}/calendars")[0] == 200
    assert time.monotonic() - refused >= 0.6
    assert alimail.stats["retry_after_violations"] == 0


def test_5xx_then_success(alimail: AlimailEmulator, alimail_connector: Factory) -> None:
    alimail.store.add_event(A, timed("x", "2026-12-02T09:00:00", "2026-12-02T10:00:00"))
    alimail.faults.update(retry_after_s=None)
    alimail.faults.fail_next = [FailSpec("eventsview", 503), FailSpec("eventsview", 500)]
    connector = alimail_connector()
    assert [e.subject for e in run(connector.list_events(A, WINDOW))] == ["x"]
    assert alimail.stats["errors_5xx"] == 2
    assert connector.http.attempts["events_view"] == 3


def test_token_endpoint_outage_is_retried(alimail: AlimailEmulator, alimail_connector: Factory):
    alimail.faults.update(retry_after_s=0.1, fail_next=[{"path": "/oauth2", "status": 503}])
    assert run(alimail_connector().list_events(A, WINDOW)) == []
    assert alimail.stats["tokens_issued"] == 1 and alimail.stats["by_kind"]["token"] == 2


# --- TLS and the Airflow connection ---------------------------------------------------------------


def test_untrusted_certificate_fails_fast(alimail: AlimailEmulator, alimail_connector: Factory):
    connector = alimail_connector(verify=True)  # system CAs only: the emulator's CA is private
    started = time.monotonic()
    with pytest.raises(ConnectorError) as info:
        run(connector.list_events(A, WINDOW))
    assert time.monotonic() - started < 2 and info.value.retriable is False
    assert "TLS" in str(info.value) and "CERTIFICATE_VERIFY_FAILED" in str(info.value)


def test_credentials_from_the_airflow_connection(
    alimail: AlimailEmulator, alimail_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from emulators.alimail.testing import CONN_ID

    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", alimail.airflow_conn_json())
    alimail.store.add_event(A, timed("via airflow", "2026-12-02T09:00:00", "2026-12-02T10:00:00"))
    connector = connector_for(alimail_config())
    assert isinstance(connector, AlimailConnector)

    async def go() -> list[SuiteEvent]:
        async with connector:
            return await connector.list_events(A, WINDOW)

    assert [e.subject for e in run(go())] == ["via airflow"]
    conn = json.loads(alimail.airflow_conn_json())
    conn["extra"]["verify"] = "false"
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    with pytest.raises(ConnectorError, match="cannot switch TLS verification off"):
        run(AlimailConnector(alimail_config()).list_events(A, WINDOW))
    monkeypatch.delenv(f"AIRFLOW_CONN_{CONN_ID.upper()}")
    with pytest.raises(ConnectorError, match=CONN_ID) as info:
        run(AlimailConnector(alimail_config()).list_events(A, WINDOW))
    assert info.value.retriable is False
