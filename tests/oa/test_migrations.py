"""Migrations on SQLite, PostgreSQL and MariaDB: fresh install, idempotence, schema fidelity."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from calsync.oa import migrate, schema
from calsync.oa.db import engine_from_url
from calsync.oa.migrate import VERSION_TABLE, current, downgrade, head, upgrade

ROOT = Path(__file__).resolve().parents[2]
CALSYNC_TABLES = set(schema.metadata.tables)


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_head_is_the_latest_revision() -> None:
    versions = Path(__file__).resolve().parents[2] / "plugins/calsync/oa/migrations/versions"
    latest = max(p.name.split("_", 1)[0] for p in versions.glob("[0-9]*_*.py"))
    assert head() == latest


def test_fresh_upgrade_then_second_is_a_noop(blank_oa_url: str) -> None:
    engine = engine_from_url(blank_oa_url)
    try:
        assert current(engine) is None
        assert upgrade(engine) == head()
        assert _tables(engine) == CALSYNC_TABLES | {VERSION_TABLE}

        statements: list[str] = []

        @sa.event.listens_for(engine, "before_cursor_execute")
        def _record(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        assert upgrade(engine) == head()
        writes = [
            s
            for s in statements
            if s.lstrip().split(" ", 1)[0].upper()
            in {"CREATE", "ALTER", "DROP", "INSERT", "UPDATE"}
        ]
        assert writes == []
        assert _tables(engine) == CALSYNC_TABLES | {VERSION_TABLE}
    finally:
        engine.dispose()


def test_oa_products_own_alembic_table_is_left_alone(blank_oa_url: str) -> None:
    engine = engine_from_url(blank_oa_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
            conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('oa_product_42')")
        upgrade(engine)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [
                ("oa_product_42",)
            ]
            assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [
                (head(),)
            ]
    finally:
        engine.dispose()


def test_downgrade_to_base_and_up_again(oa_engine: sa.Engine) -> None:
    assert downgrade(oa_engine, "base") is None
    assert _tables(oa_engine) & CALSYNC_TABLES == set()
    assert upgrade(oa_engine) == head()
    assert _tables(oa_engine) >= CALSYNC_TABLES


def test_concurrent_upgrades_wait_for_each_other(blank_oa_url: str) -> None:
    engines = [engine_from_url(blank_oa_url) for _ in range(3)]
    barrier = threading.Barrier(len(engines))
    results: list[object] = []

    def run(engine: sa.Engine) -> None:
        barrier.wait()
        try:
            results.append(upgrade(engine))
        except Exception as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    try:
        assert results == [head()] * len(engines)
    finally:
        for e in engines:
            e.dispose()


def test_a_waiting_upgrade_starts_after_the_first_has_committed(blank_oa_url: str) -> None:
    """The lock outlives the commit: on MySQL/MariaDB a migration without DDL (0005 there) leaves
    the version stamps uncommitted until the end, so a lock released before the commit let the
    next upgrader read an old revision and run a migration twice ("Duplicate column")."""
    first, second = engine_from_url(blank_oa_url), engine_from_url(blank_oa_url)
    committing = threading.Event()

    @sa.event.listens_for(first, "commit")
    def _slow_commit(_conn: sa.Connection) -> None:  # runs just before the DBAPI commit
        committing.set()
        time.sleep(0.5)

    results: dict[str, object] = {}

    def run(name: str, engine: sa.Engine) -> None:
        try:
            results[name] = upgrade(engine)
        except Exception as exc:  # reported below
            results[name] = exc

    threads = [threading.Thread(target=run, args=("first", first))]
    threads[0].start()
    try:
        assert committing.wait(30)
        threads.append(threading.Thread(target=run, args=("second", second)))
        threads[1].start()
        for th in threads:
            th.join(60)
        assert results == {"first": head(), "second": head()}
    finally:
        first.dispose()
        second.dispose()


# --- the migrated database equals schema.py -----------------------------------------------


def _type(t: sa.types.TypeEngine[Any]) -> str:
    """A dialect-neutral name for a column type ("types-ish")."""
    if isinstance(t, sa.Boolean) or getattr(t, "display_width", None) == 1:  # MySQL TINYINT(1)
        return "bool"
    if isinstance(t, sa.Text) or type(t).__name__.endswith("TEXT"):  # MySQL's MEDIUMTEXT too
        return "text"
    if isinstance(t, sa.String):
        return f"str({t.length})"
    for cls, name in ((sa.DateTime, "datetime"), (sa.Date, "date"), (sa.Integer, "int")):
        if isinstance(t, cls):
            return name
    return repr(t)


def _default(value: Any) -> str | None:
    if value is None or str(value).startswith("nextval("):  # PostgreSQL SERIAL
        return None
    if isinstance(value, sa.schema.DefaultClause):
        value = value.arg
    if isinstance(value, sa.sql.elements.True_):
        return "1"
    if isinstance(value, sa.sql.elements.False_):
        return "0"
    text = str(getattr(value, "text", value)).split("::")[0].strip().strip("()")
    text = text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "'" else text
    return {"true": "1", "false": "0", "null": None}.get(text.lower(), text)


def _ondelete(value: str | None) -> str | None:
    value = (value or "").upper()
    return None if value in ("", "NO ACTION", "RESTRICT") else value


def _expected(table: sa.Table) -> dict[str, Any]:
    fks = {
        (
            tuple(c.name for c in fk.columns),
            fk.referred_table.name,
            tuple(e.column.name for e in fk.elements),
            _ondelete(fk.ondelete),
        )
        for fk in table.foreign_key_constraints
    }
    uniques = {
        tuple(c.name for c in uc.columns)
        for uc in table.constraints
        if isinstance(uc, sa.UniqueConstraint)
    } | {tuple(c.name for c in ix.columns) for ix in table.indexes if ix.unique}
    return {
        "columns": [
            (c.name, _type(c.type), c.nullable, _default(c.server_default)) for c in table.c
        ],
        "pk": [c.name for c in table.primary_key],
        "fks": fks,
        "uniques": uniques,
        "indexes": {
            (ix.name, tuple(c.name for c in ix.columns)) for ix in table.indexes if not ix.unique
        },
    }


def _reflected(insp: sa.Inspector, name: str) -> dict[str, Any]:
    fk_rows = insp.get_foreign_keys(name)
    fks = {
        (
            tuple(fk["constrained_columns"]),
            fk["referred_table"],
            tuple(fk["referred_columns"]),
            _ondelete(fk.get("options", {}).get("ondelete")),
        )
        for fk in fk_rows
    }
    fk_names = {fk["name"] for fk in fk_rows}
    indexes = insp.get_indexes(name)
    uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints(name)} | {
        tuple(ix["column_names"]) for ix in indexes if ix["unique"]
    }
    plain = {
        (ix["name"], tuple(ix["column_names"]))
        for ix in indexes
        # MySQL/MariaDB add an index per foreign key that has none; it carries the FK's name
        if not ix["unique"] and ix["name"] not in fk_names
    }
    return {
        "columns": [
            (c["name"], _type(c["type"]), c["nullable"], _default(c.get("default")))
            for c in insp.get_columns(name)
        ],
        "pk": insp.get_pk_constraint(name)["constrained_columns"],
        "fks": fks,
        "uniques": uniques,
        "indexes": plain,
    }


def test_migrated_schema_matches_schema_py(oa_engine: sa.Engine) -> None:
    insp = sa.inspect(oa_engine)
    assert set(insp.get_table_names()) == CALSYNC_TABLES | {VERSION_TABLE}
    for name, table in schema.metadata.tables.items():
        assert _reflected(insp, name) == _expected(table), name


def test_alembic_autogenerate_sees_no_difference(oa_engine: sa.Engine) -> None:
    with oa_engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_name": lambda name, kind, _p: (
                    not (kind == "table" and name == VERSION_TABLE)
                ),
            },
        )
        assert compare_metadata(ctx, schema.metadata) == []


@pytest.mark.parametrize(
    "blank_oa_url", [pytest.param("mariadb", marks=pytest.mark.integration)], indirect=True
)
def test_mysql_tables_are_utf8mb4_binary(oa_engine: sa.Engine) -> None:
    with oa_engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT table_name, table_collation, engine FROM information_schema.tables"
                " WHERE table_schema = DATABASE()"
            )
        ).all()
    opts = {r[0]: (r[1], r[2]) for r in rows if r[0] in CALSYNC_TABLES}
    assert opts == dict.fromkeys(CALSYNC_TABLES, ("utf8mb4_bin", "InnoDB"))


@pytest.mark.integration
def test_mysql_tables_are_utf8mb4_binary_whatever_the_database_default(
    oa_databases: Any,
) -> None:
    """An OA database created latin1 and case-insensitive (an old MySQL's defaults): every
    table a migration makes is still utf8mb4, binary and InnoDB."""
    import secrets

    name = f"calsync_t_{secrets.token_hex(6)}"
    with oa_databases.admin_engine("mariadb").connect() as conn:
        conn.exec_driver_sql(
            f"CREATE DATABASE `{name}` CHARACTER SET latin1 COLLATE latin1_swedish_ci"
        )
    url = (
        sa.engine.make_url(oa_databases.admin_engine("mariadb").url)
        .set(database=name)
        .render_as_string(hide_password=False)
    )
    engine = engine_from_url(url)
    try:
        upgrade(engine)
        test_mysql_tables_are_utf8mb4_binary(engine)
    finally:
        engine.dispose()
        oa_databases.drop(url)


# --- command line and Airflow's plugin scan ----------------------------------------------


def test_cli_upgrades_once_then_reports_at_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'oa.db'}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}{os.pathsep}{ROOT}"}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "calsync.oa.migrate", "--url", url, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert f"upgraded empty → {head()}" in cli()
    assert f"already at {head()}" in cli()
    assert f"revision {head()} (head {head()})" in cli("--current")


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("postgresql://oa:Sup3r-Secr3t!@db.example/oa", "CREATE TABLE oa_users"),
        ("mysql://oa:Sup3r-Secr3t!@db.example/oa", "CHARSET=utf8mb4 COLLATE utf8mb4_bin"),
    ],
)
def test_cli_sql_renders_ddl_offline(
    url: str, expect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert migrate.main(["--url", url, "--sql"]) == 0
    out = capsys.readouterr().out
    assert expect in out
    assert f"CREATE TABLE {VERSION_TABLE}" in out
    assert "Secr3t" not in out


def test_migration_files_are_inert_when_imported_by_airflows_plugin_scan() -> None:
    # Airflow imports every .py under plugins/ as a top-level module, outside Alembic.
    for path in (migrate.MIGRATIONS_DIR / "env.py", *migrate.MIGRATIONS_DIR.glob("versions/*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
