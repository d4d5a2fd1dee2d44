"""Two-way sync (``direction: both``) at engine level against the Graph emulator, on every OA
database: forward runs and reverse drains of one integration take turns and converge.

- an OA-made schedule goes out once through reverse sync; the next forward run links the
  organiser's event and the attendee's copy to it (no second schedule, no echo delivery);
- a suite-made meeting comes in through forward sync; an OA edit of it goes back in place, and
  alternating runs afterwards write nothing on either side (no ping-pong): suite writes are
  counted by the emulator, OA writes by the outbox rows calsync's own transactions leave
  (origin ``calsync:<integration>``);
- deletions of linked items propagate both ways (a suite delete removes the OA schedule even
  when the OA made it); items never linked are never deleted, on either side;
- a meeting edited on both sides between syncs is settled by ``conflict_policy`` in whichever
  order the two directions run: the winner's content ends up on both sides and one sync-log
  row with action ``conflict`` names the policy.

Found here (and by ``test_two_way_properties``), fixed in the engine: the external-attendee
line forward sync adds to the details came back doubled on every round trip; a forward run
between an OA delete and the drain brought the schedule back; an OA edit of a schedule just
pushed was taken for a conflict (under suite_wins, lost); a drain's conflict settled for the OA
logged no ``conflict`` row; an event re-created after a suite delete left the meeting under
the old event's identity.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from tests.integration.conftest import TODAY, ForwardRunner
from tests.integration.reverse_helpers import (
    ReverseRunner,
    deliveries,
    oa_create,
    oa_delete,
    oa_update,
)
from tests.integration.test_reverse_sync import reverse_config

ZHANG = "zhangwei@contoso.com"
LINA = "lina@contoso.com"
SUITE_WRITES = ("events_create", "event_update", "event_delete")
QUIET = {"unchanged", "skipped"}  # what a forward run with nothing to do counts


class TwoWay:
    """One two-way integration over the seeded OA and the Graph emulator: forward runs,
    reverse drains, and the write counters of both sides."""

    def __init__(
        self, engine: sa.Engine, graph: Any, policy: str = "latest_wins", extra: str = ""
    ) -> None:
        self.engine = engine
        self.graph = graph
        self.config = reverse_config("both", f"conflict_policy: {policy}\n{extra}", stem="it_two")
        self.forward_runner = ForwardRunner(engine, self.config)
        self.reverse_runner = ReverseRunner(engine, [self.config])

    def forward(self) -> dict[str, int]:
        result = self.forward_runner()
        errors = {m: r.error for m, r in result["results"].items() if r.error}
        assert not errors, errors
        assert "failed" not in result["totals"], result["totals"]
        return result["totals"]

    def reverse(self) -> dict[str, int]:
        summary = self.reverse_runner()
        [report] = summary["integrations"]
        assert not report["errors"], report["errors"]
        return report["counts"]

    def settle(self) -> None:
        """forward, reverse, forward: whatever is pending lands on both sides."""
        self.forward()
        self.reverse()
        self.forward()

    def suite_writes(self) -> int:
        kinds = self.graph.stats.snapshot()["by_kind"]
        return sum(kinds.get(k, 0) for k in SUITE_WRITES)

    def oa_writes(self) -> int:
        """Schedule changes calsync's own transactions made (forward sync)."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count())
                .select_from(t.outbox)
                .where(t.outbox.c.origin.like("calsync:%"))
            ).scalar_one()

    def schedule(self, schedule_id: int) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(t.schedules).where(t.schedules.c.id == schedule_id)
            ).first()

    def titled(self, title: str) -> list[int]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(sa.select(t.schedules.c.id).where(t.schedules.c.title == title))
                .scalars()
                .all()
            )

    def links(self, schedule_id: int) -> dict[str, str]:
        """mailbox → suite id of a schedule's links."""
        with self.engine.connect() as conn:
            return {
                r.mailbox: r.suite_id
                for r in conn.execute(
                    sa.select(t.links).where(t.links.c.schedule_id == schedule_id)
                )
            }

    def logs(self, action: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(t.sync_log)
                    .where(t.sync_log.c.action == action)
                    .order_by(t.sync_log.c.id)
                )
            )

    def event(self, mailbox: str, suite_id: str) -> dict[str, Any] | None:
        return next((e for e in self.graph.store.events(mailbox) if e["id"] == suite_id), None)

    def by_subject(self, mailbox: str, subject: str) -> list[dict[str, Any]]:
        return [e for e in self.graph.store.events(mailbox) if e.get("subject") == subject]


@pytest.fixture
def two_way(seeded_oa: sa.Engine, graph: Any) -> TwoWay:
    sync = TwoWay(seeded_oa, graph)
    sync.settle()  # the demo calendars are in the OA, nothing is pending
    return sync


def _suite_meeting(graph: Any, subject: str, day: int = 1) -> dict[str, Any]:
    start = dt.datetime.combine(TODAY + dt.timedelta(days=day), dt.time(14))
    return graph.store.add_event(
        ZHANG,
        {
            "subject": subject,
            "start": {"dateTime": start.isoformat(), "timeZone": "Asia/Shanghai"},
            "end": {
                "dateTime": (start + dt.timedelta(hours=1)).isoformat(),
                "timeZone": "Asia/Shanghai",
            },
            "attendees": [
                {"type": "required", "emailAddress": {"address": LINA, "name": "李娜"}},
                {
                    "type": "required",
                    "emailAddress": {"address": "partner@fabrikam.com", "name": "Pat Partner"},
                },
            ],
            "location": {"displayName": "一楼会议室101"},
            "body": {"contentType": "html", "content": "<p>议程 Agenda &amp; Q&amp;A</p>"},
        },
    )


def test_oa_made_schedule_goes_out_once_and_forward_links_it(two_way: TwoWay) -> None:
    sid = oa_create(
        two_way.engine,
        "zhangwei",
        "OA 立项会 kickoff",
        attendees=("lina",),
        externals=(("partner@fabrikam.com", "Pat Partner"),),
        details="议程：预算",
    )
    assert two_way.reverse() == {"created": 1}
    [event] = two_way.by_subject(ZHANG, "OA 立项会 kickoff")
    [copy] = two_way.by_subject(LINA, "OA 立项会 kickoff")
    writes = two_way.suite_writes()

    counts = two_way.forward()
    assert counts.get("created", 0) == 0, counts
    assert counts.get("linked") == 1, counts  # the attendee's copy
    assert two_way.titled("OA 立项会 kickoff") == [sid]  # no second schedule
    assert two_way.links(sid) == {ZHANG: event["id"], LINA: copy["id"]}
    with two_way.engine.connect() as conn:
        meetings = conn.execute(sa.select(t.meetings).where(t.meetings.c.schedule_id == sid)).all()
    assert [m.identity_key for m in meetings] == [event["iCalUId"]]

    # what forward wrote is an echo: nothing goes back, and nothing is left to do
    summary = two_way.reverse_runner()
    assert summary["routed"]["deliveries"] == 0
    assert two_way.reverse() == {}
    assert set(two_way.forward()) <= QUIET
    assert two_way.suite_writes() == writes
    assert [d["status"] for d in deliveries(two_way.engine)] == ["done"]


def test_suite_meeting_edited_in_the_oa_goes_back_in_place_without_ping_pong(
    two_way: TwoWay,
) -> None:
    made = _suite_meeting(two_way.graph, "Suite 评审 review")
    assert two_way.forward().get("created") == 1
    [sid] = two_way.titled("Suite 评审 review")
    oa_before = two_way.oa_writes()

    oa_update(two_way.engine, sid, title="Suite 评审 review (OA 改)", location="线上")
    writes = two_way.suite_writes()
    assert two_way.reverse() == {"updated": 1}
    assert two_way.suite_writes() == writes + 1  # one PATCH, in place
    event = two_way.event(ZHANG, made["id"])
    assert event is not None and event["subject"] == "Suite 评审 review (OA 改)"
    assert event["location"]["displayName"] == "线上"
    [copy] = [e for e in two_way.graph.store.events(LINA) if e["iCalUId"] == made["iCalUId"]]
    assert copy["subject"] == "Suite 评审 review (OA 改)"

    counts = two_way.forward()
    assert set(counts) <= QUIET, counts
    assert two_way.schedule(sid).title == "Suite 评审 review (OA 改)"

    # several alternating runs: nothing is written on either side any more
    suite, oa = two_way.suite_writes(), two_way.oa_writes()
    for _ in range(3):
        assert two_way.reverse() == {}
        assert set(two_way.forward()) <= QUIET
    assert (two_way.suite_writes(), two_way.oa_writes()) == (suite, oa)
    assert oa == oa_before  # forward sync never rewrote the schedule after the OA edit


def test_suite_delete_removes_the_oa_made_schedule(two_way: TwoWay) -> None:
    sid = oa_create(two_way.engine, "zhangwei", "OA 周会 to be cancelled", attendees=("lina",))
    two_way.reverse()
    two_way.forward()
    assert set(two_way.links(sid)) == {ZHANG, LINA}
    [event] = two_way.by_subject(ZHANG, "OA 周会 to be cancelled")

    two_way.graph.store.delete_event(ZHANG, event["id"])  # the organiser cancels in Outlook
    counts = two_way.forward()
    assert counts.get("deleted") == 1, counts
    assert two_way.schedule(sid) is None  # two-way: deleted although the OA made it
    writes = two_way.suite_writes()
    assert two_way.reverse() == {}  # forward's delete is an echo
    assert two_way.suite_writes() == writes
    assert two_way.titled("OA 周会 to be cancelled") == []


def test_oa_delete_removes_the_suite_meeting(two_way: TwoWay) -> None:
    made = _suite_meeting(two_way.graph, "Suite 站会 standup")
    two_way.forward()
    [sid] = two_way.titled("Suite 站会 standup")

    oa_delete(two_way.engine, sid)
    assert two_way.reverse() == {"deleted": 1}
    assert two_way.event(ZHANG, made["id"]) is None
    [copy] = [e for e in two_way.graph.store.events(LINA) if e["iCalUId"] == made["iCalUId"]]
    assert copy["isCancelled"]
    counts = two_way.forward()
    assert counts.get("created", 0) == 0, counts
    assert two_way.titled("Suite 站会 standup") == []


def test_oa_delete_seen_by_forward_before_reverse_is_not_brought_back(two_way: TwoWay) -> None:
    """The OA deletes a schedule calsync pushed; a forward run comes before the drain."""
    sid = oa_create(two_way.engine, "zhangwei", "OA 面试 interview", attendees=("lina",))
    two_way.reverse()
    two_way.forward()
    oa_delete(two_way.engine, sid)
    counts = two_way.forward()
    assert counts.get("created", 0) == 0, counts
    assert two_way.titled("OA 面试 interview") == []
    assert two_way.reverse() == {"deleted": 1}
    assert two_way.by_subject(ZHANG, "OA 面试 interview") == []
    two_way.forward()
    assert two_way.titled("OA 面试 interview") == []


def test_items_never_linked_are_never_deleted(two_way: TwoWay) -> None:
    """An OA schedule whose creator has no mailbox (never pushed) and a suite event the
    filters keep out (never linked) outlive deletes on both sides around them."""
    lone = oa_create(two_way.engine, "sunli", "OA 行政 no mailbox")
    private = two_way.graph.store.add_event(
        ZHANG,
        {
            "subject": "[no-sync] 私事 private",
            "start": {"dateTime": f"{TODAY + dt.timedelta(days=1)}T12:00:00", "timeZone": "UTC"},
            "end": {"dateTime": f"{TODAY + dt.timedelta(days=1)}T13:00:00", "timeZone": "UTC"},
        },
    )
    pushed = oa_create(two_way.engine, "zhangwei", "OA 推送 pushed")
    pulled = _suite_meeting(two_way.graph, "Suite 拉取 pulled")
    two_way.settle()
    [pulled_sid] = two_way.titled("Suite 拉取 pulled")
    [pushed_event] = two_way.by_subject(ZHANG, "OA 推送 pushed")

    oa_delete(two_way.engine, pulled_sid)
    two_way.graph.store.delete_event(ZHANG, pushed_event["id"])
    two_way.settle()
    two_way.reverse()
    assert two_way.schedule(pushed) is None
    assert two_way.event(ZHANG, pulled["id"]) is None
    assert two_way.schedule(lone) is not None
    assert two_way.event(ZHANG, private["id"]) is not None
    assert two_way.links(lone) == {}


# --- conflicts ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["oa_wins", "suite_wins", "latest_wins"])
def test_oa_edit_of_a_pushed_schedule_is_no_conflict(
    seeded_oa: sa.Engine, graph: Any, policy: str
) -> None:
    """Reverse sync pushed a schedule; the OA edits it again and a forward run comes before
    the next drain. The suite's copy is as pushed (its change key unchanged): no conflict, the
    OA's edit goes out. (Forward used to take the hash difference between the OA's content
    and its own mapping of the pushed event for a suite edit: a logged conflict, and under
    suite_wins the OA's edit was overwritten.)"""
    sync = TwoWay(seeded_oa, graph, policy)
    sid = oa_create(seeded_oa, "zhangwei", "推送后再改 pushed", attendees=("lina",))
    sync.reverse()
    oa_update(seeded_oa, sid, title="推送后再改 edited again")
    sync.forward()
    assert sync.schedule(sid).title == "推送后再改 edited again"
    assert sync.reverse() == {"updated": 1}
    sync.forward()
    assert sync.schedule(sid).title == "推送后再改 edited again"
    assert len(sync.by_subject(ZHANG, "推送后再改 edited again")) == 1
    assert sync.logs("conflict") == []


@pytest.mark.parametrize("runs_first", ["forward", "reverse"])
@pytest.mark.parametrize("policy", ["oa_wins", "suite_wins"])
def test_oa_edit_against_a_suite_delete(
    seeded_oa: sa.Engine, graph: Any, policy: str, runs_first: str
) -> None:
    """The organiser deletes a meeting in the suite while the OA edits it. A forward run that
    comes first deletes the schedule (a delete of a linked item propagates); a drain that comes
    first settles the conflict: oa_wins re-creates the event (a new item, which forward then
    links, attendee copy included), suite_wins lets the delete stand. Both sides agree."""
    sync = TwoWay(seeded_oa, graph, policy)
    made = _suite_meeting(graph, "删改 edit vs delete")
    sync.forward()
    [sid] = sync.titled("删改 edit vs delete")
    oa_update(seeded_oa, sid, title="删改 edited in the OA")
    graph.store.delete_event(ZHANG, made["id"])
    if runs_first == "forward":
        sync.settle()
    else:
        sync.reverse()
        sync.forward()
    sync.reverse()
    if runs_first == "reverse" and policy == "oa_wins":
        [event] = sync.by_subject(ZHANG, "删改 edited in the OA")
        assert event["id"] != made["id"]
        assert sync.schedule(sid).title == "删改 edited in the OA"
        [copy] = [e for e in graph.store.events(LINA) if e["iCalUId"] == event["iCalUId"]]
        assert sync.links(sid) == {ZHANG: event["id"], LINA: copy["id"]}
        with seeded_oa.connect() as conn:
            keys = conn.execute(
                sa.select(t.meetings.c.identity_key).where(t.meetings.c.schedule_id == sid)
            ).all()
        assert [k.identity_key for k in keys] == [event["iCalUId"]]  # one meeting, new identity
        assert len(sync.logs("conflict")) == 1
    else:
        assert sync.schedule(sid) is None
        assert sync.by_subject(ZHANG, "删改 edited in the OA") == []
    assert sync.reverse() == {}
    assert set(sync.forward()) <= QUIET


OA_TITLE = "冲突 conflict: OA edit"
SUITE_TITLE = "冲突 conflict: suite edit"


@pytest.mark.parametrize("runs_first", ["forward", "reverse"])
@pytest.mark.parametrize(
    ("policy", "edited_last", "winner"),
    [
        ("oa_wins", "suite", "oa"),
        ("suite_wins", "oa", "suite"),
        ("latest_wins", "suite", "suite"),
        ("latest_wins", "oa", "oa"),
    ],
    ids=["oa_wins", "suite_wins", "latest_wins-suite_newer", "latest_wins-oa_newer"],
)
def test_conflict_settled_by_policy(
    seeded_oa: sa.Engine, graph: Any, policy: str, edited_last: str, winner: str, runs_first: str
) -> None:
    """Two meetings (one made in the OA, one in the suite), each edited on both sides between
    syncs: the policy's winner ends up on both sides, whichever direction runs first, with one
    ``conflict`` record per meeting naming the policy. oa_wins and suite_wins are tested
    against a later edit of the losing side."""
    sync = TwoWay(seeded_oa, graph, policy)
    sync.settle()
    oa_made = oa_create(seeded_oa, "zhangwei", "冲突 OA-made", attendees=("lina",))
    suite_made = _suite_meeting(graph, "冲突 suite-made")
    sync.reverse()
    sync.forward()
    [suite_made_sid] = sync.titled("冲突 suite-made")
    [oa_made_event] = sync.by_subject(ZHANG, "冲突 OA-made")
    meetings = {oa_made: oa_made_event, suite_made_sid: suite_made}
    for sid, event in meetings.items():
        assert set(sync.links(sid)) == {ZHANG, LINA}
        assert sync.links(sid)[ZHANG] == event["id"]

    def edit(side: str) -> None:
        for sid, event in meetings.items():
            if side == "oa":
                oa_update(seeded_oa, sid, title=f"{OA_TITLE} {sid}")
            else:
                graph.store.update_event(ZHANG, event["id"], {"subject": f"{SUITE_TITLE} {sid}"})

    edit("oa" if edited_last == "suite" else "suite")
    time.sleep(0.02)  # the later edit is later on both clocks
    edit(edited_last)

    if runs_first == "forward":
        sync.forward()
        sync.reverse()
        sync.forward()
    else:
        sync.reverse()
        sync.forward()
        sync.reverse()

    for sid, event in meetings.items():
        title = f"{OA_TITLE if winner == 'oa' else SUITE_TITLE} {sid}"
        assert sync.schedule(sid).title == title
        organiser = sync.event(ZHANG, event["id"])
        assert organiser is not None and organiser["subject"] == title
        [copy] = [e for e in graph.store.events(LINA) if e["iCalUId"] == event["iCalUId"]]
        assert copy["subject"] == title
    conflicts = sync.logs("conflict")
    assert sorted(c.schedule_id for c in conflicts) == sorted(meetings), [
        (c.direction, c.schedule_id, c.message) for c in conflicts
    ]
    assert all(policy in c.message for c in conflicts)

    # settled: nothing more to do on either side
    suite, oa = sync.suite_writes(), sync.oa_writes()
    assert sync.reverse() == {}
    assert set(sync.forward()) <= QUIET
    assert (sync.suite_writes(), sync.oa_writes()) == (suite, oa)
    assert len(sync.logs("conflict")) == len(meetings)
