"""The event trigger behind reverse sync: watches the OA's change outbox from the triggerer.

Used as an ``AssetWatcher`` (event-driven scheduling, DESIGN: reverse trigger): it holds no
worker slot, polls two cheap indexed queries every ``poll_interval`` seconds, and fires when

- the unrouted backlog changed (count, newest id) and is not empty — comparing the pair, not
  just the newest id, also catches a row committed late with a lower id; or
- a pending delivery became due (its back-off ended, or a killed drain's lease ran out).

Firing twice for the same rows is harmless: drains claim rows, so a second run finds nothing.
The module lives in ``plugins/`` so the triggerer can import it (FACTS.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger("calsync.outbox_trigger")


class OutboxTrigger(BaseEventTrigger):
    def __init__(self, oa_connection_id: str = "calsync_oa", poll_interval: float = 0.5) -> None:
        super().__init__()
        self.oa_connection_id = oa_connection_id
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"oa_connection_id": self.oa_connection_id, "poll_interval": self.poll_interval},
        )

    async def _engine(self) -> Any:
        from airflow.sdk.bases.hook import BaseHook

        from calsync.oa.db import engine_from_url, url_from_connection

        conn = await BaseHook.aget_connection(self.oa_connection_id)
        return engine_from_url(url_from_connection(conn), pool_size=1, max_overflow=0)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from calsync.oa import outbox
        from calsync.oa.db import SQLITE_BEGIN_OPTION

        engine = await self._engine()
        fired_backlog = (0, 0)
        fired_wake = dt.datetime.min

        def poll() -> tuple[tuple[int, int], dt.datetime | None]:
            with engine.connect() as conn:
                conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
                return outbox.backlog(conn), outbox.next_wake(conn, fired_wake)

        failures = 0
        try:
            while True:
                try:
                    backlog, wake = await asyncio.to_thread(poll)
                    failures = 0
                except Exception as exc:  # the OA is down: keep watching, quietly
                    failures += 1
                    if failures in (1, 10) or failures % 600 == 0:
                        log.warning("outbox poll failed (%d in a row): %s", failures, exc)
                    await asyncio.sleep(min(30.0, self.poll_interval * 2 ** min(failures, 6)))
                    continue
                if backlog[0] and backlog != fired_backlog:
                    fired_backlog = backlog
                    yield TriggerEvent({"reason": "changes", "rows": backlog[0]})
                elif wake is not None:
                    fired_wake = wake
                    yield TriggerEvent({"reason": "retry", "due": wake.isoformat()})
                elif not backlog[0]:
                    fired_backlog = (0, 0)
                await asyncio.sleep(self.poll_interval)
        finally:
            engine.dispose()
