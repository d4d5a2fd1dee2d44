"""A room that declines (E16) on every suite: a meeting booked with a room comes into the OA
with the room booked; when the room's decline reaches the organiser's event (Graph and
Alibaba: the resource attendee's response status; EWS: its ResponseType, through the
emulator's ``record_response``), the next scheduled run updates the same OA schedule — no
room booked, the room kept as a declined participant — and writes one ``declined`` sync-log
record naming the room; calsync writes nothing to the suite and sends no mail. Rooms booked as
resource attendees by reverse sync: ``test_reverse_suites`` and the last test here (nothing is
ever written to a room's own calendar); a room declining from the start: ``test_room_decline``
(Graph)."""

from __future__ import annotations

import datetime as dt
import json

import sqlalchemy as sa

from calsync.oa import schema as t
from tests.integration.conftest import TODAY
from tests.integration.reverse_helpers import ReverseRunner, oa_create, room_id
from tests.integration.safety_suites import LINA, ORGANISER, ROOM, ROOM_NAME, Ev, Suite
from tests.integration.test_incremental_graph import IncrementalRunner


def declined_logs(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(t.sync_log).where(t.sync_log.c.action == "declined")))


def schedule_with_people(engine: sa.Engine, title: str) -> tuple[object, list[object]]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(t.schedules).where(t.schedules.c.title == title)).one()
        people = conn.execute(
            sa.select(t.participants).where(t.participants.c.schedule_id == row.id)
        ).all()
    return row, people


def test_room_decline_frees_the_same_schedule_and_is_logged_once(
    suite: Suite,  # noqa: F811 - the fixture
    oa: sa.Engine,  # noqa: F811 - the fixture
) -> None:
    run = IncrementalRunner(oa, suite.config())
    start = dt.datetime.combine(TODAY + dt.timedelta(days=1), dt.time(10))
    made = suite.add(
        ORGANISER, Ev("评审 with a room", start, start + dt.timedelta(hours=1), attendees=(LINA,),
                      room=True),
    )  # fmt: skip
    assert run()["totals"].get("created") == 1
    booked, _ = schedule_with_people(oa, "评审 with a room")
    assert booked.room_id == room_id(oa, ROOM_NAME)  # type: ignore[attr-defined]
    assert declined_logs(oa) == []

    suite.room_responds(ORGANISER, made, "declined")
    writes, mail = suite.writes(), suite.mail()
    totals = run()["totals"]
    assert totals.get("updated") == 1 and "created" not in totals and "deleted" not in totals
    freed, people = schedule_with_people(oa, "评审 with a room")
    assert freed.id == booked.id and freed.room_id is None  # type: ignore[attr-defined]
    rooms = [(p.email, p.response) for p in people if p.kind == "room"]  # type: ignore[attr-defined]
    assert rooms == [(ROOM, "declined")]
    [logged] = declined_logs(oa)
    assert ROOM_NAME in logged.message and "declined" in logged.message  # type: ignore[attr-defined]
    assert (logged.title, logged.mailbox) == ("评审 with a room", ORGANISER)  # type: ignore[attr-defined]
    assert (suite.writes(), suite.mail()) == (writes, mail)

    assert set(run()["totals"]) <= {"unchanged", "skipped"}
    assert len(declined_logs(oa)) == 1  # unchanged: no second record


def test_reverse_books_the_room_as_a_resource_never_in_its_calendar(
    suite: Suite,  # noqa: F811 - the fixture
    oa: sa.Engine,  # noqa: F811 - the fixture
) -> None:
    """E16: an OA schedule with a mapped room reaches the suite as one event in the
    organiser's mailbox with the room as a resource attendee; calsync sends no request at all
    for the room's mailbox (the suite books it: EWS and Graph deliver it there themselves)."""
    config = suite.config(direction="both")
    start = dt.datetime.combine(TODAY + dt.timedelta(days=1), dt.time(14),
                                dt.timezone(dt.timedelta(hours=8)))  # fmt: skip
    sid = oa_create(oa, "zhangwei", "OA 会议 with a room", start, attendees=("lina",),
                    room=ROOM_NAME)  # fmt: skip
    drain = ReverseRunner(oa, [config])
    assert drain.counts(drain()) == {"created": 1}
    assert suite.writes()["create"] == 1
    [made] = [e for e in suite.stored(ORGANISER) if e.get("subject") == "OA 会议 with a room"]
    assert ROOM in json.dumps(made, ensure_ascii=False).lower()  # among its attendees
    assert IncrementalRunner(oa, config)()["totals"].get("created", 0) == 0
    room, _ = schedule_with_people(oa, "OA 会议 with a room")
    assert room.id == sid and room.room_id == room_id(oa, ROOM_NAME)  # type: ignore[attr-defined]
    assert suite.requests_for(ROOM) == 0 < suite.requests_for(ORGANISER)


# fixtures: the suites over their emulators (EWS and Alibaba started once per session)
from tests.integration.safety_suites import oa, suite  # noqa: E402,F401
