"""Forward sync end to end below Airflow: the real msgraph hook over HTTPS against the Graph
emulator, the real mapping library, and the OA on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from tests.integration.conftest import TODAY, oa_snapshot

DAY = dt.timedelta(days=1)
A, B, C, D, E = (
    f"{n}@contoso.com" for n in ("zhangwei", "lina", "wangfang", "liuyang", "chenjing")
)


def schedules(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.schedules)).all()
    by_title: dict[str, Any] = {}
    for row in rows:
        by_title.setdefault(row.title, []).append(row)
    return by_title


def participants(engine: sa.Engine, schedule_id: int) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.participants.c.kind, t.participants.c.email).where(
                t.participants.c.schedule_id == schedule_id
            )
        ).all()
    return {(r.kind, r.email) for r in rows}


def find(graph: Any, mailbox: str, subject: str) -> dict[str, Any]:
    (item,) = [e for e in graph.store.events(mailbox) if e.get("subject") == subject]
    return item


def log_actions(engine: sa.Engine, run_id: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [
            (r.action, r.message)
            for r in conn.execute(
                sa.select(t.sync_log.c.action, t.sync_log.c.message).where(
                    t.sync_log.c.run_id == run_id
                )
            )
        ]


def test_first_sync_brings_each_meeting_in_once(forward):
    result = forward()
    totals = result["totals"]
    assert not [r.error for r in result["results"].values() if r.error]
    # 12 meetings in the window: weekly sync, leave, 7 stand-ups, dentist, team building, NY call
    assert totals["created"] == 12
    # the attendees' copies are linked to the same schedules, never duplicated
    assert totals["linked"] == 2 + 7 * 2 + 4
    assert totals["skipped"] == 1  # "[no-sync] …" by the title filter
    by_title = schedules(forward.engine)
    assert all(len(rows) == 1 for title, rows in by_title.items() if "stand-up" not in title)
    assert len(by_title["每日站会 Daily stand-up"]) == 7

    (weekly,) = by_title["项目周会 Weekly project sync"]
    assert weekly.start_utc == dt.datetime.combine(TODAY, dt.time(2))  # 10:00 Shanghai
    assert weekly.source_integration == "it_o365"
    assert weekly.color == "#2F80ED"
    assert participants(forward.engine, weekly.id) == {
        ("user", A),
        ("user", B),
        ("user", C),
        ("external", "partner@fabrikam.com"),
        ("room", "meeting01@contoso.com"),
    }
    with forward.engine.connect() as conn:
        room = conn.execute(
            sa.select(t.rooms.c.name).where(t.rooms.c.id == weekly.room_id)
        ).scalar()
    assert room == "会议室01"
    assert "External attendees" in weekly.details and "partner@fabrikam.com" in weekly.details
    assert "alert(" not in weekly.details and "Q&A" in weekly.details

    (leave,) = by_title["年假 Annual leave"]
    assert leave.all_day and leave.start_utc is None
    assert (leave.start_date, leave.end_date) == (TODAY + DAY, TODAY + 2 * DAY)
    (party,) = by_title["🎉 团队建设 Team building"]
    assert (party.start_date, party.end_date) == (TODAY + 2 * DAY, TODAY + 4 * DAY)
    (ny,) = by_title["Call with New York office"]
    new_york = dt.datetime.combine(TODAY - DAY, dt.time(20), ZoneInfo("America/New_York"))
    assert ny.start_utc == new_york.astimezone(dt.UTC).replace(tzinfo=None)
    assert ny.timezone == "America/New_York"
    assert "季度评审 Quarterly review (outside the window)" not in by_title


def test_rerun_changes_nothing(forward):
    forward()
    before = oa_snapshot(forward.engine)
    result = forward()
    assert oa_snapshot(forward.engine) == before
    assert set(result["totals"]) <= {"unchanged", "skipped"}
    assert result["totals"]["unchanged"] == 12 + 20


def test_suite_edit_updates_the_schedule_in_place(forward, graph):
    forward()
    (old,) = schedules(forward.engine)["项目周会 Weekly project sync"]
    item = find(graph, A, "项目周会 Weekly project sync")
    graph.store.update_event(
        A,
        item["id"],
        {
            "subject": "项目周会 (moved)",
            "start": {"dateTime": f"{TODAY}T14:00:00", "timeZone": "Asia/Shanghai"},
            "end": {"dateTime": f"{TODAY}T15:00:00", "timeZone": "Asia/Shanghai"},
        },
    )
    result = forward()
    assert result["totals"]["updated"] == 1 and "created" not in result["totals"]
    (new,) = schedules(forward.engine)["项目周会 (moved)"]
    assert new.id == old.id and new.start_utc == dt.datetime.combine(TODAY, dt.time(6))


def test_organiser_delete_removes_the_schedule_everywhere(forward, graph):
    forward()
    item = find(graph, A, "项目周会 Weekly project sync")
    graph.store.delete_event(A, item["id"])  # attendees' copies become cancelled
    result = forward()
    assert result["totals"]["deleted"] == 1
    assert "项目周会 Weekly project sync" not in schedules(forward.engine)
    with forward.engine.connect() as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count())
                .select_from(t.links)
                .where(t.links.c.ical_uid == item["iCalUId"])
            ).scalar()
            == 0
        )


def test_event_moved_out_of_the_window_disappears(forward, graph):
    forward()
    item = find(graph, B, "年假 Annual leave")
    later = TODAY + dt.timedelta(days=9)
    graph.store.update_event(
        B,
        item["id"],
        {
            "start": {"dateTime": f"{later}T00:00:00", "timeZone": "Asia/Shanghai"},
            "end": {
                "dateTime": f"{later + dt.timedelta(days=1)}T00:00:00",
                "timeZone": "Asia/Shanghai",
            },
        },
    )
    assert forward()["totals"]["deleted"] == 1
    assert "年假 Annual leave" not in schedules(forward.engine)


def test_item_with_a_new_id_is_relinked_not_duplicated(forward, graph):
    forward()
    item = find(graph, D, "看牙医 Dentist")
    graph.store.move_event(D, item["id"])
    result = forward()
    assert "created" not in result["totals"] and "deleted" not in result["totals"]
    assert len(schedules(forward.engine)["看牙医 Dentist"]) == 1
    assert result["totals"]["relinked"] == 1


def test_schedule_made_in_the_oa_is_never_deleted(forward, graph):
    """E17: a schedule linked to a suite event but created in the OA is only unlinked."""
    forward()
    with forward.engine.begin() as conn:
        (dentist,) = conn.execute(
            sa.select(t.schedules.c.id).where(t.schedules.c.title == "看牙医 Dentist")
        ).all()
        conn.execute(
            sa.update(t.schedules)
            .where(t.schedules.c.id == dentist.id)
            .values(source_integration=None)
        )
    graph.store.delete_event(D, find(graph, D, "看牙医 Dentist")["id"])
    result = forward()
    assert "deleted" not in result["totals"] and result["totals"]["unlinked"] == 1
    assert "看牙医 Dentist" in schedules(forward.engine)


def test_unknown_mailbox_fails_alone(forward, graph):
    with forward.engine.begin() as conn:
        conn.execute(
            sa.insert(t.users).values(
                login_name="ghost", display_name="Ghost", email="ghost@contoso.com", active=True
            )
        )
    result = forward()
    ghost = result["results"]["ghost@contoso.com"]
    assert ghost.error and "not found" in ghost.error and ghost.retriable is False
    assert result["totals"]["created"] == 12
    assert ("failed", ghost.error) in log_actions(forward.engine, f"run-{forward.runs}")


def test_throttling_storm_ends_in_the_same_state(forward, graph):
    graph.faults.rate_429 = 0.3
    graph.faults.rate_503 = 0.05
    graph.faults.retry_after_s = 1  # kiota parses whole seconds only (as Graph sends)
    result = forward()
    graph.faults.rate_429 = graph.faults.rate_503 = 0
    failed = {m: r.error for m, r in result["results"].items() if r.error}
    stormy = oa_snapshot(forward.engine)
    assert graph.stats["retry_after_violations"] == 0
    assert graph.stats["throttled_429"] > 0
    # whatever the storm left undone, a re-run finishes, and the result is the calm one
    forward()
    assert len(schedules(forward.engine)["每日站会 Daily stand-up"]) == 7
    assert sum(len(v) for v in schedules(forward.engine).values()) == 12
    if not failed:
        assert oa_snapshot(forward.engine)["schedules"] == stormy["schedules"]


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Pacific/Auckland", "Asia/Shanghai"])
def test_all_day_dates_do_not_depend_on_the_integration_zone(seeded_oa, graph, zone):
    from calsync.config import parse_integration
    from tests.integration.conftest import INTEGRATION_YAML, ForwardRunner

    config = parse_integration(
        __import__("pathlib").Path("it_o365.yaml"),
        INTEGRATION_YAML.replace("Asia/Shanghai", zone),
    )
    ForwardRunner(seeded_oa, config)()
    (leave,) = schedules(seeded_oa)["年假 Annual leave"]
    assert (leave.start_date, leave.end_date) == (TODAY + DAY, TODAY + 2 * DAY)


def test_undefined_connection_is_not_a_missing_mailbox(seeded_oa, graph):
    from calsync.config import parse_integration
    from tests.integration.conftest import INTEGRATION_YAML, ForwardRunner

    config = parse_integration(
        __import__("pathlib").Path("it_o365.yaml"),
        INTEGRATION_YAML.replace("calsync_o365_test", "calsync_nowhere"),
    )
    result = ForwardRunner(seeded_oa, config)()
    errors = {r.error for r in result["results"].values()}
    assert errors == {"Airflow connection 'calsync_nowhere' is not defined"}
    assert all(r.retriable is False for r in result["results"].values())


def apply_as_one_group(forward: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Every in-scope mailbox read in full, then applied as one group (group commit), in
    scope order: later mailboxes must see what earlier ones wrote in the same transaction.
    The group must commit as one (not fall back to one transaction per mailbox)."""
    import asyncio

    from calsync.connectors.base import connector_for
    from calsync.oa import store
    from calsync.sync import forward as engine

    forward.runs += 1
    window = forward.window()
    with forward.engine.connect() as conn:
        users = store.resolve_scope(conn, forward.config.scope, forward.config.binding).users
        ctx, _ = engine.build_context(conn, forward.config, forward.library)
    run = store.RunInfo(forward.config.id, "test_dag", f"group-{forward.runs}")
    settings = engine.ApplySettings(forward.config, ctx, window, run)

    async def read() -> list[Any]:
        async with connector_for(forward.config) as connector:
            return [
                engine.ReadMailbox(u, await connector.list_events(u.mailbox, window)) for u in users
            ]

    def one_by_one(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the group fell back to one transaction per mailbox")

    monkeypatch.setattr(engine, "apply_mailbox", one_by_one)
    outcomes = engine.apply_group(forward.engine, settings, asyncio.run(read()))
    totals: dict[str, int] = {}
    for outcome in outcomes:
        assert not isinstance(outcome, Exception), outcome
        for key, value in outcome.items():
            totals[key] = totals.get(key, 0) + value
    return totals


def test_one_group_of_every_mailbox_gives_what_mailbox_by_mailbox_gives(
    forward, graph, monkeypatch
):
    totals = apply_as_one_group(forward, monkeypatch)
    assert (totals["created"], totals["linked"], totals["skipped"]) == (12, 2 + 7 * 2 + 4, 1)
    by_title = schedules(forward.engine)
    assert all(len(rows) == 1 for title, rows in by_title.items() if "stand-up" not in title)
    assert len(by_title["每日站会 Daily stand-up"]) == 7
    first = oa_snapshot(forward.engine)

    assert set(apply_as_one_group(forward, monkeypatch)) <= {"unchanged", "skipped"}
    assert oa_snapshot(forward.engine) == first

    # the organiser (first in the group) edits a meeting and sets up a new one with B: an
    # edit is written at once (not deferred), the new meeting with it; B, later in the same
    # transaction, links its copy to that schedule and follows the edit
    (weekly,) = by_title["项目周会 Weekly project sync"]
    graph.store.update_event(
        A, find(graph, A, "项目周会 Weekly project sync")["id"], {"subject": "周会 v2"}
    )
    graph.store.add_event(
        A,
        {
            "subject": "新会议 New meeting",
            "start": {"dateTime": f"{TODAY}T16:00:00", "timeZone": "Asia/Shanghai"},
            "end": {"dateTime": f"{TODAY}T17:00:00", "timeZone": "Asia/Shanghai"},
            "attendees": [{"type": "required", "emailAddress": {"address": B, "name": "Li Na"}}],
        },
    )
    totals = apply_as_one_group(forward, monkeypatch)
    assert (totals["updated"], totals["created"], totals["linked"]) == (1, 1, 1)
    assert "deleted" not in totals
    by_title = schedules(forward.engine)
    assert len(by_title["新会议 New meeting"]) == 1
    assert [row.id for row in by_title["周会 v2"]] == [weekly.id]
    assert "项目周会 Weekly project sync" not in by_title

    # then deletes it: its copies are cancelled; the schedule and every link go once
    graph.store.delete_event(A, find(graph, A, "周会 v2")["id"])
    totals = apply_as_one_group(forward, monkeypatch)
    assert totals["deleted"] == 1 and "created" not in totals
    assert "周会 v2" not in schedules(forward.engine)
    with forward.engine.connect() as conn:
        links = sa.select(sa.func.count()).select_from(t.links)
        assert conn.execute(links.where(t.links.c.schedule_id == weekly.id)).scalar() == 0
