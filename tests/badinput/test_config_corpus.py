"""Bad configuration (issue 7): the corpus in ``data/configs/`` (see ``corpus.py``), loaded the
way the DAG file loads it. A bad integration file becomes one visible error DAG whose message
names the file and the field — and no sync DAG, so nothing can run from it; the good
integration beside it is unaffected. A bad mapping library (formula syntax errors, sandbox
escapes, resource exhaustion) is refused when loaded, or, for what only shows on a value,
fails the records it is applied to — each in bounded time, with nothing written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from calsync.oa.seed import seed_demo
from tests.badinput.corpus import SHIPPED_MAPPINGS, Case, cases, patched_library
from tests.deadline import deadline
from tests.integration.conftest import INTEGRATION_YAML, ForwardRunner

INTEGRATION_CASES = cases("integrations")
MAPPING_CASES = cases("mappings")
LOAD_TIME = [c for c in MAPPING_CASES if c.at == "load"]
SYNC_TIME = [c for c in MAPPING_CASES if c.at == "sync"]
WRITTEN_TABLES = ("schedules", "participants", "links", "meetings", "sync_state", "sync_log")


def ids(items: list[Case]) -> list[str]:
    return [c.stem for c in items]


@pytest.fixture
def bounded() -> Iterator[None]:
    """Fail (instead of hanging) past 20 s; the case itself must finish within 5 s."""
    import calsync.airflow.dag_loader
    import calsync.airflow.forward_dag  # noqa: F401  (Airflow's first import is not the case's)

    with deadline(20, 5, "the bad input was still being processed after 20 s"):
        yield


def include_with(tmp_path: Path, mappings: Path | None = None) -> Path:
    include = tmp_path / "include"
    (include / "integrations").mkdir(parents=True)
    if mappings is None:
        import shutil

        shutil.copytree(SHIPPED_MAPPINGS, include / "mappings")
    else:
        mappings.rename(include / "mappings")
    (include / "integrations" / "it_o365.yaml").write_text(INTEGRATION_YAML)
    return include


def build(include: Path) -> dict[str, Any]:
    from calsync.airflow.dag_loader import build_all

    return {dag.dag_id: dag for dag in build_all(include)}


def safe_id(stem: str) -> str:
    from calsync.airflow.forward_dag import _safe_id

    return _safe_id(stem)


def test_the_corpus_covers_what_issue_7_lists():
    stems = {c.stem for c in INTEGRATION_CASES + MAPPING_CASES}
    for wanted in (
        "invalid_yaml", "unknown_type", "window_zero", "window_sixteen", "missing_connection",
        "unknown_target_field", "formula_syntax_error", "escape_mro", "escape_globals",
        "escape_cycler_globals", "escape_lipsum", "escape_template_reference",
        "escape_os_attribute", "escape_format_string", "escape_attr_filter", "loop_range",
        "cron_typo", "unknown_timezone",
    ):  # fmt: skip
        assert wanted in stems
    assert len([s for s in stems if s.startswith("escape_")]) >= 10


@pytest.mark.parametrize("case", INTEGRATION_CASES, ids=ids(INTEGRATION_CASES))
def test_bad_integration_file_becomes_one_error_dag(case: Case, tmp_path: Path, bounded: None):
    include = include_with(tmp_path)
    shown = include / "integrations" / case.path.name
    shown.write_bytes(case.path.read_bytes())
    dags = build(include)

    error_dag = f"calsync_{safe_id(case.stem)}__invalid_config"
    assert error_dag in dags, sorted(dags)
    message = dags[error_dag].doc_md
    assert f"{case.expected(str(shown))}" in message, message
    assert case.error in message, message
    if case.secret:
        assert case.secret not in message and case.secret not in dags[error_dag].description
    # nothing can sync from the bad file; the good one beside it still builds
    assert {d for d in dags if "it_o365" not in d and "housekeeping" not in d} == {error_dag}
    assert "calsync_it_o365" in dags


@pytest.mark.parametrize("case", LOAD_TIME, ids=ids(LOAD_TIME))
def test_bad_mapping_library_is_refused_when_loaded(case: Case, tmp_path: Path, bounded: None):
    library = patched_library(case, tmp_path / "patched")
    include = include_with(tmp_path, library)
    dags = build(include)

    assert "calsync_mappings__invalid_config" in dags, sorted(dags)
    message = dags["calsync_mappings__invalid_config"].doc_md
    shown = str(include / "mappings" / (case.file or ""))
    assert case.expected(shown) + case.error in message, message


@pytest.fixture(scope="module")
def sync_time_oa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """One seeded SQLite OA for the sync-time cases (each must leave it untouched)."""
    from calsync.oa.db import engine_from_url
    from calsync.oa.migrate import upgrade

    engine = engine_from_url(f"sqlite:///{tmp_path_factory.mktemp('oa') / 'oa.db'}")
    upgrade(engine)
    seed_demo(engine)
    yield engine
    engine.dispose()


def row_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            name: conn.execute(
                sa.select(sa.func.count()).select_from(getattr(t, name))
            ).scalar_one()
            for name in WRITTEN_TABLES
        }


@pytest.mark.parametrize("case", SYNC_TIME, ids=ids(SYNC_TIME))
def test_formula_refused_on_a_value_fails_each_record_and_writes_nothing(
    case: Case, tmp_path: Path, sync_time_oa: sa.Engine, config: Any, graph: Any, bounded: None
):
    """The formula maps every event's title: each event fails alone with the reason, no
    schedule is written, and the suite is only read."""
    from calsync.mapping import MappingLibrary

    library = MappingLibrary.load(patched_library(case, tmp_path / "patched"))
    before = row_counts(sync_time_oa)
    with sync_time_oa.connect() as conn:
        last_log = conn.execute(sa.select(sa.func.max(t.sync_log.c.id))).scalar() or 0
    runner = ForwardRunner(sync_time_oa, config)
    runner.library = library
    mailbox = "zhangwei@contoso.com"
    result = runner(only=[mailbox])
    assert result["results"][mailbox].error is None  # the run goes on; the records fail
    with sync_time_oa.connect() as conn:
        failed = conn.execute(
            sa.select(t.sync_log.c.message).where(
                t.sync_log.c.id > last_log, t.sync_log.c.action == "failed"
            )
        ).scalars()
        messages = list(failed)
    assert messages and result["totals"].get("failed") == len(messages)
    assert all(case.field in m and case.error in m for m in messages), messages[:2]
    after = row_counts(sync_time_oa)
    assert after == before | {"sync_log": after["sync_log"]}  # only the failure records
    assert after["sync_log"] - before["sync_log"] == len(messages)
    assert set(graph.stats.snapshot()["by_kind"]) <= {"token", "calendarView"}


# --- through Airflow: the DAG file and real runs ---------------------------------------------


def runs_of(dag_ids: set[str]) -> dict[str, list[str]]:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            sa.select(DagRun.dag_id, DagRun.state).where(DagRun.dag_id.in_(dag_ids))
        ).all()
    out: dict[str, list[str]] = {}
    for dag_id, state in rows:
        out.setdefault(dag_id, []).append(str(state))
    return out


def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    from tests.airflow_env import ROOT

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.mark.integration
@pytest.mark.parametrize("blank_oa_url", ["sqlite"], indirect=True)
def test_broken_integration_files_run_nothing_but_their_error_dag(
    blank_oa_url: str, dag_env: sa.Engine, include_dir: Path, graph: Any, capfd: Any
):
    """Every bad integration file at once beside a good one: the DAG file imports cleanly,
    each bad file is one error DAG and nothing else; a run of an error DAG fails with the
    message (never a secret), and nothing reaches the OA or the suite."""
    integrations = include_dir / "integrations"
    for case in INTEGRATION_CASES:
        (integrations / case.path.name).write_bytes(case.path.read_bytes())
    bag = dagbag()
    assert bag.import_errors == {}
    error_dags = {f"calsync_{safe_id(c.stem)}__invalid_config": c for c in INTEGRATION_CASES}
    assert set(error_dags) <= set(bag.dag_ids)
    others = {d for d in bag.dag_ids if d not in error_dags}
    assert {d for d in others if not d.startswith("calsync_housekeeping__")} == {"calsync_it_o365"}
    sync_ids = {f"calsync_{safe_id(c.stem)}" for c in INTEGRATION_CASES}
    before = row_counts(dag_env)

    for case in (c for c in INTEGRATION_CASES if c.stem in {"window_sixteen", "secret_in_file"}):
        dag_id = f"calsync_{safe_id(case.stem)}__invalid_config"
        run = bag.dags[dag_id].test()
        assert str(run.state) == "failed"
        output = "".join(capfd.readouterr())
        assert case.error in output and f"{case.stem}.yaml: {case.field}: " in output
        if case.secret:
            assert case.secret not in output
    assert runs_of(sync_ids) == {}  # no sync run from any bad file
    assert row_counts(dag_env) == before == dict.fromkeys(WRITTEN_TABLES, 0)
    assert graph.stats.snapshot()["requests"] == 0


@pytest.mark.integration
@pytest.mark.parametrize("blank_oa_url", ["sqlite"], indirect=True)
def test_a_broken_mapping_library_fails_the_run_at_its_first_task(
    blank_oa_url: str, dag_env: sa.Engine, include_dir: Path, graph: Any, capfd: Any, tmp_path
):
    """A sandbox escape in the formula library: the error DAG names it, and a run of an
    integration that would use the library fails at its first task, before any OA write
    (not even the skipped-user records) and before any suite request."""
    import shutil

    [case] = [c for c in LOAD_TIME if c.stem == "escape_mro"]
    shutil.rmtree(include_dir / "mappings")
    patched_library(case, include_dir / "mappings")
    bag = dagbag()
    assert "calsync_mappings__invalid_config" in bag.dag_ids
    run = bag.dags["calsync_it_o365"].test()
    assert str(run.state) == "failed"
    from tests.integration.test_forward_dag import ti_states

    states = ti_states(run)
    assert states[("resolve_window", -1)] == "failed"
    assert states[("resolve_users", -1)] == "upstream_failed"
    output = "".join(capfd.readouterr())
    assert f"formulas.yaml: {case.field}: {case.error}" in output
    assert row_counts(dag_env) == dict.fromkeys(WRITTEN_TABLES, 0)
    assert graph.stats.snapshot()["requests"] == 0
