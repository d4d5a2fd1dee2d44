"""Calendar ids kept across runs (``calsync_calendar_ids``).

Where a suite names the calendar calsync writes to by an id that has to be looked up in each
mailbox (Alibaba Mail: a calendar listing per mailbox), a reverse drain or a full forward read
starts with the ids an earlier run found (:meth:`SuiteConnector.use_calendar_ids`) and stores
what it looked up anew (:meth:`SuiteConnector.calendar_ids`). The table is a cache: a row the
suite says is gone is looked up again; losing a write to it only costs a lookup next time.
Housekeeping drops rows not refreshed for ``sync_state.retention_days``, so an id is looked up
again at least that often.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import sqlalchemy as sa

from calsync.oa import bulk, outbox
from calsync.oa import schema as t
from calsync.oa.store import utcnow

log = logging.getLogger(__name__)

_C = t.calendar_ids.c


def load(conn: sa.Connection, integration_id: str, calendar: str) -> dict[str, str]:
    """mailbox → calendar id of the integration's configured ``calendar``."""
    rows = conn.execute(
        sa.select(_C.mailbox, _C.calendar_id).where(
            _C.integration_id == integration_id, _C.calendar == calendar
        )
    )
    return {mailbox: calendar_id for mailbox, calendar_id in rows}


def save(
    engine: sa.Engine,
    integration_id: str,
    calendar: str,
    found: Mapping[str, str | None],
    known: Mapping[str, str],
) -> int:
    """Store what a run ``found`` (None: the remembered id is gone) where it differs from what
    it started with (``known``, as :func:`load` gave it), in one transaction of its own.
    Returns the rows written. Another run inserting one of the same mailboxes meanwhile makes
    the insert fail: the transaction is made again once (that row is then updated); should it
    fail again, nothing is stored (logged) and the next run stores what it finds."""
    changed = {m: i for m, i in found.items() if known.get(m) != i and (i or m in known)}
    if not changed:
        return 0
    for attempt in (1, 2):
        try:
            with engine.begin() as conn:
                _write(conn, integration_id, calendar, changed)
            return len(changed)
        except sa.exc.IntegrityError:
            if attempt == 2:
                log.info(
                    "%s: calendar ids stored by other runs meanwhile; %d left for the next run",
                    integration_id,
                    len(changed),
                )
    return 0


def _write(
    conn: sa.Connection, integration_id: str, calendar: str, changed: Mapping[str, str | None]
) -> None:
    gone = sorted(m for m, i in changed.items() if i is None)
    fresh = {m: i for m, i in sorted(changed.items()) if i is not None}
    scope = (_C.integration_id == integration_id, _C.calendar == calendar)
    now = utcnow()
    for chunk in outbox.chunks(gone):
        conn.execute(sa.delete(t.calendar_ids).where(*scope, _C.mailbox.in_(chunk)))
    existing: set[str] = set()
    for chunk in outbox.chunks(list(fresh)):
        existing.update(
            conn.execute(sa.select(_C.mailbox).where(*scope, _C.mailbox.in_(chunk))).scalars()
        )
    updates = [
        {"b_mailbox": m, "calendar_id": i, "updated_at": now}
        for m, i in fresh.items()
        if m in existing
    ]
    if updates:
        conn.execute(
            sa.update(t.calendar_ids).where(*scope, _C.mailbox == sa.bindparam("b_mailbox")),
            updates,
        )
    bulk.insert_rows(
        conn,
        t.calendar_ids,
        [
            {
                "integration_id": integration_id,
                "mailbox": m,
                "calendar": calendar,
                "calendar_id": i,
                "updated_at": now,
            }
            for m, i in fresh.items()
            if m not in existing
        ],
    )
