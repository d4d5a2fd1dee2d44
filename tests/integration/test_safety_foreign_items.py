"""Foreign items (E17) on every suite: what calsync did not create or link is never changed or
deleted by it, whatever the filters and mappings say.

- Forward: an OA schedule made in the OA with the very content of a suite event (a twin) and
  a schedule another integration brought in (with that integration's meeting and link) are
  never merged, changed or deleted — not when the suite event comes in, and not when a filter
  change makes this integration drop everything it had linked (delete guard off).
- Reverse (two-way): suite events without calsync's marker — a private one the filters keep
  out and one with the very content of an OA schedule — are never adopted, changed or deleted:
  the OA schedule goes out as an event of its own, and OA deletes of schedules that were never
  pushed (a creator without a mailbox, another integration's schedule) delete nothing in the
  suite. Suite writes and meeting messages are counted by the emulators.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import sqlalchemy as sa

from calsync.oa import outbox
from calsync.oa import schema as t
from tests.integration.conftest import TODAY
from tests.integration.reverse_helpers import ReverseRunner, oa_create, oa_delete, user_id
from tests.integration.safety_suites import (
    LINA,
    NO_WRITES,
    ORGANISER,
    ZONE,
    Ev,
    Suite,
    links,
    schedules,
)
from tests.integration.test_incremental_graph import IncrementalRunner

SH = zoneinfo.ZoneInfo(ZONE)
TOMORROW = TODAY + dt.timedelta(days=1)
OTHER = "other_integration"
UNGUARDED = "delete_guard: {enabled: false}\n"
EVERYTHING_FILTERED = "variables: {title_pattern: '.'}\n"  # skip_title_pattern matches all


def at(hour: int) -> dt.datetime:
    return dt.datetime.combine(TOMORROW, dt.time(hour))


def other_integrations_schedule(engine: sa.Engine, title: str, start: dt.datetime) -> int:
    """A schedule as another integration's forward sync writes it: its origin (so no outbox
    row reaches reverse sync), ``source_integration``, a meeting and a link of its own."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    begin = start.replace(tzinfo=SH).astimezone(dt.UTC).replace(tzinfo=None)
    creator = user_id(engine, "zhangwei")
    with engine.begin() as conn, outbox.write_origin(conn, outbox.forward_origin(OTHER)):
        sid = conn.execute(
            sa.insert(t.schedules).values(
                title=title,
                start_utc=begin,
                end_utc=begin + dt.timedelta(hours=1),
                timezone=ZONE,
                creator_id=creator,
                source_integration=OTHER,
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key[0]
        conn.execute(
            sa.insert(t.meetings).values(
                integration_id=OTHER, identity_key="uid-other", schedule_id=sid,
                owner_mailbox=ORGANISER,
            )
        )  # fmt: skip
        conn.execute(
            sa.insert(t.links).values(
                integration_id=OTHER, mailbox=ORGANISER, suite_id="id-other",
                identity_key="uid-other", schedule_id=sid, created_at=now, updated_at=now,
            )
        )  # fmt: skip
    return int(sid)


def oa_rows(engine: sa.Engine, *ids: int) -> dict[int, Any]:
    """The schedules with their participants, meetings and links (every integration's)."""
    with engine.connect() as conn:
        out = {}
        for sid in ids:
            row = conn.execute(sa.select(t.schedules).where(t.schedules.c.id == sid)).first()
            people = conn.execute(
                sa.select(t.participants).where(t.participants.c.schedule_id == sid)
            ).all()
            meets = conn.execute(sa.select(t.meetings).where(t.meetings.c.schedule_id == sid)).all()
            linked = conn.execute(sa.select(t.links).where(t.links.c.schedule_id == sid)).all()
            out[sid] = (row, sorted(people), sorted(meets), sorted(linked))
        return out


def event(side: Suite, mailbox: str, suite_id: str) -> dict[str, Any] | None:
    """The stored event (versions and timestamps included), None once it is gone."""
    return next((e for e in side.stored(mailbox) if e["id"] == suite_id), None)


def test_forward_never_touches_schedules_it_did_not_create(
    suite: Suite,  # noqa: F811 - the fixture
    oa: sa.Engine,  # noqa: F811 - the fixture
) -> None:
    config = suite.config(extra=UNGUARDED)
    twin = oa_create(
        oa, "zhangwei", "周会 Sync", at(10).replace(tzinfo=SH), attendees=("lina",)
    )  # made in the OA, the suite event's content exactly
    other = other_integrations_schedule(oa, "周会 Sync", at(10))
    made = suite.add(ORGANISER, Ev("周会 Sync", at(10), at(11), attendees=(LINA,)))
    foreign = oa_rows(oa, twin, other)
    writes, mail = suite.writes(), suite.mail()

    first = IncrementalRunner(oa, config)()
    assert first["totals"].get("created") == 1, first["totals"]
    [ours] = set(schedules(oa)) - {twin, other}
    assert {sid for _, _, sid in links(oa, config.id)} == {ours}
    assert oa_rows(oa, twin, other) == foreign

    # a filter that now skips everything: this integration drops all it linked (its own
    # schedule is deleted), and nothing else
    everything = suite.config(extra=UNGUARDED + EVERYTHING_FILTERED)
    assert everything.id == config.id
    dropped = IncrementalRunner(oa, everything)()
    assert dropped["totals"].get("deleted") == 1, dropped["totals"]
    assert set(schedules(oa)) == {twin, other}
    assert oa_rows(oa, twin, other) == foreign
    assert links(oa, config.id) == set()
    # and the suite saw reads only
    assert suite.writes() == writes == NO_WRITES
    assert suite.mail() == mail
    assert event(suite, ORGANISER, made) is not None


def test_reverse_never_touches_suite_events_without_the_marker(
    suite: Suite,  # noqa: F811 - the fixture
    oa: sa.Engine,  # noqa: F811 - the fixture
) -> None:
    config = suite.config(direction="both", extra=UNGUARDED)
    drain = ReverseRunner(oa, [config])
    private = suite.add(ORGANISER, Ev("[no-sync] 私事 private", at(12), at(13)))
    user_made = suite.add(ORGANISER, Ev("客户会 Customer", at(15), at(16)))
    untouched = {sid: event(suite, ORGANISER, sid) for sid in (private, user_made)}
    writes, mail = suite.writes(), suite.mail()

    # an OA schedule with the user's event's content goes out as an event of its own
    twin = oa_create(oa, "zhangwei", "客户会 Customer", at(15).replace(tzinfo=SH))
    lone = oa_create(oa, "sunli", "OA 行政 no mailbox")  # its creator has no mailbox
    other = other_integrations_schedule(oa, "客户会 Customer", at(15))
    counts = drain.counts(drain())
    assert counts == {"created": 1}, counts
    assert {sid: event(suite, ORGANISER, sid) for sid in untouched} == untouched
    created = suite.writes()["create"] - writes["create"]
    assert created == 1 and len(suite.subjects(ORGANISER)) == 3

    # forward links calsync's own event to the twin and brings the user's event in (linked
    # now: calsync's to sync from here on); the private one stays out
    result = IncrementalRunner(oa, config)()
    assert result["totals"].get("created") == 1, result["totals"]
    linked = links(oa, config.id)
    assert {sid for _, _, sid in linked} >= {twin}
    assert not {lone, other} & {sid for _, _, sid in linked}
    assert event(suite, ORGANISER, private) == untouched[private]

    # OA deletes of schedules never pushed delete nothing in the suite; the twin's delete
    # removes calsync's own event only
    oa_delete(oa, lone)
    oa_delete(oa, other)
    oa_delete(oa, twin)
    counts = drain.counts(drain())
    assert counts == {"deleted": 1, "nothing": 1}, counts  # nothing: the other's, no link
    assert event(suite, ORGANISER, private) == untouched[private]
    assert event(suite, ORGANISER, user_made) == untouched[user_made]
    assert suite.subjects(ORGANISER) == sorted(["[no-sync] 私事 private", "客户会 Customer"])
    now = suite.writes()
    assert (now["create"] - writes["create"], now["update"] - writes["update"]) == (1, 0)
    assert now["delete"] - writes["delete"] == 1
    assert suite.mail() == mail  # no attendees on any of them: nothing to send


# fixtures: the suites over their emulators (EWS and Alibaba started once per session)
from tests.integration.safety_suites import oa, suite  # noqa: E402,F401
