"""Bad suite data (issue 7): recorded Graph pages (``data/graph_suite_events.json``) served to
the real Graph connector (paging, de-duplication, normalisation) and the forward engine. Each
bad record is skipped or failed alone with a sync-log record naming it; the mailbox's other
events and the other users go on."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from calsync.oa.seed import seed_demo
from tests.integration.conftest import TODAY

DATA = Path(__file__).parent / "data" / "graph_suite_events.json"
ZHANG = "zhangwei@contoso.com"


def expand(value: Any) -> Any:
    if isinstance(value, dict):
        if "$repeat" in value:
            return value["$repeat"] * value["times"]
        if "$attendees" in value:
            return [
                {
                    "type": "required",
                    "emailAddress": {"address": f"guest{i}@example.org", "name": f"Guest {i}"},
                }
                for i in range(value["$attendees"])
            ]
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v) for v in value]
    if isinstance(value, str) and value.startswith("DAY+"):
        days, clock = value[4:].split("T")
        return (TODAY + dt.timedelta(days=int(days))).isoformat() + "T" + clock
    return value


def graph_item(case: dict[str, Any]) -> dict[str, Any]:
    item = {k: expand(v) for k, v in case.items() if k != "case"}
    for key in ("start", "end"):
        if key in item:
            item[key] = {"dateTime": item[key] + ".0000000", "timeZone": "UTC"}
    item.setdefault("iCalUId", f"uid-{item['id']}")
    item["organizer"] = {"emailAddress": {"address": ZHANG, "name": "张伟"}}
    return item


def pages() -> list[list[dict[str, Any]]]:
    return [[graph_item(c) for c in page] for page in json.loads(DATA.read_text())["pages"]]


def recorded_connector(config: Any) -> Any:
    from calsync.connectors.graph import GraphConnector

    served = pages()

    class Recorded(GraphConnector):
        async def _get(self, url: str, query: Any, body_type: str | None = None) -> Any:
            mailbox = url.split("users/")[1].split("/")[0] if "users/" in url else ""
            if url.startswith("next:"):
                return {"value": served[1]}
            if mailbox == ZHANG:
                return {"value": served[0], "@odata.nextLink": "next:2"}
            start = f"{TODAY}T08:00:00.0000000"
            end = f"{TODAY}T09:00:00.0000000"
            return {
                "value": [
                    {
                        "id": f"own-{mailbox}",
                        "iCalUId": f"uid-own-{mailbox}",
                        "subject": f"Own event of {mailbox}",
                        "start": {"dateTime": start, "timeZone": "UTC"},
                        "end": {"dateTime": end, "timeZone": "UTC"},
                        "organizer": {"emailAddress": {"address": mailbox}},
                    }
                ]
            }

    return Recorded(config)


@pytest.fixture
def synced(sqlite_oa_engine: sa.Engine, config: Any) -> dict[str, Any]:
    from calsync.mapping import MappingLibrary
    from calsync.oa import store
    from calsync.sync.forward import sync_users
    from tests.airflow_env import ROOT
    from tests.integration.conftest import ForwardRunner

    seed_demo(sqlite_oa_engine)
    library = MappingLibrary.load(ROOT / "include" / "mappings")
    with sqlite_oa_engine.connect() as conn:
        users = store.resolve_scope(conn, config.scope, config.binding).users
    run = store.RunInfo(config.id, "test_dag", "bad-1")
    connector = recorded_connector(config)
    window = ForwardRunner(sqlite_oa_engine, config).window()
    results = asyncio.run(
        sync_users(sqlite_oa_engine, config, library, connector, users, window, run)
    )
    with sqlite_oa_engine.connect() as conn:
        logs = [dict(r) for r in conn.execute(sa.select(t.sync_log)).mappings()]
        schedules = {r.title: r for r in conn.execute(sa.select(t.schedules))}
    return {"results": {r.mailbox: r for r in results}, "logs": logs, "schedules": schedules}


def test_each_bad_record_fails_alone_and_the_rest_goes_on(synced: dict[str, Any]) -> None:
    results, logs, schedules = synced["results"], synced["logs"], synced["schedules"]
    assert not [r.error for r in results.values() if r.error]  # no mailbox failed as a whole
    # the other users' events went in
    assert {f"Own event of {m}" for m in results if m != ZHANG} <= set(schedules)
    failed = {r["suite_id"]: r["message"] for r in logs if r["action"] == "failed"}
    # records that cannot be understood: one 'failed' record each, naming the problem
    assert set(failed) == {"bad-end", "no-start", "huge-body"}, failed
    assert "is before start" in failed["bad-end"]
    # a 10 MB body: the mapped details would exceed the OA field's bound; refused, not cut
    assert failed["huge-body"].startswith("mapping of field 'details' failed")
    assert "exceeds" in failed["huge-body"]
    assert "without start or end" in failed["no-start"]
    assert all(r["mailbox"] == ZHANG for r in logs if r["action"] == "failed")


def test_odd_but_valid_records_are_stored_safely(synced: dict[str, Any]) -> None:
    schedules = synced["schedules"]
    # duplicate ids across pages: one schedule
    assert len([s for s in schedules if s == "Good meeting"]) == 1
    assert "(无标题 / No title)" in schedules  # missing subject
    assert "10 MB body" not in schedules  # failed alone (above)
    zone = schedules["Zone from nowhere"]
    assert zone.timezone == "Asia/Shanghai"  # an unknown zone falls back to the integration's
    emoji = schedules["🎉 团建 チーム 팀 😀👨\u200d👩\u200d👧"]
    assert "𠜎𠜱" in emoji.details
    html = [s for s in schedules.values() if "Bold" in s.title]
    assert len(html) == 1 and "<script" not in html[0].details
    zero = schedules["Zero length"]
    assert zero.start_utc == zero.end_utc


def test_a_thousand_attendees_are_all_kept(
    synced: dict[str, Any], sqlite_oa_engine: sa.Engine
) -> None:
    sid = synced["schedules"]["1000 attendees"].id
    with sqlite_oa_engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count())
            .select_from(t.participants)
            .where(t.participants.c.schedule_id == sid, t.participants.c.kind == "external")
        ).scalar()
    assert count == 1000
