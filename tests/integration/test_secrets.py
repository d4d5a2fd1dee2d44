"""F15: a full sync with a distinctive client secret leaves no trace of it in task output,
sync-log rows, XComs or rendered fields — and a refused secret is not echoed either."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from tests.integration.conftest import GRAPH_CONN, GRAPH_SECRET
from tests.integration.test_forward_dag import run_dag, ti_states

pytestmark = pytest.mark.integration


def metadata_rows_containing(needle: str) -> list[str]:
    """Every row of Airflow's metadata tables that hold run data, searched as text."""
    from airflow.utils.session import create_session

    hits = []
    with create_session() as session:
        for table in ("xcom", "rendered_task_instance_fields", "task_instance", "dag_run", "log"):
            for row in session.execute(sa.text(f"SELECT * FROM {table}")):
                if needle in " ".join(str(v) for v in row):
                    hits.append(f"{table}: {row}")
    return hits


@pytest.mark.parametrize("blank_oa_url", ["sqlite"], indirect=True)
def test_full_sync_leaks_no_secret(blank_oa_url, dag_env, capfd):
    run = run_dag()
    assert str(run.state) == "success", ti_states(run)
    out, err = capfd.readouterr()
    assert "Client secret" in out + err  # the hook does log the line …
    assert GRAPH_SECRET not in out + err  # … masked
    with dag_env.connect() as conn:
        for row in conn.execute(sa.select(t.sync_log)):
            assert GRAPH_SECRET not in " ".join(str(v) for v in row)
    assert metadata_rows_containing(GRAPH_SECRET) == []


def test_a_refused_secret_is_not_echoed(graph, config, monkeypatch):
    from calsync.connectors.base import connector_for
    from calsync.errors import ConnectorError
    from calsync.model import Window
    from tests.integration.conftest import TODAY

    wrong = "Wr0ng-calsync-SECRET-9b2d"
    conn = json.loads(os.environ[f"AIRFLOW_CONN_{GRAPH_CONN.upper()}"])
    conn["password"] = wrong
    monkeypatch.setenv(f"AIRFLOW_CONN_{GRAPH_CONN.upper()}", json.dumps(conn))

    async def read() -> None:
        async with connector_for(config) as connector:
            await connector.list_events("lina@contoso.com", Window(TODAY, TODAY, "Asia/Shanghai"))

    with pytest.raises(ConnectorError) as info:
        asyncio.run(read())
    assert wrong not in str(info.value) and GRAPH_SECRET not in str(info.value)
