"""One contract, every connector: list, paging, all-day, time zones, idempotent create,
find-by-key, update in place, delete, throttling."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from typing import Any

from calsync.connectors.base import EventWrite
from calsync.model import Attendee, Window
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
