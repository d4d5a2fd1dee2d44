"""The reverse-sync DAG (OA → suites): one per OA database (``oa_connection_id``) that some
reverse or two-way integration uses. Building it does no I/O.

Scheduling: an asset whose watcher (:class:`~calsync.airflow.outbox_trigger.OutboxTrigger`)
runs in the triggerer and fires on new outbox rows or due retries — event-driven, no worker
slot held while idle (DESIGN: reverse trigger; measured against a deferrable sensor in
``bench/reverse_latency.py``). A sweep every ``SWEEP_CRON`` covers a stopped triggerer.
``max_active_runs=1``: events arriving during a run start the next one.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.sdk import (
    DAG,
    Asset,
    AssetOrTimeSchedule,
    AssetWatcher,
    CronTriggerTimetable,
    Param,
    get_current_context,
    task,
)

from calsync.airflow.outbox_trigger import OutboxTrigger
from calsync.config import IntegrationConfig

START_DATE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
SWEEP_CRON = "*/10 * * * *"
DEFAULT_OA_CONNECTION = "calsync_oa"


def reverse_dag_id(oa_connection_id: str) -> str:
    if oa_connection_id == DEFAULT_OA_CONNECTION:
        return "calsync_reverse"
    return f"calsync_reverse__{oa_connection_id}"


def outbox_asset(oa_connection_id: str, poll_interval: float = 0.5) -> Asset:
    return Asset(
        name=f"calsync_outbox__{oa_connection_id}",
        watchers=[
            AssetWatcher(
                name=f"calsync_outbox_watcher__{oa_connection_id}",
                trigger=OutboxTrigger(oa_connection_id, poll_interval),
            )
        ],
    )


def build_reverse_dag(
    oa_connection_id: str, configs: list[IntegrationConfig], include_dir: Path
) -> DAG:
    names = ", ".join(f"`{c.id}` ({c.direction})" for c in configs)
    enabled = any(c.enabled for c in configs)
    include = str(include_dir)
    schedule = AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(SWEEP_CRON, timezone="UTC"),
        assets=outbox_asset(oa_connection_id),
    )
    with DAG(
        dag_id=reverse_dag_id(oa_connection_id),
        description=f"calsync reverse sync (OA → suites) from {oa_connection_id}",
        doc_md=(
            "### Reverse sync (OA → suites)\n\n"
            f"Drains the change outbox of the OA database `{oa_connection_id}` into the suites "
            f"of: {names}.\n\nStarted by the outbox watcher within about a second of a change "
            f"(and every 10 minutes as a sweep). Failed deliveries are retried with back-off "
            "and go dead after `execution.max_attempts`; see the sync log. An OA bulk delete is "
            "held by the mass-deletion guard; a manual run with `confirm_deletes` releases it."
        ),
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=not enabled,
        params={
            "confirm_deletes": Param(
                False,
                type="boolean",
                title="Confirm held deletions / 确认被拦截的删除",
                description=(
                    "Release the suite deletions the mass-deletion guard held after an OA bulk "
                    "delete (see the sync log's 'held' records) — only after checking that "
                    "the schedules were meant to go."
                ),
            )
        },
        tags=["calsync", "reverse"],
        default_args={
            "retries": 3,
            "retry_delay": dt.timedelta(seconds=5),
            "retry_exponential_backoff": True,
        },
    ) as dag:

        @task(task_id="drain")
        def drain() -> dict[str, Any]:
            from calsync.airflow import reverse_runtime

            return reverse_runtime.drain_outbox(include, oa_connection_id, get_current_context())

        drain()
    return dag
