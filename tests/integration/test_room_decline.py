"""A room that declines (E16): the resource attendee's response, read from the suite, is
reflected in the OA schedule (no room booked, the room kept as a declined participant) and
logged — on the first sync and when an accepted room declines later."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from calsync.oa import schema as t
from tests.integration.conftest import TODAY, ForwardRunner

ORGANISER = "lina@contoso.com"
ROOM01 = "meeting01@contoso.com"


def room_event(subject: str, response: str) -> dict[str, Any]:
    day = TODAY + dt.timedelta(days=1)
    return {
        "subject": subject,
        "start": {"dateTime": f"{day}T10:00:00", "timeZone": "Asia/Shanghai"},
        "end": {"dateTime": f"{day}T11:00:00", "timeZone": "Asia/Shanghai"},
        "attendees": [
            {
                "type": "resource",
                "emailAddress": {"address": ROOM01, "name": "会议室01"},
                "status": {"response": response, "time": "2026-01-01T00:00:00Z"},
            }
        ],
    }


def schedule(engine: sa.Engine, title: str) -> tuple[Any, list[Any]]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(t.schedules).where(t.schedules.c.title == title)).one()
        people = conn.execute(
            sa.select(t.participants).where(t.participants.c.schedule_id == row.id)
        ).all()
    return row, people


def declined_logs(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(sa.select(t.sync_log).where(t.sync_log.c.action == "declined")).all()


def test_declined_room_is_not_booked_and_is_logged(forward: ForwardRunner, graph: Any):
    graph.store.add_event(ORGANISER, room_event("room said no", "declined"), deliver=False)
    graph.store.add_event(ORGANISER, room_event("room said yes", "accepted"), deliver=False)
    forward()
    no, no_people = schedule(forward.engine, "room said no")
    yes, _ = schedule(forward.engine, "room said yes")
    assert no.room_id is None and yes.room_id is not None
    [room] = [p for p in no_people if p.kind == "room"]
    assert (room.email, room.response) == (ROOM01, "declined")
    [logged] = declined_logs(forward.engine)
    assert "会议室01" in logged.message and "declined" in logged.message
    assert logged.title == "room said no" and logged.mailbox == ORGANISER
    forward()  # unchanged: no second record
    assert len(declined_logs(forward.engine)) == 1


def test_room_that_declines_later_frees_the_schedule(forward: ForwardRunner, graph: Any):
    made = graph.store.add_event(ORGANISER, room_event("booked then declined", "accepted"), False)
    forward()
    booked, _ = schedule(forward.engine, "booked then declined")
    assert booked.room_id is not None and declined_logs(forward.engine) == []
    attendees = [dict(a) for a in made["attendees"]]
    attendees[0]["status"] = {"response": "declined", "time": "2026-01-02T00:00:00Z"}
    graph.store.update_event(ORGANISER, made["id"], {"attendees": attendees})
    forward()
    freed, people = schedule(forward.engine, "booked then declined")
    assert freed.id == booked.id and freed.room_id is None
    assert [p.response for p in people if p.kind == "room"] == ["declined"]
    assert len(declined_logs(forward.engine)) == 1
