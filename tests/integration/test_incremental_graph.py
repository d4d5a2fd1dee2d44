"""Incremental reads from Office 365 (E7, E13, E15): ``GraphConnector.list_changes`` against
the Graph emulator's calendarView delta over HTTPS, and the forward engine's incremental path
(scheduled runs continue a mailbox's delta round; manual runs read in full)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from calsync.config import IntegrationConfig
from calsync.connectors.base import ChangeSet, connector_for
from calsync.model import SuiteEvent, Window
from calsync.oa import schema as t
from calsync.oa import store
from tests.integration.conftest import TODAY, ForwardRunner, oa_snapshot

DAY = dt.timedelta(days=1)
A, B, D = "zhangwei@contoso.com", "lina@contoso.com", "liuyang@contoso.com"


def comparable(event: SuiteEvent) -> dict[str, Any]:
    """A read event without what delta cannot carry (the marker: no $expand on delta)."""
    data = dataclasses.asdict(event)
    data.pop("calsync_key")
    return data


def by_id(events: list[SuiteEvent]) -> dict[str, dict[str, Any]]:
    return {e.suite_id: comparable(e) for e in events}


def api_requests(graph: Any) -> dict[str, int]:
    """Graph API requests by kind since the last stats reset (logins left out)."""
    return {k: v for k, v in graph.stats.by_kind.items() if k not in ("token", "discovery")}


def find(graph: Any, mailbox: str, subject: str) -> dict[str, Any]:
    (item,) = [e for e in graph.store.events(mailbox) if e.get("subject") == subject]
    return item


class Reader:
    """One connector per call, as a task would have it."""

    def __init__(self, config: IntegrationConfig, window: Window) -> None:
        self.config = config
        self.window = window

    def changes(self, mailbox: str, state: str | None, window: Window | None = None) -> ChangeSet:
        async def go() -> ChangeSet:
            async with connector_for(self.config) as connector:
                return await connector.list_changes(mailbox, window or self.window, state)

        return asyncio.run(go())

    def events(self, mailbox: str, window: Window | None = None) -> list[SuiteEvent]:
        async def go() -> list[SuiteEvent]:
            async with connector_for(self.config) as connector:
                return await connector.list_events(mailbox, window or self.window)

        return asyncio.run(go())


def window_of(config: IntegrationConfig, today: dt.date = TODAY) -> Window:
    days = dt.timedelta(days=config.window_days)
    return Window(today - days, today + days, config.timezone)


# --- the connector ---------------------------------------------------------------------------


def test_a_new_round_reads_the_window_in_full(graph: Any, config: IntegrationConfig) -> None:
    reader = Reader(config, window_of(config))
    changes = reader.changes(A, None)
    assert changes.full and changes.removed == []
    assert by_id(changes.events) == by_id(reader.events(A))
    state = json.loads(changes.state or "")
    assert set(state) == {"deltaLink", "window"}
    assert "$deltatoken=" in state["deltaLink"]
    assert state["window"] == {
        "start": reader.window.start.isoformat(),
        "end": reader.window.end.isoformat(),
        "timezone": "Asia/Shanghai",
    }


def test_thin_occurrences_are_completed_from_the_series(
    graph: Any, config: IntegrationConfig
) -> None:
    """E13: delta sends plain occurrences thin; the connector completes them (one request per
    series) so they equal what calendarView gives, iCalUId and original start included."""
    reader = Reader(config, window_of(config))
    graph.stats.reset()
    changes = reader.changes(A, None)
    occurrences = [e for e in changes.events if e.event_type == "occurrence"]
    assert len(occurrences) >= 3
    assert all(e.original_start is not None and e.subject for e in occurrences)
    full = by_id(reader.events(A))
    assert all(comparable(e) == full[e.suite_id] for e in occurrences)
    assert graph.stats.by_kind["instances"] == 1  # one series, one completion request


def test_changes_since_a_state_are_upserts_and_removals(
    graph: Any, config: IntegrationConfig
) -> None:
    reader = Reader(config, window_of(config))
    state = reader.changes(B, None).state
    leave = find(graph, B, "年假 Annual leave")
    dentist = find(graph, D, "看牙医 Dentist")
    graph.store.update_event(B, leave["id"], {"subject": "年假 Annual leave (2 days)"})
    made = graph.store.add_event(
        B,
        {
            "subject": "新的会 New meeting",
            "start": {"dateTime": f"{TODAY}T15:00:00", "timeZone": "Asia/Shanghai"},
            "end": {"dateTime": f"{TODAY}T16:00:00", "timeZone": "Asia/Shanghai"},
        },
    )
    changes = reader.changes(B, state)
    assert not changes.full and changes.removed == []
    assert {e.suite_id: e.subject for e in changes.events} == {
        leave["id"]: "年假 Annual leave (2 days)",
        made["id"]: "新的会 New meeting",
    }
    assert by_id(changes.events) == {
        k: v for k, v in by_id(reader.events(B)).items() if k in (leave["id"], made["id"])
    }
    # deleted, and given a new id: removed ids (and the new id as an upsert)
    graph.store.delete_event(B, made["id"])
    new_id = graph.store.move_event(B, leave["id"])
    again = reader.changes(B, changes.state)
    assert sorted(again.removed) == sorted([made["id"], leave["id"]])
    assert [e.suite_id for e in again.events] == [new_id]
    # nothing changed: one request, nothing returned
    graph.stats.reset()
    quiet = reader.changes(B, again.state)
    assert (quiet.events, quiet.removed, quiet.full) == ([], [], False)
    assert api_requests(graph) == {"calendarView_delta": 1}
    assert dict(graph.stats.by_mailbox) == {B: 1}
    assert dentist  # another mailbox's items are not this mailbox's changes


def test_an_expired_token_falls_back_to_a_full_read_and_a_new_round(
    graph: Any, config: IntegrationConfig
) -> None:
    """E15: 410 SyncStateNotFound → a full read (full=True) and a state of a new round."""
    reader = Reader(config, window_of(config))
    state = reader.changes(A, None).state
    graph.store.expire_delta_tokens()
    changes = reader.changes(A, state)
    assert changes.full and changes.state and changes.state != state
    assert by_id(changes.events) == by_id(reader.events(A))
    assert graph.stats.by_status.get(410) == 1
    follow = reader.changes(A, changes.state)
    assert (follow.events, follow.removed, follow.full) == ([], [], False)


def test_a_moved_window_starts_a_new_round(graph: Any, config: IntegrationConfig) -> None:
    today_window = window_of(config)
    reader = Reader(config, today_window)
    state = reader.changes(A, None).state
    tomorrow = window_of(config, TODAY + DAY)
    graph.stats.reset()
    moved = reader.changes(A, state, tomorrow)
    assert moved.full
    assert by_id(moved.events) == by_id(reader.events(A, tomorrow))
    assert json.loads(moved.state or "")["window"]["start"] == tomorrow.start.isoformat()
    # the token of the old window is not even tried: a new round from the first request
    assert graph.stats.by_kind["calendarView_delta"] >= 1
    assert 410 not in {int(k) for k in graph.stats.snapshot()["by_status"]}
    elsewhere = json.dumps(
        {
            "deltaLink": "https://graph.example.invalid/v1.0/users/x/calendarView/delta"
            "?$deltatoken=abc",
            "window": json.loads(moved.state or "")["window"],
        }
    )
    for junk in ("", "not json", '{"deltaLink": 5}', json.dumps({"window": {}}), elsewhere):
        assert reader.changes(A, junk, tomorrow).full


# --- the engine -------------------------------------------------------------------------------


class IncrementalRunner(ForwardRunner):
    """``ForwardRunner`` for the scheduled path: ``sync_users(..., incremental=True)``."""

    incremental = True


def states(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {r.mailbox: r for r in conn.execute(sa.select(t.sync_state))}


def test_scheduled_runs_continue_the_round_and_manual_runs_read_in_full(
    seeded_oa: sa.Engine, graph: Any, config: IntegrationConfig
) -> None:
    scheduled = IncrementalRunner(seeded_oa, config)
    manual = ForwardRunner(seeded_oa, config)
    first = scheduled()
    assert first["totals"]["created"] >= 5
    stored = states(seeded_oa)
    assert set(stored) == set(first["results"])
    row = stored[A]
    assert (row.window_start, row.window_end) == (scheduled.window().start, scheduled.window().end)
    envelope = json.loads(row.state)
    assert set(envelope) == {"context", "feed"} and "deltaLink" in json.loads(envelope["feed"])

    # no change: one request per mailbox, nothing written
    before = oa_snapshot(seeded_oa)
    graph.stats.reset()
    quiet = scheduled()
    assert quiet["totals"] == {}
    assert oa_snapshot(seeded_oa) == before
    assert api_requests(graph) == {"calendarView_delta": len(first["results"])}
    assert dict(graph.stats.by_mailbox) == {m: 1 for m in first["results"]}

    # a change: only it is planned; the unchanged meetings keep their links and schedules
    leave = find(graph, B, "年假 Annual leave")
    graph.store.update_event(B, leave["id"], {"subject": "年假 Annual leave (moved)"})
    result = scheduled()
    assert result["totals"] == {"updated": 1}
    with seeded_oa.connect() as conn:
        titles = set(conn.execute(sa.select(t.schedules.c.title)).scalars())
    assert "年假 Annual leave (moved)" in titles and "项目周会 Weekly project sync" in titles

    # a manual range: a full read (calendarView), the stored states untouched
    kept = {m: r.state for m, r in states(seeded_oa).items()}
    graph.stats.reset()
    assert set(manual()["totals"]) <= {"unchanged", "skipped"}
    assert "calendarView" in graph.stats.by_kind
    assert "calendarView_delta" not in graph.stats.by_kind
    assert {m: r.state for m, r in states(seeded_oa).items()} == kept


def test_a_deletion_in_the_suite_drops_only_its_schedule(
    seeded_oa: sa.Engine, graph: Any, config: IntegrationConfig
) -> None:
    scheduled = IncrementalRunner(seeded_oa, config)
    scheduled()
    dentist = find(graph, D, "看牙医 Dentist")
    graph.store.delete_event(D, dentist["id"])
    result = scheduled()
    assert result["totals"] == {"deleted": 1}
    assert result["results"][D].counts == {"deleted": 1}
    with seeded_oa.connect() as conn:
        titles = set(conn.execute(sa.select(t.schedules.c.title)).scalars())
    assert "看牙医 Dentist" not in titles and "年假 Annual leave" in titles


def test_expired_tokens_and_a_moved_window_reconcile_without_recreating(
    seeded_oa: sa.Engine, graph: Any, config: IntegrationConfig
) -> None:
    """E15: a full read after a 410, or for a new window, updates in place: no schedule is
    deleted and made again (same schedule ids)."""
    scheduled = IncrementalRunner(seeded_oa, config)
    scheduled()
    before = oa_snapshot(seeded_oa)
    graph.store.expire_delta_tokens()
    after_410 = scheduled()
    assert set(after_410["totals"]) <= {"unchanged", "skipped"}
    assert oa_snapshot(seeded_oa) == before
    tomorrow = scheduled.window(TODAY + DAY)
    moved = scheduled(tomorrow)
    assert "deleted" not in moved["totals"] and moved["totals"]["unchanged"] > 0
    with seeded_oa.connect() as conn:
        ids = set(conn.execute(sa.select(t.schedules.c.id)).scalars())
    assert {row[0] for row in before["schedules"]} <= ids  # nothing deleted and made again
    assert all(r.window_start == tomorrow.start for r in states(seeded_oa).values())
    quiet = scheduled(tomorrow)
    assert quiet["totals"] == {}


def test_a_changed_mapping_context_starts_a_new_round(
    seeded_oa: sa.Engine, graph: Any, config: IntegrationConfig
) -> None:
    """A new user in scope, a new room mapping or a new mapping file changes how unchanged
    events map, so the next scheduled run reads in full."""
    scheduled = IncrementalRunner(seeded_oa, config)
    scheduled()
    graph.stats.reset()
    with seeded_oa.begin() as conn:
        room = conn.execute(sa.select(t.rooms.c.id).order_by(t.rooms.c.id)).scalars().first()
        conn.execute(
            sa.insert(t.room_mappings).values(room_id=room, suite_mailbox="newroom@contoso.com")
        )
    result = scheduled()
    assert set(result["totals"]) <= {"unchanged", "skipped"}
    assert graph.stats.by_kind["calendarView_delta"] >= len(result["results"])
    assert graph.stats.by_kind.get("instances", 0) >= 1  # full rounds: the series completed
    graph.stats.reset()
    scheduled()
    assert api_requests(graph) == {"calendarView_delta": len(result["results"])}


def test_state_is_written_with_the_mailbox_changes_or_not_at_all(
    seeded_oa: sa.Engine, graph: Any, config: IntegrationConfig, monkeypatch: Any
) -> None:
    """A failed OA write keeps the previous state: the next run reads the same changes."""
    scheduled = IncrementalRunner(seeded_oa, config)
    scheduled()
    old = {m: r.state for m, r in states(seeded_oa).items()}
    leave = find(graph, B, "年假 Annual leave")
    graph.store.update_event(B, leave["id"], {"subject": "年假 Annual leave (edited)"})

    real_apply = store.apply_plan

    def broken(conn: Any, plan: Any, user: Any, run: Any, group: Any = None) -> Any:
        if plan.mailbox == B:
            raise sa.exc.OperationalError("UPDATE", {}, Exception("disk I/O error"))
        return real_apply(conn, plan, user, run, group)

    monkeypatch.setattr(store, "apply_plan", broken)
    failed = scheduled()
    assert failed["results"][B].error and "OA write failed" in failed["results"][B].error
    assert states(seeded_oa)[B].state == old[B]
    monkeypatch.setattr(store, "apply_plan", real_apply)
    retried = scheduled()
    assert retried["results"][B].counts == {"updated": 1}
    assert states(seeded_oa)[B].state != old[B]
