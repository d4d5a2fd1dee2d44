"""Expired sync state (E15) on every suite, in a two-way integration: Graph's 410
``SyncStateNotFound`` and EWS's ``ErrorInvalidSyncStateData`` fall back to a full read that is
reconciled against the links — the one event changed meanwhile is updated, nothing is deleted
or made again (same OA schedule ids, same links), and the reverse drain that follows writes
nothing to the suite and sends no mail. The next day's run (the window moved) re-bases the
feed on the new window, again without a delete or a re-create. Alibaba Mail has no change
feed, so no state can expire: every run reads each view, and a view that changed (its digest
is not the state's) is the full read reconciled against the links; the same assertions hold
for it.

The connector-level fallbacks (410 → a full read and a new round; an invalid, foreign or other
window's state) are in ``test_incremental_graph`` and ``test_exchange_connector``."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from calsync.oa import schema as t
from tests.integration.conftest import TODAY
from tests.integration.reverse_helpers import ReverseRunner, oa_create
from tests.integration.safety_suites import (
    LINA,
    ORGANISER,
    Ev,
    Suite,
    links,
    meetings,
    schedules,
)
from tests.integration.test_incremental_graph import IncrementalRunner

DAY = dt.timedelta(days=1)
QUIET = {"unchanged", "skipped"}


def at(day: dt.date, hour: int) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour))


def feed_states(engine: sa.Engine, integration_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.sync_state).where(t.sync_state.c.integration_id == integration_id)
        )
        return {r.mailbox: r for r in rows}


def forward(run: IncrementalRunner, window: Any = None) -> dict[str, int]:
    result = run(window)
    errors = {m: r.error for m, r in result["results"].items() if r.error}
    assert not errors, errors
    return result["totals"]


def reverse(runner: ReverseRunner) -> dict[str, int]:
    summary = runner()
    [report] = summary["integrations"]
    assert not report["errors"], report["errors"]
    return report["counts"]


def test_expired_state_and_a_moved_window_reconcile_without_deletes_or_recreates(
    suite: Suite,  # noqa: F811 - the fixture
    oa_any: sa.Engine,  # noqa: F811 - the fixture
) -> None:
    """On every OA database: schedule ids must survive the full reads on each backend."""
    oa = oa_any
    config = suite.config(direction="both")
    run = IncrementalRunner(oa, config)
    drain = ReverseRunner(oa, [config])
    review = suite.add(
        ORGANISER,
        Ev("评审 Review", at(TODAY, 10), at(TODAY, 11), attendees=(LINA,), room=True),
    )
    suite.add(LINA, Ev("年假 Leave", all_day=(TODAY + DAY, TODAY + 2 * DAY)))
    suite.add(ORGANISER, Ev("站会 Stand-up", at(TODAY - DAY, 9), at(TODAY - DAY, 10), daily=3))
    # and one schedule made in the OA, pushed to the suite by reverse sync (carries the marker)
    oa_made = oa_create(oa, "wangfang", "OA 培训 Training", attendees=("lina",))
    assert reverse(drain) == {"created": 1}
    created = forward(run)
    assert created.get("created") == 5, created  # review, leave, 3 stand-ups (OA's: linked)
    stored = feed_states(oa, config.id)
    assert set(forward(run)) <= QUIET  # the round goes on: nothing to do
    # a change feed's state; Alibaba Mail's (no feed) remembers the mailbox's calendar and a
    # digest of the view it read
    assert set(feed_states(oa, config.id)) >= {ORGANISER, LINA}
    if not suite.has_change_feed:  # the same state again: not rewritten
        assert feed_states(oa, config.id) == stored
    keyed, linked, rows = meetings(oa, config.id), links(oa, config.id), schedules(oa)
    assert oa_made in rows and oa_made in keyed.values()
    # one real change in the suite (its own update mail counted before calsync runs), then
    # the suite forgets every state it handed out
    suite.update(ORGANISER, review, "评审 Review v2")
    suite.expire_feeds()
    writes, mail = suite.writes(), suite.mail()
    totals = forward(run)
    assert totals.get("updated") == 1 and set(totals) <= QUIET | {"updated"}, totals
    if suite.has_change_feed:
        assert totals.get("unchanged", 0) >= 4, totals  # a full read, not a continued round
    else:  # Alibaba Mail has no feed to expire: only the views that changed are planned
        assert totals.get("unchanged", 0) < 4, totals
    assert meetings(oa, config.id) == keyed  # same identities, same schedule ids
    assert links(oa, config.id) == linked
    after = schedules(oa)
    [changed] = [sid for sid in rows if after[sid] != rows[sid]]
    assert after[changed].title == "评审 Review v2"
    assert set(after) == set(rows)
    # the full read went into the OA only: no echo back, nothing written to the suite, no mail
    assert reverse(drain) == {}
    assert (suite.writes(), suite.mail()) == (writes, mail)
    assert set(forward(run)) <= QUIET  # a new round after the fallback

    # the next day's run: the window moves, the feed is re-based on it
    tomorrow = run.window(TODAY + DAY)
    moved = forward(run, tomorrow)
    assert set(moved) <= QUIET and moved.get("unchanged", 0) >= 4, moved  # a full read
    assert schedules(oa) == after and links(oa, config.id) == linked
    for mailbox, row in feed_states(oa, config.id).items():
        assert (row.window_start, row.window_end) == (tomorrow.start, tomorrow.end), mailbox
        state = json.loads(row.state)
        assert state["feed"], mailbox
    quiet = forward(run, tomorrow)
    # the re-based round continues: nothing even re-read (Alibaba Mail: each view read again,
    # the same as its digest says, so nothing planned)
    assert quiet == {}, quiet
    assert reverse(drain) == {}
    assert (suite.writes(), suite.mail()) == (writes, mail)


# fixtures: the suites over their emulators (EWS and Alibaba started once per session)
from tests.integration.safety_suites import oa_any, suite  # noqa: E402,F401
