"""Reverse mass-deletion guard (E10): a held delete an admin released.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

``calsync_deliveries.status`` takes a new value, ``held``: a delete of an OA bulk deletion the
guard keeps from the suite (calsync.sync.reverse_guard). ``confirmed`` marks one an admin
released (the reverse DAG's ``confirm_deletes``, ``calsync deletes release``): the guard lets it
pass from then on. A new change of the schedule re-arms the delivery unconfirmed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column(
        "calsync_deliveries",
        sa.Column("confirmed", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("calsync_deliveries") as batch:  # SQLite rebuilds the table
        batch.drop_column("confirmed")
