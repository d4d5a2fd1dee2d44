"""The forward DAG in Airflow: DAG-file import (one DAG per valid config, a visible error DAG
per broken one), and real runs with `dag.test()` against the Graph emulator and the OA."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from tests.airflow_env import ROOT
from tests.integration.conftest import INTEGRATION_YAML, TODAY, oa_snapshot

pytestmark = pytest.mark.integration
DAG_ID = "calsync_it_o365"


def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def ti_states(dag_run: Any) -> dict[tuple[str, int], str]:
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.scalars(
            sa.select(TaskInstance).where(
                TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
            )
        ).all()
        return {(ti.task_id, ti.map_index): str(ti.state) for ti in tis}


def test_dag_file_builds_one_dag_per_valid_config(airflow_db, include_dir: Path):
    integrations = include_dir / "integrations"
    (integrations / "off.yaml").write_text(
        INTEGRATION_YAML + "enabled: false\nschedule: '@daily'\n"
    )
    (integrations / "broken.yaml").write_text(
        INTEGRATION_YAML.replace("window_days: 3", "window_days: 16")
    )
    (integrations / "two_way_later.yaml").write_text(INTEGRATION_YAML + "direction: reverse\n")
    (integrations / "nightly.yaml").write_text(INTEGRATION_YAML + "schedule: '30 2 * * *'\n")
    bag = dagbag()
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {
        "calsync_it_o365",
        "calsync_off",
        "calsync_nightly",
        "calsync_broken__invalid_config",
        "calsync_reverse__calsync_oa_test",  # one reverse DAG for the OA the reverse config uses
        "calsync_housekeeping__calsync_oa_test",  # and one housekeeping DAG per OA in use
    }
    broken = bag.dags["calsync_broken__invalid_config"]
    assert (
        "broken.yaml: window_days: Input should be less than or equal to 15" in broken.description
    )
    assert "config-error" in broken.tags
    off = bag.dags["calsync_off"]
    assert off.schedule is None and off.is_paused_upon_creation  # no scheduled runs
    assert "disabled" in off.tags
    nightly = bag.dags["calsync_nightly"]
    assert "expression='30 2 * * *', timezone='Asia/Shanghai'" in repr(nightly.schedule)
    params = bag.dags[DAG_ID].params
    assert params.get_param("start").schema["format"] == "date"


def test_shipped_dags_import_cleanly(airflow_db, monkeypatch):
    monkeypatch.setenv("CALSYNC_INCLUDE_DIR", str(ROOT / "include"))
    bag = dagbag()
    assert bag.import_errors == {}
    assert "calsync_demo_office365" in bag.dag_ids
    assert not [d for d in bag.dag_ids if d.endswith("__invalid_config")]


def run_dag(conf: dict[str, Any] | None = None) -> Any:
    dag = dagbag().dags[DAG_ID]
    return dag.test(run_conf=conf or {})


def test_scheduled_window_run_then_rerun_changes_nothing(dag_env):
    first = run_dag()
    assert str(first.state) == "success", ti_states(first)
    with dag_env.connect() as conn:
        titles = set(conn.execute(sa.select(t.schedules.c.title)).scalars())
        log = conn.execute(
            sa.select(t.sync_log.c.action, sa.func.count())
            .where(t.sync_log.c.run_id == first.run_id)
            .group_by(t.sync_log.c.action)
        ).all()
    assert "项目周会 Weekly project sync" in titles and "年假 Annual leave" in titles
    counts = dict(log)
    assert counts["created"] == 12 and counts["skipped"] >= 2  # [no-sync] event, 孙丽 (no mailbox)
    # one mapped task per user, named by mailbox
    states = ti_states(first)
    assert len([k for k in states if k[0] == "sync_users"]) == 6

    before = oa_snapshot(dag_env)
    second = run_dag()
    assert str(second.state) == "success"
    assert oa_snapshot(dag_env) == before


def test_manual_range_inside_the_bound_syncs_it(dag_env):
    start, end = TODAY + dt.timedelta(days=8), TODAY + dt.timedelta(days=12)
    run = run_dag({"start": start.isoformat(), "end": end.isoformat()})
    assert str(run.state) == "success"
    with dag_env.connect() as conn:
        titles = set(conn.execute(sa.select(t.schedules.c.title)).scalars())
    assert "季度评审 Quarterly review (outside the window)" in titles
    assert "项目周会 Weekly project sync" not in titles


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (-20, 0, "outside today ± 15 days"),
        (0, 16, "outside today ± 15 days"),
        (3, 1, "is after end"),
    ],
)
def test_manual_range_outside_the_bound_fails_at_once(dag_env, include_dir, start, end, message):
    from airflow.sdk.exceptions import AirflowFailException

    from calsync.airflow import runtime

    conf = {
        "start": (TODAY + dt.timedelta(days=start)).isoformat(),
        "end": (TODAY + dt.timedelta(days=end)).isoformat(),
    }
    run = run_dag(conf)
    assert str(run.state) == "failed"
    states = ti_states(run)
    assert states[("resolve_window", -1)] == "failed"
    assert states[("sync_users", -1)] == "upstream_failed"
    with dag_env.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.schedules)).scalar() == 0
    # the message the failed task carries names the bound
    context = {"params": conf, "dag_run": type("R", (), {"run_after": dt.datetime.now(dt.UTC)})()}
    with pytest.raises(AirflowFailException, match=message):
        runtime.resolve_window(str(include_dir / "integrations" / "it_o365.yaml"), context)


def test_unknown_user_in_a_manual_run_is_refused(dag_env):
    run = run_dag({"users": ["nobody"]})
    assert str(run.state) == "failed"
    assert ti_states(run)[("resolve_users", -1)] == "failed"


def test_a_failed_user_fails_alone_and_is_retried_alone(dag_env, graph):
    graph.faults.fail_next = [("users/lina@contoso.com/calendarView", 500)]
    run = run_dag()
    assert str(run.state) == "failed"
    states = ti_states(run)
    mapped = {k: v for k, v in states.items() if k[0] == "sync_users"}
    assert sorted(mapped.values()).count("failed") == 1
    assert sorted(mapped.values()).count("success") == 5
    with dag_env.connect() as conn:
        failed = (
            conn.execute(
                sa.select(t.sync_log.c.mailbox).where(
                    t.sync_log.c.run_id == run.run_id, t.sync_log.c.action == "failed"
                )
            )
            .scalars()
            .all()
        )
    assert failed == ["lina@contoso.com"]
    graph.faults.fail_next = []
    retry = run_dag({"users": ["lina"]})
    assert str(retry.state) == "success"
    assert len([k for k in ti_states(retry) if k[0] == "sync_users"]) == 1
    with dag_env.connect() as conn:
        titles = set(conn.execute(sa.select(t.schedules.c.title)).scalars())
    assert "年假 Annual leave" in titles
