"""calsync.oa.db: URLs and connections, per-dialect settings, secrets, SQLite concurrency."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from calsync.errors import CalsyncError, ConfigError
from calsync.oa import schema as t
from calsync.oa.db import (
    OADatabaseUnavailable,
    cached_engine,
    dispose_cached_engines,
    engine_from_airflow_connection,
    engine_from_url,
    redacted,
    url_from_connection,
)

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Sup3r-Secr3t!"


def _conn(conn_type: str, **kw: Any) -> SimpleNamespace:
    fields = {"host": None, "schema": None, "login": None, "password": None, "port": None}
    return SimpleNamespace(
        conn_id="my_oa", conn_type=conn_type, extra_dejson=kw.pop("extra", {}), **fields | kw
    )


# --- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_url", "driver", "query"),
    [
        ("sqlite:////tmp/oa.db", "sqlite", {}),
        ("postgresql://u:p@h/oa", "postgresql+psycopg", {}),
        ("postgres://u:p@h/oa", "postgresql+psycopg", {}),
        ("postgresql+psycopg2://u:p@h/oa", "postgresql+psycopg2", {}),
        ("mysql://u:p@h/oa", "mysql+pymysql", {"charset": "utf8mb4"}),
        ("mariadb://u:p@h/oa", "mysql+pymysql", {"charset": "utf8mb4"}),
        ("mysql+pymysql://u:p@h/oa?charset=utf8mb4", "mysql+pymysql", {"charset": "utf8mb4"}),
    ],
)
def test_engine_from_url_picks_driver_and_charset(
    given_url: str, driver: str, query: dict[str, str]
) -> None:
    engine = engine_from_url(given_url)
    assert engine.url.drivername == driver
    assert dict(engine.url.query) == query
    assert engine.pool._pre_ping  # type: ignore[attr-defined]


def test_url_from_connection_sqlite_host_or_extra_path() -> None:
    assert url_from_connection(_conn("sqlite", host="/data/oa.db")) == "sqlite:////data/oa.db"
    by_extra = _conn("sqlite", extra={"path": "/data/oa2.db"})
    assert url_from_connection(by_extra) == "sqlite:////data/oa2.db"
    with pytest.raises(ConfigError) as err:
        url_from_connection(_conn("sqlite"))
    assert (err.value.file, err.value.field) == ("connection my_oa", "host")


@pytest.mark.parametrize("conn_type", ["postgres", "postgresql", "mysql", "mariadb"])
def test_url_from_connection_servers_keep_special_passwords(conn_type: str) -> None:
    password = "p@ss:w/rd#%?&= 密码"
    url = url_from_connection(
        _conn(conn_type, host="db.corp", login="oa", password=password, port=6543, schema="oa")
    )
    parsed = sa.engine.make_url(url)
    assert parsed.password == password
    assert (parsed.host, parsed.port, parsed.database, parsed.username) == (
        "db.corp",
        6543,
        "oa",
        "oa",
    )
    if conn_type.startswith("postgres"):
        assert parsed.drivername == "postgresql+psycopg"
    else:
        assert parsed.drivername == "mysql+pymysql"
        assert parsed.query["charset"] == "utf8mb4"


def test_url_from_connection_extras() -> None:
    override = "postgresql+psycopg://x:y@elsewhere/oa"
    conn = _conn("postgres", host="h", extra={"sqlalchemy_url": override})
    assert url_from_connection(conn) == override
    with_query = _conn("postgres", host="h", extra={"query": {"sslmode": "require"}})
    assert sa.engine.make_url(url_from_connection(with_query)).query == {"sslmode": "require"}
    with pytest.raises(ConfigError, match=r"extra\.query"):
        url_from_connection(_conn("postgres", host="h", extra={"query": "sslmode=require"}))
    with pytest.raises(ConfigError, match="needs a host") as err:
        url_from_connection(_conn("mysql"))
    assert err.value.field == "host"


def test_url_from_connection_unknown_type_names_connection_and_field() -> None:
    with pytest.raises(ConfigError) as err:
        url_from_connection(_conn("mssql", host="h", password=PASSWORD))
    assert (err.value.file, err.value.field) == ("connection my_oa", "conn_type")
    assert "'mssql'" in str(err.value)
    assert PASSWORD not in str(err.value)


def test_url_from_a_real_airflow_connection() -> None:
    sdk = pytest.importorskip("airflow.sdk")
    conn = sdk.Connection(
        conn_id="oa_pg",
        conn_type="postgres",
        host="db.corp",
        login="oa",
        password="a/b@c:d",
        port=5433,
        schema="oa",
        extra=json.dumps({"query": {"sslmode": "verify-full"}}),
    )
    parsed = sa.engine.make_url(url_from_connection(conn))
    assert parsed.password == "a/b@c:d"
    assert parsed.render_as_string(hide_password=True) == (
        "postgresql+psycopg://oa:***@db.corp:5433/oa?sslmode=verify-full"
    )


def test_engine_from_airflow_connection_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("airflow.sdk")
    path = tmp_path / "oa.db"
    conn = json.dumps({"conn_type": "sqlite", "host": str(path)})
    monkeypatch.setenv("AIRFLOW_CONN_CALSYNC_OA_TEST", conn)
    try:
        engine = engine_from_airflow_connection("calsync_oa_test")
        assert engine.url.database == str(path)
        assert engine_from_airflow_connection("calsync_oa_test") is engine
        assert cached_engine(engine.url.render_as_string(hide_password=False)) is engine
    finally:
        dispose_cached_engines()


def test_db_module_imports_without_airflow() -> None:
    code = (
        "import sys, calsync.oa.db, calsync.oa.migrate, calsync.oa.seed; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'airflow']; "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


def test_redacted_hides_passwords_and_secret_query_values() -> None:
    shown = redacted(f"postgresql+psycopg://oa:{PASSWORD}@h/oa?sslpassword=x1&sslmode=require")
    assert PASSWORD not in shown and "x1" not in shown
    assert shown == "postgresql+psycopg://oa:***@h/oa?sslmode=require&sslpassword=***"
    assert redacted(sa.engine.make_url("sqlite:////tmp/oa.db")) == "sqlite:////tmp/oa.db"
    assert redacted(f"::not a url {PASSWORD}") == "<invalid database URL>"


# --- connect errors never carry the password -------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connect_error(url: str | sa.URL) -> OADatabaseUnavailable:
    engine = engine_from_url(url)
    try:
        with pytest.raises(OADatabaseUnavailable) as err:
            engine.connect().close()
        return err.value
    finally:
        engine.dispose()


def _assert_no_secret(exc: BaseException, secret: str) -> None:
    assert isinstance(exc, CalsyncError)
    assert secret not in str(exc)
    assert secret not in repr(exc)
    assert secret not in "".join(traceback.format_exception(exc))  # the whole chain


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_connect_error_to_a_wrong_port_has_no_password(scheme: str) -> None:
    port = _closed_port()
    exc = _connect_error(f"{scheme}://oa:{PASSWORD}@127.0.0.1:{port}/oa")
    _assert_no_secret(exc, PASSWORD)
    assert f"oa:***@127.0.0.1:{port}/oa" in str(exc)


@pytest.mark.integration
def test_password_echoed_by_the_server_is_scrubbed(oa_databases: Any) -> None:
    # The server names the missing database; here that name is the password.
    admin = oa_databases.admin_engine("postgresql").url
    secret = "calsync_nodb_Secr3t"
    exc = _connect_error(admin.set(password=secret, database=secret))
    _assert_no_secret(exc, secret)
    assert "does not exist" in str(exc)


@pytest.mark.integration
def test_wrong_password_on_mariadb_has_no_password(oa_databases: Any) -> None:
    admin = oa_databases.admin_engine("mariadb").url
    exc = _connect_error(admin.set(username="calsync_nobody", password=PASSWORD))
    _assert_no_secret(exc, PASSWORD)
    assert "Access denied" in str(exc)


@pytest.mark.parametrize(
    "blank_oa_url",
    [pytest.param(b, marks=pytest.mark.integration) for b in ("postgresql", "mariadb")],
    indirect=True,
)
def test_pool_pre_ping_replaces_a_connection_the_server_killed(oa_engine: sa.Engine) -> None:
    kill = {
        "postgresql": ("SELECT pg_backend_pid()", "SELECT pg_terminate_backend({})"),
        "mysql": ("SELECT CONNECTION_ID()", "KILL {}"),
    }[oa_engine.dialect.name]
    with oa_engine.connect() as conn:
        pid = conn.exec_driver_sql(kill[0]).scalar()
    other = engine_from_url(oa_engine.url, poolclass=sa.pool.NullPool)
    try:
        with other.connect() as conn:
            conn.exec_driver_sql(kill[1].format(int(pid)))
    finally:
        other.dispose()
    with oa_engine.connect() as conn:  # the pooled connection is dead: pre-ping replaces it
        assert conn.exec_driver_sql(kill[0]).scalar() != pid


def test_statement_errors_are_not_wrapped(sqlite_oa_engine: sa.Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError), sqlite_oa_engine.begin() as conn:
        conn.execute(sa.insert(t.rooms).values(name="r"))
        conn.execute(sa.insert(t.rooms).values(name="r"))


# --- SQLite settings -----------------------------------------------------------------------


def test_sqlite_pragmas(sqlite_oa_engine: sa.Engine) -> None:
    with sqlite_oa_engine.connect() as conn:
        pragma = {
            p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
            for p in ("foreign_keys", "journal_mode", "busy_timeout")
        }
    assert pragma == {"foreign_keys": 1, "journal_mode": "wal", "busy_timeout": 30000}


def test_foreign_keys_are_enforced_and_cascade(oa_engine: sa.Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError), oa_engine.begin() as conn:
        conn.execute(sa.insert(t.users).values(login_name="x", display_name="X", department_id=999))
    with oa_engine.begin() as conn:
        uid = _user(conn)
        sid = _schedule(conn, uid, "t", "")
        conn.execute(sa.insert(t.participants).values(schedule_id=sid, kind="user", user_id=uid))
        conn.execute(sa.delete(t.schedules).where(t.schedules.c.id == sid))
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.participants)) == 0


def test_sqlite_savepoints_roll_back_inside_a_transaction(sqlite_oa_engine: sa.Engine) -> None:
    with sqlite_oa_engine.begin() as conn:
        conn.execute(sa.insert(t.rooms).values(name="kept"))
        with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
            conn.execute(sa.insert(t.rooms).values(name="dup"))
            conn.execute(sa.insert(t.rooms).values(name="dup"))
    with sqlite_oa_engine.connect() as conn:
        assert conn.scalars(sa.select(t.rooms.c.name)).all() == ["kept"]


# --- text round trip -----------------------------------------------------------------------

NOW = dt.datetime(2026, 11, 30, 8, 0)


def _user(conn: sa.Connection, login: str = "u1") -> int:
    pk = conn.execute(sa.insert(t.users).values(login_name=login, display_name="张伟"))
    return int(pk.inserted_primary_key[0])


def _schedule(conn: sa.Connection, creator: int, title: str, details: str) -> int:
    values = {"title": title, "details": details, "creator_id": creator}
    pk = conn.execute(sa.insert(t.schedules).values(**values, created_at=NOW, updated_at=NOW))
    return int(pk.inserted_primary_key[0])


CJK_EMOJI = [
    ("项目周会 📅 研发部 ✅", "讨论：上线计划 🚀\n地点：会议室01\n𠮷野家 (CJK Ext-B) 👩‍💻 👍🏽 🇨🇳"),
    ("🗓" * 500, "詳細 — ü é ñ ß Ω ∑ ←→ «» “” 「」【】 ～"),
]


@pytest.mark.parametrize(("title", "details"), CJK_EMOJI)
def test_cjk_and_emoji_round_trip(oa_engine: sa.Engine, title: str, details: str) -> None:
    with oa_engine.begin() as conn:
        sid = _schedule(conn, _user(conn), title, details)
    with oa_engine.connect() as conn:
        row = conn.execute(
            sa.select(t.schedules.c.title, t.schedules.c.details).where(t.schedules.c.id == sid)
        ).one()
        assert tuple(row) == (title, details)
        # and it is found by exact match (utf8mb4_bin on MySQL: emoji are not all "equal")
        found = conn.scalar(sa.select(t.schedules.c.id).where(t.schedules.c.title == title))
        assert found == sid


# PostgreSQL cannot store NUL in text; surrogates are not valid UTF-8 anywhere.
_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=500)


def test_any_text_round_trips(oa_engine: sa.Engine) -> None:
    with oa_engine.begin() as conn:
        uid = _user(conn)

    @hsettings(suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(title=_text, details=_text)
    def check(title: str, details: str) -> None:
        with oa_engine.begin() as conn:
            sid = _schedule(conn, uid, title, details)
            got = conn.execute(
                sa.select(t.schedules.c.title, t.schedules.c.details).where(t.schedules.c.id == sid)
            ).one()
        assert tuple(got) == (title, details)

    check()


# --- several processes writing one SQLite file ------------------------------------------

WRITES_PER_PROCESS = 150


def _writer(url: str, name: str, barrier: Any) -> int:
    """Read-then-write transactions: the pattern that fails on deferred BEGIN under WAL."""
    engine = engine_from_url(url)
    try:
        barrier.wait(60)  # both processes write at the same time
        for i in range(WRITES_PER_PROCESS):
            with engine.begin() as conn:
                n = conn.scalar(sa.select(sa.func.count()).select_from(t.sync_log))
                conn.execute(
                    sa.insert(t.sync_log).values(
                        logged_at=dt.datetime.now(),
                        integration_id=name,
                        direction="forward",
                        action="created",
                        message=f"{i} after {n}",
                    )
                )
        return WRITES_PER_PROCESS
    finally:
        engine.dispose()


def test_two_processes_write_one_sqlite_file(sqlite_oa_engine: sa.Engine) -> None:
    url = sqlite_oa_engine.url.render_as_string(hide_password=False)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(2, mp_context=ctx) as pool:
        barrier = manager.Barrier(2)
        futures = [pool.submit(_writer, url, name, barrier) for name in ("a", "b")]
        assert [f.result(timeout=120) for f in futures] == [WRITES_PER_PROCESS] * 2
    with sqlite_oa_engine.connect() as conn:
        counts = dict(
            conn.execute(
                sa.select(t.sync_log.c.integration_id, sa.func.count()).group_by(
                    t.sync_log.c.integration_id
                )
            ).all()
        )
    assert counts == {"a": WRITES_PER_PROCESS, "b": WRITES_PER_PROCESS}


def test_why_sqlite_transactions_begin_immediate(sqlite_oa_engine: sa.Engine) -> None:
    # With a deferred BEGIN, a transaction that read before another connection committed can
    # never write (SQLITE_BUSY_SNAPSHOT, not retried by busy_timeout). IMMEDIATE avoids it.
    deferred = sqlite_oa_engine.execution_options(calsync_sqlite_begin="DEFERRED")
    log = {"logged_at": NOW, "integration_id": "i", "direction": "forward", "action": "created"}
    with deferred.connect() as reader, sqlite_oa_engine.connect() as other:
        reader.scalar(sa.select(sa.func.count()).select_from(t.sync_log))
        with other.begin():
            other.execute(sa.insert(t.sync_log).values(log))
        with pytest.raises(sa.exc.OperationalError, match="database is locked"):
            reader.execute(sa.insert(t.sync_log).values(log))
