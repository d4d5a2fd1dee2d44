"""Bad manual-trigger confs (issue 7, F10): the corpus in ``data/trigger_confs.json`` run
through the real forward DAG (``dag.test(run_conf=...)``). Each is refused — by Airflow's
param check before a run exists, or by the run's first tasks with a message naming the bound
or the user — and neither the OA nor the suite gets anything: no OA row, no suite request."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from tests.integration.conftest import TODAY
from tests.integration.test_forward_dag import DAG_ID, dagbag, ti_states

pytestmark = pytest.mark.integration
DATA = Path(__file__).parent / "data" / "trigger_confs.json"
CASES: list[dict[str, Any]] = json.loads(DATA.read_text(encoding="utf-8"))["cases"]
WRITTEN = (t.schedules, t.participants, t.links, t.meetings, t.sync_state, t.sync_log)
TASKS = ("resolve_window", "resolve_users", "sync_users", "summary")


def days(text: str) -> str:
    """DAY+N / DAY-N → that date, in text or a whole value."""
    return re.sub(
        r"DAY([+-]\d+)", lambda m: (TODAY + dt.timedelta(days=int(m[1]))).isoformat(), text
    )


def conf_of(case: dict[str, Any]) -> dict[str, Any]:
    return json.loads(days(json.dumps(case["conf"])))


def oa_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return sum(
            conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in WRITTEN
        )


def test_the_corpus_covers_what_issue_7_lists():
    names = {c["case"] for c in CASES}
    assert {"start_after_end", "start_before_today_minus_15", "end_after_today_plus_15"} <= names
    assert {"not_a_date", "unknown_user"} <= names


@pytest.mark.parametrize("blank_oa_url", ["sqlite"], indirect=True)  # the OA is not the point
@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_bad_trigger_conf_is_refused_and_nothing_is_written(
    blank_oa_url: str, dag_env: sa.Engine, graph: Any, capfd: Any, case: dict[str, Any]
):
    from airflow.models import DagRun
    from airflow.sdk.exceptions import ParamValidationError
    from airflow.utils.session import create_session

    dag = dagbag().dags[DAG_ID]
    conf = conf_of(case)
    error = days(case["error"])
    with create_session() as session:
        runs_before = session.scalar(sa.select(sa.func.count()).where(DagRun.dag_id == DAG_ID))
    if case["refused_by"] == "trigger":
        with pytest.raises(ParamValidationError) as info:
            dag.test(run_conf=conf)
        assert error in str(info.value)
        with create_session() as session:
            runs = session.scalar(sa.select(sa.func.count()).where(DagRun.dag_id == DAG_ID))
        assert runs == runs_before  # no run was created
    else:
        run = dag.test(run_conf=conf)
        assert str(run.state) == "failed"
        states = ti_states(run)
        refused = TASKS.index(case["refused_by"])
        assert states[(TASKS[refused], -1)] == "failed"
        assert all(states[(task, -1)] == "success" for task in TASKS[:refused])
        assert states[("sync_users", -1)] == "upstream_failed"  # no user was synced
        output = "".join(capfd.readouterr())
        assert error in output, output[-2000:]
    assert oa_rows(dag_env) == 0
    assert graph.stats.snapshot()["requests"] == 0  # the suite was neither read nor written
