"""The alternative to the shipped reverse DAG, kept for bench/reverse_latency.py --mode sensor:
a ``@continuous`` DAG whose first task is a deferrable sensor on the same outbox trigger,
followed by the same drain. Not shipped (the asset watcher measured faster; see README)."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from airflow.sdk import DAG, BaseSensorOperator, get_current_context, task

from calsync.airflow.outbox_trigger import OutboxTrigger

OA_CONNECTION = "calsync_oa"


class OutboxSensor(BaseSensorOperator):
    """Defers at once to the outbox trigger; done when it fires (no worker slot held)."""

    def __init__(self, oa_connection_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.oa_connection_id = oa_connection_id

    def execute(self, context: Any) -> None:
        self.defer(
            trigger=OutboxTrigger(self.oa_connection_id, 0.5), method_name="execute_complete"
        )

    def execute_complete(self, context: Any, event: Any = None) -> Any:
        return event


with DAG(
    dag_id="calsync_reverse_sensor",
    schedule="@continuous",
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    tags=["calsync", "bench"],
) as dag:

    @task(task_id="drain")
    def drain() -> dict[str, Any]:
        from calsync.airflow import reverse_runtime

        include = os.environ["CALSYNC_INCLUDE_DIR"]
        return reverse_runtime.drain_outbox(include, OA_CONNECTION, get_current_context())

    OutboxSensor(task_id="wait_for_changes", oa_connection_id=OA_CONNECTION) >> drain()
