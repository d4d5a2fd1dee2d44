"""Project-wide fixtures: OA databases on SQLite, PostgreSQL and MariaDB; Hypothesis profiles.

OA database fixtures (each test gets its own database; creating + migrating one costs
~0.1 s on every backend, so isolation is per test):

- ``blank_oa_url``: parametrized over ``sqlite`` / ``postgresql`` / ``mariadb``; an empty
  database (no tables), dropped at teardown. For migration tests.
- ``oa_url``: the same, migrated to head.
- ``oa_engine``: a calsync engine (``calsync.oa.db.engine_from_url``) for ``oa_url``.
- ``sqlite_oa_engine``: SQLite only, migrated (a copy of a per-session template): fast.

Servers: PostgreSQL as ``postgres`` and MariaDB as ``root`` on 127.0.0.1 (override with
``CALSYNC_TEST_POSTGRES_URL`` / ``CALSYNC_TEST_MYSQL_URL``, admin URLs). Test databases are
named ``calsync_t_<random>``. An unreachable server skips its tests locally and FAILS them
when ``CI`` is set. The server-backed params carry the ``integration`` marker
(``-m "not integration"`` runs the SQLite ones only).

Hypothesis: profile ``ci`` (derandomized, 50 examples, no deadline) when ``CI`` is set, else
``dev``; ``HYPOTHESIS_PROFILE`` overrides.

``tests.airflow_env`` is imported before anything can import Airflow (a throw-away
AIRFLOW_HOME). Airflow-specific fixtures do not belong here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import sqlalchemy as sa
from hypothesis import settings

import tests.airflow_env  # noqa: F401  (before anything imports Airflow)
from calsync.oa.db import OADatabaseUnavailable, engine_from_url, redacted
from calsync.oa.migrate import upgrade

pytest_plugins = ["tests.graph_emulator", "tests.suite_emulators"]  # the session emulators

# --- Hypothesis ----------------------------------------------------------------------------

settings.register_profile("ci", derandomize=True, max_examples=50, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)

# --- OA databases --------------------------------------------------------------------------

BACKENDS = ("sqlite", "postgresql", "mariadb")
ADMIN_URLS = {
    "postgresql": os.environ.get(
        "CALSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    "mariadb": os.environ.get("CALSYNC_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/"),
}
_START_HINT = {
    "postgresql": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "mariadb": "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
}


class OADatabases:
    """Creates and drops throw-away databases on the test servers (one admin engine each)."""

    def __init__(self) -> None:
        self._admin: dict[str, sa.Engine] = {}
        self._unreachable: dict[str, str] = {}

    def admin_engine(self, backend: str) -> sa.Engine:
        if backend in self._unreachable:
            self._refuse(backend, self._unreachable[backend])
        if backend not in self._admin:
            engine = engine_from_url(
                ADMIN_URLS[backend],
                isolation_level="AUTOCOMMIT",
                poolclass=sa.pool.NullPool,
                connect_args={"connect_timeout": 5},
            )
            error = None
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
            except OADatabaseUnavailable as exc:  # password-free by construction
                error = exc.reason
            if error is not None:
                self._unreachable[backend] = error
                self._refuse(backend, error)
            self._admin[backend] = engine
        return self._admin[backend]

    @staticmethod
    def _refuse(backend: str, error: str) -> NoReturn:
        msg = (
            f"{backend} test server {redacted(ADMIN_URLS[backend])} is unreachable: {error} "
            f"(start it with `{_START_HINT[backend]}`)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so {backend} tests must run: {msg}", pytrace=False)
        pytest.skip(msg)

    def create(self, backend: str, tmp_path: Path) -> str:
        """A fresh, empty database; returns its URL."""
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'oa_{secrets.token_hex(4)}.db'}"
        name = f"calsync_t_{secrets.token_hex(6)}"
        with self.admin_engine(backend).connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8'")
            else:
                conn.exec_driver_sql(
                    f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )
        return (
            sa.engine.make_url(ADMIN_URLS[backend])
            .set(database=name)
            .render_as_string(hide_password=False)
        )

    def drop(self, url: str) -> None:
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            return  # tmp_path cleans up
        backend = "postgresql" if parsed.get_backend_name() == "postgresql" else "mariadb"
        name = parsed.database
        with self.admin_engine(backend).connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:  # end sessions a test left open, else DROP waits for their locks
                ids = conn.execute(
                    sa.text("SELECT id FROM information_schema.processlist WHERE db = :db"),
                    {"db": name},
                ).scalars()
                for pid in list(ids):
                    with contextlib.suppress(sa.exc.DBAPIError):  # already gone
                        conn.exec_driver_sql(f"KILL {int(pid)}")
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")

    def close(self) -> None:
        for engine in self._admin.values():
            engine.dispose()


@pytest.fixture(scope="session")
def oa_databases() -> Iterator[OADatabases]:
    """Session helper that creates/drops test databases (``create(backend, tmp_path)``)."""
    dbs = OADatabases()
    yield dbs
    dbs.close()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.integration),
        pytest.param("mariadb", marks=pytest.mark.integration),
    ]
)
def blank_oa_url(
    request: pytest.FixtureRequest, oa_databases: OADatabases, tmp_path: Path
) -> Iterator[str]:
    """An empty database on each backend (no tables), dropped after the test."""
    url = oa_databases.create(request.param, tmp_path)
    yield url
    oa_databases.drop(url)


@pytest.fixture
def oa_url(blank_oa_url: str) -> str:
    """A fresh database on each backend, migrated to head."""
    engine = engine_from_url(blank_oa_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return blank_oa_url


@pytest.fixture
def oa_engine(oa_url: str) -> Iterator[sa.Engine]:
    """A calsync engine for ``oa_url`` (disposed after the test)."""
    engine = engine_from_url(oa_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("oa_template") / "oa.db"
    engine = engine_from_url(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # closing the last connection folds the WAL into the file
    assert not Path(f"{path}-wal").exists()
    return path


@pytest.fixture
def sqlite_oa_engine(_sqlite_template: Path, tmp_path: Path) -> Iterator[sa.Engine]:
    """A migrated SQLite OA database of the test's own (fast: a copy of a template)."""
    path = tmp_path / "oa.db"
    shutil.copyfile(_sqlite_template, path)
    engine = engine_from_url(f"sqlite:///{path}")
    yield engine
    engine.dispose()
