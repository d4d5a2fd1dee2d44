"""Helpers for reverse-sync tests: OA writes as the OA application makes them (no calsync
write origin), and a runner that drains the outbox as the reverse DAG's task does."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import sqlalchemy as sa

from calsync.config import IntegrationConfig
from calsync.oa import schema as t
from tests.airflow_env import ROOT

UTC = dt.UTC


def user_id(engine: sa.Engine, login: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(t.users.c.id).where(t.users.c.login_name == login)
        ).scalar_one()


def room_id(engine: sa.Engine, name: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(t.rooms.c.id).where(t.rooms.c.name == name)).scalar_one()


def oa_create(
    engine: sa.Engine,
    creator: str,
    title: str,
    start: dt.datetime | None = None,
    hours: float = 1.0,
    *,
    attendees: tuple[str, ...] = (),
    externals: tuple[tuple[str, str], ...] = (),
    room: str | None = None,
    location: str = "",
    details: str = "",
    all_day: dt.date | None = None,
) -> int:
    """A schedule made in the OA by ``creator`` (login), attendees by login."""
    now = dt.datetime.now(UTC).replace(tzinfo=None)
    start = start or (dt.datetime.now(UTC) + dt.timedelta(days=1)).replace(
        minute=0, second=0, microsecond=0
    )
    attendee_ids = [user_id(engine, login) for login in attendees]
    values: dict[str, Any] = {
        "title": title,
        "creator_id": user_id(engine, creator),
        "timezone": "Asia/Shanghai",
        "location": location,
        "details": details,
        "room_id": room_id(engine, room) if room else None,
        "created_at": now,
        "updated_at": now,
    }
    if all_day is not None:
        values |= {"all_day": True, "start_date": all_day, "end_date": all_day + dt.timedelta(1)}
    else:
        values |= {
            "start_utc": start.astimezone(UTC).replace(tzinfo=None),
            "end_utc": (start + dt.timedelta(hours=hours)).astimezone(UTC).replace(tzinfo=None),
        }
    with engine.begin() as conn:
        sid = conn.execute(sa.insert(t.schedules).values(**values)).inserted_primary_key[0]
        rows = [{"schedule_id": sid, "kind": "user", "user_id": uid} for uid in attendee_ids] + [
            {"schedule_id": sid, "kind": "external", "email": email, "name": name}
            for email, name in externals
        ]
        if room:
            rows.append({"schedule_id": sid, "kind": "room", "room_id": values["room_id"]})
        blank = {"user_id": None, "room_id": None, "email": "", "name": ""}
        if rows:
            conn.execute(sa.insert(t.participants), [blank | row for row in rows])
    return int(sid)


def oa_update(engine: sa.Engine, schedule_id: int, **values: Any) -> None:
    now = dt.datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(
            sa.update(t.schedules)
            .where(t.schedules.c.id == schedule_id)
            .values(updated_at=now, **values)
        )


def oa_delete(engine: sa.Engine, schedule_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(t.participants).where(t.participants.c.schedule_id == schedule_id))
        conn.execute(sa.delete(t.schedules).where(t.schedules.c.id == schedule_id))


def deliveries(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(sa.select(t.deliveries).order_by(t.deliveries.c.id)).mappings()
        ]


def reverse_logs(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.select(t.sync_log)
                .where(t.sync_log.c.direction == "reverse")
                .order_by(t.sync_log.c.id)
            ).mappings()
        ]


class ReverseRunner:
    """Drains the outbox for ``configs`` as the reverse DAG's task does."""

    def __init__(self, engine: sa.Engine, configs: list[IntegrationConfig]) -> None:
        from calsync.mapping import MappingLibrary

        self.engine = engine
        self.configs = configs
        self.library = MappingLibrary.load(ROOT / "include" / "mappings")
        self.runs = 0

    def __call__(self, worker: str | None = None, confirm_deletes: bool = False) -> dict[str, Any]:
        from calsync.connectors.base import connector_for
        from calsync.oa import store
        from calsync.sync.reverse import drain

        self.runs += 1
        run = store.RunInfo("*", "test_reverse", f"rev-{self.runs}")
        return asyncio.run(
            drain(
                self.engine,
                self.configs,
                self.library,
                connector_for,
                run,
                worker=worker or f"w{self.runs}",
                confirm_deletes=confirm_deletes,
            )
        )

    def counts(self, summary: dict[str, Any], integration: str | None = None) -> dict[str, int]:
        for report in summary["integrations"]:
            if integration is None or report["integration"] == integration:
                return report["counts"]
        return {}
