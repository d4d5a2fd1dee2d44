"""Schema migrations of the OA database (Alembic, driven from code; no alembic.ini).

    python -m calsync.oa.migrate --url sqlite:////path/oa.db       # upgrade to head
    python -m calsync.oa.migrate --conn-id calsync_oa               # an Airflow connection
    python -m calsync.oa.migrate --url URL --current                # show the revision
    python -m calsync.oa.migrate --url postgresql://... --sql       # print DDL, touch nothing

The version table is ``calsync_alembic_version``, so an OA product's own Alembic history in
the same database is left alone. Upgrading is idempotent, and concurrent upgraders wait for
each other (advisory lock on PostgreSQL, GET_LOCK on MySQL/MariaDB, the write lock on SQLite).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

VERSION_TABLE = "calsync_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_LOCK_NAME = "calsync_oa_migrate"
_PG_LOCK_KEY = 0x6361_6C73  # "cals"
_LOCK_TIMEOUT_S = 600


def alembic_config(connection: sa.Connection | None = None, url: str | None = None) -> Config:
    """An Alembic config for calsync's migrations, bound to a connection (or a URL for --sql)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision shipped with this calsync."""
    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert rev is not None
    return rev


def current(engine: sa.Engine) -> str | None:
    """The database's revision, None when calsync's schema was never installed."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


@contextlib.contextmanager
def _migrating(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction, holding calsync's migration lock until it has committed.

    PostgreSQL's advisory lock and SQLite's write lock (calsync's engines BEGIN IMMEDIATE) end
    with the transaction. MySQL/MariaDB's GET_LOCK belongs to the session, so it is taken before
    the transaction begins and released only after the commit: a migration without DDL (which
    would commit implicitly there) must not let a waiting upgrader read the old version stamp.
    """
    with engine.connect() as conn:
        if conn.dialect.name not in ("mysql", "mariadb"):
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
                yield conn
            return
        got = conn.execute(
            sa.text("SELECT GET_LOCK(:n, :t)"), {"n": _LOCK_NAME, "t": _LOCK_TIMEOUT_S}
        ).scalar()
        conn.commit()
        if got != 1:
            raise TimeoutError(f"another calsync migration held {_LOCK_NAME!r} too long")
        try:
            with conn.begin():
                yield conn
        finally:
            if conn.in_transaction():  # a failed commit leaves one open
                conn.rollback()
            conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": _LOCK_NAME})
            conn.commit()


def upgrade(engine: sa.Engine, revision: str = "head") -> str | None:
    """Upgrade the OA database to ``revision``; a no-op when it is there. Returns the revision."""
    with _migrating(engine) as conn:
        command.upgrade(alembic_config(conn), revision)
    return current(engine)


def downgrade(engine: sa.Engine, revision: str) -> str | None:
    """Downgrade to ``revision`` (``base`` drops calsync's tables). For development and tests."""
    with _migrating(engine) as conn:
        command.downgrade(alembic_config(conn), revision)
    return current(engine)


def main(argv: Sequence[str] | None = None) -> int:
    from calsync.oa.db import engine_from_airflow_connection, engine_from_url, redacted

    parser = argparse.ArgumentParser(prog="python -m calsync.oa.migrate", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="SQLAlchemy URL of the OA database")
    where.add_argument("--conn-id", help="Airflow connection id of the OA database")
    parser.add_argument("--revision", default="head", help="target revision (default: head)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--current", action="store_true", help="print the revision and exit")
    mode.add_argument("--sql", action="store_true", help="print the DDL (needs --url)")
    args = parser.parse_args(argv)

    if args.sql:
        if not args.url:
            parser.error("--sql needs --url")
        command.upgrade(alembic_config(url=args.url), args.revision, sql=True)
        return 0
    engine = engine_from_url(args.url) if args.url else engine_from_airflow_connection(args.conn_id)
    shown = redacted(engine.url)
    try:
        if args.current:
            print(f"{shown}: revision {current(engine) or 'none'} (head {head()})")
            return 0
        before = current(engine)
        after = upgrade(engine, args.revision)
    finally:
        engine.dispose()
    verb = "already at" if before == after else f"upgraded {before or 'empty'} →"
    print(f"{shown}: {verb} {after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
