"""Incremental-sync state per mailbox (E7) and personal Exchange accounts (F21).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

``calsync_sync_state``: the suite's change-feed state (Graph delta link, EWS sync state) of
one integration and mailbox, with the window it was started for (a delta round is bound to its
window; a moved window starts a new round with a full read).

``calsync_user_accounts``: each OA user's own Exchange login and password for integrations in
``user`` access mode. The password is stored encrypted (Fernet: AES-128-CBC + HMAC-SHA256)
with a key from an Airflow connection, never in the repository; ``key_id`` names the key that
encrypted it, so keys can be rotated. The OA's personal-settings page may write here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

DATETIME_US = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
_MYSQL = {
    f"{prefix}_{key}": value
    for prefix in ("mysql", "mariadb")
    for key, value in (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))
}


def upgrade() -> None:
    op.create_table(
        "calsync_sync_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("integration_id", sa.String(64), nullable=False),
        sa.Column("mailbox", sa.String(254), nullable=False),
        sa.Column("window_start", sa.Date, nullable=False),
        sa.Column("window_end", sa.Date, nullable=False),
        sa.Column("state", LONG_TEXT, nullable=False),
        sa.Column("updated_at", DATETIME_US, nullable=False),
        sa.UniqueConstraint("integration_id", "mailbox", name="uq_calsync_sync_state_mailbox"),
        **_MYSQL,
    )
    op.create_table(
        "calsync_user_accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("login", sa.String(320), nullable=False),
        sa.Column("password_encrypted", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("updated_at", DATETIME_US, nullable=False),
        sa.UniqueConstraint("user_id", name="uq_calsync_user_accounts_user"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["oa_users.id"],
            name="fk_calsync_user_accounts_user_id",
            ondelete="CASCADE",
        ),
        **_MYSQL,
    )


def downgrade() -> None:
    op.drop_table("calsync_user_accounts")
    op.drop_table("calsync_sync_state")
