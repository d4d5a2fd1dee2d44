"""The planner's partial mode (an incremental read, E7): changed events are planned as in a
full run, removed ids drop their links, and every other link is left alone."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from calsync.sync.plan import (
    Create,
    Drop,
    LinkRow,
    LinkTo,
    MailboxPlan,
    Prepared,
    Skip,
    Update,
    plan_mailbox,
)
from tests.unit.test_plan import (
    ME,
    OTHER,
    T0,
    WINDOW,
    event,
    link_for,
    meeting_for,
    prepared,
)


def partial(items, links=(), meetings=(), removed=(), scope=(ME, OTHER)) -> MailboxPlan:
    return plan_mailbox(
        ME,
        list(items),
        list(links),
        {m.identity_key: m for m in meetings},
        WINDOW,
        set(scope),
        removed=list(removed),
    )


def kinds(plan: MailboxPlan) -> list[str]:
    return [type(a).__name__ for a in plan.actions]


def test_unchanged_events_keep_their_links():
    a, b = prepared(event("E1", "U1")), prepared(event("E2", "U2"))
    links = [link_for(a, 1, schedule_id=10), link_for(b, 2, schedule_id=20)]
    p = partial([], links, [meeting_for(a), meeting_for(b, schedule_id=20)])
    assert p.actions == [] and p.unchanged == 0


def test_a_changed_event_is_planned_as_in_a_full_run():
    old = prepared(event("E1", "U1", title="old"))
    new = prepared(event("E1", "U1", title="new", change="c2"))
    other = prepared(event("E2", "U2"))
    links = [link_for(old, 1), link_for(other, 2, schedule_id=20)]
    p = partial([new], links, [meeting_for(old), meeting_for(other, schedule_id=20)])
    (action,) = p.actions
    assert isinstance(action, Update) and action.write_schedule and action.link.id == 1


def test_a_new_event_creates_and_a_copy_links():
    mine = prepared(event("E9", "U9"))
    copy = prepared(event("E8", "U8"), owner=OTHER)
    p = partial([mine, copy], [], [meeting_for(copy, owner=OTHER)])
    assert kinds(p) == ["Create", "LinkTo"]


def test_a_removed_id_drops_its_link_only():
    a, b = prepared(event("E1", "U1")), prepared(event("E2", "U2"))
    links = [link_for(a, 1), link_for(b, 2, schedule_id=20)]
    p = partial([], links, [], removed=["E1"])
    (action,) = p.actions
    assert isinstance(action, Drop) and action.link.id == 1
    assert action.reason == "no longer in the mailbox's calendar"


def test_a_removed_id_outside_the_window_keeps_its_link():
    """Graph reports events changed outside the round's window as removed: a link of such an
    event (brought in by a manual range) is not this window's to drop, as in a full run."""
    far = prepared(event("E1", "U1", start=T0 + dt.timedelta(days=20)))
    p = partial([], [link_for(far)], [], removed=["E1"])
    assert p.actions == []


def test_a_removed_id_without_a_link_is_nothing():
    assert partial([], [], [], removed=["nobody"]).actions == []


def test_an_event_filtered_out_now_drops_its_link_with_the_reason():
    old = prepared(event("E1", "U1"))
    now = Prepared(event("E1", "U1", title="[no-sync] x", change="c2"), skip="filter private")
    p = partial([now], [link_for(old)], [meeting_for(old)])
    assert kinds(p) == ["Skip", "Drop"]
    assert p.of(Drop)[0].reason == "now filtered out: filter private"


def test_an_unreadable_changed_event_fails_alone_and_keeps_its_link():
    old = prepared(event("E1", "U1"))
    bad = Prepared(event("E1", "U1"), error="unreadable event: no start")
    assert kinds(partial([bad], [link_for(old)], [meeting_for(old)])) == ["Fail"]


def test_an_item_with_a_new_id_takes_over_the_removed_ones_link():
    old = prepared(event("E1", "U1"))
    moved = prepared(event("E1-new", "U1"))
    p = partial([moved], [link_for(old)], [meeting_for(old)], removed=["E1"])
    (action,) = p.actions
    assert isinstance(action, Update) and action.relinked and action.link.id == 1


def test_a_second_copy_does_not_take_a_link_whose_event_is_still_there():
    """The link's own event did not change (so it is still in the window): a changed item of
    the same meeting is a second copy, skipped as a full run would, and the link stays."""
    first = prepared(event("E1", "U1"))
    second = prepared(event("E2", "U1"))
    p = partial([second], [link_for(first)], [meeting_for(first)])
    assert kinds(p) == ["Skip"]
    assert "appears twice" in (p.actions[0].item.skip or "")


def test_a_link_outside_the_window_can_be_taken_over_by_identity():
    far = prepared(event("E1", "U1", start=T0 + dt.timedelta(days=20)))
    back = prepared(event("E2", "U1"))
    (action,) = partial([back], [link_for(far)], [meeting_for(far)]).actions
    assert isinstance(action, Update) and action.relinked


def test_full_mode_is_unchanged_without_removed():
    """``removed=None`` is a full read: links not seen in the window are dropped."""
    a = prepared(event("E1", "U1"))
    p = plan_mailbox(ME, [], [link_for(a)], {}, WINDOW, {ME})
    assert kinds(p) == ["Drop"]
    assert partial([], [link_for(a)], []).actions == []


# --- property: partial planning of the changes ends where full planning of all events does ---


@dataclass(frozen=True)
class Ev:
    identity: str
    suite_id: str
    day: int  # of December (0: November 30); the window is December 1..7
    title: str = "t"
    skip: bool = False

    def item(self) -> Prepared:
        start = dt.datetime(2026, 11, 30, 2, tzinfo=dt.UTC) + dt.timedelta(days=self.day)
        ev = event(self.suite_id, self.identity, title=self.title, start=start)
        if self.skip:
            return Prepared(ev, skip="filtered")
        return prepared(ev)


def in_window(e: Ev) -> bool:
    return 1 <= e.day <= 7


def apply(plan: MailboxPlan, links: dict[str, LinkRow]) -> dict[str, LinkRow]:
    """What the store would leave as this mailbox's links (by suite id)."""
    out = dict(links)
    next_id = max([link.id for link in links.values()], default=0) + 1
    for action in plan.actions:
        if isinstance(action, (Create, LinkTo)):
            out[action.item.event.suite_id] = link_for(action.item, next_id)
            next_id += 1
        elif isinstance(action, Update):
            del out[action.link.suite_id]
            out[action.item.event.suite_id] = link_for(action.item, action.link.id)
        elif isinstance(action, Drop):
            del out[action.link.suite_id]
        else:
            assert isinstance(action, (Skip,)) or type(action).__name__ == "Fail"
    return out


def full_run(events: list[Ev], links: dict[str, LinkRow]) -> dict[str, LinkRow]:
    items = [e.item() for e in events if in_window(e)]
    return apply(plan_mailbox(ME, items, list(links.values()), {}, WINDOW, {ME}), links)


identities = st.sampled_from(["U1", "U2", "U3", "U4", "U5"])
days = st.integers(0, 9)


@st.composite
def histories(draw):
    """Events (one per identity) before and after a batch of changes."""
    before: dict[str, Ev] = {}
    for identity in draw(st.sets(identities, max_size=5)):
        before[identity] = Ev(identity, f"{identity}-a", draw(days), skip=draw(st.booleans()))
    after = dict(before)
    for step in range(draw(st.integers(0, 5))):
        identity = draw(identities)
        kind = draw(st.sampled_from(["create", "delete", "edit", "move", "new-id", "filter"]))
        current = after.get(identity)
        if kind == "create" and current is None:
            after[identity] = Ev(identity, f"{identity}-c{step}", draw(days))
        elif current is None:
            continue
        elif kind == "delete":
            del after[identity]
        elif kind == "edit":
            after[identity] = Ev(identity, current.suite_id, current.day, f"t{step}", current.skip)
        elif kind == "move":
            after[identity] = Ev(identity, current.suite_id, draw(days), current.title, False)
        elif kind == "new-id":
            after[identity] = Ev(identity, f"{identity}-n{step}", current.day, current.title)
        else:
            after[identity] = Ev(identity, current.suite_id, current.day, current.title, True)
    return list(before.values()), list(after.values())


@settings(max_examples=200, deadline=None)
@given(histories())
def test_partial_planning_of_the_changes_equals_full_planning(history):
    before, after = history
    links = full_run(before, {})
    seen_before = {e.suite_id: e for e in before if in_window(e)}
    seen_after = {e.suite_id: e for e in after if in_window(e)}
    # what a delta round reports: changed or new in the window, and ids that left it
    changed = [e for sid, e in seen_after.items() if seen_before.get(sid) != e]
    removed = [sid for sid in seen_before if sid not in seen_after]
    plan = plan_mailbox(
        ME,
        [e.item() for e in changed],
        list(links.values()),
        {},
        WINDOW,
        {ME},
        removed=removed,
    )
    got = apply(plan, links)
    want = full_run(after, links)
    assert {s: link.identity_key for s, link in got.items()} == {
        s: link.identity_key for s, link in want.items()
    }
