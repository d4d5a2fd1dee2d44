"""The reverse DAG in Airflow: built once per OA database used by reverse/two-way configs,
scheduled by the outbox asset's watcher (plus a sweep), and a real `dag.test()` drain."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from tests.airflow_env import ROOT
from tests.integration.conftest import INTEGRATION_YAML
from tests.integration.reverse_helpers import deliveries, oa_create, oa_delete, reverse_logs

pytestmark = pytest.mark.integration
DAG_ID = "calsync_reverse__calsync_oa_test"
ZHANG = "zhangwei@contoso.com"


def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture
def reverse_include(include_dir: Path) -> Path:
    (include_dir / "integrations" / "it_o365.yaml").write_text(
        INTEGRATION_YAML + "direction: both\n"
    )
    return include_dir


def test_one_reverse_dag_per_oa_database_scheduled_by_the_outbox_watcher(
    airflow_db, reverse_include: Path
):
    from airflow.sdk import AssetOrTimeSchedule

    integrations = reverse_include / "integrations"
    (integrations / "second.yaml").write_text(INTEGRATION_YAML + "direction: reverse\n")
    (integrations / "other_oa.yaml").write_text(
        INTEGRATION_YAML.replace("calsync_oa_test", "calsync_oa_branch") + "direction: reverse\n"
    )
    (integrations / "forward_only.yaml").write_text(INTEGRATION_YAML)
    bag = dagbag()
    assert bag.import_errors == {}
    assert {d for d in bag.dag_ids if "reverse" in d} == {
        DAG_ID,
        "calsync_reverse__calsync_oa_branch",
    }
    dag = bag.dags[DAG_ID]
    assert "`it_o365` (both)" in dag.doc_md and "`second` (reverse)" in dag.doc_md
    assert "forward_only" not in dag.doc_md
    assert dag.max_active_runs == 1
    assert (
        isinstance(dag.timetable, AssetOrTimeSchedule)
        or "asset" in type(dag.timetable).__name__.lower()
    )
    # a two-way integration also keeps its forward DAG
    assert "calsync_it_o365" in bag.dag_ids


def test_watcher_trigger_fires_on_changes_and_due_retries(dag_env, reverse_include):
    from calsync.airflow.outbox_trigger import OutboxTrigger
    from calsync.oa import outbox

    trigger = OutboxTrigger("calsync_oa_test", poll_interval=0.05)
    path, kwargs = trigger.serialize()
    assert path == "calsync.airflow.outbox_trigger.OutboxTrigger"
    assert kwargs == {"oa_connection_id": "calsync_oa_test", "poll_interval": 0.05}

    async def first_events(n: int, act: Any) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        gen = trigger.run()

        async def collect() -> None:
            async for event in gen:
                events.append(event.payload)
                if len(events) == n:
                    return

        task = asyncio.create_task(collect())
        await asyncio.sleep(0.3)
        await asyncio.to_thread(act)
        await asyncio.wait_for(task, 10)
        await gen.aclose()
        return events

    sid = oa_create(dag_env, "zhangwei", "watched")
    [fired] = asyncio.run(first_events(1, lambda: None))
    assert fired == {"reason": "changes", "rows": 1}

    # routed rows no longer fire; a delivery whose back-off ended does
    with dag_env.begin() as conn:
        outbox.route(conn, [outbox.RouteTarget("it_o365", frozenset({1, 2, 3, 4, 5, 6}))])
        conn.execute(
            sa.update(t.deliveries).values(
                next_attempt_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)
                + dt.timedelta(seconds=0.5),
                attempts=1,
            )
        )
    [retry] = asyncio.run(first_events(1, lambda: None))
    assert retry["reason"] == "retry"
    # (a new watcher fires for the due retry first) and a new change fires again
    due, again = asyncio.run(first_events(2, lambda: oa_delete(dag_env, sid)))
    assert (due["reason"], again["reason"]) == ("retry", "changes")


def test_drain_run_delivers_and_reports(dag_env, reverse_include, graph):
    oa_create(dag_env, "zhangwei", "from the DAG", attendees=("lina",), room="会议室01")
    dag = dagbag().dags[DAG_ID]
    run = dag.test()
    assert str(run.state) == "success"
    assert [e["subject"] for e in graph.store.events(ZHANG) if e["subject"] == "from the DAG"]
    assert [d["status"] for d in deliveries(dag_env)] == ["done"]
    [row] = reverse_logs(dag_env)
    assert row["action"] == "created" and row["dag_id"] == DAG_ID and row["run_id"] == run.run_id
    # a second run has nothing to do and still succeeds
    assert str(dag.test().state) == "success"


def test_bulk_delete_is_held_until_a_run_with_confirm_deletes(dag_env, reverse_include, graph):
    """E10 through the DAG: the trigger form offers confirm_deletes; a run holds an OA bulk
    delete, a manual run with the parameter releases and delivers it."""
    dag = dagbag().dags[DAG_ID]
    assert dag.params["confirm_deletes"] is False
    ids = [oa_create(dag_env, "zhangwei", f"bulk {i}") for i in range(5)]
    assert str(dag.test().state) == "success"
    for sid in ids[:4]:
        oa_delete(dag_env, sid)
    assert str(dag.test().state) == "success"
    assert sorted(d["status"] for d in deliveries(dag_env)) == ["done"] + ["held"] * 4

    def bulk() -> list[str]:
        return sorted(e["subject"] for e in graph.store.events(ZHANG) if "bulk" in e["subject"])

    assert len(bulk()) == 5
    assert str(dag.test(run_conf={"confirm_deletes": True}).state) == "success"
    assert bulk() == ["bulk 4"]
    actions = [r["action"] for r in reverse_logs(dag_env)]
    assert actions.count("held") == 1 and actions.count("released") == 1
    assert actions.count("deleted") == 4
