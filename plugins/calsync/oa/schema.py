"""The OA database schema (SQLAlchemy Core), owned by calsync's migrations.

OA-side tables (``oa_*``) model what an OA product keeps: HR users and departments, meeting
rooms, schedules and their participants. An existing OA product would map onto them with views.
calsync's own tables (``calsync_*``) hold the room mapping (F18), the meeting identities and
links (the single source of truth for "already synced"), and the sync log (F19).

Times are stored as naive UTC datetimes with the source zone beside them; all-day schedules
as dates (end exclusive) so they can never shift by a day.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

# MySQL/MariaDB: DATETIME keeps no fractions and TEXT stops at 64 KB; ask for more there.
DATETIME_US = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

# Binding-field candidates (F4): any of these HR-card columns may hold the mailbox address.
BINDING_FIELDS = ("email", "alt_email", "login_name", "employee_no")
# HR attributes a scope condition (F7) may test.
HR_ATTRIBUTES = ("login_name", "email", "alt_email", "employee_no", "position", "city", "active")

departments = sa.Table(
    "oa_departments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("parent_id", sa.Integer, sa.ForeignKey("oa_departments.id"), nullable=True),
)

users = sa.Table(
    "oa_users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("login_name", sa.String(100), nullable=False, unique=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("email", sa.String(320), nullable=True),
    sa.Column("alt_email", sa.String(320), nullable=True),
    sa.Column("employee_no", sa.String(64), nullable=True),
    sa.Column("department_id", sa.Integer, sa.ForeignKey("oa_departments.id"), nullable=True),
    sa.Column("position", sa.String(100), nullable=True),
    sa.Column("city", sa.String(100), nullable=True),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
)

rooms = sa.Table(
    "oa_meeting_rooms",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("capacity", sa.Integer, nullable=True),
    sa.Column("building", sa.String(200), nullable=True),
)

schedules = sa.Table(
    "oa_schedules",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("title", sa.String(500), nullable=False),
    sa.Column("start_utc", DATETIME_US, nullable=True),
    sa.Column("end_utc", DATETIME_US, nullable=True),
    sa.Column("all_day", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("start_date", sa.Date, nullable=True),
    sa.Column("end_date", sa.Date, nullable=True),  # exclusive, as the suites send it
    sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
    sa.Column("location", sa.String(500), nullable=False, server_default=""),
    sa.Column("room_id", sa.Integer, sa.ForeignKey("oa_meeting_rooms.id"), nullable=True),
    sa.Column("details", LONG_TEXT, nullable=False, server_default=""),
    sa.Column("color", sa.String(16), nullable=False, server_default=""),
    sa.Column("creator_id", sa.Integer, sa.ForeignKey("oa_users.id"), nullable=False),
    # Which integration created the schedule (forward sync), NULL when made in the OA: only
    # schedules an integration created may ever be deleted by its forward sync (E17).
    sa.Column("source_integration", sa.String(64), nullable=True),
    sa.Column("created_at", DATETIME_US, nullable=False),
    sa.Column("updated_at", DATETIME_US, nullable=False),
    sa.Index("ix_oa_schedules_creator_start", "creator_id", "start_utc"),
    sqlite_autoincrement=True,  # never reuse a deleted schedule's id (links, outbox)
)

participants = sa.Table(
    "oa_schedule_participants",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "schedule_id",
        sa.Integer,
        sa.ForeignKey("oa_schedules.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("kind", sa.String(16), nullable=False),  # user / external / room
    sa.Column("user_id", sa.Integer, sa.ForeignKey("oa_users.id"), nullable=True),
    sa.Column("room_id", sa.Integer, sa.ForeignKey("oa_meeting_rooms.id"), nullable=True),
    sa.Column("email", sa.String(320), nullable=False, server_default=""),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("response", sa.String(32), nullable=False, server_default="none"),
)

room_mappings = sa.Table(
    "calsync_room_mappings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("room_id", sa.Integer, sa.ForeignKey("oa_meeting_rooms.id"), nullable=False),
    sa.Column("suite_mailbox", sa.String(320), nullable=False),
)

# One row per (integration, meeting identity): one meeting = one OA schedule (DESIGN). The
# unique key makes two concurrent tasks that both see a meeting for the first time agree.
meetings = sa.Table(
    "calsync_meetings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("integration_id", sa.String(64), nullable=False),
    sa.Column("identity_key", sa.String(400), nullable=False),
    sa.Column(
        "schedule_id",
        sa.Integer,
        sa.ForeignKey("oa_schedules.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("owner_mailbox", sa.String(320), nullable=False),
    # The OA content both sides agreed on at the last sync (either direction), as a hash of
    # the schedule's data: reverse sync pushes only when the OA differs from it.
    sa.Column("content_hash", sa.String(64), nullable=False, server_default=""),
    sa.UniqueConstraint("integration_id", "identity_key", name="uq_calsync_meetings_identity"),
)

# One row per mailbox copy of a linked meeting.
links = sa.Table(
    "calsync_links",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("integration_id", sa.String(64), nullable=False),
    sa.Column("mailbox", sa.String(254), nullable=False),  # RFC 5321 maximum
    sa.Column("suite_id", sa.String(400), nullable=False),
    sa.Column("ical_uid", sa.String(400), nullable=False, server_default=""),
    sa.Column("identity_key", sa.String(400), nullable=False),
    sa.Column(
        "schedule_id",
        sa.Integer,
        sa.ForeignKey("oa_schedules.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("change_key", sa.String(200), nullable=False, server_default=""),
    sa.Column("content_hash", sa.String(64), nullable=False, server_default=""),
    # The event's extent as last seen, so a run deletes only links inside the window it read.
    sa.Column("event_start_utc", DATETIME_US, nullable=True),
    sa.Column("event_end_utc", DATETIME_US, nullable=True),
    sa.Column("event_start_date", sa.Date, nullable=True),
    sa.Column("event_end_date", sa.Date, nullable=True),
    sa.Column("created_at", DATETIME_US, nullable=False),
    sa.Column("updated_at", DATETIME_US, nullable=False),
    # A hash of the event as read and of the mapping context that made ``content_hash`` of
    # it: an event read again with the same hash maps to the same content, so forward sync
    # skips mapping it. Empty when unknown (written by reverse sync, or before migration
    # 0006, which added it last).
    sa.Column("source_hash", sa.String(64), nullable=False, server_default=""),
    sa.UniqueConstraint("integration_id", "mailbox", "suite_id", name="uq_calsync_links_suite"),
    sa.Index("ix_calsync_links_mailbox", "integration_id", "mailbox"),
    sa.Index("ix_calsync_links_identity", "integration_id", "identity_key"),
)

sync_log = sa.Table(
    "calsync_sync_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("logged_at", DATETIME_US, nullable=False, index=True),
    sa.Column("integration_id", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=True),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("direction", sa.String(16), nullable=False),  # forward / reverse
    # created / updated / deleted / linked / skipped / failed / held
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("user_id", sa.Integer, nullable=True),
    sa.Column("mailbox", sa.String(320), nullable=True),
    sa.Column("schedule_id", sa.Integer, nullable=True),
    sa.Column("suite_id", sa.String(400), nullable=True),
    sa.Column("title", sa.String(500), nullable=True),
    sa.Column("message", LONG_TEXT, nullable=False, server_default=""),
    sa.Index("ix_calsync_sync_log_integration", "integration_id", "logged_at"),
)

# Change-feed state per mailbox (E7): a Graph delta link or an EWS sync state, bound to the
# window it was started for.
sync_state = sa.Table(
    "calsync_sync_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("integration_id", sa.String(64), nullable=False),
    sa.Column("mailbox", sa.String(254), nullable=False),
    sa.Column("window_start", sa.Date, nullable=False),
    sa.Column("window_end", sa.Date, nullable=False),
    sa.Column("state", LONG_TEXT, nullable=False),
    sa.Column("updated_at", DATETIME_US, nullable=False),
    sa.UniqueConstraint("integration_id", "mailbox", name="uq_calsync_sync_state_mailbox"),
)

# The id of the calendar an integration writes to in each mailbox, where the suite names
# calendars by an id that has to be looked up (Alibaba Mail: one calendar listing per mailbox).
# A cache (calsync.oa.calendar_ids): a drain uses the ids looked up within about a day instead
# of listing every mailbox's calendars again. ``calendar`` is the configured calendar folder
# ('' = the default calendar); ``updated_at`` when the id was last looked up.
calendar_ids = sa.Table(
    "calsync_calendar_ids",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("integration_id", sa.String(64), nullable=False),
    sa.Column("mailbox", sa.String(254), nullable=False),
    sa.Column("calendar", sa.String(200), nullable=False),
    sa.Column("calendar_id", sa.String(400), nullable=False),
    sa.Column("updated_at", DATETIME_US, nullable=False),
    sa.UniqueConstraint(
        "integration_id", "mailbox", "calendar", name="uq_calsync_calendar_ids_mailbox"
    ),
)

# F21: an OA user's own Exchange login and encrypted password (see calsync.accounts).
user_accounts = sa.Table(
    "calsync_user_accounts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "user_id",
        sa.Integer,
        sa.ForeignKey("oa_users.id", ondelete="CASCADE", name="fk_calsync_user_accounts_user_id"),
        nullable=False,
    ),
    sa.Column("login", sa.String(320), nullable=False),
    sa.Column("password_encrypted", sa.Text, nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("updated_at", DATETIME_US, nullable=False),
    sa.UniqueConstraint("user_id", name="uq_calsync_user_accounts_user"),
)

# --- Reverse sync (E1/E6, F25): change capture and delivery --------------------------------

# Which writer the current transaction belongs to. calsync inserts one row at the start of each
# of its own write transactions and deletes it before commit, so the row is never committed:
# only triggers fired inside that transaction see it (MVCC on PostgreSQL/MariaDB, the single
# writer on SQLite). A trigger that finds no row records origin "oa".
write_origin = sa.Table(
    "calsync_write_origin",
    metadata,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("origin", sa.String(100), nullable=False),
)

# Filled by triggers on oa_schedules / oa_schedule_participants (migrations 0003, 0005). A delete
# keeps the schedule's creator and title; its links are copied to calsync_deleted_links.
outbox = sa.Table(
    "calsync_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("schedule_id", sa.Integer, nullable=False),
    sa.Column("op", sa.String(8), nullable=False),  # insert / update / delete
    sa.Column("origin", sa.String(100), nullable=False, server_default="oa"),
    sa.Column("changed_at", DATETIME_US, nullable=False),
    sa.Column("creator_id", sa.Integer, nullable=True),
    sa.Column("title", sa.String(500), nullable=True),
    sa.Column("routed_at", DATETIME_US, nullable=True),
    sa.Index("ix_calsync_outbox_routed", "routed_at", "id"),
    sa.Index("ix_calsync_outbox_schedule", "schedule_id"),
    sqlite_autoincrement=True,
)

# The links a deleted schedule had (copied by the delete trigger before the cascade), so a
# reverse delete still knows which suite items to remove.
deleted_links = sa.Table(
    "calsync_deleted_links",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("integration_id", sa.String(64), nullable=False),
    sa.Column("schedule_id", sa.Integer, nullable=False),
    sa.Column("mailbox", sa.String(254), nullable=False),
    sa.Column("suite_id", sa.String(400), nullable=False),
    sa.Column("identity_key", sa.String(400), nullable=False),
    sa.Column("deleted_at", DATETIME_US, nullable=False),
    sa.Index("ix_calsync_deleted_links_schedule", "integration_id", "schedule_id"),
)

# One row per (integration, schedule) with changes to push. ``outbox_id`` is the newest change
# it covers: a drain marks the row done only if no newer change arrived while it worked.
deliveries = sa.Table(
    "calsync_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("integration_id", sa.String(64), nullable=False),
    sa.Column("schedule_id", sa.Integer, nullable=False),
    sa.Column("outbox_id", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending / done / dead / held (E10)
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", DATETIME_US, nullable=False),
    sa.Column("claimed_by", sa.String(100), nullable=True),
    sa.Column("claim_expires_at", DATETIME_US, nullable=True),
    sa.Column("last_error", LONG_TEXT, nullable=False, server_default=""),
    sa.Column("created_at", DATETIME_US, nullable=False),
    sa.Column("updated_at", DATETIME_US, nullable=False),
    # E10: an admin released this held delete; the guard lets it pass (migration 0004)
    sa.Column("confirmed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("integration_id", "schedule_id", name="uq_calsync_deliveries_schedule"),
    sa.Index("ix_calsync_deliveries_due", "integration_id", "status", "next_attempt_at"),
)
