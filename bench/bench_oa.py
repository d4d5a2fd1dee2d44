"""A throw-away OA database for a benchmark run: a SQLite file, or a fresh PostgreSQL database
on 127.0.0.1 (trust auth) that :func:`drop_oa` removes afterwards."""

from __future__ import annotations

import secrets
from pathlib import Path

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def create_oa(kind: str, workdir: Path, name: str = "oa") -> str:
    """The URL of an empty OA: ``workdir/<name>.db`` for ``sqlite``, else a new database."""
    if kind == "sqlite":
        return f"sqlite:///{workdir / f'{name}.db'}"
    import sqlalchemy as sa

    db = f"calsync_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE \"{db}\" ENCODING 'UTF8'")
    admin.dispose()
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"


def drop_oa(url: str) -> None:
    if not url.startswith("postgresql"):
        return
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    admin.dispose()
