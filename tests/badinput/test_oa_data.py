"""Bad OA data (issue 7): a user without a binding value, two users with the same mailbox, a
room mailbox mapped twice (forward), a schedule whose participant no longer exists (reverse).
Each is skipped or reported with a sync-log record; everyone else is synced."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from calsync.oa import schema as t
from calsync.oa.seed import seed_demo
from tests.integration.conftest import ForwardRunner
from tests.integration.reverse_helpers import ReverseRunner, oa_create, user_id
from tests.integration.test_reverse_sync import reverse_config


def logs(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(t.sync_log)).mappings()]


def test_users_without_or_sharing_a_mailbox_are_skipped_alone(
    sqlite_oa_engine: sa.Engine, config: Any, graph: Any
) -> None:
    from calsync.oa import store

    seed_demo(sqlite_oa_engine)
    with sqlite_oa_engine.begin() as conn:
        conn.execute(
            sa.insert(t.users).values(
                login_name="twin", display_name="Twin", email="LINA@contoso.com", active=True
            )
        )
        scope = store.resolve_scope(conn, config.scope, config.binding)
    skipped = {name: why for _, name, why in scope.skipped}
    assert skipped["孙丽"] == "no mailbox in HR field 'email'"  # seeded without an email
    assert "mailbox lina@contoso.com is also bound to user" in skipped["Twin"]
    assert [u.login for u in scope.users if u.mailbox == "lina@contoso.com"] == ["lina"]
    result = ForwardRunner(sqlite_oa_engine, config)()
    assert not [r.error for r in result["results"].values() if r.error]
    assert result["totals"]["created"] == 12  # everyone else synced as usual


def test_room_mailbox_mapped_twice_is_reported_and_the_first_mapping_used(
    sqlite_oa_engine: sa.Engine, config: Any, graph: Any
) -> None:
    seed_demo(sqlite_oa_engine)
    with sqlite_oa_engine.begin() as conn:
        first = conn.execute(
            sa.select(t.room_mappings).where(
                t.room_mappings.c.suite_mailbox == "meeting01@contoso.com"
            )
        ).first()
        other = conn.execute(sa.select(t.rooms.c.id).where(t.rooms.c.id != first.room_id)).first()
        row = {c: getattr(first, c) for c in first._fields if c != "id"}
        conn.execute(sa.insert(t.room_mappings).values(**(row | {"room_id": other.id})))
    runner = ForwardRunner(sqlite_oa_engine, config)
    result = runner()
    assert not [r.error for r in result["results"].values() if r.error]
    problems = [r["message"] for r in logs(sqlite_oa_engine) if r["action"] == "failed"]
    assert problems == [
        f"room mailbox meeting01@contoso.com is mapped to rooms {first.room_id} and {other.id}; "
        "the first mapping is used"
    ]
    with sqlite_oa_engine.connect() as conn:
        rooms = set(
            conn.execute(
                sa.select(t.schedules.c.room_id).where(
                    t.schedules.c.title == "项目周会 Weekly project sync"
                )
            ).scalars()
        )
    assert rooms == {first.room_id}


def test_schedule_whose_participant_no_longer_exists_is_still_delivered(
    sqlite_oa_engine: sa.Engine, graph: Any
) -> None:
    seed_demo(sqlite_oa_engine)
    config = reverse_config()
    start = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) + dt.timedelta(1)
    sid = oa_create(sqlite_oa_engine, "zhangwei", "Ghost attendee", start, attendees=("lina",))
    good = oa_create(sqlite_oa_engine, "wangfang", "Unaffected", start + dt.timedelta(hours=2))
    lina = user_id(sqlite_oa_engine, "lina")
    with sqlite_oa_engine.begin() as conn:  # lina left: inactive, her mailbox value removed
        conn.execute(
            sa.update(t.users).where(t.users.c.id == lina).values(active=False, email=None)
        )
    summary = ReverseRunner(sqlite_oa_engine, [config])()
    report = summary["integrations"][0]
    assert report["counts"] == {"created": 2}, report
    [event] = [
        e for e in graph.store.events("zhangwei@contoso.com") if e["subject"] == "Ghost attendee"
    ]
    assert event.get("attendees") == []  # the departed user is left out, the meeting goes on
    assert any(e["subject"] == "Unaffected" for e in graph.store.events("wangfang@contoso.com"))
    assert {r["schedule_id"] for r in logs(sqlite_oa_engine) if r["action"] == "created"} == {
        sid,
        good,
    }
