"""PostgreSQL: the outbox's insert/update triggers fire once per statement, not once per row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

The outbox rows are the same as 0003's (one per schedule inserted or updated, one per OA-made
participant change), but on PostgreSQL each statement now runs one PL/pgSQL call that writes
its rows with one ``INSERT … SELECT`` from the statement's transition table, instead of one
call and one ``INSERT`` per row. A forward sync writes tens of thousands of schedules and
participants per run in a handful of statements: the per-row calls were its largest share of
the database's CPU (a participant row took 55% longer to insert with the row trigger, which
only returned at once because the write was calsync's own).

PostgreSQL lets a trigger with transition tables fire on one event only, so there is a trigger
per event. The delete trigger stays per row and BEFORE (it copies the links before the
cascade; transition tables exist for AFTER triggers only). MySQL/MariaDB and SQLite have no
statement triggers: they keep 0003's.
"""

from __future__ import annotations

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_ORIGIN = "COALESCE((SELECT origin FROM calsync_write_origin LIMIT 1), 'oa')"
_OUTBOX_COLS = "(schedule_id, op, origin, changed_at, creator_id, title)"
_NOW = "(clock_timestamp() AT TIME ZONE 'UTC')"

_UP = [
    "DROP TRIGGER IF EXISTS calsync_outbox_schedule_ins_upd ON oa_schedules",
    "DROP TRIGGER IF EXISTS calsync_outbox_participant ON oa_schedule_participants",
    f"""
CREATE FUNCTION calsync_outbox_schedule_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO calsync_outbox {_OUTBOX_COLS}
    SELECT id, lower(TG_OP), {_ORIGIN}, {_NOW}, creator_id, NULL FROM calsync_new;
  RETURN NULL;
END $$""",
    f"""
CREATE FUNCTION calsync_outbox_participant_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM calsync_write_origin) THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'DELETE' THEN
    INSERT INTO calsync_outbox {_OUTBOX_COLS}
      SELECT schedule_id, 'update', 'oa', {_NOW}, NULL, NULL FROM calsync_old;
  ELSE
    INSERT INTO calsync_outbox {_OUTBOX_COLS}
      SELECT schedule_id, 'update', 'oa', {_NOW}, NULL, NULL FROM calsync_new;
  END IF;
  RETURN NULL;
END $$""",
    "CREATE TRIGGER calsync_outbox_schedule_ins AFTER INSERT ON oa_schedules "
    "REFERENCING NEW TABLE AS calsync_new "
    "FOR EACH STATEMENT EXECUTE FUNCTION calsync_outbox_schedule_rows()",
    "CREATE TRIGGER calsync_outbox_schedule_upd AFTER UPDATE ON oa_schedules "
    "REFERENCING NEW TABLE AS calsync_new "
    "FOR EACH STATEMENT EXECUTE FUNCTION calsync_outbox_schedule_rows()",
    "CREATE TRIGGER calsync_outbox_participant_ins AFTER INSERT ON oa_schedule_participants "
    "REFERENCING NEW TABLE AS calsync_new "
    "FOR EACH STATEMENT EXECUTE FUNCTION calsync_outbox_participant_rows()",
    "CREATE TRIGGER calsync_outbox_participant_upd AFTER UPDATE ON oa_schedule_participants "
    "REFERENCING NEW TABLE AS calsync_new "
    "FOR EACH STATEMENT EXECUTE FUNCTION calsync_outbox_participant_rows()",
    "CREATE TRIGGER calsync_outbox_participant_del AFTER DELETE ON oa_schedule_participants "
    "REFERENCING OLD TABLE AS calsync_old "
    "FOR EACH STATEMENT EXECUTE FUNCTION calsync_outbox_participant_rows()",
]

_DOWN = [
    "DROP TRIGGER IF EXISTS calsync_outbox_schedule_ins ON oa_schedules",
    "DROP TRIGGER IF EXISTS calsync_outbox_schedule_upd ON oa_schedules",
    "DROP TRIGGER IF EXISTS calsync_outbox_participant_ins ON oa_schedule_participants",
    "DROP TRIGGER IF EXISTS calsync_outbox_participant_upd ON oa_schedule_participants",
    "DROP TRIGGER IF EXISTS calsync_outbox_participant_del ON oa_schedule_participants",
    "DROP FUNCTION IF EXISTS calsync_outbox_participant_rows()",
    "DROP FUNCTION IF EXISTS calsync_outbox_schedule_rows()",
    # 0003's row triggers (their functions were never dropped)
    "CREATE TRIGGER calsync_outbox_schedule_ins_upd AFTER INSERT OR UPDATE ON oa_schedules "
    "FOR EACH ROW EXECUTE FUNCTION calsync_outbox_schedule()",
    "CREATE TRIGGER calsync_outbox_participant AFTER INSERT OR UPDATE OR DELETE "
    "ON oa_schedule_participants FOR EACH ROW EXECUTE FUNCTION calsync_outbox_participant()",
]


def _run(statements: list[str]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for stmt in statements:
        op.execute(stmt)


def upgrade() -> None:
    _run(_UP)


def downgrade() -> None:
    _run(_DOWN)
