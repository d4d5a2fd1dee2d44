"""Engines for the OA database: SQLite (embedded default), PostgreSQL and MySQL/MariaDB.

``engine_from_url`` applies the per-dialect settings calsync relies on; ``url_from_connection``
turns an Airflow connection into a SQLAlchemy URL; ``engine_from_airflow_connection`` does both,
caching one engine per URL per process. Passwords never reach a log line or an exception
text: URLs are shown through ``redacted`` and connect errors are re-raised as
``OADatabaseUnavailable`` with the password scrubbed.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from calsync.errors import CalsyncError, ConfigError

SQLITE_BUSY_TIMEOUT_S = 30
# Execution option: ``conn.execution_options(calsync_sqlite_begin="DEFERRED")`` for a read-only
# SQLite transaction that must not wait for the write lock (default is IMMEDIATE).
SQLITE_BEGIN_OPTION = "calsync_sqlite_begin"

_DEFAULT_DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql"}
_SECRET_QUERY_KEY = re.compile(r"pass|secret|token", re.IGNORECASE)


class OADatabaseUnavailable(CalsyncError):
    """Connecting to the OA database failed; the message names the redacted URL only."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url  # redacted
        self.reason = reason  # password scrubbed
        super().__init__(f"cannot connect to the OA database {url}: {reason}")


def redacted(url: str | URL) -> str:
    """The URL for logs and errors: password (and secret-looking query values) masked."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except Exception:  # unparseable: echoing it could leak a secret
        return "<invalid database URL>"
    mark = "CALSYNC_REDACTED"  # a placeholder that survives URL quoting
    masked = {k: mark if _SECRET_QUERY_KEY.search(k) else v for k, v in parsed.query.items()}
    shown = parsed.set(query=masked).render_as_string(hide_password=True)
    return shown.replace(mark, "***")


def _normalize(url: URL) -> URL:
    """Pick calsync's driver when the URL names none; ``postgres`` → ``postgresql``; ``mariadb``
    → ``mysql`` (one dialect name, ``mysql``, for both servers: SQLAlchemy detects MariaDB)."""
    backend = {"postgres": "postgresql", "mariadb": "mysql"}.get(
        url.get_backend_name(), url.get_backend_name()
    )
    driver = url.get_driver_name() if "+" in url.drivername else _DEFAULT_DRIVERS.get(backend)
    url = url.set(drivername=f"{backend}+{driver}" if driver else backend)
    if backend == "mysql" and "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, "***")
    return text


def _install_error_guard(engine: sa.Engine) -> None:
    """Connect errors: scrub secrets at the source, then raise ``OADatabaseUnavailable``."""
    shown = redacted(engine.url)

    @sa.event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _rec: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            secrets = [str(v) for k, v in cparams.items() if re.search("pass", k) and v]
            if engine.url.password:
                secrets.append(str(engine.url.password))
            # a fresh exception of the driver's class, without the original (and its text)
            raise dialect.loaded_dbapi.OperationalError(_scrub(str(exc), secrets)) from None

    @sa.event.listens_for(engine, "handle_error")
    def _wrap(ctx: Any) -> None:
        # no connection yet: the connect itself failed (a failed pre-ping is left to the pool,
        # which reconnects)
        if ctx.connection is None and not ctx.is_pre_ping:
            reason = " ".join(str(ctx.original_exception).split())
            reason = reason or type(ctx.original_exception).__name__
            secrets = [str(engine.url.password)] if engine.url.password else []
            # scrub the URL too: a password may equal another part of it (user, database)
            raise OADatabaseUnavailable(_scrub(shown, secrets), _scrub(reason, secrets))


def _enable_wal(cur: Any) -> None:
    """Switch a file database to WAL. The switch needs an exclusive lock and SQLite does not
    call the busy handler for it, so several processes opening a new file at once retry."""
    import sqlite3
    import time

    for attempt in range(100):
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05)


def _sqlite_setup(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.isolation_level = None  # calsync emits BEGIN itself (see _begin)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA foreign_keys = ON")
        if engine.url.database not in (None, "", ":memory:"):
            _enable_wal(cur)  # readers never block the writer
            cur.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL, much faster
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        opts = conn.get_execution_options()
        if opts.get("isolation_level") == "AUTOCOMMIT":
            return
        dbapi_conn = conn.connection.dbapi_connection
        if dbapi_conn is not None:
            dbapi_conn.isolation_level = None  # in case a reset switched legacy mode back on
        # IMMEDIATE takes the write lock up front: a deferred read-then-write transaction
        # fails at once with "database is locked" when another process wrote meanwhile,
        # busy_timeout or not.
        mode = str(opts.get(SQLITE_BEGIN_OPTION, "IMMEDIATE")).upper()
        if mode not in ("IMMEDIATE", "DEFERRED", "EXCLUSIVE"):
            raise ValueError(f"{SQLITE_BEGIN_OPTION} must be IMMEDIATE, DEFERRED or EXCLUSIVE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def engine_from_url(url: str | URL, **kwargs: Any) -> sa.Engine:
    """An engine with calsync's settings for the URL's dialect (``kwargs`` override them).

    SQLite: foreign keys on, WAL, 30 s busy timeout, ``BEGIN IMMEDIATE`` transactions (several
    processes can write). PostgreSQL: psycopg 3. MySQL/MariaDB: PyMySQL with utf8mb4, READ
    COMMITTED. All: ``pool_pre_ping``; sessions in UTC on the servers.
    """
    parsed = _normalize(make_url(url))
    backend = parsed.get_backend_name()
    options: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif backend == "postgresql":
        if parsed.get_driver_name() == "psycopg":
            options["connect_args"] = {"options": "-c timezone=UTC"}
            if "application_name" not in parsed.query:
                options["connect_args"]["application_name"] = "calsync"
    elif backend == "mysql":
        options["isolation_level"] = "READ COMMITTED"  # fewer gap-lock deadlocks, as PostgreSQL
        options["pool_recycle"] = 3600  # below the server's wait_timeout
        if parsed.get_driver_name() == "pymysql":
            options["connect_args"] = {"init_command": "SET time_zone = '+00:00'"}
    connect_args = {**options.get("connect_args", {}), **kwargs.pop("connect_args", {})}
    options.update(kwargs)
    if connect_args:
        options["connect_args"] = connect_args
    engine = sa.create_engine(parsed, **options)
    if backend == "sqlite":
        _sqlite_setup(engine)
    _install_error_guard(engine)
    return engine


def url_from_connection(conn: Any) -> str:
    """A SQLAlchemy URL (with the password) for an Airflow connection object.

    ``extra.sqlalchemy_url`` overrides everything. Otherwise by ``conn_type``: ``sqlite``
    (``host`` is the file path, else ``extra.path``), ``postgres``/``postgresql``,
    ``mysql``/``mariadb``. ``extra.query`` (a dict) adds URL query parameters, e.g. sslmode.
    """
    conn_id = getattr(conn, "conn_id", None) or "?"
    where = f"connection {conn_id}"
    extra: dict[str, Any] = dict(getattr(conn, "extra_dejson", None) or {})
    if extra.get("sqlalchemy_url"):
        return str(extra["sqlalchemy_url"])
    query = extra.get("query") or {}
    if not isinstance(query, dict):
        raise ConfigError(where, "extra.query", "must be an object of URL query parameters")
    query = {str(k): str(v) for k, v in query.items()}
    conn_type = (getattr(conn, "conn_type", None) or "").strip().lower()
    if conn_type == "sqlite":
        path = conn.host or extra.get("path")
        if not path:
            raise ConfigError(where, "host", "a sqlite connection needs the file path in host")
        url = URL.create("sqlite", database=str(path), query=query)
    elif conn_type in ("postgres", "postgresql", "mysql", "mariadb"):
        if not conn.host:
            raise ConfigError(where, "host", f"a {conn_type} connection needs a host")
        if conn_type.startswith("postgres"):
            driver = "postgresql+psycopg"
        else:
            driver = "mysql+pymysql"
            query.setdefault("charset", "utf8mb4")
        url = URL.create(
            driver,
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host,
            port=int(conn.port) if conn.port else None,
            database=conn.schema or None,
            query=query,
        )
    else:
        raise ConfigError(
            where,
            "conn_type",
            f"unsupported conn_type {conn_type!r} for the OA database "
            "(use sqlite, postgres or mysql, or set extra.sqlalchemy_url)",
        )
    return url.render_as_string(hide_password=False)


_engines: dict[tuple[int, str], sa.Engine] = {}
_engines_lock = threading.Lock()


def cached_engine(url: str) -> sa.Engine:
    """One engine per URL per process (a forked child builds its own)."""
    key = (os.getpid(), url)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = engine_from_url(url)
        return engine


def _after_fork_in_child() -> None:
    # The parent's pooled connections must not be used, nor closed, by the child.
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def engine_from_airflow_connection(conn_id: str) -> sa.Engine:
    """The (cached) engine for the OA database of Airflow connection ``conn_id``."""
    from airflow.sdk import BaseHook  # lazily: this module imports without Airflow

    return cached_engine(url_from_connection(BaseHook.get_connection(conn_id)))


def dispose_cached_engines() -> None:
    """Close every cached engine (tests, shutdown)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
