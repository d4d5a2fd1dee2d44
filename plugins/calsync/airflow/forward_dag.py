"""Build one forward-sync DAG per integration configuration (and a visible error DAG per
broken configuration). Only this module touches Airflow's DAG API; the tasks call the
library. Building a DAG does no network and no database I/O.

Run shape: ``resolve_window`` → ``resolve_users`` → ``sync_users`` (mapped over user batches,
one task per user up to ``execution.per_user_task_limit``; ``map_index_template`` names who)
→ ``summary`` (counts per user and status; fails the run when a user failed).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, CronTriggerTimetable, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from calsync.config import MANUAL_RANGE_DAYS, IntegrationConfig, LoadedConfig

START_DATE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def _describe(config: IntegrationConfig, source: Path) -> str:
    schedule = config.schedule or "manual only"
    return (
        f"### {config.name}\n\n"
        f"Forward sync (suite → OA) of a **{config.type}** integration, from `{source.name}`.\n\n"
        f"- enabled: **{config.enabled}**; direction: {config.direction}; "
        f"window: today ± {config.window_days} days in {config.timezone}; schedule: {schedule} "
        f"({config.timezone})\n"
        f"- suite connection: `{config.connection_id}`; OA connection: "
        f"`{config.oa_connection_id}`\n"
        f"- manual sync: trigger with **start**/**end** (both within today ± {MANUAL_RANGE_DAYS} "
        "days, start ≤ end) and optionally **users** (login names or mailboxes).\n"
    )


def _params() -> dict[str, Param]:
    rule = (
        "Leave empty for today ± the configured window; "
        f"else within today ± {MANUAL_RANGE_DAYS} days."
    )
    return {
        "start": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Start date / 开始日期",
            description=f"First day of a manual range (in the integration's time zone). {rule}",
        ),
        "end": Param(
            None,
            type=["null", "string"],
            format="date",
            title="End date / 结束日期",
            description=f"Last day of a manual range, inclusive. {rule}",
        ),
        "users": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Users / 人员",
            description="Only these users (login names or mailboxes); empty = everyone in scope.",
        ),
        "confirm_deletes": Param(
            False,
            type="boolean",
            title="Confirm held deletions / 确认被拦截的删除",
            description=(
                "Apply deletions the mass-deletion guard held (see the sync log's 'held' "
                "records) — only after checking the users' calendars."
            ),
        ),
    }


def build_forward_dag(loaded: LoadedConfig, include_dir: Path) -> DAG:
    config = loaded.config
    assert config is not None
    timetable = (
        CronTriggerTimetable(config.schedule, timezone=config.timezone)
        if config.schedule and config.enabled
        else None
    )
    tags = ["calsync", "forward", config.type, *config.tags]
    if not config.enabled:
        tags.append("disabled")
    integration_file = str(loaded.path)
    mappings_dir = str(include_dir / "mappings")

    with DAG(
        dag_id=config.dag_id,
        description=f"calsync forward sync: {config.name}",
        doc_md=_describe(config, loaded.path),
        schedule=timetable,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=not config.enabled,
        tags=tags,
        params=_params(),
        default_args={
            "retries": config.execution.retries,
            "retry_delay": dt.timedelta(seconds=config.execution.retry_delay_s),
            "retry_exponential_backoff": True,
        },
        render_template_as_native_obj=True,
    ) as dag:

        @task
        def resolve_window() -> dict[str, str]:
            from calsync.airflow import runtime

            return runtime.resolve_window(integration_file, get_current_context(), mappings_dir)

        @task
        def resolve_users(window: dict[str, str]) -> list[list[dict[str, Any]]]:
            from calsync.airflow import runtime

            return runtime.resolve_users(integration_file, window, get_current_context())

        @task(map_index_template="{{ calsync_who }}")
        def sync_users(batch: list[dict[str, Any]], window: dict[str, str]) -> list[dict[str, Any]]:
            from calsync.airflow import runtime

            context = get_current_context()
            context["calsync_who"] = runtime.describe_batch(batch)  # type: ignore[typeddict-unknown-key]
            return runtime.sync_batch(integration_file, mappings_dir, batch, window, context)

        @task(trigger_rule="all_done", retries=0)
        def summary(window: dict[str, str]) -> dict[str, Any]:
            from calsync.airflow import runtime

            return runtime.summarize(integration_file, window, get_current_context())

        window = resolve_window()
        batches = resolve_users(window)
        synced = sync_users.partial(window=window).expand(batch=batches)
        synced >> summary(window)
    return dag


def build_error_dag(loaded: LoadedConfig) -> DAG:
    """A placeholder for a broken configuration: its description, docs and only task carry
    the error that names the file and field, so the problem shows in the Airflow UI."""
    error = loaded.error
    assert error is not None
    message = str(error)
    with DAG(
        dag_id=f"calsync_{_safe_id(loaded.stem)}__invalid_config",
        description=f"INVALID CONFIG: {message}"[:500],
        doc_md=f"### Invalid integration configuration\n\n```\n{message}\n```\n\n"
        "Fix the file; this placeholder disappears once it validates.",
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        is_paused_upon_creation=True,
        tags=["calsync", "config-error"],
    ) as dag:

        @task(retries=0)
        def config_error() -> None:
            raise AirflowFailException(message)

        config_error()
    return dag


def _safe_id(stem: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_]", "_", stem)[:80] or "unnamed"
