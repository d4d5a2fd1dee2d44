"""Calendar ids kept across runs (``calsync_calendar_ids``).

Where a suite names the calendar calsync writes to by an id that has to be looked up in each
mailbox (Alibaba Mail: a calendar listing per mailbox), a reverse drain starts with the ids
runs looked up within the last ``TRUSTED_FOR`` (:meth:`SuiteConnector.use_calendar_ids`),
and stores the ids it looked up and drops the ones the suite said are gone
(:meth:`SuiteConnector.calendar_ids`); forward reads store the ids they looked up too. An id
older than that is looked up again: a folder renamed, or another default calendar chosen,
keeps its old id valid, and only a listing notices. The ages are spread (±25% per mailbox,
fixed by its address) so the ids one first drain stored do not all expire in the same drain.

A cache: a failure to read or store it never fails a run (it costs listings).
"""

from __future__ import annotations

import datetime as dt
import logging
import zlib

import sqlalchemy as sa

from calsync.connectors.base import CalendarIds
from calsync.oa import bulk, outbox
from calsync.oa import schema as t
from calsync.oa.store import utcnow

log = logging.getLogger(__name__)

TRUSTED_FOR = dt.timedelta(hours=24)  # an id is looked up again after about this long
_ID_MAX = 400  # calsync_calendar_ids.calendar_id: a longer id is not kept
_C = t.calendar_ids.c


def _trusted_for(mailbox: str) -> dt.timedelta:
    """TRUSTED_FOR × 0.75–1.25, fixed per mailbox."""
    spread = (zlib.crc32(mailbox.encode()) % 1000) / 1000
    return TRUSTED_FOR * (0.75 + spread / 2)


def load(
    engine: sa.Engine, integration_id: str, calendar: str, now: dt.datetime | None = None
) -> dict[str, str]:
    """mailbox → calendar id of the integration's configured ``calendar``, for the ids
    looked up recently enough; {} (logged) if the table cannot be read."""
    now = now or utcnow()
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(_C.mailbox, _C.calendar_id, _C.updated_at).where(
                    _C.integration_id == integration_id, _C.calendar == calendar
                )
            ).all()
    except sa.exc.SQLAlchemyError as exc:
        log.warning("%s: kept calendar ids not read (%s): listing them", integration_id, exc)
        return {}
    return {
        mailbox: calendar_id
        for mailbox, calendar_id, updated_at in rows
        if now - updated_at < _trusted_for(mailbox)
    }


def save(engine: sa.Engine, integration_id: str, calendar: str, ids: CalendarIds) -> int:
    """Keep the ids a run looked up (their age restarts) and drop the kept ids it found gone
    (only while the row still holds that id), in one transaction of its own. Returns the
    rows written. Another run inserting one of the same mailboxes meanwhile makes the insert
    fail: the transaction is made again once (that row is then updated); should it fail
    again, nothing is stored (logged) and a later run stores what it looks up. Any other
    failure is logged, never raised: it costs a later run listings, not this run."""
    found = {m: i for m, i in ids.found.items() if len(i) <= _ID_MAX}
    if len(found) < len(ids.found):
        log.warning("%s: calendar ids over %d characters not kept", integration_id, _ID_MAX)
    gone = {m: i for m, i in ids.gone.items() if m not in found}
    if not found and not gone:
        return 0
    for attempt in (1, 2):
        try:
            with engine.begin() as conn:
                _write(conn, integration_id, calendar, found, gone)
            return len(found) + len(gone)
        except sa.exc.IntegrityError:
            if attempt == 2:
                log.info(
                    "%s: calendar ids stored by other runs meanwhile; %d left for a later run",
                    integration_id,
                    len(found) + len(gone),
                )
        except Exception as exc:
            log.warning("%s: calendar ids not stored (%s)", integration_id, exc)
            break
    return 0


def _write(
    conn: sa.Connection,
    integration_id: str,
    calendar: str,
    found: dict[str, str],
    gone: dict[str, str],
) -> None:
    scope = (_C.integration_id == integration_id, _C.calendar == calendar)
    if gone:  # a row another run has since filled with a fresh id stays
        conn.execute(
            sa.delete(t.calendar_ids).where(
                *scope,
                _C.mailbox == sa.bindparam("b_mailbox"),
                _C.calendar_id == sa.bindparam("b_id"),
            ),
            [{"b_mailbox": m, "b_id": i} for m, i in sorted(gone.items())],
        )
    existing: set[str] = set()
    for chunk in outbox.chunks(sorted(found)):
        existing.update(
            conn.execute(sa.select(_C.mailbox).where(*scope, _C.mailbox.in_(chunk))).scalars()
        )
    now = utcnow()
    updates = [
        {"b_mailbox": m, "calendar_id": i, "updated_at": now}
        for m, i in sorted(found.items())
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
            for m, i in sorted(found.items())
            if m not in existing
        ],
    )
