"""Two-way sync converges: a Hypothesis state machine drives one ``direction: both``
integration over a SQLite OA and the Graph emulator.

Rules: meetings are created, edited (title, and sometimes the time) and deleted in the OA
(as the OA application does: ``oa_create`` / ``oa_update`` / ``oa_delete``) and in the suite
(the organiser's item, through the emulator's store), interleaved with forward runs and
reverse drains; the conflict policy is drawn per example. Every title is unique and starts
with ``m<meeting>.``, so each schedule and event names the meeting it belongs to.

A model tracks, per meeting, the content each side should hold and what is pending:

- a change on one side (create, edit) is pending for the other until the run of that
  direction takes it: a forward run for suite changes, a reverse drain for OA changes;
- a conflict is a meeting changed on both sides since they last agreed. The run that meets it
  first settles it: ``oa_wins`` keeps the OA's version, ``suite_wins`` the suite's,
  ``latest_wins`` the side whose last edit is the later one. The winner's version goes to the
  loser's side (at once, or by the next run of the other direction); the loser's edit is gone;
- a delete removes the meeting from both sides: a forward run deletes the OA schedule of a
  meeting the suite deleted (two-way: whoever created it), a reverse drain deletes the event
  of a schedule the OA deleted, and a forward run before it never brings the schedule back.
  One exception, an edit-versus-delete conflict: a reverse drain that finds the suite deleted
  a meeting the OA has edited since re-creates it from the OA under ``oa_wins`` and
  ``latest_wins`` (``suite_wins`` lets the delete stand).

Invariants:

1. after every step, the OA holds exactly the meetings the model says, each with its
   title and times, and so does the suite (one organiser event per meeting): nothing is
   duplicated, brought back after a delete, or lost;
2. after a final forward + reverse + forward settle, both sides hold the same meetings with
   the same title and times, each schedule linked to its organiser's event and to every
   attendee's copy (one meeting row, one link per copy, no link to a missing item); no edit
   is lost beyond what the rules above say (the model's content is what both sides hold);
3. once settled, another reverse drain and forward run write nothing on either side
   (suite writes counted by the emulator, OA writes by the outbox rows with origin
   ``calsync:<integration>``): no ping-pong.

Timed meetings inside the window only (the window's edges and series are the forward
property tests' business), three people in scope, the mass-deletion guard off (E10: deletes
here are random, not a suite answering with an empty calendar). One test per policy;
examples per policy ``CALSYNC_PROPERTY_EXAMPLES`` (default 15), steps per example
``CALSYNC_PROPERTY_STEPS`` (default 12); CI runs them derandomized (about 35 s in all).
``HYPOTHESIS_PROFILE=dev CALSYNC_PROPERTY_EXAMPLES=150 CALSYNC_PROPERTY_STEPS=20`` searches
deeper (about 10 min).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from calsync.oa import schema as t
from calsync.oa.seed import DEMO_USERS
from tests.integration.conftest import TODAY
from tests.integration.reverse_helpers import oa_create, oa_delete, oa_update
from tests.integration.test_forward_properties import (  # noqa: F401  (oa_template: a fixture)
    OA_MADE_TITLE,
    PEOPLE,
    UNGUARDED,
    oa_copy,
    oa_template,
    reset_mailboxes,
)
from tests.integration.test_two_way import QUIET, TwoWay

SHANGHAI = dt.timezone(dt.timedelta(hours=8))
# Three people in scope are enough for organisers and attendees (and forward runs read three
# mailboxes, not six: more examples in the same time).
LOGINS = ("zhangwei", "lina", "wangfang")
SETTINGS = f"scope: {{users: [{', '.join(LOGINS)}]}}\n" + UNGUARDED  # deletes are random
LOGIN = {u["email"]: u["login"] for u in DEMO_USERS if u["login"] in LOGINS}
MAILBOXES = tuple(LOGIN)
POLICIES = ("oa_wins", "suite_wins", "latest_wins")
WORDS = ("周会 weekly", "评审 review", "站会", "1:1", "培训 training", "Kickoff 启动")
MID = re.compile(r"^m(\d+)\.")
HOUR = dt.timedelta(hours=1)


@dataclass(frozen=True)
class Content:
    title: str
    start: dt.datetime  # aware UTC; every meeting lasts an hour


@dataclass
class Meeting:
    """The model of one meeting: what each side should hold and what is still pending."""

    mid: int
    organiser: str  # mailbox of the creator / organiser
    attendees: tuple[str, ...]
    oa: Content | None = None
    suite: Content | None = None
    oa_changed: bool = False  # edited (or made) in the OA, not yet taken by a reverse drain
    suite_changed: bool = False  # idem in the suite, not yet taken by a forward run
    oa_deleted: bool = False  # deleted in the OA, the suite still has it
    suite_deleted: bool = False  # deleted in the suite, the OA still has it
    oa_at: int = 0  # logical time of the last OA edit
    suite_at: int = 0  # ... of the last suite edit

    def oa_wins(self, policy: str) -> bool:
        if policy == "latest_wins":
            return self.oa_at > self.suite_at
        return policy == "oa_wins"

    def forward(self, policy: str) -> None:
        if self.suite_deleted:  # two-way: the linked schedule goes, whoever made it
            self.oa, self.suite_deleted, self.oa_changed = None, False, False
        elif self.suite_changed and not self.oa_deleted:  # (deleted in the OA: never back)
            if self.oa is not None and self.oa_changed and self.oa_wins(policy):
                self.suite_changed = False  # the OA's version stays, for reverse to push
            else:
                self.oa, self.suite_changed, self.oa_changed = self.suite, False, False

    def reverse(self, policy: str) -> None:
        if self.oa_deleted:
            self.suite, self.oa_deleted, self.suite_changed = None, False, False
        elif self.oa_changed:
            if self.suite_deleted and policy == "suite_wins":
                self.oa_changed = False  # the delete stands; forward removes the schedule
            elif self.suite is not None and self.suite_changed and not self.oa_wins(policy):
                self.oa_changed = False  # the suite's version stays, for forward to take
            else:  # pushed (re-created if the suite deleted it)
                self.suite, self.oa_changed = self.oa, False
                self.suite_changed = self.suite_deleted = False


def _mid(title: str) -> int:
    found = MID.match(title or "")
    assert found, f"a title calsync did not get from the test: {title!r}"
    return int(found.group(1))


def _local(day: int, hour: int) -> dt.datetime:
    """``hour`` o'clock in Shanghai, ``day`` days from TODAY, as aware UTC."""
    start = dt.datetime.combine(TODAY + dt.timedelta(days=day), dt.time(hour), SHANGHAI)
    return start.astimezone(dt.UTC)


def _graph_times(start: dt.datetime) -> dict[str, Any]:
    def node(value: dt.datetime) -> dict[str, str]:
        local = value.astimezone(SHANGHAI).replace(tzinfo=None)
        return {"dateTime": local.isoformat(timespec="seconds"), "timeZone": "Asia/Shanghai"}

    return {"start": node(start), "end": node(start + HOUR)}


def _naive(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(tzinfo=None)


days = st.integers(-2, 2)
hours = st.integers(1, 20)
words = st.sampled_from(WORDS)
picks = st.integers(0, 1_000)
sides = st.sampled_from(["oa", "suite"])
# what runs right after a change (besides the run rules: Hypothesis enables only some rules
# in each example, and a change should still meet runs of both directions)
thens = st.sampled_from([None, "forward", "reverse"])
others = st.lists(st.sampled_from(MAILBOXES), max_size=2, unique=True).map(tuple)


class TwoWayMachine(RuleBasedStateMachine):
    """One example: an emptied emulator, a fresh OA (a copy of the template at ``path``) and
    a two-way integration with ``policy``."""

    def __init__(self, policy: str, graph: Any, template: Path, path: Path) -> None:
        super().__init__()
        self.policy = policy
        self.graph = graph
        self.store = graph.store
        self.stack = contextlib.ExitStack()
        reset_mailboxes(graph)
        self.engine = self.stack.enter_context(oa_copy(template, path))
        self.meetings: dict[int, Meeting] = {}
        self.clock = itertools.count(1)
        self.edits = itertools.count(1)
        self.sync: TwoWay | None = None

    # --- set-up ----------------------------------------------------------------------------

    @initialize(
        oa_made=st.lists(
            st.tuples(st.sampled_from(MAILBOXES), others, words, days, hours), max_size=3
        ),
        suite_made=st.lists(
            st.tuples(st.sampled_from(MAILBOXES), others, words, days, hours), max_size=3
        ),
    )
    def start(self, oa_made: list[Any], suite_made: list[Any]) -> None:
        """The integration, meeting 0 (the template's OA-made schedule) and a few meetings
        made on each side, synced, so that the steps find linked meetings to change."""
        self.sync = TwoWay(self.engine, self.graph, self.policy, SETTINGS)
        # the schedule made in the OA before calsync came (the template's) is meeting 0
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.schedules).where(t.schedules.c.title == OA_MADE_TITLE)
            ).one()
        title = f"m0.0 {OA_MADE_TITLE}"
        oa_update(self.engine, row.id, title=title)
        self.meetings[0] = Meeting(
            0,
            "zhangwei@contoso.com",
            (),
            oa=Content(title, row.start_utc.replace(tzinfo=dt.UTC)),
            oa_changed=True,
            oa_at=next(self.clock),
        )
        for args in oa_made:
            self.create("oa", *args)
        for args in suite_made:
            self.create("suite", *args)
        self.forward()
        self.reverse()  # (no forward after it: a push not yet read back is a state to test)

    def _title(self, mid: int, word: str) -> str:
        return f"m{mid}.{next(self.edits)} {word}"

    # --- changes (the OA as the OA application makes them; the suite as its users do) ------

    @rule(
        side=sides,
        organiser=st.sampled_from(MAILBOXES),
        attendees=others,
        word=words,
        day=days,
        hour=hours,
        then=thens,
    )
    def create(
        self,
        side: str,
        organiser: str,
        attendees: tuple[str, ...],
        word: str,
        day: int,
        hour: int,
        then: str | None = None,
    ) -> None:
        mid = len(self.meetings)
        attendees = tuple(a for a in attendees if a != organiser)
        content = Content(self._title(mid, word), _local(day, hour))
        meeting = self.meetings[mid] = Meeting(mid, organiser, attendees)
        if side == "oa":
            oa_create(
                self.engine,
                LOGIN[organiser],
                content.title,
                content.start,
                attendees=tuple(LOGIN[a] for a in attendees),
            )
            meeting.oa, meeting.oa_changed, meeting.oa_at = content, True, next(self.clock)
        else:
            self._suite_create(meeting, content)
        self._then(then)

    def _suite_create(self, meeting: Meeting, content: Content) -> None:
        mid, organiser = meeting.mid, meeting.organiser
        self.store.add_event(
            organiser,
            {
                "subject": content.title,
                **_graph_times(content.start),
                "attendees": [
                    {"type": "required", "emailAddress": {"address": a, "name": PEOPLE[a]}}
                    for a in meeting.attendees
                ],
                "body": {"contentType": "text", "content": f"议程 of meeting {mid}"},
            },
        )
        meeting.suite, meeting.suite_changed, meeting.suite_at = content, True, next(self.clock)

    def _on(self, side: str) -> list[Meeting]:
        return [m for m in self.meetings.values() if getattr(m, side) is not None]

    def _schedule_id(self, meeting: Meeting) -> int:
        assert meeting.oa is not None
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(t.schedules.c.id).where(t.schedules.c.title == meeting.oa.title)
            ).scalar_one()

    def _event_id(self, meeting: Meeting) -> str:
        assert meeting.suite is not None
        [found] = [
            e["id"]
            for e in self.store.events(meeting.organiser)
            if e["isOrganizer"] and e["subject"] == meeting.suite.title
        ]
        return found

    @precondition(lambda self: self.meetings)
    @rule(side=sides, pick=picks, word=words, move=st.none() | st.tuples(days, hours), then=thens)
    def edit(
        self, side: str, pick: int, word: str, move: tuple[int, int] | None, then: str | None
    ) -> None:
        """A new title (and sometimes a new time) for a meeting on one side."""
        held = self._on(side)
        if held:
            self._edit(side, held[pick % len(held)], word, move)
        self._then(then)

    def _edit(self, side: str, meeting: Meeting, word: str, move: tuple[int, int] | None) -> None:
        current = meeting.oa if side == "oa" else meeting.suite
        assert current is not None
        start = _local(*move) if move else current.start
        content = Content(self._title(meeting.mid, word), start)
        if side == "oa":
            oa_update(
                self.engine,
                self._schedule_id(meeting),
                title=content.title,
                start_utc=_naive(start),
                end_utc=_naive(start + HOUR),
            )
            meeting.oa, meeting.oa_changed, meeting.oa_at = content, True, next(self.clock)
            return
        patch: dict[str, Any] = {"subject": content.title}
        if move:
            patch |= _graph_times(start)
        self.store.update_event(meeting.organiser, self._event_id(meeting), patch)
        meeting.suite, meeting.suite_changed, meeting.suite_at = content, True, next(self.clock)

    @precondition(lambda self: self.meetings)
    @rule(pick=picks, oa_word=words, suite_word=words, oa_first=st.booleans(), then=thens)
    def edit_both(
        self, pick: int, oa_word: str, suite_word: str, oa_first: bool, then: str | None
    ) -> None:
        """The same meeting edited on both sides: a conflict for the next run to settle."""
        both = [m for m in self._on("oa") if m.suite is not None]
        if both:
            meeting = both[pick % len(both)]
            edits = [("oa", oa_word), ("suite", suite_word)]
            for side, word in edits if oa_first else edits[::-1]:
                self._edit(side, meeting, word, None)
        self._then(then)

    @precondition(lambda self: self.meetings)
    @rule(side=sides, pick=picks, then=thens)
    def remove(self, side: str, pick: int, then: str | None) -> None:
        """The OA deletes a schedule, or an organiser deletes their meeting."""
        held = self._on(side)
        if held:
            self._remove(side, held[pick % len(held)])
        self._then(then)

    def _remove(self, side: str, meeting: Meeting) -> None:
        if side == "oa":
            oa_delete(self.engine, self._schedule_id(meeting))
            meeting.oa, meeting.oa_changed = None, False
            meeting.oa_deleted = meeting.suite is not None and not meeting.suite_deleted
        else:
            self.store.delete_event(meeting.organiser, self._event_id(meeting))
            meeting.suite, meeting.suite_changed = None, False
            meeting.suite_deleted = meeting.oa is not None and not meeting.oa_deleted

    # --- runs ------------------------------------------------------------------------------

    def _then(self, run: str | None) -> None:
        if run is not None:
            getattr(self, run)()

    @rule()
    def forward(self) -> None:
        assert self.sync is not None
        self.sync.forward()
        for meeting in self.meetings.values():
            meeting.forward(self.policy)

    @rule()
    def reverse(self) -> None:
        assert self.sync is not None
        self.sync.reverse()
        for meeting in self.meetings.values():
            meeting.reverse(self.policy)

    # --- invariants ------------------------------------------------------------------------

    def _oa_side(self) -> dict[int, Any]:
        """meeting → its schedule row (a meeting twice is a duplicate)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.schedules).order_by(t.schedules.c.id)).all()
        found: dict[int, Any] = {}
        for row in rows:
            mid = _mid(row.title)
            assert mid not in found, f"meeting {mid} twice in the OA: {found[mid].title!r}, {row}"
            found[mid] = row
        return found

    def _suite_side(self) -> tuple[dict[int, Any], dict[str, dict[str, Any]]]:
        """(meeting → its organiser instance, mailbox → suite id → attendee copy instance)."""
        assert self.sync is not None
        lo, hi = self.sync.forward_runner.window().bounds_utc()
        organisers: dict[int, Any] = {}
        copies: dict[str, dict[str, Any]] = {}
        for mailbox in MAILBOXES:
            for inst in self.store.calendar_view(mailbox, lo, hi):
                if inst.data.get("isCancelled"):
                    continue
                if not inst.data["isOrganizer"]:
                    copies.setdefault(mailbox, {})[inst.data["id"]] = inst
                    continue
                mid = _mid(inst.data["subject"])
                assert mid not in organisers, f"meeting {mid} twice in the suite"
                organisers[mid] = inst
        return organisers, copies

    @invariant()
    def each_side_holds_what_the_model_says(self) -> None:
        if self.sync is None:
            return
        oa = self._oa_side()
        suite, _ = self._suite_side()
        want_oa = {m.mid: m.oa for m in self.meetings.values() if m.oa is not None}
        want_suite = {m.mid: m.suite for m in self.meetings.values() if m.suite is not None}
        got_oa = {
            mid: Content(row.title, row.start_utc.replace(tzinfo=dt.UTC)) for mid, row in oa.items()
        }
        got_suite = {
            mid: Content(inst.data["subject"], inst.timing.start) for mid, inst in suite.items()
        }
        assert got_oa == want_oa, self._diff("OA", got_oa, want_oa)
        assert got_suite == want_suite, self._diff("suite", got_suite, want_suite)
        for mid, row in oa.items():
            assert row.end_utc == _naive(want_oa[mid].start + HOUR), (mid, row.end_utc)
        for mid, inst in suite.items():
            assert inst.timing.end == want_suite[mid].start + HOUR, (mid, inst.timing.end)

    @staticmethod
    def _diff(side: str, got: dict[int, Content], want: dict[int, Content]) -> str:
        lines = [f"the {side} differs from the model:"]
        for mid in sorted(set(got) | set(want)):
            if got.get(mid) != want.get(mid):
                lines.append(f"  meeting {mid}: holds {got.get(mid)}, expected {want.get(mid)}")
        return "\n".join(lines)

    def teardown(self) -> None:
        try:
            # the final settle, unless a step already failed (its error is the one to report)
            if self.sync is not None and sys.exc_info()[1] is None:
                self.settle_and_check()
        finally:
            self.stack.close()

    def settle_and_check(self) -> None:
        assert self.sync is not None
        self.forward()
        self.reverse()
        self.forward()
        for meeting in self.meetings.values():  # the model has settled too
            assert meeting.oa == meeting.suite, meeting
            assert not (meeting.oa_changed or meeting.suite_changed), meeting
            assert not (meeting.oa_deleted or meeting.suite_deleted), meeting
        self.each_side_holds_what_the_model_says()
        self.check_links()

        suite_writes, oa_writes = self.sync.suite_writes(), self.sync.oa_writes()
        assert self.sync.reverse() == {}, "a drain after the settle still pushed something"
        counts = self.sync.forward()
        assert set(counts) <= QUIET, f"a forward run after the settle still wrote: {counts}"
        assert (self.sync.suite_writes(), self.sync.oa_writes()) == (suite_writes, oa_writes)

    def check_links(self) -> None:
        """Each schedule: one meeting row, a link to its organiser's event and to every
        attendee's copy; no link to anything else."""
        oa = self._oa_side()
        organisers, copies = self._suite_side()
        with self.engine.connect() as conn:
            links = conn.execute(sa.select(t.links)).all()
            meetings = conn.execute(sa.select(t.meetings)).all()
        by_schedule: dict[int, dict[str, str]] = {}
        for link in links:
            held = by_schedule.setdefault(link.schedule_id, {})
            assert link.mailbox not in held, f"two links of schedule {link.schedule_id} in one box"
            held[link.mailbox] = link.suite_id
        assert set(by_schedule) <= {row.id for row in oa.values()}, "a link to no schedule"
        assert sorted(m.schedule_id for m in meetings) == sorted(row.id for row in oa.values())
        identity = {m.schedule_id: m.identity_key for m in meetings}
        for mid, row in oa.items():
            model = self.meetings[mid]
            event = organisers[mid]
            assert identity[row.id] == event.data["iCalUId"], f"meeting {mid}: meeting row"
            want = {model.organiser: event.data["id"]}
            for attendee in model.attendees:
                [copy] = [
                    c
                    for c in copies.get(attendee, {}).values()
                    if c.data["iCalUId"] == event.data["iCalUId"]
                ]
                assert copy.data["subject"] == event.data["subject"]
                want[attendee] = copy.data["id"]
            assert by_schedule.get(row.id) == want, f"meeting {mid}: links"


@pytest.mark.parametrize("policy", POLICIES)
def test_two_way_converges(
    graph_server: Any,
    oa_template: Path,  # noqa: F811
    tmp_path: Path,
    policy: str,
) -> None:
    """Random changes on both sides, interleaved with forward runs and reverse drains, end
    where the model says (module docstring)."""

    examples = itertools.count()
    try:
        run_state_machine_as_test(
            lambda: TwoWayMachine(
                policy, graph_server, oa_template, tmp_path / f"oa_{next(examples)}.db"
            ),
            settings=settings(
                max_examples=int(os.environ.get("CALSYNC_PROPERTY_EXAMPLES", "15")),
                stateful_step_count=int(os.environ.get("CALSYNC_PROPERTY_STEPS", "12")),
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        graph_server.reset()
