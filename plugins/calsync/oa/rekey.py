"""Meeting identity changes when forward sync re-links an event by calsync's marker (E11).

An event calsync created can come back with a new suite id *and* a new iCalUId (a move done as
copy + delete, a re-import) while it still carries calsync's marker. The planner then takes over
the schedule's link (:mod:`calsync.sync.plan`, ``Update.rekey_from``); the meeting and the other
mailboxes' links must follow the new identity, or the copies that arrive with the new iCalUId
would make a second schedule.
"""

from __future__ import annotations

import sqlalchemy as sa

from calsync.oa import schema as t
from calsync.sync.plan import MailboxPlan, Update


def calsync_key_prefix(integration_id: str) -> str:
    """The start of calsync's marker on the events one integration created (the schedule id
    follows; ``calsync.sync.reverse.calsync_key``)."""
    return f"calsync:{integration_id}:"


def rekey_meetings(conn: sa.Connection, integration_id: str, plan: MailboxPlan) -> int:
    """Give the meetings (and their links) of re-keyed updates the event's new identity, in
    the caller's transaction, before the plan is applied; returns how many were re-keyed."""
    done = 0
    for action in plan.of(Update):
        old = action.rekey_from
        if old is None:
            continue
        new = action.item.event.identity_key[:400]
        conn.execute(
            sa.update(t.meetings)
            .where(t.meetings.c.integration_id == integration_id, t.meetings.c.identity_key == old)
            .values(identity_key=new)
        )
        conn.execute(
            sa.update(t.links)
            .where(
                t.links.c.integration_id == integration_id,
                t.links.c.identity_key == old,
                t.links.c.schedule_id == action.link.schedule_id,
            )
            .values(identity_key=new)
        )
        done += 1
    return done
