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


OA_PASSWORD = "Oa9-calsync-DB-PASSWORD-71c3"  # distinctive; trust auth lets it through unused


@pytest.mark.parametrize("blank_oa_url", ["postgresql"], indirect=True)
def test_two_way_runs_leak_neither_suite_nor_oa_secret(
    blank_oa_url, dag_env, include_dir, graph, monkeypatch, capfd
):
    """Forward and reverse runs of a two-way integration, with the OA connection carrying a
    password: neither secret shows in task output, sync-log rows, XComs, rendered fields,
    Airflow's run tables, or the text of a failure (an unreachable OA)."""
    from sqlalchemy.engine import make_url

    from calsync.oa.db import dispose_cached_engines
    from tests.integration.conftest import INTEGRATION_YAML
    from tests.integration.reverse_helpers import oa_create
    from tests.integration.test_reverse_dag import DAG_ID as REVERSE_DAG
    from tests.integration.test_reverse_dag import dagbag

    url = make_url(dag_env.url.render_as_string(hide_password=False)).set(password=OA_PASSWORD)
    conn = {"conn_type": "generic", "extra": {"sqlalchemy_url": url.render_as_string(False)}}
    monkeypatch.setenv("AIRFLOW_CONN_CALSYNC_OA_TEST", json.dumps(conn))
    dispose_cached_engines()
    (include_dir / "integrations" / "it_o365.yaml").write_text(
        INTEGRATION_YAML + "direction: both\n"
    )
    forward = run_dag()
    assert str(forward.state) == "success", ti_states(forward)
    oa_create(dag_env, "zhangwei", "secret scan", attendees=("lina",))
    reverse = dagbag().dags[REVERSE_DAG].test()
    assert str(reverse.state) == "success"

    # a failure whose text could carry the URL: the OA unreachable on a closed port
    bad = url.set(port=1).render_as_string(False)
    monkeypatch.setenv(
        "AIRFLOW_CONN_CALSYNC_OA_TEST",
        json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": bad}}),
    )
    dispose_cached_engines()
    failed = dagbag().dags[REVERSE_DAG].test()
    assert str(failed.state) == "failed"

    out, err = capfd.readouterr()
    for secret in (GRAPH_SECRET, OA_PASSWORD):
        assert secret not in out + err
        with dag_env.connect() as oa:
            for row in oa.execute(sa.select(t.sync_log)):
                assert secret not in " ".join(str(v) for v in row)
        assert metadata_rows_containing(secret) == []
    assert "cannot connect to the OA database" in out + err  # the failure was told, redacted
