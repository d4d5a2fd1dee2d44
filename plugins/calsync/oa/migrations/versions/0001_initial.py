"""Initial OA schema: HR, rooms, schedules, participants, room mappings, meetings, links, log.

Revision ID: 0001
Revises:
Create Date: 2026-11-30

A frozen copy of ``calsync/oa/schema.py`` as first released (never import the live schema
into a migration). Constraints get explicit names so later migrations can alter them on every
dialect (SQLite batch mode included).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


# MySQL/MariaDB: utf8mb4 whatever the database default (an OA's may be utf8mb3, which loses
# emoji), binary collation so comparisons are exact as on PostgreSQL and SQLite (suite ids are
# case-sensitive), InnoDB for the foreign keys. Ignored by the other dialects.
_MYSQL = {
    f"{prefix}_{key}": value
    for prefix in ("mysql", "mariadb")
    for key, value in (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))
}


DATETIME_US = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def _fk(column: str, target: str, table: str, **kw: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [target], name=f"fk_{table}_{column}", **kw)


def upgrade() -> None:
    op.create_table(
        "oa_departments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("parent_id", sa.Integer, nullable=True),
        _fk("parent_id", "oa_departments.id", "oa_departments"),
        **_MYSQL,
    )
    op.create_table(
        "oa_users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("login_name", sa.String(100), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("alt_email", sa.String(320), nullable=True),
        sa.Column("employee_no", sa.String(64), nullable=True),
        sa.Column("department_id", sa.Integer, nullable=True),
        sa.Column("position", sa.String(100), nullable=True),
        sa.Column("city", sa.String(100), nullable=True),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.UniqueConstraint("login_name", name="uq_oa_users_login_name"),
        _fk("department_id", "oa_departments.id", "oa_users"),
        **_MYSQL,
    )
    op.create_table(
        "oa_meeting_rooms",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("capacity", sa.Integer, nullable=True),
        sa.Column("building", sa.String(200), nullable=True),
        sa.UniqueConstraint("name", name="uq_oa_meeting_rooms_name"),
        **_MYSQL,
    )
    op.create_table(
        "oa_schedules",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("start_utc", DATETIME_US, nullable=True),
        sa.Column("end_utc", DATETIME_US, nullable=True),
        sa.Column("all_day", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("start_date", sa.Date, nullable=True),
        sa.Column("end_date", sa.Date, nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("location", sa.String(500), nullable=False, server_default=""),
        sa.Column("room_id", sa.Integer, nullable=True),
        sa.Column("details", LONG_TEXT, nullable=False, server_default=""),
        sa.Column("color", sa.String(16), nullable=False, server_default=""),
        sa.Column("creator_id", sa.Integer, nullable=False),
        sa.Column("source_integration", sa.String(64), nullable=True),
        sa.Column("created_at", DATETIME_US, nullable=False),
        sa.Column("updated_at", DATETIME_US, nullable=False),
        _fk("room_id", "oa_meeting_rooms.id", "oa_schedules"),
        _fk("creator_id", "oa_users.id", "oa_schedules"),
        sqlite_autoincrement=True,
        **_MYSQL,
    )
    op.create_index("ix_oa_schedules_creator_start", "oa_schedules", ["creator_id", "start_utc"])
    op.create_table(
        "oa_schedule_participants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("schedule_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("user_id", sa.Integer, nullable=True),
        sa.Column("room_id", sa.Integer, nullable=True),
        sa.Column("email", sa.String(320), nullable=False, server_default=""),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("response", sa.String(32), nullable=False, server_default="none"),
        _fk("schedule_id", "oa_schedules.id", "oa_schedule_participants", ondelete="CASCADE"),
        _fk("user_id", "oa_users.id", "oa_schedule_participants"),
        _fk("room_id", "oa_meeting_rooms.id", "oa_schedule_participants"),
        **_MYSQL,
    )
    op.create_index(
        "ix_oa_schedule_participants_schedule_id", "oa_schedule_participants", ["schedule_id"]
    )
    op.create_table(
        "calsync_room_mappings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("room_id", sa.Integer, nullable=False),
        sa.Column("suite_mailbox", sa.String(320), nullable=False),
        _fk("room_id", "oa_meeting_rooms.id", "calsync_room_mappings"),
        **_MYSQL,
    )
    op.create_table(
        "calsync_meetings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("integration_id", sa.String(64), nullable=False),
        sa.Column("identity_key", sa.String(400), nullable=False),
        sa.Column("schedule_id", sa.Integer, nullable=False),
        sa.Column("owner_mailbox", sa.String(320), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False, server_default=""),
        sa.UniqueConstraint("integration_id", "identity_key", name="uq_calsync_meetings_identity"),
        _fk("schedule_id", "oa_schedules.id", "calsync_meetings", ondelete="CASCADE"),
        **_MYSQL,
    )
    op.create_index("ix_calsync_meetings_schedule_id", "calsync_meetings", ["schedule_id"])
    op.create_table(
        "calsync_links",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("integration_id", sa.String(64), nullable=False),
        sa.Column("mailbox", sa.String(254), nullable=False),
        sa.Column("suite_id", sa.String(400), nullable=False),
        sa.Column("ical_uid", sa.String(400), nullable=False, server_default=""),
        sa.Column("identity_key", sa.String(400), nullable=False),
        sa.Column("schedule_id", sa.Integer, nullable=False),
        sa.Column("change_key", sa.String(200), nullable=False, server_default=""),
        sa.Column("content_hash", sa.String(64), nullable=False, server_default=""),
        sa.Column("event_start_utc", DATETIME_US, nullable=True),
        sa.Column("event_end_utc", DATETIME_US, nullable=True),
        sa.Column("event_start_date", sa.Date, nullable=True),
        sa.Column("event_end_date", sa.Date, nullable=True),
        sa.Column("created_at", DATETIME_US, nullable=False),
        sa.Column("updated_at", DATETIME_US, nullable=False),
        sa.UniqueConstraint("integration_id", "mailbox", "suite_id", name="uq_calsync_links_suite"),
        _fk("schedule_id", "oa_schedules.id", "calsync_links", ondelete="CASCADE"),
        **_MYSQL,
    )
    op.create_index("ix_calsync_links_schedule_id", "calsync_links", ["schedule_id"])
    op.create_index("ix_calsync_links_mailbox", "calsync_links", ["integration_id", "mailbox"])
    op.create_index(
        "ix_calsync_links_identity", "calsync_links", ["integration_id", "identity_key"]
    )
    op.create_table(
        "calsync_sync_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("logged_at", DATETIME_US, nullable=False),
        sa.Column("integration_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=True),
        sa.Column("dag_id", sa.String(250), nullable=True),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("user_id", sa.Integer, nullable=True),
        sa.Column("mailbox", sa.String(320), nullable=True),
        sa.Column("schedule_id", sa.Integer, nullable=True),
        sa.Column("suite_id", sa.String(400), nullable=True),
        sa.Column("title", sa.String(500), nullable=True),
        sa.Column("message", LONG_TEXT, nullable=False, server_default=""),
        **_MYSQL,
    )
    op.create_index("ix_calsync_sync_log_logged_at", "calsync_sync_log", ["logged_at"])
    op.create_index(
        "ix_calsync_sync_log_integration", "calsync_sync_log", ["integration_id", "logged_at"]
    )


def downgrade() -> None:
    for table in (
        "calsync_sync_log",
        "calsync_links",
        "calsync_meetings",
        "calsync_room_mappings",
        "oa_schedule_participants",
        "oa_schedules",
        "oa_meeting_rooms",
        "oa_users",
        "oa_departments",
    ):
        op.drop_table(table)
