"""Alembic environment of calsync's OA schema, driven by ``calsync.oa.migrate`` (no alembic.ini).

``migrate.upgrade`` hands over an open connection (in ``config.attributes["connection"]``),
inside a transaction it owns. Offline mode (``--sql``) renders the DDL for a URL instead.
Airflow's plugin scan imports this file outside Alembic: it then does nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from calsync.oa import schema
from calsync.oa.migrate import VERSION_TABLE


def _options(dialect_name: str) -> dict[str, object]:
    return {
        "target_metadata": schema.metadata,
        "version_table": VERSION_TABLE,
        # SQLite cannot ALTER most things: later migrations use batch mode there
        "render_as_batch": dialect_name == "sqlite",
        "compare_type": True,
    }


def run() -> None:
    config = context.config
    if context.is_offline_mode():
        url = sa.engine.make_url(config.get_main_option("sqlalchemy.url") or "")
        context.configure(url=url, literal_binds=True, **_options(url.get_backend_name()))
        with context.begin_transaction():
            context.run_migrations()
        return
    connection: sa.Connection | None = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through calsync.oa.migrate, which passes a connection")
    context.configure(connection=connection, **_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


try:
    _active = context.config is not None
except (AttributeError, NameError):  # imported outside Alembic
    _active = False
if _active:
    run()
