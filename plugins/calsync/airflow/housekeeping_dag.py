"""The housekeeping DAG (F20): one per OA database (``oa_connection_id``) that some valid
integration uses, ``calsync_housekeeping`` for the default ``calsync_oa`` and
``calsync_housekeeping__<conn>`` for another. Building it reads ``include/housekeeping.yaml``
(optional) and nothing else; the tasks read the settings and the integrations again at run
time, so an edit applies to the next run.

Daily at 03:30 in the integrations' time zone by default (``schedule``, ``timezone`` in the
settings file). Three tasks, one after another so they never compete for the OA's write
lock: ``purge_sync_log`` → ``purge_reverse_tables`` → ``purge_sync_states``; each deletes in
bounded batches and logs what it removed per table and integration (see
:mod:`calsync.housekeeping`). A retried task continues where the failed try stopped.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, CronTriggerTimetable, task
from airflow.sdk.exceptions import AirflowFailException

from calsync.config import IntegrationConfig, LoadedConfig
from calsync.errors import ConfigError
from calsync.housekeeping import (
    HousekeepingSettings,
    housekeeping_timezone,
    load_settings,
    settings_path,
)

START_DATE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
DEFAULT_OA_CONNECTION = "calsync_oa"
TASKS = {
    "purge_sync_log": "sync_log",
    "purge_reverse_tables": "reverse",
    "purge_sync_states": "sync_state",
}


def housekeeping_dag_id(oa_connection_id: str) -> str:
    if oa_connection_id == DEFAULT_OA_CONNECTION:
        return "calsync_housekeeping"
    return f"calsync_housekeeping__{oa_connection_id}"


def build_housekeeping_dags(include_dir: Path, configs: list[IntegrationConfig]) -> list[DAG]:
    """One DAG per OA connection among ``configs`` (the valid integrations), or a visible
    error DAG when ``include/housekeeping.yaml`` does not validate."""
    from calsync.airflow.forward_dag import build_error_dag

    if not configs:
        return []
    try:
        settings = load_settings(include_dir)
    except ConfigError as exc:
        return [build_error_dag(LoadedConfig(settings_path(include_dir), error=exc))]
    by_connection: dict[str, list[IntegrationConfig]] = {}
    for config in configs:
        by_connection.setdefault(config.oa_connection_id, []).append(config)
    return [
        build_housekeeping_dag(oa_connection_id, group, settings, include_dir)
        for oa_connection_id, group in sorted(by_connection.items())
    ]


def _describe(
    oa_connection_id: str, configs: list[IntegrationConfig], settings: HousekeepingSettings
) -> str:
    per = [
        f"`{c.id}`: {c.log_retention_days} days" if c.log_retention_days else f"`{c.id}`: default"
        for c in configs
    ]
    default = settings.sync_log.retention_days
    log_rule = (
        f"older than each integration's `log_retention_days` ({'; '.join(per)}), default "
        f"{f'{default} days' if default else 'keep'}"
        if settings.sync_log.enabled
        else "**off** (`sync_log.enabled: false`)"
    )
    return (
        "### Housekeeping (F20)\n\n"
        f"Purges calsync's tables in the OA database `{oa_connection_id}`, "
        f"{settings.batch_size} rows per transaction:\n\n"
        f"- sync-log records {log_rule};\n"
        f"- done deliveries, delivered outbox rows and spent link tombstones older than "
        f"{settings.reverse.retention_days} days;\n"
        f"- change-feed states and kept calendar ids not updated for "
        f"{settings.sync_state.retention_days} days"
        + (
            ", or of integrations, mailboxes and calendars no longer configured"
            if settings.sync_state.remove_unconfigured
            else ""
        )
        + ".\n\nSettings: `include/housekeeping.yaml` (see the README). Each task logs what it "
        "removed per table and integration."
    )


def build_housekeeping_dag(
    oa_connection_id: str,
    configs: list[IntegrationConfig],
    settings: HousekeepingSettings,
    include_dir: Path,
) -> DAG:
    zone = housekeeping_timezone(settings, configs)
    timetable = CronTriggerTimetable(settings.schedule, timezone=zone) if settings.enabled else None
    include = str(include_dir)
    tags = ["calsync", "housekeeping"] + ([] if settings.enabled else ["disabled"])
    with DAG(
        dag_id=housekeeping_dag_id(oa_connection_id),
        description=f"calsync housekeeping of the OA database {oa_connection_id}",
        doc_md=_describe(oa_connection_id, configs, settings),
        schedule=timetable,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=not settings.enabled,
        tags=tags,
        default_args={
            "retries": 2,
            "retry_delay": dt.timedelta(minutes=5),
            "retry_exponential_backoff": True,
        },
    ) as dag:

        @task
        def purge(part: str) -> list[dict[str, Any]]:
            return run_task(include, oa_connection_id, part)

        previous = None
        for task_id, part in TASKS.items():
            current = purge.override(task_id=task_id)(part)
            if previous is not None:
                previous >> current
            previous = current
    return dag


def run_task(include_dir: str, oa_connection_id: str, part: str) -> list[dict[str, Any]]:
    """The body of one housekeeping task."""
    from calsync.housekeeping import Inventory, run_part
    from calsync.oa.db import engine_from_airflow_connection
    from calsync.oa.migrate import current, head

    root = Path(include_dir)
    try:
        settings = load_settings(root)
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from None
    if not settings.enabled:
        raise AirflowFailException(
            f"housekeeping is disabled (enabled: false in {settings_path(root)})"
        )
    inventory = Inventory.load(root)
    engine = engine_from_airflow_connection(oa_connection_id)
    have, want = current(engine), head()
    if have != want:
        raise AirflowFailException(
            f"the OA database of connection {oa_connection_id!r} is at schema revision "
            f"{have or 'none'}, calsync needs {want}: run `python -m calsync.oa.migrate`"
        )
    reports = run_part(part, engine, settings, inventory, oa_connection_id)
    return [r.as_dict() for r in reports]
