"""The distributed topology of docker-compose.yaml, proven on this machine: CeleryExecutor with
PostgreSQL as Airflow's metadata DB and Redis as broker, every component a separate process
(api-server, scheduler, dag-processor, triggerer, one Celery worker), a two-way integration
against the Graph emulator, OA on PostgreSQL.

- forward: a run of the integration's DAG triggered over the REST API runs on the Celery
  worker and fills the OA from the emulator's mailboxes;
- reverse: a schedule committed in the OA is seen by the outbox watcher in the triggerer, which
  starts `calsync_reverse__…` (an asset-triggered run), whose drain — on the Celery worker —
  writes the event into the creator's mailbox;
- everything stops cleanly: no process carrying the stack's AIRFLOW_HOME is left, none needed
  SIGKILL; the metadata database and the Redis database number are dropped/emptied.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.airflow.reverse_dag import SWEEP_CRON
from calsync.oa import schema as t
from calsync.oa.db import engine_from_url
from calsync.oa.migrate import upgrade
from calsync.oa.seed import seed_demo
from tests.airflow_env import ROOT
from tests.integration.celery_stack import (
    ADMIN,
    Api,
    CeleryStack,
    claim_redis_db,
    release_redis_db,
)
from tests.integration.conftest import GRAPH_CONN, INTEGRATION_YAML
from tests.integration.reverse_helpers import oa_create

pytestmark = [pytest.mark.integration, pytest.mark.stack]

FORWARD_DAG = "calsync_it_o365"
REVERSE_DAG = "calsync_reverse__calsync_oa_test"
ZHANG = "zhangwei@contoso.com"
SEEDED_MEETING = "项目周会 Weekly project sync"  # scripts/demo_data.graph_seed, today 10:00
START_S, RUN_S, REVERSE_S = 120, 120, 60  # budgets; the whole test aims at < 3 min


def _clear_of_the_sweep(api: Api) -> None:
    """Wait, if need be, until a change committed now is drained by the run the watcher starts:
    the reverse DAG also runs on a cron sweep (``SWEEP_CRON``, every 10 minutes), which drains
    a change committed just before it or while it runs. Not within a minute of a sweep's time,
    and no run of the reverse DAG queued or running."""
    assert SWEEP_CRON == "*/10 * * * *"
    to_next = 600 - time.time() % 600
    if to_next < 60:
        time.sleep(to_next + 2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        active = api.get(f"dags/{REVERSE_DAG}/dagRuns", state=["queued", "running"], limit=10)
        if not active["dag_runs"]:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{REVERSE_DAG} kept a run going: {active['dag_runs']}")


def _redis_or_skip() -> str:
    import redis

    url = os.environ.get("CALSYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379")
    try:
        redis.Redis.from_url(f"{url}/0", socket_timeout=3).ping()
    except redis.RedisError as exc:
        msg = f"Redis at {url} is unreachable ({exc}); start it with `scripts/services.py ensure`"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the Celery stack test must run: {msg}", pytrace=False)
        pytest.skip(msg)
    return url


@pytest.fixture
def oa(oa_databases: Any, tmp_path: Path) -> Iterator[sa.Engine]:
    """A seeded OA on PostgreSQL (a throw-away database), dropped afterwards."""
    url = oa_databases.create("postgresql", tmp_path)
    engine = engine_from_url(url)
    try:
        upgrade(engine)
        seed_demo(engine)
        yield engine
    finally:
        engine.dispose()
        oa_databases.drop(url)


@pytest.fixture
def stack(
    oa: sa.Engine, oa_databases: Any, graph: Any, tmp_path: Path
) -> Iterator[tuple[CeleryStack, dict[str, float]]]:
    """The stack, migrated and started, healthy; stopped (and its state dropped) however the
    test ends. Yields it with its start-up timings."""
    redis_url = _redis_or_skip()
    include = tmp_path / "include"
    shutil.copytree(ROOT / "include" / "mappings", include / "mappings")
    (include / "integrations").mkdir()
    (include / "integrations" / "it_o365.yaml").write_text(INTEGRATION_YAML + "direction: both\n")
    oa_url = oa.url.render_as_string(hide_password=False)
    with contextlib.ExitStack() as cleanup:  # undone in reverse order, however the test ends
        metadata_url = oa_databases.create("postgresql", tmp_path)
        cleanup.callback(oa_databases.drop, metadata_url)
        token = secrets.token_hex(8)
        db_number = claim_redis_db(redis_url, token)
        cleanup.callback(release_redis_db, redis_url, db_number, token)
        stack = CeleryStack(
            home=tmp_path / "airflow",
            metadata_url=sa.engine.make_url(metadata_url)
            .set(drivername="postgresql+psycopg2")
            .render_as_string(hide_password=False),
            broker_url=f"{redis_url}/{db_number}",
            extra_env={
                "CALSYNC_INCLUDE_DIR": str(include),
                "AIRFLOW_CONN_CALSYNC_OA_TEST": json.dumps(
                    {"conn_type": "generic", "extra": {"sqlalchemy_url": oa_url}}
                ),
                f"AIRFLOW_CONN_{GRAPH_CONN.upper()}": graph.airflow_conn_json(),
                # the graph fixture's bundle: system CAs + the emulator's private CA
                "SSL_CERT_FILE": os.environ["SSL_CERT_FILE"],
                "REQUESTS_CA_BUNDLE": os.environ["REQUESTS_CA_BUNDLE"],
            },
        )
        cleanup.callback(stack.stop)
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        stack.migrate()
        timings["migrate_s"] = time.monotonic() - t0
        t1 = time.monotonic()
        stack.start()
        stack.wait_healthy(t1 + START_S)
        timings["healthy_s"] = time.monotonic() - t1
        yield stack, timings


def _oa_rows(engine: sa.Engine, query: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(query))


def test_forward_and_reverse_sync_on_celery_postgres_redis(stack, oa, graph) -> None:
    stack_, timings = stack
    api = Api(stack_.base_url)
    api.login(*ADMIN)
    t0 = time.monotonic()
    api.wait_for_dags([FORWARD_DAG, REVERSE_DAG], t0 + START_S)
    for dag_id in (FORWARD_DAG, REVERSE_DAG):
        api.unpause(dag_id)
    timings["dags_parsed_s"] = time.monotonic() - t0

    # --- forward: REST trigger → Celery worker → OA ----------------------------------------
    t1 = time.monotonic()
    run_id = api.trigger(FORWARD_DAG)
    run = api.wait_run(FORWARD_DAG, run_id, t1 + RUN_S)
    timings["forward_run_s"] = time.monotonic() - t1
    tis = api.task_instances(FORWARD_DAG, run_id)
    assert run["state"] == "success", (
        [(ti["task_id"], ti["map_index"], ti["state"]) for ti in tis],
        stack_.diagnostics(["scheduler", "worker"]),
    )
    assert {ti["task_id"] for ti in tis} >= {"resolve_window", "resolve_users", "sync_users"}
    assert all(ti["state"] == "success" for ti in tis)
    assert all(ti["queue"] == "default" and ti["hostname"] for ti in tis)

    logged = dict(
        _oa_rows(
            oa,
            sa.select(t.sync_log.c.action, sa.func.count())
            .where(t.sync_log.c.run_id == run_id, t.sync_log.c.direction == "forward")
            .group_by(t.sync_log.c.action),
        )
    )
    assert logged.get("created", 0) > 0 and "failed" not in logged, logged
    schedules = _oa_rows(
        oa,
        sa.select(t.schedules.c.id, t.schedules.c.title).where(
            t.schedules.c.source_integration == "it_o365"
        ),
    )
    assert SEEDED_MEETING in {s.title for s in schedules}
    linked = {
        r.schedule_id
        for r in _oa_rows(
            oa, sa.select(t.links.c.schedule_id).where(t.links.c.integration_id == "it_o365")
        )
    }
    assert {s.id for s in schedules} <= linked

    # --- reverse: OA commit → watcher (triggerer) → drain on the worker → mailbox -----------
    title = f"celery stack {secrets.token_hex(3)}"
    _clear_of_the_sweep(api)
    t2 = time.monotonic()
    schedule_id = oa_create(oa, "zhangwei", title, attendees=("lina",))
    deadline = t2 + REVERSE_S
    while time.monotonic() < deadline and not [
        e for e in graph.store.events(ZHANG) if e["subject"] == title
    ]:
        time.sleep(0.1)
    timings["reverse_commit_to_suite_s"] = time.monotonic() - t2
    assert [e for e in graph.store.events(ZHANG) if e["subject"] == title], (
        "the OA change never reached the mailbox\n"
        + stack_.diagnostics(["triggerer", "scheduler", "worker"])
    )
    # the suite write comes first, its sync-log row a moment later (same delivery, next step)
    query = sa.select(t.sync_log.c.run_id, t.sync_log.c.dag_id, t.sync_log.c.action).where(
        t.sync_log.c.direction == "reverse", t.sync_log.c.schedule_id == schedule_id
    )
    rows = _oa_rows(oa, query)
    while not rows and time.monotonic() < deadline + 10:
        time.sleep(0.1)
        rows = _oa_rows(oa, query)
    [row] = rows
    assert (row.dag_id, row.action) == (REVERSE_DAG, "created")
    reverse_run = api.wait_run(REVERSE_DAG, row.run_id, time.monotonic() + 30)
    assert reverse_run["state"] == "success"
    assert reverse_run["run_type"] == "asset_triggered"  # started by the triggerer's watcher
    [drain] = api.task_instances(REVERSE_DAG, row.run_id)
    assert drain["state"] == "success" and drain["queue"] == "default"

    # --- every task ran through Celery: its results are in the PostgreSQL result backend ----
    meta = sa.create_engine(stack_.metadata_url, poolclass=sa.pool.NullPool)
    try:
        with meta.connect() as conn:
            results = dict(
                conn.execute(
                    sa.text("SELECT status, count(*) FROM celery_taskmeta GROUP BY 1")
                ).all()
            )
            failures = [
                str(tb)[-1500:]
                for (tb,) in conn.execute(
                    sa.text("SELECT traceback FROM celery_taskmeta WHERE status = 'FAILURE'")
                )
            ]
    finally:
        meta.dispose()
    assert results.get("SUCCESS", 0) >= len(tis) + 1 and "FAILURE" not in results, (
        results,
        failures,
        stack_.tail("worker", 4000),
    )
    assert stack_.worker_name in stack_.tail("worker", 1_000_000)

    # --- clean stop ------------------------------------------------------------------------
    t3 = time.monotonic()
    killed = stack_.stop()
    timings["stop_s"] = time.monotonic() - t3
    print(
        f"celery stack: {len(tis)} forward task instances;",
        {k: round(v, 1) for k, v in timings.items()},
    )
    assert killed == [], killed
    assert stack_.leftovers() == []
    assert all(p.poll() is not None for p in stack_.procs.values())
