"""Reverse sync: the change outbox, its triggers, deliveries and the write-origin marker.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Triggers on ``oa_schedules`` (insert, update, delete) and ``oa_schedule_participants`` write
one ``calsync_outbox`` row per change: the schedule id, the operation, when, the origin, and on
delete the creator and title. A delete first copies the schedule's links to
``calsync_deleted_links`` (the foreign keys cascade them away), so the suite items can still
be removed after the schedule is gone.

Origin: calsync's own write transactions hold one row in ``calsync_write_origin`` (inserted at
their start, deleted before commit, so never visible to another transaction); a trigger that
sees a row records its origin (``calsync:<integration>``), otherwise ``oa``. Participant
changes are recorded for OA-made writes only: calsync rewrites participants only together with
their schedule, whose own row already records the change (and a forward sync of thousands of
attendees would otherwise add as many outbox rows).

One SQL text per dialect: PostgreSQL (a PL/pgSQL function per table), MySQL/MariaDB (one
trigger per event; a cascade does not fire triggers there, the schedule's own row suffices)
and SQLite. Times are UTC, naive, like every calsync timestamp.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

DATETIME_US = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
_MYSQL = {
    f"{prefix}_{key}": value
    for prefix in ("mysql", "mariadb")
    for key, value in (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))
}

_ORIGIN = "COALESCE((SELECT origin FROM calsync_write_origin LIMIT 1), 'oa')"
_OUTBOX_COLS = "(schedule_id, op, origin, changed_at, creator_id, title)"
_TOMBSTONE = (
    "INSERT INTO calsync_deleted_links "
    "(integration_id, schedule_id, mailbox, suite_id, identity_key, deleted_at) "
    "SELECT integration_id, schedule_id, mailbox, suite_id, identity_key, {now} "
    "FROM calsync_links WHERE schedule_id = OLD.id"
)

_PG_NOW = "(clock_timestamp() AT TIME ZONE 'UTC')"
_POSTGRESQL = [
    f"""
CREATE FUNCTION calsync_outbox_schedule() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    {_TOMBSTONE.format(now=_PG_NOW)};
    INSERT INTO calsync_outbox {_OUTBOX_COLS}
      VALUES (OLD.id, 'delete', {_ORIGIN}, {_PG_NOW}, OLD.creator_id, OLD.title);
    RETURN OLD;
  END IF;
  INSERT INTO calsync_outbox {_OUTBOX_COLS}
    VALUES (NEW.id, lower(TG_OP), {_ORIGIN}, {_PG_NOW}, NEW.creator_id, NULL);
  RETURN NEW;
END $$""",
    f"""
CREATE FUNCTION calsync_outbox_participant() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  sid integer;
BEGIN
  IF EXISTS (SELECT 1 FROM calsync_write_origin) THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'DELETE' THEN sid := OLD.schedule_id; ELSE sid := NEW.schedule_id; END IF;
  INSERT INTO calsync_outbox {_OUTBOX_COLS}
    VALUES (sid, 'update', 'oa', {_PG_NOW}, NULL, NULL);
  RETURN NULL;
END $$""",
    "CREATE TRIGGER calsync_outbox_schedule_del BEFORE DELETE ON oa_schedules "
    "FOR EACH ROW EXECUTE FUNCTION calsync_outbox_schedule()",
    "CREATE TRIGGER calsync_outbox_schedule_ins_upd AFTER INSERT OR UPDATE ON oa_schedules "
    "FOR EACH ROW EXECUTE FUNCTION calsync_outbox_schedule()",
    "CREATE TRIGGER calsync_outbox_participant AFTER INSERT OR UPDATE OR DELETE "
    "ON oa_schedule_participants FOR EACH ROW EXECUTE FUNCTION calsync_outbox_participant()",
]
_POSTGRESQL_DOWN = [
    "DROP TRIGGER IF EXISTS calsync_outbox_participant ON oa_schedule_participants",
    "DROP TRIGGER IF EXISTS calsync_outbox_schedule_ins_upd ON oa_schedules",
    "DROP TRIGGER IF EXISTS calsync_outbox_schedule_del ON oa_schedules",
    "DROP FUNCTION IF EXISTS calsync_outbox_participant()",
    "DROP FUNCTION IF EXISTS calsync_outbox_schedule()",
]

_PARTICIPANT_EVENTS = (("ins", "INSERT", "NEW"), ("upd", "UPDATE", "NEW"), ("del", "DELETE", "OLD"))

_MY_NOW = "UTC_TIMESTAMP(6)"
_MY_PARTICIPANT = (
    "CREATE TRIGGER calsync_outbox_participant_{event} AFTER {EVENT} "
    "ON oa_schedule_participants FOR EACH ROW "
    "INSERT INTO calsync_outbox " + _OUTBOX_COLS + " "
    "SELECT {row}.schedule_id, 'update', 'oa', " + _MY_NOW + ", NULL, NULL FROM DUAL "
    "WHERE NOT EXISTS (SELECT 1 FROM calsync_write_origin)"
)
_MYSQL_UP = [
    "CREATE TRIGGER calsync_outbox_schedule_ins AFTER INSERT ON oa_schedules FOR EACH ROW "
    f"INSERT INTO calsync_outbox {_OUTBOX_COLS} "
    f"VALUES (NEW.id, 'insert', {_ORIGIN}, {_MY_NOW}, NEW.creator_id, NULL)",
    "CREATE TRIGGER calsync_outbox_schedule_upd AFTER UPDATE ON oa_schedules FOR EACH ROW "
    f"INSERT INTO calsync_outbox {_OUTBOX_COLS} "
    f"VALUES (NEW.id, 'update', {_ORIGIN}, {_MY_NOW}, NEW.creator_id, NULL)",
    "CREATE TRIGGER calsync_outbox_schedule_del BEFORE DELETE ON oa_schedules FOR EACH ROW "
    f"BEGIN {_TOMBSTONE.format(now=_MY_NOW)}; "
    f"INSERT INTO calsync_outbox {_OUTBOX_COLS} "
    f"VALUES (OLD.id, 'delete', {_ORIGIN}, {_MY_NOW}, OLD.creator_id, OLD.title); END",
    *(
        _MY_PARTICIPANT.format(event=event, EVENT=event_sql, row=row)
        for event, event_sql, row in _PARTICIPANT_EVENTS
    ),
]
_MYSQL_DOWN = [
    f"DROP TRIGGER IF EXISTS {name}"
    for name in (
        "calsync_outbox_participant_ins",
        "calsync_outbox_participant_upd",
        "calsync_outbox_participant_del",
        "calsync_outbox_schedule_ins",
        "calsync_outbox_schedule_upd",
        "calsync_outbox_schedule_del",
    )
]

_SQ_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"  # microseconds, as SQLAlchemy stores them
_SQ_PARTICIPANT = (
    "CREATE TRIGGER calsync_outbox_participant_{event} AFTER {EVENT} "
    "ON oa_schedule_participants FOR EACH ROW "
    "WHEN NOT EXISTS (SELECT 1 FROM calsync_write_origin) BEGIN "
    "INSERT INTO calsync_outbox " + _OUTBOX_COLS + " "
    "VALUES ({row}.schedule_id, 'update', 'oa', " + _SQ_NOW + ", NULL, NULL); END"
)
_SQLITE_UP = [
    "CREATE TRIGGER calsync_outbox_schedule_ins AFTER INSERT ON oa_schedules BEGIN "
    f"INSERT INTO calsync_outbox {_OUTBOX_COLS} "
    f"VALUES (NEW.id, 'insert', {_ORIGIN}, {_SQ_NOW}, NEW.creator_id, NULL); END",
    "CREATE TRIGGER calsync_outbox_schedule_upd AFTER UPDATE ON oa_schedules BEGIN "
    f"INSERT INTO calsync_outbox {_OUTBOX_COLS} "
    f"VALUES (NEW.id, 'update', {_ORIGIN}, {_SQ_NOW}, NEW.creator_id, NULL); END",
    "CREATE TRIGGER calsync_outbox_schedule_del BEFORE DELETE ON oa_schedules BEGIN "
    f"{_TOMBSTONE.format(now=_SQ_NOW)}; "
    f"INSERT INTO calsync_outbox {_OUTBOX_COLS} "
    f"VALUES (OLD.id, 'delete', {_ORIGIN}, {_SQ_NOW}, OLD.creator_id, OLD.title); END",
    *(
        _SQ_PARTICIPANT.format(event=event, EVENT=event_sql, row=row)
        for event, event_sql, row in _PARTICIPANT_EVENTS
    ),
]
_SQLITE_DOWN = _MYSQL_DOWN


def _create_tables() -> None:
    op.create_table(
        "calsync_write_origin",
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("origin", sa.String(100), nullable=False),
        **_MYSQL,
    )
    op.create_table(
        "calsync_outbox",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("schedule_id", sa.Integer, nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("origin", sa.String(100), nullable=False, server_default="oa"),
        sa.Column("changed_at", DATETIME_US, nullable=False),
        sa.Column("creator_id", sa.Integer, nullable=True),
        sa.Column("title", sa.String(500), nullable=True),
        sa.Column("routed_at", DATETIME_US, nullable=True),
        sa.Index("ix_calsync_outbox_routed", "routed_at", "id"),
        sa.Index("ix_calsync_outbox_schedule", "schedule_id"),
        sqlite_autoincrement=True,
        **_MYSQL,
    )
    op.create_table(
        "calsync_deleted_links",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("integration_id", sa.String(64), nullable=False),
        sa.Column("schedule_id", sa.Integer, nullable=False),
        sa.Column("mailbox", sa.String(254), nullable=False),
        sa.Column("suite_id", sa.String(400), nullable=False),
        sa.Column("identity_key", sa.String(400), nullable=False),
        sa.Column("deleted_at", DATETIME_US, nullable=False),
        sa.Index("ix_calsync_deleted_links_schedule", "integration_id", "schedule_id"),
        **_MYSQL,
    )
    op.create_table(
        "calsync_deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("integration_id", sa.String(64), nullable=False),
        sa.Column("schedule_id", sa.Integer, nullable=False),
        sa.Column("outbox_id", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", DATETIME_US, nullable=False),
        sa.Column("claimed_by", sa.String(100), nullable=True),
        sa.Column("claim_expires_at", DATETIME_US, nullable=True),
        sa.Column("last_error", LONG_TEXT, nullable=False, server_default=""),
        sa.Column("created_at", DATETIME_US, nullable=False),
        sa.Column("updated_at", DATETIME_US, nullable=False),
        sa.UniqueConstraint("integration_id", "schedule_id", name="uq_calsync_deliveries_schedule"),
        sa.Index("ix_calsync_deliveries_due", "integration_id", "status", "next_attempt_at"),
        **_MYSQL,
    )


def _statements(up: bool) -> list[str]:
    name = op.get_bind().dialect.name
    if name == "postgresql":
        return _POSTGRESQL if up else _POSTGRESQL_DOWN
    if name in ("mysql", "mariadb"):
        return _MYSQL_UP if up else _MYSQL_DOWN
    if name == "sqlite":
        return _SQLITE_UP if up else _SQLITE_DOWN
    raise NotImplementedError(f"calsync has no outbox triggers for {name!r}")


def upgrade() -> None:
    _create_tables()
    for stmt in _statements(up=True):
        op.execute(stmt)


def downgrade() -> None:
    for stmt in _statements(up=False):
        op.execute(stmt)
    for table in (
        "calsync_deliveries",
        "calsync_deleted_links",
        "calsync_outbox",
        "calsync_write_origin",
    ):
        op.drop_table(table)
