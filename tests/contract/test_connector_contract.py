"""One contract, every connector: list, paging, all-day, time zones, idempotent create,
find-by-key, get by id with the suite's version, update in place (and not at all when nothing
changed), delete, rooms, throttling."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from typing import Any

import pytest

from calsync.connectors.base import EventWrite, IncrementalNotSupported
from calsync.errors import MailboxNotFound
from calsync.model import Attendee, SuiteEvent, Window
from tests.contract.conftest import ZONE, Seed

TODAY = dt.date(2026, 12, 3)
WINDOW = Window(TODAY - dt.timedelta(days=2), TODAY + dt.timedelta(days=2), ZONE)
SH = zoneinfo.ZoneInfo(ZONE)


def at(day: dt.date, hour: int, zone: zoneinfo.ZoneInfo = SH) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), zone)


def run(suite: Any, coro_fn: Any) -> Any:
    async def go() -> Any:
        async with suite.connector() as connector:
            return await coro_fn(connector)

    return asyncio.run(go())


def test_list_returns_the_window_only(suite):
    suite.seed(
        suite.mailbox,
        [
            Seed("inside", at(TODAY, 10), at(TODAY, 11)),
            Seed("edge", at(WINDOW.end, 23), at(WINDOW.end + dt.timedelta(days=1), 1)),
            Seed(
                "outside",
                at(TODAY + dt.timedelta(days=5), 10),
                at(TODAY + dt.timedelta(days=5), 11),
            ),
            Seed("leave", start_date=TODAY, end_date=TODAY + dt.timedelta(days=1)),
        ],
    )
    events = run(suite, lambda c: c.list_events(suite.mailbox, WINDOW))
    by_subject = {e.subject: e for e in events}
    assert set(by_subject) == {"inside", "edge", "leave"}
    assert by_subject["inside"].start == at(TODAY, 10).astimezone(dt.UTC)
    leave = by_subject["leave"]
    assert leave.all_day and (leave.start_date, leave.end_date) == (
        TODAY,
        TODAY + dt.timedelta(days=1),
    )


def test_paging_loses_and_repeats_nothing(suite):
    seeds = [Seed(f"会议 {i:02d}", at(TODAY, 8 + i % 10), at(TODAY, 9 + i % 10)) for i in range(37)]
    suite.seed(suite.mailbox, seeds)
    events = run(suite, lambda c: c.list_events(suite.mailbox, WINDOW))
    subjects = sorted(e.subject for e in events)
    assert subjects == sorted(s.subject for s in seeds)


def test_time_zones_round_trip_through_a_write(suite):
    new_york = zoneinfo.ZoneInfo("America/New_York")
    write = EventWrite(
        subject="NY call",
        start=at(TODAY, 20, new_york),
        end=at(TODAY, 21, new_york),
        timezone="America/New_York",
        key="k-tz",
    )
    made = run(suite, lambda c: c.create_event(suite.mailbox, write))
    assert made.start == at(TODAY, 20, new_york).astimezone(dt.UTC)
    assert made.timezone == "America/New_York"


def test_create_is_idempotent_by_key_and_found_again(suite):
    write = EventWrite(
        subject="周会 🎉",
        start=at(TODAY, 10),
        end=at(TODAY, 11),
        timezone=ZONE,
        body="<p>议程</p>",
        body_type="html",
        attendees=[Attendee("partner@fabrikam.com", "Partner")],
        key="calsync:it:42",
    )
    first = run(suite, lambda c: c.create_event(suite.mailbox, write))
    again = run(suite, lambda c: c.create_event(suite.mailbox, write))
    assert again.suite_id == first.suite_id
    assert suite.count(suite.mailbox) == 1
    found = run(suite, lambda c: c.find_by_key(suite.mailbox, "calsync:it:42"))
    assert found is not None and found.suite_id == first.suite_id
    assert found.calsync_key == "calsync:it:42"
    assert run(suite, lambda c: c.find_by_key(suite.mailbox, "calsync:it:nope")) is None
    listed = run(suite, lambda c: c.list_events(suite.mailbox, WINDOW))
    assert [e.calsync_key for e in listed] == ["calsync:it:42"]


def test_all_day_write_keeps_its_dates(suite):
    write = EventWrite(
        subject="年假",
        start=None,
        end=None,
        all_day=True,
        start_date=TODAY,
        end_date=TODAY + dt.timedelta(days=2),
        timezone=ZONE,
        key="k-allday",
    )
    made = run(suite, lambda c: c.create_event(suite.mailbox, write))
    assert made.all_day and (made.start_date, made.end_date) == (
        TODAY,
        TODAY + dt.timedelta(days=2),
    )


def test_update_in_place_and_delete_twice(suite):
    write = EventWrite(
        subject="v1", start=at(TODAY, 9), end=at(TODAY, 10), timezone=ZONE, key="k-upd"
    )
    made = run(suite, lambda c: c.create_event(suite.mailbox, write))
    write.subject, write.start, write.end = "v2", at(TODAY, 14), at(TODAY, 15)
    updated = run(suite, lambda c: c.update_event(suite.mailbox, made.suite_id, write))
    assert updated.suite_id == made.suite_id and updated.subject == "v2"
    assert updated.start == at(TODAY, 14).astimezone(dt.UTC)
    assert suite.count(suite.mailbox) == 1
    run(suite, lambda c: c.delete_event(suite.mailbox, made.suite_id))
    run(suite, lambda c: c.delete_event(suite.mailbox, made.suite_id))  # already gone: fine
    assert run(suite, lambda c: c.list_events(suite.mailbox, WINDOW)) == []


def test_throttling_is_survived_without_early_retries(suite):
    suite.seed(suite.mailbox, [Seed(f"t{i}", at(TODAY, 9), at(TODAY, 10)) for i in range(25)])
    suite.throttle(0.2, 1)
    events = run(suite, lambda c: c.list_events(suite.mailbox, WINDOW))
    suite.throttle(0.0, 1)
    assert len(events) == 25
    assert suite.violations() == 0


ROOM = "room-4f@contoso.com"


def meeting(**changes: Any) -> EventWrite:
    """A meeting in a room, as reverse sync writes it."""
    values: dict[str, Any] = {
        "subject": "评审 Review",
        "start": at(TODAY, 15),
        "end": at(TODAY, 16),
        "timezone": ZONE,
        "location": "4F 会议室",
        "body": "议程 agenda",
        "attendees": [
            Attendee("partner@fabrikam.com", "Partner"),
            Attendee(ROOM, "4F 会议室", "resource"),
        ],
        "key": "calsync:rev:7",
    }
    values.update(changes)
    return EventWrite(**values)


def assert_versioned(event: SuiteEvent) -> None:
    """The suite's version of the event: a change key and an aware UTC modification time."""
    assert event.change_key, f"{event.subject}: no change_key"
    assert event.last_modified is not None, f"{event.subject}: no last_modified"
    assert event.last_modified.utcoffset() == dt.timedelta(0)
    now = dt.datetime.now(dt.UTC)
    assert now - dt.timedelta(hours=1) < event.last_modified < now + dt.timedelta(minutes=5)


def test_get_event_returns_the_event_with_its_version(suite):
    made = run(suite, lambda c: c.create_event(suite.mailbox, meeting()))
    assert_versioned(made)
    got = run(suite, lambda c: c.get_event(suite.mailbox, made.suite_id))
    assert got is not None
    assert (got.suite_id, got.calsync_key, got.subject) == (
        made.suite_id,
        "calsync:rev:7",
        "评审 Review",
    )
    assert (got.start, got.end) == (
        at(TODAY, 15).astimezone(dt.UTC),
        at(TODAY, 16).astimezone(dt.UTC),
    )
    assert got.change_key == made.change_key  # nothing changed in between
    assert_versioned(got)
    listed = run(suite, lambda c: c.list_events(suite.mailbox, WINDOW))
    assert [e.suite_id for e in listed] == [made.suite_id]
    assert listed[0].change_key == made.change_key
    assert_versioned(listed[0])


def test_change_feeds_carry_the_version(suite):
    made = run(suite, lambda c: c.create_event(suite.mailbox, meeting()))

    async def feed(connector: Any) -> Any:
        try:
            return await connector.list_changes(suite.mailbox, WINDOW, None)
        except IncrementalNotSupported:
            return None

    changes = run(suite, feed)
    if changes is None:
        pytest.skip(f"{suite.name} has no change feed")
    assert [e.suite_id for e in changes.events] == [made.suite_id]
    assert changes.events[0].change_key == made.change_key
    assert_versioned(changes.events[0])


def test_a_room_is_a_resource_attendee_and_the_location_is_set(suite):
    made = run(suite, lambda c: c.create_event(suite.mailbox, meeting()))
    kinds = {a.email: a.kind for a in made.attendees}
    assert kinds.get(ROOM) == "resource" and made.location == "4F 会议室"
    listed = run(suite, lambda c: c.list_events(suite.mailbox, WINDOW))
    assert len(listed) == 1
    kinds = {a.email: a.kind for a in listed[0].attendees}
    assert kinds.get(ROOM) == "resource"
    assert kinds.get("partner@fabrikam.com") == "required"
    assert listed[0].location == "4F 会议室"


def test_update_changes_the_version_and_an_unchanged_one_writes_nothing(suite):
    suite.with_invitations()
    made = run(suite, lambda c: c.create_event(suite.mailbox, meeting()))
    sent = suite.messages_sent()
    assert sent > 0  # the invitations
    same = run(suite, lambda c: c.update_event(suite.mailbox, made.suite_id, meeting()))
    assert same.change_key == made.change_key  # nothing was written...
    assert suite.messages_sent() == sent  # ...so no meeting update went out
    got = run(suite, lambda c: c.get_event(suite.mailbox, made.suite_id))
    assert got is not None and got.change_key == made.change_key
    # Without a key (reverse sync may not pass it again) the marker stays and nothing changes.
    same = run(suite, lambda c: c.update_event(suite.mailbox, made.suite_id, meeting(key="")))
    assert same.change_key == made.change_key and suite.messages_sent() == sent

    moved = meeting(subject="评审 Review v2", start=at(TODAY, 17), end=at(TODAY, 18))
    updated = run(suite, lambda c: c.update_event(suite.mailbox, made.suite_id, moved))
    assert updated.suite_id == made.suite_id
    assert updated.change_key and updated.change_key != made.change_key
    assert_versioned(updated)
    assert made.last_modified is not None and updated.last_modified is not None
    assert updated.last_modified >= made.last_modified
    assert suite.messages_sent() > sent  # the attendees hear of the change
    got = run(suite, lambda c: c.get_event(suite.mailbox, made.suite_id))
    assert got is not None
    assert (got.subject, got.start, got.change_key) == (
        "评审 Review v2",
        at(TODAY, 17).astimezone(dt.UTC),
        updated.change_key,
    )
    assert got.calsync_key == "calsync:rev:7"
    assert {a.email: a.kind for a in got.attendees}.get(ROOM) == "resource"


def test_get_event_after_delete_is_none(suite):
    made = run(suite, lambda c: c.create_event(suite.mailbox, meeting()))
    run(suite, lambda c: c.delete_event(suite.mailbox, made.suite_id))
    assert run(suite, lambda c: c.get_event(suite.mailbox, made.suite_id)) is None
    assert run(suite, lambda c: c.get_event(suite.mailbox, made.suite_id)) is None


def test_get_event_of_an_unknown_mailbox_is_an_error_not_none(suite):
    made = run(suite, lambda c: c.create_event(suite.mailbox, meeting()))
    domain = suite.mailbox.split("@")[1]
    with pytest.raises(MailboxNotFound):
        run(suite, lambda c: c.get_event(f"nobody@{domain}", made.suite_id))
