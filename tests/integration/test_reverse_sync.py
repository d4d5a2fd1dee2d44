"""Reverse sync (OA → Office 365) at engine level against the Graph emulator, on every OA
database: creates with participants and rooms, in-place updates, deletes, coalescing, echoes
of forward sync ignored, idempotent retry after a crash, retries and dead deliveries, and one
suite down never blocking another integration."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.config import IntegrationConfig, parse_integration
from calsync.oa import schema as t
from tests.integration.conftest import INTEGRATION_YAML, ForwardRunner
from tests.integration.reverse_helpers import (
    ReverseRunner,
    deliveries,
    oa_create,
    oa_delete,
    oa_update,
    reverse_logs,
    user_id,
)

ZHANG = "zhangwei@contoso.com"
LINA = "lina@contoso.com"
ROOM01 = "meeting01@contoso.com"


def reverse_config(direction: str = "reverse", extra: str = "", stem: str = "it_rev") -> Any:
    text = INTEGRATION_YAML + f"direction: {direction}\n" + extra
    text = text.replace("execution: {concurrency: 4, retries: 0}", "")
    text += "execution: {concurrency: 4, retries: 0, max_attempts: 3, retry_backoff_s: 0}\n"
    return parse_integration(Path(f"{stem}.yaml"), text)


@pytest.fixture
def rev_config() -> IntegrationConfig:
    return reverse_config()


@pytest.fixture
def reverse(seeded_oa: sa.Engine, rev_config: IntegrationConfig, graph: Any) -> ReverseRunner:
    return ReverseRunner(seeded_oa, [rev_config])


def made_by_calsync(graph: Any, mailbox: str) -> list[dict[str, Any]]:
    return [e for e in graph.store.events(mailbox) if "calsync" in str(e)]


def by_subject(graph: Any, mailbox: str, subject: str) -> list[dict[str, Any]]:
    return [e for e in graph.store.events(mailbox) if e.get("subject") == subject]


def test_create_update_delete_round(reverse: ReverseRunner, seeded_oa: sa.Engine, graph: Any):
    sid = oa_create(
        seeded_oa,
        "zhangwei",
        "季度评审 Q4 review",
        attendees=("lina",),
        externals=(("partner@example.org", "Partner"),),
        room="会议室01",
        details="议程：预算",
    )
    summary = reverse()
    assert reverse.counts(summary) == {"created": 1}
    [event] = by_subject(graph, ZHANG, "季度评审 Q4 review")
    emails = {a["emailAddress"]["address"].lower(): a["type"] for a in event["attendees"]}
    assert emails == {LINA: "required", "partner@example.org": "required", ROOM01: "resource"}
    assert "会议室01" in event["location"]["displayName"]
    # the attendee's copy arrives through the suite, not through a second write
    assert len(by_subject(graph, LINA, "季度评审 Q4 review")) == 1
    with seeded_oa.connect() as conn:
        links = conn.execute(sa.select(t.links).where(t.links.c.schedule_id == sid)).all()
        meetings = conn.execute(sa.select(t.meetings).where(t.meetings.c.schedule_id == sid)).all()
    assert [(lk.mailbox, lk.suite_id) for lk in links] == [(ZHANG, event["id"])]
    assert len(meetings) == 1
    assert [d["status"] for d in deliveries(seeded_oa)] == ["done"]

    # two edits before the next drain coalesce into one in-place update
    oa_update(seeded_oa, sid, title="季度评审 (moved)")
    oa_update(seeded_oa, sid, location="线上")
    summary = reverse()
    assert reverse.counts(summary) == {"updated": 1}
    [moved] = by_subject(graph, ZHANG, "季度评审 (moved)")
    assert moved["id"] == event["id"]
    assert "线上" in moved["location"]["displayName"]

    # nothing changed since: a drain finds nothing to do
    assert reverse.counts(reverse()) == {}

    oa_delete(seeded_oa, sid)
    summary = reverse()
    assert reverse.counts(summary) == {"deleted": 1}
    assert by_subject(graph, ZHANG, "季度评审 (moved)") == []
    actions = [(r["action"], r["schedule_id"]) for r in reverse_logs(seeded_oa)]
    assert actions == [("created", sid), ("updated", sid), ("deleted", sid)]
    with seeded_oa.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.deleted_links)).scalar() == 0


def test_all_day_and_unmapped_room(reverse: ReverseRunner, seeded_oa: sa.Engine, graph: Any):
    day = dt.date.today() + dt.timedelta(days=2)
    oa_create(seeded_oa, "lina", "团建 offsite", all_day=day, room="大会议室")
    assert reverse.counts(reverse()) == {"created": 1}
    [event] = by_subject(graph, LINA, "团建 offsite")
    assert event["isAllDay"] is True
    assert event["start"]["dateTime"].startswith(day.isoformat())
    # 大会议室 has no suite mailbox: location text only, no resource attendee
    assert event["location"]["displayName"] == "大会议室"
    assert all(a["type"] != "resource" for a in event.get("attendees", []))


def test_out_of_scope_creator_and_forward_echoes_are_not_pushed(
    seeded_oa: sa.Engine, graph: Any, config: IntegrationConfig
):
    rev = reverse_config(extra="scope: {users: [lina]}\n")
    runner = ReverseRunner(seeded_oa, [rev])
    # forward sync of another integration writes many schedules: all echoes
    ForwardRunner(seeded_oa, config)()
    oa_create(seeded_oa, "zhangwei", "not in scope")
    summary = runner()
    assert summary["routed"]["echoes"] > 0
    assert summary["routed"]["deliveries"] == 0
    assert summary["routed"]["out_of_scope"] == 1
    assert by_subject(graph, ZHANG, "not in scope") == []


def test_crash_after_suite_write_never_duplicates(
    reverse: ReverseRunner, seeded_oa: sa.Engine, graph: Any, monkeypatch: pytest.MonkeyPatch
):
    from calsync.sync.reverse import IntegrationDrain

    real = IntegrationDrain._record
    calls = {"n": 0}

    def crash_once(self: Any, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sa.exc.OperationalError("UPDATE", {}, Exception("connection lost"))
        real(self, *args)

    monkeypatch.setattr(IntegrationDrain, "_record", crash_once)
    oa_create(seeded_oa, "zhangwei", "crash test")
    assert reverse.counts(reverse()) == {"retry": 1}
    assert len(by_subject(graph, ZHANG, "crash test")) == 1  # written, link not recorded
    assert reverse.counts(reverse()) == {"created": 1}  # the retry finds it by its key
    assert len(by_subject(graph, ZHANG, "crash test")) == 1
    assert [d["status"] for d in deliveries(seeded_oa)] == ["done"]


def test_forward_run_between_crash_and_retry_links_instead_of_duplicating(
    seeded_oa: sa.Engine, graph: Any, monkeypatch: pytest.MonkeyPatch
):
    from calsync.sync.reverse import IntegrationDrain

    both = reverse_config("both")
    runner = ReverseRunner(seeded_oa, [both])
    monkeypatch.setattr(
        IntegrationDrain,
        "_record",
        lambda self, *a: (_ for _ in ()).throw(sa.exc.OperationalError("x", {}, Exception("down"))),
    )
    sid = oa_create(seeded_oa, "zhangwei", "adopted by forward", attendees=("lina",))
    runner()
    monkeypatch.undo()
    ForwardRunner(seeded_oa, both)()
    with seeded_oa.connect() as conn:
        titled = conn.execute(
            sa.select(t.schedules.c.id).where(t.schedules.c.title == "adopted by forward")
        ).all()
        links = conn.execute(sa.select(t.links.c.mailbox).where(t.links.c.schedule_id == sid)).all()
    assert [r.id for r in titled] == [sid]  # one schedule, not a copy from the suite
    assert sorted(r.mailbox for r in links) == [LINA, ZHANG]
    runner()
    assert len(by_subject(graph, ZHANG, "adopted by forward")) == 1
    assert deliveries(seeded_oa)[0]["status"] == "done"


def test_one_suite_down_never_blocks_another(seeded_oa: sa.Engine, graph: Any):
    good = reverse_config(stem="it_good")
    down = reverse_config(stem="it_down").model_copy(update={"connection_id": "calsync_nowhere"})
    runner = ReverseRunner(seeded_oa, [down, good])
    oa_create(seeded_oa, "lina", "flows on")
    summary = runner()
    assert runner.counts(summary, "it_good") == {"created": 1}
    [report] = [r for r in summary["integrations"] if r["integration"] == "it_down"]
    assert report["errors"] and "calsync_nowhere" in report["errors"][0]
    assert len(by_subject(graph, LINA, "flows on")) == 1
    # the unreachable integration's change waits, pending, for its suite to come back
    states = {(d["integration_id"], d["status"]) for d in deliveries(seeded_oa)}
    assert states == {("it_good", "done"), ("it_down", "pending")}


def test_failures_retry_with_backoff_then_go_dead_while_others_flow(
    seeded_oa: sa.Engine, graph: Any
):
    config = reverse_config(
        extra="",
    ).model_copy()
    runner = ReverseRunner(seeded_oa, [config])
    poison = oa_create(seeded_oa, "zhangwei", "poison")
    # every create in zhangwei's mailbox is refused (a 400 is not retried inside the request)
    graph.faults.update(fail_next=[{"path": f"{ZHANG}/events", "status": 400}] * 20)
    first = runner()
    assert runner.counts(first) == {"retry": 1}
    oa_create(seeded_oa, "lina", "healthy")
    second = runner()
    assert runner.counts(second) == {"created": 1, "retry": 1}
    third = runner()
    assert runner.counts(third) == {"dead": 1}
    [dead] = [d for d in deliveries(seeded_oa) if d["schedule_id"] == poison]
    assert dead["status"] == "dead" and dead["attempts"] == 3 and dead["last_error"]
    failed = [r for r in reverse_logs(seeded_oa) if r["action"] == "failed"]
    assert [r["schedule_id"] for r in failed] == [poison] * 3
    assert failed[-1]["message"].startswith("dead after 3 attempt(s)")
    # a dead delivery stays visible and quiet; a new OA edit gives it a fresh start
    assert runner.counts(runner()) == {}
    graph.faults.update(fail_next=[])
    oa_update(seeded_oa, poison, title="poison fixed")
    assert runner.counts(runner()) == {"created": 1}
    assert len(by_subject(graph, ZHANG, "poison fixed")) == 1


def test_two_drains_at_once_take_disjoint_changes(
    seeded_oa: sa.Engine, rev_config: IntegrationConfig, graph: Any
):
    """Two drains started together over one backlog: every change is delivered exactly once
    (row claims: SKIP LOCKED on PostgreSQL/MariaDB, the write lock on SQLite)."""
    import threading

    graph.faults.update(latency_ms=20)
    logins = ["zhangwei", "lina", "wangfang", "liuyang", "chenjing", "zhao4"]
    ids = [oa_create(seeded_oa, logins[i % len(logins)], f"parallel {i}") for i in range(36)]
    runners = [ReverseRunner(seeded_oa, [rev_config]) for _ in range(2)]
    before = graph.stats.snapshot()["by_kind"]
    summaries: list[dict[str, Any]] = []
    barrier = threading.Barrier(2)

    def go(runner: ReverseRunner, name: str) -> None:
        barrier.wait()
        summaries.append(runner(worker=name))

    threads = [threading.Thread(target=go, args=(r, f"drain-{i}")) for i, r in enumerate(runners)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    created = [ReverseRunner.counts(runners[0], s).get("created", 0) for s in summaries]
    assert sum(created) == len(ids)
    after = graph.stats.snapshot()["by_kind"]
    creates = sum(v for k, v in after.items() if "create" in k) - sum(
        v for k, v in before.items() if "create" in k
    )
    assert creates == len(ids)  # no change was written twice
    for i in range(36):
        mailbox = f"{logins[i % len(logins)]}@contoso.com".replace("zhao4@", "zhao4b@")
        assert len(by_subject(graph, mailbox, f"parallel {i}")) == 1
    assert {d["status"] for d in deliveries(seeded_oa)} == {"done"}
    logged = [r["schedule_id"] for r in reverse_logs(seeded_oa) if r["action"] == "created"]
    assert sorted(logged) == sorted(ids)


def test_next_batch_is_claimed_while_the_last_writes_are_in_flight(
    seeded_oa: sa.Engine, rev_config: IntegrationConfig, graph: Any, monkeypatch: pytest.MonkeyPatch
):
    """A drain does not wait for a batch's slowest write before claiming the next batch
    (REFILL_AT): some claim after the first runs while writes of the batch before it are
    still in flight; every change is still delivered once."""
    import time

    from calsync.sync import reverse as rev

    graph.faults.update(latency_ms=150)
    monkeypatch.setattr(rev, "CLAIM_BATCH", 6)
    claims: list[float] = []
    writes: list[tuple[float, float]] = []
    claim, write = rev.IntegrationDrain._claim, rev.IntegrationDrain._write

    def spy_claim(self: Any, limit: int) -> Any:
        claims.append(time.monotonic())
        return claim(self, limit)

    async def spy_write(self: Any, item: Any, snap: Any) -> Any:
        started = time.monotonic()
        try:
            return await write(self, item, snap)
        finally:
            writes.append((started, time.monotonic()))

    monkeypatch.setattr(rev.IntegrationDrain, "_claim", spy_claim)
    monkeypatch.setattr(rev.IntegrationDrain, "_write", spy_write)
    # One mailbox: its 4 writes at a time make each batch of 6 end in two waves.
    ids = [oa_create(seeded_oa, "lina", f"rolling {i}") for i in range(18)]
    summary = ReverseRunner(seeded_oa, [rev_config])()
    assert ReverseRunner.counts(ReverseRunner(seeded_oa, []), summary).get("created") == len(ids)
    assert len(claims) >= 3
    overlapped = [c for c in claims[1:] if any(s < c < e for s, e in writes)]
    assert overlapped, "every claim waited for all writes before it to end"
    assert {d["status"] for d in deliveries(seeded_oa)} == {"done"}


def test_deliveries_finishing_together_share_an_oa_transaction(
    seeded_oa: sa.Engine, rev_config: IntegrationConfig, graph: Any, monkeypatch: pytest.MonkeyPatch
):
    """Group commit: while other deliveries are still being written, a finished one waits
    (RECORD_LINGER_S at most) for them to join its OA transaction; a lone delivery, with
    nothing else being written, is recorded at once."""
    import time

    from calsync.sync import reverse as rev

    graph.faults.update(latency_ms=30)
    recorded: list[tuple[int, float]] = []
    ended: list[float] = []
    record_many, write = rev.IntegrationDrain._record_many, rev.IntegrationDrain._write

    def spy_record_many(self: Any, entries: Any) -> Any:
        recorded.append((len(entries), time.monotonic()))
        return record_many(self, entries)

    async def spy_write(self: Any, item: Any, snap: Any) -> Any:
        try:
            return await write(self, item, snap)
        finally:
            ended.append(time.monotonic())

    monkeypatch.setattr(rev.IntegrationDrain, "_record_many", spy_record_many)
    monkeypatch.setattr(rev.IntegrationDrain, "_write", spy_write)
    # Five mailboxes' writes in flight at once (concurrency 4 × 4 per mailbox).
    creators = ("lina", "zhangwei", "wangfang", "liuyang", "chenjing")
    for i in range(40):
        oa_create(seeded_oa, creators[i % len(creators)], f"together {i}")
    summary = ReverseRunner(seeded_oa, [rev_config])()
    assert ReverseRunner.counts(ReverseRunner(seeded_oa, []), summary).get("created") == 40
    assert sum(n for n, _ in recorded) == 40
    assert len(recorded) <= 8, f"{len(recorded)} OA transactions for 40 deliveries"

    # A lone change: recorded as soon as its write ends, not after the linger.
    recorded.clear()
    ended.clear()
    monkeypatch.setattr(rev, "RECORD_LINGER_S", 30.0)
    oa_create(seeded_oa, "lina", "alone")
    ReverseRunner(seeded_oa, [rev_config])()
    assert [n for n, _ in recorded] == [1]
    assert recorded[0][1] - ended[-1] < 5.0


def test_a_claim_that_skipped_due_rows_is_tried_again(
    seeded_oa: sa.Engine, rev_config: IntegrationConfig, graph: Any, monkeypatch: pytest.MonkeyPatch
):
    """A claim can come back empty while a due delivery is there (another transaction held
    its row for a moment: SKIP LOCKED passed it). The drain claims again instead of ending
    and leaving the change for the next run."""
    from calsync.oa import outbox

    claim = outbox.claim
    calls: list[int] = []

    def skipping_once(conn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return [] if len(calls) == 1 else claim(conn, *args, **kwargs)

    monkeypatch.setattr(outbox, "claim", skipping_once)
    oa_create(seeded_oa, "lina", "claimed at the second look")
    summary = ReverseRunner(seeded_oa, [rev_config])()
    assert ReverseRunner.counts(ReverseRunner(seeded_oa, []), summary) == {"created": 1}
    assert len(by_subject(graph, LINA, "claimed at the second look")) == 1
    assert len(calls) >= 2


def test_a_claim_takes_the_oldest_with_their_creators_other_changes(
    seeded_oa: sa.Engine, rev_config: IntegrationConfig
):
    """A claim takes the oldest due deliveries, each creator's beside its other due ones (in
    the order they came), up to the limit; a second drain's claim takes what is left, and
    ``interleaved`` deals a claim out in turns over the creators."""
    from calsync.oa import outbox
    from calsync.sync.reverse import interleaved, route_all

    order = ["lina", "zhangwei", "wangfang", "lina", "zhangwei", "lina", "liuyang", "lina"]
    ids = [oa_create(seeded_oa, who, f"claimed {i}") for i, who in enumerate(order)]
    route_all(seeded_oa, [rev_config])
    creator = {login: user_id(seeded_oa, login) for login in set(order)}
    lease = dt.timedelta(seconds=60)

    def claim(worker: str, limit: int) -> list[outbox.Claimed]:
        with seeded_oa.begin() as conn:
            return outbox.claim(conn, rev_config.id, worker, limit=limit, lease=lease)

    # A creator's share capped at two: lina's oldest and one more, then zhangwei's two...
    with seeded_oa.connect() as conn, conn.begin() as tx:
        capped = outbox.claim(conn, rev_config.id, "w", limit=5, lease=lease, per_creator=2)
        tx.rollback()
    assert [c.schedule_id for c in capped] == [ids[0], ids[3], ids[1], ids[4], ids[2]]

    # The three oldest are lina's, zhangwei's and wangfang's: lina's four come first (her
    # later ones pulled in), then zhangwei's first, cut at the limit of five.
    first = claim("drain-1", 5)
    assert [c.schedule_id for c in first] == [ids[0], ids[3], ids[5], ids[7], ids[1]]
    assert [c.creator_id for c in first] == [creator["lina"]] * 4 + [creator["zhangwei"]]
    rest = claim("drain-2", 10)
    assert [c.schedule_id for c in rest] == [ids[2], ids[4], ids[6]]  # oldest first, disjoint
    assert claim("drain-3", 10) == []

    dealt = interleaved(first + rest)
    assert [c.schedule_id for c in dealt] == [
        ids[0], ids[1], ids[2], ids[6], ids[3], ids[4], ids[5], ids[7]
    ]  # fmt: skip
