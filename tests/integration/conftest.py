"""Fixtures for integration tests: the Graph emulator over HTTPS, an Airflow connection to
it, a seeded OA, and a helper that runs the forward engine as a task would."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.config import IntegrationConfig, parse_integration
from calsync.oa import schema as t
from calsync.oa.seed import DEMO_USERS, seed_demo
from tests.airflow_env import AIRFLOW_HOME, ROOT
from tests.graph_emulator import GRAPH_CONN, GRAPH_SECRET  # noqa: F401  (re-exported)

# The demo calendars sit around today in Shanghai so DAG runs (whose window is counted from the
# real "now") see them; engine tests pass their window explicitly.
TODAY = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
INTEGRATION_YAML = f"""
name: Integration test
type: office365_global
connection_id: {GRAPH_CONN}
oa_connection_id: calsync_oa_test
window_days: 3
timezone: Asia/Shanghai
mapping: office365_forward
filters: [skip_cancelled, skip_title_pattern]
office365: {{page_size: 10}}
execution: {{concurrency: 4, retries: 0}}
"""


def people() -> list[tuple[str, str]]:
    return [(u["email"], u["name"]) for u in DEMO_USERS if u["email"] and u["active"]]


@pytest.fixture
def graph(graph_server: Any) -> Iterator[Any]:
    """The emulator, emptied and fault-free, seeded with the demo calendars around TODAY."""
    from scripts.demo_data import graph_seed

    graph_server.reset()
    graph_server.seed(graph_seed(TODAY, people()))
    yield graph_server
    graph_server.reset()


@pytest.fixture
def config() -> IntegrationConfig:
    return parse_integration(Path("it_o365.yaml"), INTEGRATION_YAML)


@pytest.fixture
def seeded_oa(oa_engine: sa.Engine) -> sa.Engine:
    seed_demo(oa_engine)
    return oa_engine


class ForwardRunner:
    """Runs the forward engine for every in-scope user, as the mapped tasks would (the
    scheduled path's change feeds with ``incremental``)."""

    incremental = False

    def __init__(self, engine: sa.Engine, config: IntegrationConfig) -> None:
        from calsync.mapping import MappingLibrary

        self.engine = engine
        self.config = config
        self.library = MappingLibrary.load(ROOT / "include" / "mappings")
        self.runs = 0

    def window(self, today: dt.date = TODAY) -> Any:
        from calsync.model import Window

        days = dt.timedelta(days=self.config.window_days)
        return Window(today - days, today + days, self.config.timezone)

    def __call__(self, window: Any = None, only: list[str] | None = None) -> dict[str, Any]:
        from calsync.connectors.base import connector_for
        from calsync.oa import store
        from calsync.sync.forward import sync_users

        self.runs += 1
        with self.engine.connect() as conn:
            users = store.resolve_scope(conn, self.config.scope, self.config.binding).users
        if only is not None:
            users = [u for u in users if u.mailbox in only]
        prefix = "incremental" if self.incremental else "run"
        run = store.RunInfo(
            self.config.id,
            "test_dag",
            f"{prefix}-{self.runs}",
            two_way=self.config.direction == "both",  # as the DAG's task builds it
            conflict_policy=self.config.conflict_policy,
        )

        async def go() -> list[Any]:
            async with connector_for(self.config) as connector:
                return await sync_users(
                    self.engine,
                    self.config,
                    self.library,
                    connector,
                    users,
                    window or self.window(),
                    run,
                    incremental=self.incremental,
                )

        results = asyncio.run(go())
        totals: dict[str, int] = {}
        for r in results:
            for key, value in r.counts.items():
                totals[key] = totals.get(key, 0) + value
        return {"results": {r.mailbox: r for r in results}, "totals": totals}


@pytest.fixture
def forward(seeded_oa: sa.Engine, config: IntegrationConfig, graph: Any) -> ForwardRunner:
    return ForwardRunner(seeded_oa, config)


def oa_snapshot(engine: sa.Engine) -> dict[str, Any]:
    """Everything forward sync writes, in a comparable form (ids and timestamps included)."""
    with engine.connect() as conn:
        return {
            "schedules": [
                tuple(r) for r in conn.execute(sa.select(t.schedules).order_by(t.schedules.c.id))
            ],
            "participants": sorted(tuple(r)[1:] for r in conn.execute(sa.select(t.participants))),
            "links": [tuple(r) for r in conn.execute(sa.select(t.links).order_by(t.links.c.id))],
            "meetings": [
                tuple(r) for r in conn.execute(sa.select(t.meetings).order_by(t.meetings.c.id))
            ],
        }


# --- Airflow ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Airflow's metadata DB (SQLite in a temp AIRFLOW_HOME), migrated once per session."""
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        env=os.environ.copy(),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return AIRFLOW_HOME


@pytest.fixture
def include_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private include/ for the DAG file: the shipped mappings, test integrations only."""
    import shutil

    include = tmp_path / "include"
    shutil.copytree(ROOT / "include" / "mappings", include / "mappings")
    (include / "integrations").mkdir()
    (include / "integrations" / "it_o365.yaml").write_text(INTEGRATION_YAML)
    monkeypatch.setenv("CALSYNC_INCLUDE_DIR", str(include))
    return include


@pytest.fixture
def airflow_oa(seeded_oa: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> sa.Engine:
    """The seeded OA as the Airflow connection the test integration names."""
    url = seeded_oa.url
    conn: dict[str, Any] = {"conn_type": "sqlite", "host": url.database}
    if url.get_backend_name() != "sqlite":
        conn = {
            "conn_type": "generic",
            "extra": {"sqlalchemy_url": url.render_as_string(hide_password=False)},
        }
    monkeypatch.setenv("AIRFLOW_CONN_CALSYNC_OA_TEST", json.dumps(conn))
    from calsync.oa.db import dispose_cached_engines

    dispose_cached_engines()
    return seeded_oa


@pytest.fixture
def dag_env(airflow_db: Path, include_dir: Path, airflow_oa: sa.Engine, graph: Any) -> sa.Engine:
    """Everything a `dag.test()` run of the test integration needs; yields the OA engine."""
    return airflow_oa
