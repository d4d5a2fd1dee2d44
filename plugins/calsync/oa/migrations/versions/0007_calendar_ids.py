"""Calendar ids looked up in the suite are kept across runs.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

``calsync_calendar_ids`` holds, per integration and mailbox, the id of the calendar calsync
writes to where the suite names it by an id that must be looked up (Alibaba Mail: one
calendar listing per mailbox), and when it was looked up. A reverse drain then starts with
the ids looked up recently instead of listing every mailbox's calendars again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

# As in the schema of this revision (never import the live schema into a migration).
DATETIME_US = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# MySQL/MariaDB: utf8mb4, binary collation and InnoDB whatever the database's defaults, as
# every calsync table (0001): a latin1 or case-insensitive default would break comparisons.
_MYSQL = {
    f"{prefix}_{key}": value
    for prefix in ("mysql", "mariadb")
    for key, value in (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))
}


def upgrade() -> None:
    op.create_table(
        "calsync_calendar_ids",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("integration_id", sa.String(64), nullable=False),
        sa.Column("mailbox", sa.String(254), nullable=False),
        sa.Column("calendar", sa.String(200), nullable=False),
        sa.Column("calendar_id", sa.String(400), nullable=False),
        sa.Column("updated_at", DATETIME_US, nullable=False),
        sa.UniqueConstraint(
            "integration_id", "mailbox", "calendar", name="uq_calsync_calendar_ids_mailbox"
        ),
        **_MYSQL,
    )


def downgrade() -> None:
    op.drop_table("calsync_calendar_ids")
