"""Forward sync skips mapping an event read again unchanged: links keep a source hash.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

``calsync_links.source_hash`` is a hash of the event as forward sync last read it and of the
mapping context (calsync.sync.forward.source_hash). When a full read returns an event with the
same hash, its mapped content is the one ``content_hash`` records, so it is not mapped again.
Existing links start empty (unknown): their next read maps them as before and fills it in.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column(
        "calsync_links",
        sa.Column("source_hash", sa.String(64), nullable=False, server_default=""),
    )


def downgrade() -> None:
    # In place on SQLite too (3.35+): a batch rebuild's rename would trip over the outbox
    # triggers that name calsync_links
    op.drop_column("calsync_links", "source_hash")
