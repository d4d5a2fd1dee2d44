"""Forward sync maps an event again only when it, or the mapping context, changed: a link's
``source_hash`` (calsync.sync.forward.source_hash). Full reads (the ``forward`` fixture) on the
Graph emulator, the OA on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from tests.integration.conftest import oa_snapshot
from tests.integration.test_forward_sync import A, find, schedules

WEEKLY = "项目周会 Weekly project sync"
EVENTS_READ = 12 + 20 + 1  # created, linked, skipped by the title filter (first run)
# filtered out, so never linked: nothing vouches for it, and every run maps it
FILTERED = "[no-sync] 私事 personal errand"


def linked_ones(mapped: list[tuple[str, str]], filtered: int = 1) -> list[tuple[str, str]]:
    assert [subject for _, subject in mapped].count(FILTERED) == filtered
    return [m for m in mapped if m[1] != FILTERED]


@pytest.fixture
def mapped(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(mailbox, subject) of every event forward sync maps."""
    import calsync.sync.forward as fwd

    calls: list[tuple[str, str]] = []
    real = fwd.prepare_event

    def counting(event: Any, user: Any, ctx: Any) -> Any:
        calls.append((user.mailbox, event.subject))
        return real(event, user, ctx)

    monkeypatch.setattr(fwd, "prepare_event", counting)
    return calls


def source_hashes(engine: sa.Engine) -> dict[tuple[str, str], str]:
    with engine.connect() as conn:
        return {
            (r.mailbox, r.suite_id): r.source_hash
            for r in conn.execute(
                sa.select(t.links.c.mailbox, t.links.c.suite_id, t.links.c.source_hash)
            )
        }


def test_an_unchanged_full_read_maps_nothing(forward, mapped):
    forward()
    assert len(mapped) == EVENTS_READ
    assert all(source_hashes(forward.engine).values())
    before = oa_snapshot(forward.engine)
    mapped.clear()

    result = forward()

    assert linked_ones(mapped) == []
    assert oa_snapshot(forward.engine) == before
    assert result["totals"] == {"unchanged": 12 + 20, "skipped": 1}


def test_a_suite_edit_maps_just_the_copies_it_changed(forward, graph, mapped):
    forward()
    mapped.clear()
    item = find(graph, A, WEEKLY)
    graph.store.update_event(A, item["id"], {"subject": "项目周会 (moved)"})

    result = forward()

    # the organiser's copy, and the attendees' copies the emulator updated with it
    assert {subject for _, subject in linked_ones(mapped)} == {"项目周会 (moved)"}
    assert (A, "项目周会 (moved)") in mapped
    assert result["totals"]["updated"] == 1
    assert "项目周会 (moved)" in schedules(forward.engine)


def test_a_mapping_context_change_maps_everything_again(forward, mapped):
    forward()
    mapped.clear()
    forward.config = forward.config.model_copy(update={"color": "#123456"})

    result = forward()

    assert len(mapped) == EVENTS_READ
    assert result["totals"]["updated"] == 12
    assert {row.color for rows in schedules(forward.engine).values() for row in rows} == {"#123456"}


def test_an_item_the_plan_acts_on_is_mapped_first(forward, mapped):
    """The OA's record of the meeting no longer matches what the suite's copy maps to: the
    planner would update it, so the vouched-for item is mapped and the schedule rewritten."""
    forward()
    (weekly,) = schedules(forward.engine)[WEEKLY]
    with forward.engine.begin() as conn:
        conn.execute(
            sa.update(t.meetings)
            .where(t.meetings.c.schedule_id == weekly.id)
            .values(content_hash="drifted")
        )
        conn.execute(sa.update(t.schedules).where(t.schedules.c.id == weekly.id).values(title="x"))
    mapped.clear()

    result = forward()

    assert linked_ones(mapped) == [(A, WEEKLY)]  # its owner's copy only
    assert result["totals"]["updated"] == 1
    assert [row.id for row in schedules(forward.engine)[WEEKLY]] == [weekly.id]


def test_a_link_without_a_source_hash_is_mapped_and_given_one(forward, mapped, monkeypatch):
    """Reverse sync writes links with no source hash (and links made before migration 0006
    have none): such an event is mapped on its next read, and its link gets the hash without
    the schedule being written. The writer goes by the link as it reads it, not by the hints
    read at the start of the task."""
    from calsync.oa import store

    forward()
    with forward.engine.connect() as conn:
        hints = store.load_source_hashes(conn, forward.config.id, [A])
    (weekly,) = schedules(forward.engine)[WEEKLY]
    where = sa.and_(t.links.c.schedule_id == weekly.id, t.links.c.mailbox == A)
    with forward.engine.begin() as conn:
        conn.execute(sa.update(t.links).where(where).values(source_hash=""))
    monkeypatch.setattr(
        store, "load_source_hashes", lambda *_a: {k: dict(v) for k, v in hints.items()}
    )
    before = schedules(forward.engine)[WEEKLY]
    mapped.clear()

    result = forward(only=[A])

    assert linked_ones(mapped, filtered=0) == [(A, WEEKLY)]  # the filtered event is not A's
    assert result["totals"] == {"unchanged": len(hints[A])}
    assert schedules(forward.engine)[WEEKLY] == before
    assert all(source_hashes(forward.engine).values())


def test_an_event_reverse_sync_wrote_is_mapped_on_its_next_read(seeded_oa, graph, mapped):
    """Reverse sync records the OA's content on the link, not a mapping of the event it wrote:
    it leaves the source hash empty, so forward sync maps that event once more."""
    from tests.integration.conftest import ForwardRunner
    from tests.integration.reverse_helpers import ReverseRunner, oa_update
    from tests.integration.test_reverse_sync import reverse_config

    both = reverse_config("both")
    forward = ForwardRunner(seeded_oa, both)
    forward()
    (weekly,) = schedules(seeded_oa)[WEEKLY]
    oa_update(seeded_oa, weekly.id, title="项目周会 (OA edit)")
    reverse = ReverseRunner(seeded_oa, [both])
    assert reverse.counts(reverse()) == {"updated": 1}
    owner = sa.and_(t.links.c.schedule_id == weekly.id, t.links.c.mailbox == A)
    with seeded_oa.connect() as conn:
        assert conn.execute(sa.select(t.links.c.source_hash).where(owner)).scalar() == ""
    mapped.clear()

    forward()

    assert (A, "项目周会 (OA edit)") in linked_ones(mapped)
    with seeded_oa.connect() as conn:
        assert conn.execute(sa.select(t.links.c.source_hash).where(owner)).scalar() != ""
    mapped.clear()
    assert forward()["totals"] == {"unchanged": 12 + 20, "skipped": 1}
    assert linked_ones(mapped) == []
