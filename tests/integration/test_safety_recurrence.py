"""Recurrence exceptions (E13) on every suite: a series with one moved and one cancelled
occurrence. Occurrences are keyed by (series UID, original start): the moved one updates
exactly its own OA schedule (same schedule id, new times), the cancelled one removes only its
schedule (and its links in every mailbox), the others are not touched; forward sync writes
nothing to the suite and sends no mail. Scheduled (incremental) runs are used, so Graph's
delta and EWS SyncFolderItems carry the exceptions; Alibaba has no change feed and reads in
full. Graph delta's thin occurrences, completed from the series' instances, are checked in
``test_incremental_graph.test_thin_occurrences_are_completed_from_the_series``.

Alibaba Mail documents no exception write; its emulator makes a PATCHed occurrence an
exception of its series as Graph does (the API mirrors Graph's event model)."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo

import pytest
import sqlalchemy as sa

from calsync.config import IntegrationConfig
from calsync.connectors.base import connector_for
from calsync.model import SuiteEvent, Window
from tests.integration.conftest import TODAY
from tests.integration.reverse_helpers import ReverseRunner, oa_delete, oa_update
from tests.integration.safety_suites import (
    LINA,
    NO_WRITES,
    ORGANISER,
    ZONE,
    Ev,
    Suite,
    links,
    meetings,
    schedules,
    utc,
)
from tests.integration.test_incremental_graph import IncrementalRunner

SH = zoneinfo.ZoneInfo(ZONE)
DAY = dt.timedelta(days=1)
FIRST = dt.datetime.combine(TODAY - DAY, dt.time(10))  # 10:00 Shanghai, five days


def original_starts() -> list[dt.datetime]:
    return [(FIRST + i * DAY).replace(tzinfo=SH).astimezone(dt.UTC) for i in range(5)]


def key_start(identity_key: str) -> dt.datetime:
    """The original start an identity key carries: (series UID | original start in UTC)."""
    uid, _, when = identity_key.rpartition("|")
    assert uid, identity_key
    return dt.datetime.fromisoformat(when)


def read(config: IntegrationConfig, mailbox: str) -> list[SuiteEvent]:
    """The mailbox's window as the connector reads it."""

    async def go() -> list[SuiteEvent]:
        async with connector_for(config) as connector:
            window = Window(TODAY - 3 * DAY, TODAY + 3 * DAY, ZONE)
            return await connector.list_events(mailbox, window)

    return asyncio.run(go())


@pytest.mark.parametrize("filters", ["", "filters: []\n"], ids=["default-filters", "no-filters"])
def test_moved_and_cancelled_occurrence_touch_only_their_schedules(
    suite: Suite,  # noqa: F811 - the fixture
    oa: sa.Engine,  # noqa: F811 - the fixture
    filters: str,
) -> None:
    """Without the skip_cancelled filter too: the attendees' copies of the cancelled
    occurrence (marked cancelled) must not keep its schedule alive."""
    config = suite.config(extra=filters)
    run = IncrementalRunner(oa, config)
    master = suite.add(
        ORGANISER, Ev("周会 Weekly sync", FIRST, FIRST + dt.timedelta(hours=1), attendees=(LINA,),
                      daily=5),
    )  # fmt: skip
    first = run()
    assert first["totals"].get("created") == 5, first["totals"]
    keyed = meetings(oa, config.id)
    # one schedule per occurrence, keyed by the series' UID and the occurrence's original start
    assert sorted(key_start(k) for k in keyed) == original_starts()
    # (Graph gives each occurrence a UID of its own, derived from the series'; EWS and
    # Alibaba give the series' UID: either way the original start tells occurrences apart.)
    read_keys = set()
    for event in read(config, ORGANISER):
        assert event.series_id and event.original_start is not None
        assert event.identity_key == f"{event.ical_uid}|{event.original_start.isoformat()}"
        read_keys.add(event.identity_key)
    assert read_keys == set(keyed)
    before = schedules(oa)
    linked_before = links(oa, config.id)
    by_start = {key_start(k): sid for k, sid in keyed.items()}
    moved_sid, cancelled_sid = by_start[original_starts()[1]], by_start[original_starts()[2]]

    moved_day, cancelled_day = (FIRST + DAY).date(), (FIRST + 2 * DAY).date()
    new_start = FIRST + DAY + dt.timedelta(hours=5)  # 15:00 the same day
    suite.move_occurrence(
        ORGANISER, master, moved_day, new_start, new_start + dt.timedelta(hours=1)
    )
    suite.cancel_occurrence(ORGANISER, master, cancelled_day)
    writes, mail = suite.writes(), suite.mail()

    second = run()
    totals = second["totals"]
    assert totals.get("deleted") == 1 and "created" not in totals, totals
    assert totals.get("updated") == 1, totals
    after = schedules(oa)
    assert set(after) == set(before) - {cancelled_sid}
    moved = after[moved_sid]  # the same schedule, moved
    assert utc(moved.start_utc) == (new_start.replace(tzinfo=SH)).astimezone(dt.UTC)
    assert utc(moved.end_utc) - utc(moved.start_utc) == dt.timedelta(hours=1)  # type: ignore[operator]
    assert meetings(oa, config.id) == {k: v for k, v in keyed.items() if v != cancelled_sid}
    for sid in set(before) - {moved_sid, cancelled_sid}:
        assert after[sid] == before[sid]  # untouched, timestamps included
    # the cancelled occurrence's links are gone in every mailbox; the others stay as they were
    assert links(oa, config.id) == {x for x in linked_before if x[2] != cancelled_sid}
    # forward sync wrote nothing to the suite and sent no mail
    assert suite.writes() == writes == NO_WRITES
    assert suite.mail() == mail

    third = run()
    assert set(third["totals"]) <= {"unchanged", "skipped"}, third["totals"]
    assert schedules(oa) == after


def test_oa_edit_of_one_occurrence_goes_back_to_that_occurrence_only(
    suite: Suite,  # noqa: F811 - the fixture
    oa: sa.Engine,  # noqa: F811 - the fixture
) -> None:
    """Two-way: an OA edit of one occurrence's schedule updates that occurrence in place (an
    exception of the series: one update message to the attendee), never the series and never
    by delete + create; reading it back changes nothing more."""
    config = suite.config(direction="both")
    run = IncrementalRunner(oa, config)
    drain = ReverseRunner(oa, [config])
    suite.add(
        ORGANISER, Ev("周会 Weekly sync", FIRST, FIRST + dt.timedelta(hours=1), attendees=(LINA,),
                      daily=5),
    )  # fmt: skip
    assert run()["totals"].get("created") == 5
    assert drain.counts(drain()) == {}
    by_start = {key_start(k): sid for k, sid in meetings(oa, config.id).items()}
    target = by_start[original_starts()[3]]
    before = schedules(oa)
    writes, mail = suite.writes(), suite.mail()

    oa_update(oa, target, title="周会 (OA edit)")
    assert drain.counts(drain()) == {"updated": 1}
    assert suite.writes() == {**writes, "update": writes["update"] + 1}
    assert suite.mail() - mail == 1  # 李娜's update
    subjects = {e.original_start: e.subject for e in read(config, ORGANISER)}
    assert subjects == {
        when: "周会 (OA edit)" if when == original_starts()[3] else "周会 Weekly sync"
        for when in original_starts()
    }
    # read back: the same schedules, nothing goes out again
    assert set(run()["totals"]) <= {"unchanged", "skipped", "updated"}
    assert drain.counts(drain()) == {}
    after = schedules(oa)
    assert set(after) == set(before) and after[target].title == "周会 (OA edit)"
    assert all(after[sid] == before[sid] for sid in before if sid != target)
    assert suite.writes()["update"] == writes["update"] + 1


def test_oa_delete_of_one_occurrence_cancels_that_occurrence_only(
    suite: Suite,  # noqa: F811 - the fixture
    oa: sa.Engine,  # noqa: F811 - the fixture
) -> None:
    """Two-way: an OA delete of one occurrence's schedule deletes that occurrence from the
    series (one cancellation to the attendee), never the series; the attendee's cancelled copy
    read back afterwards brings nothing back."""
    config = suite.config(direction="both")
    run = IncrementalRunner(oa, config)
    drain = ReverseRunner(oa, [config])
    suite.add(
        ORGANISER, Ev("周会 Weekly sync", FIRST, FIRST + dt.timedelta(hours=1), attendees=(LINA,),
                      daily=5),
    )  # fmt: skip
    assert run()["totals"].get("created") == 5
    by_start = {key_start(k): sid for k, sid in meetings(oa, config.id).items()}
    target = by_start[original_starts()[3]]
    before = schedules(oa)
    writes, mail = suite.writes(), suite.mail()

    oa_delete(oa, target)
    assert drain.counts(drain()) == {"deleted": 1}
    assert suite.writes() == {**writes, "delete": writes["delete"] + 1}
    assert suite.mail() - mail == 1  # 李娜's cancellation of that one occurrence
    left = sorted(e.original_start for e in read(config, ORGANISER))
    assert left == [when for i, when in enumerate(original_starts()) if i != 3]
    assert set(run()["totals"]) <= {"unchanged", "skipped"}  # no schedule comes back
    assert drain.counts(drain()) == {}
    assert schedules(oa) == {sid: row for sid, row in before.items() if sid != target}
    assert suite.writes()["delete"] == writes["delete"] + 1


# fixtures: the suites over their emulators (EWS and Alibaba started once per session)
from tests.integration.safety_suites import oa, suite  # noqa: E402,F401
