"""Reverse sync (OA → suite): drain the change outbox into the suites (E1, E6, F6, F18, F25).

``drain`` routes new outbox rows to deliveries (one per reverse integration whose scope holds
the schedule's creator), then delivers each integration's due changes on its own, so one suite
being down never holds up another. A delivery reads the schedule as it is when claimed
(several changes of one schedule coalesce into one write; one changed again meanwhile stays
pending for the next drain) and:

- schedule present, not yet in the suite: creates the event in the creator's mailbox with the
  participants as attendees (rooms as resources, F18) and calsync's key, which makes the create
  idempotent: a retry after a crash between the suite write and the OA commit finds the event
  instead of making a second one. Then a meeting row and a link, as if forward sync had read it;
- schedule present and linked: updates the creator's copy in place, unless the OA content
  equals what both sides agreed on at the last sync (an echo of calsync's own write, or a
  no-op edit). Two-way integrations first read the suite's copy: a copy changed since the last
  sync is a conflict, settled by ``conflict_policy`` and logged;
- schedule deleted: deletes the creator's copy (the connector applies the delete and
  cancellation modes), found through the link tombstones the delete trigger kept.

Throughput: a drain claims deliveries in batches (``CLAIM_BATCH``) and reads their schedules
in a few queries per batch, the next batch claimed while the last ones of the current batch
are in flight (``REFILL_AT``); ``execution.concurrency`` × the connector's
``writes_per_mailbox`` writes are in flight at once (at most that many per mailbox). A claim
holds a creator's changes side by side (``outbox.claim``): a connector that sends a mailbox's
writes together (Exchange) gets them so, the others dealt in turns over the mailboxes
(``interleaved``). Finished deliveries are recorded together, one OA transaction per group
(group commit). A schedule's first delivery that no drain touched before
(``outbox.Claimed.fresh``) creates without the lookup by key: nothing can carry its key yet.
Every retry, takeover of a lapsed claim and later delivery looks first.

Before delivering, an OA bulk delete is held by the mass-deletion guard (E10,
:mod:`calsync.sync.reverse_guard`): those deletions wait for an admin's ``confirm_deletes``
while creates and updates go on.

Failures are retried with exponential back-off; after ``max_attempts`` the delivery is dead,
with the reason in the sync log; other schedules flow on. A mapping error is dead at once
(retrying cannot fix it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from calsync.config import IntegrationConfig
from calsync.connectors.base import EventWrite, SuiteConnector
from calsync.errors import CalsyncError, ConnectorError, MappingError
from calsync.mapping.records import reverse_record
from calsync.mapping.text import looks_like_html
from calsync.model import Attendee, OAUser, Participant, ScheduleData, SuiteEvent
from calsync.oa import bulk, calendar_ids, outbox, store
from calsync.oa import schema as t
from calsync.oa.db import SQLITE_BEGIN_OPTION
from calsync.oa.rekey import calsync_key_prefix
from calsync.sync import process_tuning, reverse_guard
from calsync.sync.plan import event_extent

log = logging.getLogger("calsync.reverse")

CLAIM_BATCH = 500  # deliveries claimed (and their schedules read) at once
REFILL_AT = 2  # the next batch is claimed when at most this × the writes allowed in flight
# remain to be written
# × writes_per_mailbox: the most of one creator's changes a claim pulls in beside its oldest
# (the oldest due ones are always taken), so one creator's backlog never fills a claim
PER_CREATOR_SHARE = 2
CLAIM_ATTEMPTS = 5  # claims of due rows that came back empty (skipped: see _claim)
CLAIM_RETRY_S = 0.02  # × the attempt number between them
RECORD_BATCH = 500  # at most this many deliveries' bookkeeping in one OA transaction
# While other deliveries are still being written, a flush waits up to this long for them to
# join its batch (polling every RECORD_POLL_S); with none left it records at once.
RECORD_LINGER_S = 0.1
RECORD_POLL_S = 0.01
_READ = {SQLITE_BEGIN_OPTION: "DEFERRED"}  # snapshot reads never wait for SQLite's write lock
_UPDATE_LINK = (
    sa.update(t.links)
    .where(t.links.c.id == sa.bindparam("_id"))
    .values({c: sa.bindparam(f"v_{c}") for c in (
        "suite_id", "ical_uid", "identity_key", "change_key", "content_hash", "source_hash",
        "event_start_utc", "event_end_utc", "event_start_date", "event_end_date", "updated_at",
    )})
)  # fmt: skip


def calsync_key(integration_id: str, schedule_id: int) -> str:
    """The idempotency key and marker of the suite event made for one OA schedule."""
    return f"{calsync_key_prefix(integration_id)}{schedule_id}"


class Permanent(CalsyncError):
    """A delivery that retrying cannot fix (bad data or mapping): dead at once."""


# --- what the OA holds for one schedule ----------------------------------------------------


@dataclass(slots=True)
class Snapshot:
    schedule: dict[str, Any]
    participants: list[Participant]
    attendee_mailboxes: dict[int, str]  # participant user id → mailbox (binding field)
    room_name: str
    room_mailbox: str
    meeting: sa.Row[Any] | None
    links: list[sa.Row[Any]]

    def data(self) -> ScheduleData:
        """The schedule in forward sync's form, so both directions hash the same content."""
        s = self.schedule
        return ScheduleData(
            title=s["title"] or "",
            start=s["start_utc"].replace(tzinfo=dt.UTC) if s["start_utc"] else None,
            end=s["end_utc"].replace(tzinfo=dt.UTC) if s["end_utc"] else None,
            all_day=bool(s["all_day"]),
            start_date=s["start_date"],
            end_date=s["end_date"],
            timezone=s["timezone"] or "UTC",
            location=s["location"] or "",
            details=s["details"] or "",
            color=s["color"] or "",
            room_id=s["room_id"],
            creator_id=s["creator_id"],
            participants=list(self.participants),
        )


def load_snapshot(
    conn: sa.Connection,
    config: IntegrationConfig,
    schedule_id: int,
    room_mailboxes: dict[int, str],
) -> Snapshot | None:
    return load_snapshots(conn, config, [schedule_id], room_mailboxes).get(schedule_id)


def load_snapshots(
    conn: sa.Connection,
    config: IntegrationConfig,
    schedule_ids: list[int],
    room_mailboxes: dict[int, str],
) -> dict[int, Snapshot]:
    """The schedules that still exist among ``schedule_ids``, each with what a delivery needs,
    in a few queries per 500 schedules (not per schedule)."""
    out: dict[int, Snapshot] = {}
    s, p, mt, lk = t.schedules, t.participants, t.meetings, t.links
    for chunk in outbox.chunks(sorted(set(schedule_ids))):
        rows = {
            r["id"]: dict(r) for r in conn.execute(sa.select(s).where(s.c.id.in_(chunk))).mappings()
        }
        if not rows:
            continue
        ids = list(rows)
        parts: dict[int, list[Participant]] = {sid: [] for sid in ids}
        for r in conn.execute(sa.select(p).where(p.c.schedule_id.in_(ids)).order_by(p.c.id)):
            parts[r.schedule_id].append(
                Participant(
                    kind=r.kind,
                    email=r.email or "",
                    name=r.name or "",
                    user_id=r.user_id,
                    room_id=r.room_id,
                    response=r.response or "none",
                )
            )
        user_ids = sorted({x.user_id for ps in parts.values() for x in ps if x.user_id is not None})
        mailboxes: dict[int, str] = {}
        field_col = t.users.c[config.binding.field]
        for users in outbox.chunks(user_ids):
            for uid, value in conn.execute(
                sa.select(t.users.c.id, field_col).where(t.users.c.id.in_(users))
            ):
                mailbox = config.binding.mailbox_for(value)
                if mailbox:
                    mailboxes[uid] = mailbox
        room_ids = sorted({r["room_id"] for r in rows.values() if r["room_id"] is not None})
        room_names: dict[int, str] = {}
        if room_ids:
            room_names = dict(
                conn.execute(
                    sa.select(t.rooms.c.id, t.rooms.c.name).where(t.rooms.c.id.in_(room_ids))
                ).all()
            )
        meetings = {
            m.schedule_id: m
            for m in conn.execute(
                sa.select(mt).where(mt.c.integration_id == config.id, mt.c.schedule_id.in_(ids))
            )
        }
        links: dict[int, list[sa.Row[Any]]] = {sid: [] for sid in ids}
        for link in conn.execute(
            sa.select(lk)
            .where(lk.c.integration_id == config.id, lk.c.schedule_id.in_(ids))
            .order_by(lk.c.id)
        ):
            links[link.schedule_id].append(link)
        for sid, row in rows.items():
            room = row["room_id"]
            out[sid] = Snapshot(
                schedule=row,
                participants=parts[sid],
                attendee_mailboxes={
                    x.user_id: mailboxes[x.user_id]
                    for x in parts[sid]
                    if x.user_id is not None and x.user_id in mailboxes
                },
                room_name=(room_names.get(room) or "") if room is not None else "",
                room_mailbox=room_mailboxes.get(room, "") if room else "",
                meeting=meetings.get(sid),
                links=links[sid],
            )
    return out


def build_write(
    config: IntegrationConfig, library: Any, snap: Snapshot, owner: OAUser
) -> EventWrite | str:
    """The suite event for a schedule, or the filter's skip reason (F16/F17 reverse)."""
    s = snap.schedule
    attendees: list[Attendee] = []
    seen = {owner.mailbox}
    for part in snap.participants:
        if part.kind == "room":
            continue  # the schedule's room goes as a resource below
        email = (
            snap.attendee_mailboxes.get(part.user_id, "") if part.user_id else ""
        ) or part.email.strip().lower()
        if not email or email in seen:
            continue
        seen.add(email)
        attendees.append(Attendee(email=email, name=part.name, kind="required"))
    if snap.room_mailbox and snap.room_mailbox not in seen:
        attendees.append(Attendee(email=snap.room_mailbox, name=snap.room_name, kind="resource"))
    record = reverse_record(
        {
            **s,
            "room_name": snap.room_name,
            "room_email": snap.room_mailbox,
            "creator_email": owner.mailbox,
            "creator_name": owner.name,
            "participants": [{"email": a.email, "name": a.name, "kind": a.kind} for a in attendees],
        }
    )
    try:
        reason = library.filters(config.reverse_filters, "reverse", config.variables).skip_reason(
            record
        )
        if reason:
            return reason
        mapped = library.mapping(config.reverse_mapping_name).apply(record, config.variables)
    except MappingError as exc:
        raise Permanent(f"mapping: {exc}") from None
    body = mapped.get("body", record["details"])
    looks_html = looks_like_html(body)  # "Pat <pat@example.org>" is text, not a tag
    all_day = bool(s["all_day"])
    if all_day and (s["start_date"] is None or s["end_date"] is None):
        raise Permanent("all-day schedule without start/end dates")
    if not all_day and (s["start_utc"] is None or s["end_utc"] is None):
        raise Permanent("schedule without start/end time")
    return EventWrite(
        subject=mapped.get("subject", record["title"]),
        start=None if all_day else s["start_utc"].replace(tzinfo=dt.UTC),
        end=None if all_day else s["end_utc"].replace(tzinfo=dt.UTC),
        all_day=all_day,
        start_date=s["start_date"] if all_day else None,
        end_date=s["end_date"] if all_day else None,
        timezone=s["timezone"] or config.timezone,
        location=mapped.get("location", record["location"]),
        body=body,
        body_type="html" if looks_html else "text",
        attendees=attendees,
        key=calsync_key(config.id, s["id"]),
    )


# --- one integration's deliveries ----------------------------------------------------------


def interleaved(claimed: list[outbox.Claimed]) -> list[outbox.Claimed]:
    """A claim's deliveries (a creator's side by side) taken in turns over their creators: for
    a connector that sends one mailbox's writes one by one, the writes in flight then spread
    over many mailboxes instead of queueing for a few (each holding a place meanwhile)."""
    groups: dict[Any, list[outbox.Claimed]] = {}
    for item in claimed:
        key = item.creator_id if item.creator_id is not None else ("delivery", item.id)
        groups.setdefault(key, []).append(item)
    return [x for turn in itertools.zip_longest(*groups.values()) for x in turn if x is not None]


class _Unread:
    """``deliver``'s default: the schedule is read for this delivery alone."""


@dataclass(slots=True)
class _Rows:
    """The OA rows of recorded deliveries, written together (executemany, ``IN`` lists)."""

    new_links: list[dict[str, Any]] = field(default_factory=list)
    link_updates: list[tuple[int, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    new_meetings: list[dict[str, Any]] = field(default_factory=list)
    meeting_updates: list[tuple[int, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    spent_tombstones: list[int] = field(default_factory=list)  # schedule ids
    logs: list[dict[str, Any]] = field(default_factory=list)
    finished: list[outbox.Claimed] = field(default_factory=list)

    def write(self, conn: sa.Connection, integration_id: str) -> None:
        lk, mt, dl = t.links, t.meetings, t.deleted_links
        new_links = list(self.new_links)
        for link_id, values, insert in self.link_updates:  # an update that finds no row: gone
            params = {"_id": link_id, **{f"v_{k}": v for k, v in values.items()}}
            if not conn.execute(_UPDATE_LINK, params).rowcount:
                new_links.append(insert)
        bulk.insert_rows(conn, lk, new_links)
        new_meetings = list(self.new_meetings)
        for meeting_id, values, insert in self.meeting_updates:
            if not conn.execute(
                sa.update(mt).where(mt.c.id == meeting_id).values(**values)
            ).rowcount:
                new_meetings.append(insert)
        bulk.insert_rows(conn, mt, new_meetings)
        for chunk in outbox.chunks(self.spent_tombstones):
            conn.execute(
                sa.delete(dl).where(
                    dl.c.integration_id == integration_id, dl.c.schedule_id.in_(chunk)
                )
            )
        store.write_logs(conn, self.logs)
        outbox.finish_many(conn, self.finished)


_UNREAD = _Unread()


@dataclass(slots=True)
class Outcome:
    action: str  # created / updated / deleted / skipped / unchanged / conflict / nothing
    message: str = ""
    mailbox: str | None = None
    suite_id: str | None = None
    title: str | None = None
    event: SuiteEvent | None = None
    conflict: str | None = None  # the logged resolution, when both sides changed


@dataclass(slots=True)
class DrainReport:
    integration_id: str
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    held: list[dict[str, Any]] = field(default_factory=list)  # E10: per mailbox, with why

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "integration": self.integration_id,
            "counts": self.counts,
            "errors": self.errors,
            "held": self.held,
        }


class IntegrationDrain:
    """Delivers one reverse integration's due changes."""

    def __init__(
        self,
        engine: sa.Engine,
        config: IntegrationConfig,
        library: Any,
        connector: SuiteConnector,
        run: store.RunInfo,
        worker: str,
        confirm_deletes: bool = False,
    ) -> None:
        self.engine = engine
        self.confirm_deletes = confirm_deletes
        self.config = config
        self.library = library
        self.connector = connector
        self.run = run
        self.worker = worker
        self.report = DrainReport(config.id)
        self._mailbox_locks: dict[str, asyncio.Semaphore] = {}
        self._tried: set[int] = set()  # failed in this drain: retried by a later one
        # Outcomes waiting for their bookkeeping, written by one flusher task in batches.
        self._to_record: list[tuple[outbox.Claimed, Outcome, Snapshot | None, asyncio.Future[None]]]
        self._to_record = []
        self._flusher: asyncio.Task[None] | None = None
        self._unwritten = 0  # deliveries claimed or begun, their suite write not yet ended
        with engine.connect() as conn:
            scope = store.resolve_scope(conn, config.scope, config.binding)
            by_mailbox, _names, _problems = store.load_rooms(conn)
        connector.use_calendar_ids(calendar_ids.load(engine, config.id, connector.calendar_name))
        self.users = {u.id: u for u in scope.users}
        self._by_mailbox = {u.mailbox: u for u in reversed(scope.users)}  # the first one wins
        self.room_mailboxes = {room_id: mailbox for mailbox, room_id in by_mailbox.items()}

    # The OA work runs in threads (sync SQLAlchemy); the suite calls are awaited.
    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    def _claim(self, limit: int) -> list[outbox.Claimed]:
        """The next due deliveries. An empty claim while due, unclaimed ones are there
        (skipped: another transaction held them for a moment, ``outbox.has_due``) is tried
        again shortly, so a drain does not end with a change left for the next run."""
        for attempt in range(1, CLAIM_ATTEMPTS + 1):
            with self.engine.begin() as conn:
                claimed = outbox.claim(
                    conn,
                    self.config.id,
                    self.worker,
                    limit=limit,
                    lease=dt.timedelta(seconds=self.config.execution.claim_lease_s),
                    exclude=self._tried,
                    per_creator=PER_CREATOR_SHARE * self.connector.writes_per_mailbox,
                )
                if claimed or not outbox.has_due(conn, self.config.id, self._tried):
                    return claimed
            if attempt < CLAIM_ATTEMPTS:
                time.sleep(CLAIM_RETRY_S * attempt)
        return []

    def _guard_deletes(self) -> None:
        """E10 before delivering: hold an OA bulk delete, or release held ones when the
        admin confirmed (:mod:`calsync.sync.reverse_guard`)."""
        with self.engine.begin() as conn:
            if self.confirm_deletes:
                released = reverse_guard.release_held(conn, self.config.id, self.run)
                if released:
                    self.report.add("released", released)
                return
            held = reverse_guard.hold_deletes(conn, self.config, self.users.values(), self.run)
        for group in held:
            self.report.held.append(group.as_dict())
            if group.count:  # newly held by this drain; ``held`` lists every one still held
                self.report.add("held", group.count)
                log.warning(
                    "%s: %d suite deletion(s) of %s held: %s",
                    self.config.id,
                    group.count,
                    group.mailbox,
                    group.reason,
                )

    async def run_until_empty(self, deadline: float, batch: int | None = None) -> DrainReport:
        """Deliver claimed batches until none is due or ``deadline`` passes. The next batch is
        claimed (and its schedules read) once at most ``REFILL_AT`` × the writes allowed in
        flight remain to be written, so the suite requests never wait for a batch's
        slowest delivery, its bookkeeping nor the claim; what is claimed is delivered, the
        deadline only stops claiming."""
        batch = batch or CLAIM_BATCH
        in_flight = self.config.execution.concurrency * self.connector.writes_per_mailbox
        semaphore = asyncio.Semaphore(in_flight)
        refill_at = max(1, min(batch // 2, REFILL_AT * in_flight))
        outstanding = 0  # claimed, not yet recorded
        wake = asyncio.Event()  # set as each delivery is written and as it ends
        failures: list[Exception] = []

        async def one(item: outbox.Claimed, snap: Snapshot | None) -> None:
            nonlocal outstanding
            try:
                try:
                    async with semaphore:  # bounds the suite requests, not the bookkeeping
                        outcome = await self._write(item, snap)
                finally:
                    self._unwritten -= 1
                    wake.set()
                if outcome is not None:
                    await self._recorded(item, outcome, snap)
            except Exception as exc:  # both record their own failures: this is a bug
                failures.append(exc)
            finally:
                outstanding -= 1
                wake.set()

        async def until(level: int, writes_only: bool = False) -> None:
            while (self._unwritten if writes_only else outstanding) > level:
                wake.clear()
                await wake.wait()

        tasks: set[asyncio.Task[None]] = set()
        await self._db(self._guard_deletes)
        try:
            while time.monotonic() < deadline and not failures:
                claimed = await self._db(self._claim, batch)
                if not claimed:
                    if not outstanding:
                        break
                    # A delivery in flight may re-arm another: look once more after them.
                    await until(0)
                    continue
                if not self.connector.batches_mailbox_writes:
                    claimed = interleaved(claimed)
                snaps = await self._db(self._snapshots, [item.schedule_id for item in claimed])
                for item in claimed:
                    outstanding += 1
                    self._unwritten += 1
                    task = asyncio.create_task(one(item, snaps.get(item.schedule_id)))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await until(refill_at, writes_only=True)
        except asyncio.CancelledError:
            for task in list(tasks):
                task.cancel()
            raise
        except Exception:  # a claim or a read failed: what is in flight still ends and is recorded
            await until(0)
            await self._keep_calendar_ids()
            raise
        await until(0)
        await self._keep_calendar_ids()
        if failures:
            raise failures[0]
        return self.report

    async def _keep_calendar_ids(self) -> None:
        """Store the calendar ids the connector looked up: the next drain starts with them
        (a failure is logged there, never raised)."""
        ids = self.connector.calendar_ids()
        await self._db(
            calendar_ids.save, self.engine, self.config.id, self.connector.calendar_name, ids
        )

    def _lock(self, mailbox: str) -> asyncio.Semaphore:
        lock = self._mailbox_locks.get(mailbox)
        if lock is None:
            lock = self._mailbox_locks[mailbox] = asyncio.Semaphore(
                self.connector.writes_per_mailbox
            )
        return lock

    async def deliver(
        self, item: outbox.Claimed, snap: Snapshot | _Unread | None = _UNREAD
    ) -> None:
        """Write one change to the suite, then record it; ``snap``: the schedule as read for
        this delivery's batch (None: deleted), else it is read here."""
        if isinstance(snap, _Unread):
            try:
                snap = await self._db(self._snapshot, item.schedule_id)
            except Exception as exc:
                await self._failed(item, exc)
                return
        outcome = await self._write(item, snap)
        if outcome is not None:
            await self._recorded(item, outcome, snap)

    async def _write(self, item: outbox.Claimed, snap: Snapshot | None) -> Outcome | None:
        """The suite side of a delivery; None when it failed (recorded as a failure)."""
        try:
            if snap is None:
                return await self._delete(item)
            return await self._upsert(item, snap)
        except Exception as exc:  # one change's failure never stops the others
            await self._failed(item, exc)
            return None

    async def _recorded(
        self, item: outbox.Claimed, outcome: Outcome, snap: Snapshot | None
    ) -> None:
        """The OA side: links, sync log, the delivery done (batched with others)."""
        try:
            await self._record_soon(item, outcome, snap)
        except Exception as exc:
            await self._failed(item, exc)
            return
        self.report.add(outcome.action)
        if outcome.conflict:
            self.report.add("conflict")

    def _snapshot(self, schedule_id: int) -> Snapshot | None:
        return self._snapshots([schedule_id]).get(schedule_id)

    def _snapshots(self, schedule_ids: list[int]) -> dict[int, Snapshot]:
        with self.engine.connect().execution_options(**_READ) as conn:
            return load_snapshots(conn, self.config, schedule_ids, self.room_mailboxes)

    # --- create / update ---------------------------------------------------------------

    async def _upsert(self, item: outbox.Claimed, snap: Snapshot) -> Outcome:
        s = snap.schedule
        owner = self.users.get(s["creator_id"])
        title = s["title"]
        if owner is None:
            return Outcome("skipped", "the creator is not in this integration's scope", title=title)
        data_hash = snap.data().content_hash()
        link = self._owner_link(snap, owner)
        if link is not None and snap.meeting is not None and snap.meeting.content_hash == data_hash:
            return Outcome("unchanged", mailbox=owner.mailbox, title=title)
        write = build_write(self.config, self.library, snap, owner)
        if isinstance(write, str):
            return Outcome("skipped", write, mailbox=owner.mailbox, title=title)
        # The schedule's first delivery, never tried: no event with its key can exist yet,
        # so the create needs no lookup first (a retry or a takeover always looks).
        write.known_new = item.fresh and link is None and not snap.links
        async with self._lock(owner.mailbox):
            conflict = None
            if link is not None and self.config.direction == "both":
                current = await self.connector.get_event(owner.mailbox, link.suite_id)
                conflict, keep_suite = self._settle(s, link, current)
                if keep_suite:
                    return Outcome(
                        "skipped",
                        conflict or "",
                        mailbox=owner.mailbox,
                        suite_id=link.suite_id,
                        title=title,
                        conflict=conflict,
                    )
                if current is None:
                    link = None  # deleted in the suite while the OA edited it: write it anew
            if link is not None:
                try:
                    event = await self.connector.update_event(owner.mailbox, link.suite_id, write)
                    action = "updated"
                except ConnectorError:
                    if await self.connector.get_event(owner.mailbox, link.suite_id) is not None:
                        raise
                    event = await self.connector.create_event(owner.mailbox, write)
                    action = "created"
            else:
                event = await self.connector.create_event(owner.mailbox, write)
                action = "created"
        return Outcome(
            action,
            conflict or "",
            mailbox=owner.mailbox,
            suite_id=event.suite_id,
            title=title,
            event=event,
            conflict=conflict,
        )

    @staticmethod
    def _owner_link(snap: Snapshot, owner: OAUser) -> sa.Row[Any] | None:
        for link in snap.links:
            if link.mailbox == owner.mailbox:
                return link
        return None

    def _settle(
        self, s: dict[str, Any], link: sa.Row[Any], current: SuiteEvent | None
    ) -> tuple[str | None, bool]:
        """(the logged resolution or None, whether the suite's version stays)."""
        policy = self.config.conflict_policy
        if current is None:
            if policy == "suite_wins":
                return "conflict: edited in the OA, deleted in the suite; suite wins", True
            return f"conflict: edited in the OA, deleted in the suite; {policy}: re-created", False
        if not current.change_key or current.change_key == link.change_key:
            return None, False  # the suite's copy is as last synced: no conflict
        if policy == "oa_wins":
            return "conflict: edited on both sides; oa_wins: OA version written", False
        if policy == "suite_wins":
            return "conflict: edited on both sides; suite_wins: suite version kept", True
        oa_time = s["updated_at"].replace(tzinfo=dt.UTC)
        suite_time = current.last_modified
        if suite_time is not None and suite_time > oa_time:
            return (
                f"conflict: edited on both sides; latest_wins: suite edit ({suite_time:%H:%M:%S}Z) "
                f"is newer than the OA's ({oa_time:%H:%M:%S}Z), suite version kept",
                True,
            )
        return (
            "conflict: edited on both sides; latest_wins: OA edit is newer, OA version written",
            False,
        )

    # --- delete ------------------------------------------------------------------------

    async def _delete(self, item: outbox.Claimed) -> Outcome:
        creator_id, title, tombstones = await self._db(self._tombstones, item.schedule_id)
        owner = self.users.get(creator_id) if creator_id is not None else None
        targets = [tb for tb in tombstones if owner is not None and tb.mailbox == owner.mailbox]
        if not targets:
            return Outcome("nothing", title=title)
        for tb in targets:
            async with self._lock(tb.mailbox):
                await self.connector.delete_event(tb.mailbox, tb.suite_id)
        return Outcome(
            "deleted",
            "deleted in the OA",
            mailbox=targets[0].mailbox,
            suite_id=targets[0].suite_id,
            title=title,
        )

    def _tombstones(self, schedule_id: int) -> tuple[int | None, str | None, list[Any]]:
        ob = t.outbox
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(ob.c.creator_id, ob.c.title)
                .where(ob.c.schedule_id == schedule_id, ob.c.op == "delete")
                .order_by(ob.c.id.desc())
                .limit(1)
            ).first()
            tombstones = outbox.deleted_links(conn, self.config.id, schedule_id)
        return (row.creator_id if row else None), (row.title if row else None), tombstones

    # --- bookkeeping -------------------------------------------------------------------

    async def _record_soon(
        self, item: outbox.Claimed, outcome: Outcome, snap: Snapshot | None
    ) -> None:
        """Record a delivery, batched with the others finishing meanwhile (group commit: one
        OA transaction for many deliveries); raises what recording this one raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_record.append((item, outcome, snap, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        while True:
            await self._gather()
            if not self._to_record:
                return
            batch = self._to_record[:RECORD_BATCH]
            del self._to_record[:RECORD_BATCH]
            try:
                errors = await self._db(self._record_many, [entry[:3] for entry in batch])
            except Exception as exc:  # e.g. the thread pool is gone: fail them all
                errors = [exc] * len(batch)
            for (*_, done), error in zip(batch, errors, strict=True):
                if done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

    async def _gather(self) -> None:
        """Group commit: while deliveries are still being written, wait (``RECORD_LINGER_S``
        at most) for them to join the batch; a lone delivery (nothing else being written) is
        recorded at once. A drain's deliveries end a few at a time: with a fixed 20 ms wait a
        10,000-create Alibaba Mail drain recorded five per transaction, and gathering them
        made it 9% faster (less CPU per delivery for SQLAlchemy, psycopg and PostgreSQL)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + RECORD_LINGER_S
        while self._unwritten > 0 and len(self._to_record) < RECORD_BATCH and loop.time() < until:
            await asyncio.sleep(RECORD_POLL_S)

    def _record_many(
        self, entries: list[tuple[outbox.Claimed, Outcome, Snapshot | None]]
    ) -> list[BaseException | None]:
        """Record deliveries in one transaction, their rows written together; what each
        raised (None: recorded). A unique violation (forward sync linked a new event
        meanwhile) redoes them one by one, each with its own retry; any other error fails the
        batch (its deliveries are retried)."""
        try:
            with self.engine.begin() as conn:
                rows = _Rows()
                for item, outcome, snap in entries:
                    self._record(item, outcome, snap, rows)
                rows.write(conn, self.config.id)
            return [None] * len(entries)
        except sa.exc.IntegrityError:
            pass
        except Exception as exc:
            return [exc] * len(entries)
        errors: list[BaseException | None] = []
        for item, outcome, snap in entries:
            try:
                self._record(item, outcome, snap)
                errors.append(None)
            except Exception as exc:
                errors.append(exc)
        return errors

    def _record(
        self,
        item: outbox.Claimed,
        outcome: Outcome,
        snap: Snapshot | None,
        rows: _Rows | None = None,
    ) -> None:
        """Links, meeting, sync log and the delivery's status: added to ``rows`` (written
        with a batch), or written in a transaction of its own (retried once on a unique
        violation, with the schedule read anew)."""
        if rows is not None:
            self._rows(rows, item, outcome, snap)
            return
        for attempt in (1, 2):
            try:
                with self.engine.begin() as conn:
                    own = _Rows()
                    self._rows(own, item, outcome, snap)
                    own.write(conn, self.config.id)
                return
            except sa.exc.IntegrityError:  # forward sync linked the new event meanwhile
                if attempt == 2:
                    raise
                with self.engine.connect() as read:
                    snap = load_snapshot(read, self.config, item.schedule_id, self.room_mailboxes)

    def _rows(
        self, rows: _Rows, item: outbox.Claimed, outcome: Outcome, snap: Snapshot | None
    ) -> None:
        if outcome.event is not None and snap is not None:
            self._link_rows(rows, snap, outcome)
        if outcome.action == "deleted":
            rows.spent_tombstones.append(item.schedule_id)
        if outcome.action not in ("unchanged", "nothing"):
            rows.logs += self._logs(item, outcome)
        rows.finished.append(item)

    def _link_rows(self, rows: _Rows, snap: Snapshot, outcome: Outcome) -> None:
        """The link of the owner's copy and the meeting, as updates of the rows the snapshot
        holds (inserted if those went meanwhile: forward sync may have unlinked) or inserts
        (one that forward sync made meanwhile is a unique violation: the caller reads the
        schedule again)."""
        event = outcome.event
        assert event is not None and outcome.mailbox is not None
        now = store.utcnow()
        sid = snap.schedule["id"]
        data_hash = snap.data().content_hash()
        start_utc, end_utc, start_date, end_date = event_extent(event)
        values = {
            "suite_id": event.suite_id,
            "ical_uid": event.ical_uid[:400],
            "identity_key": event.identity_key[:400],
            "change_key": event.change_key[:200],
            "content_hash": data_hash,
            # the OA's content, not a mapping of this event: forward sync maps it when read
            "source_hash": "",
            "event_start_utc": start_utc,
            "event_end_utc": end_utc,
            "event_start_date": start_date,
            "event_end_date": end_date,
            "updated_at": now,
        }
        new_link = {
            "integration_id": self.config.id,
            "mailbox": outcome.mailbox,
            "schedule_id": sid,
            "created_at": now,
            **values,
        }
        known = next((k.id for k in snap.links if k.mailbox == outcome.mailbox), None)
        if known is None:
            rows.new_links.append(new_link)
        else:
            rows.link_updates.append((known, values, new_link))
        meeting = {"content_hash": data_hash}
        if outcome.action == "created":
            # a new event (the old one was deleted in the suite): the meeting is now known by
            # the new event's identity, so forward links its copies to it
            meeting |= {"identity_key": event.identity_key[:400], "owner_mailbox": outcome.mailbox}
        new_meeting = {
            "integration_id": self.config.id,
            "identity_key": event.identity_key[:400],
            "schedule_id": sid,
            "owner_mailbox": outcome.mailbox,
            "content_hash": data_hash,
        }
        if snap.meeting is None:
            rows.new_meetings.append(new_meeting)
        else:
            rows.meeting_updates.append((snap.meeting.id, meeting, new_meeting))

    def _logs(self, item: outbox.Claimed, outcome: Outcome) -> list[dict[str, Any]]:
        """The delivery's sync-log rows: a settled conflict is always one ``conflict`` row
        (naming the policy), followed by what was written, if anything."""
        owner = self._by_mailbox.get(outcome.mailbox or "")

        def row(action: str, message: str) -> dict[str, Any]:
            return {
                "logged_at": store.utcnow(),
                "integration_id": self.config.id,
                "run_id": self.run.run_id,
                "dag_id": self.run.dag_id,
                "direction": "reverse",
                "action": action,
                "user_id": owner.id if owner else None,
                "mailbox": outcome.mailbox,
                "schedule_id": item.schedule_id,
                "suite_id": outcome.suite_id,
                "title": (outcome.title or "")[:500] or None,
                "message": message[:4000],
            }

        if not outcome.conflict:
            return [row(outcome.action, outcome.message)]
        rows = [row("conflict", outcome.conflict)]
        if outcome.action != "skipped":  # the OA's version was written
            rows.append(row(outcome.action, "settles the conflict logged before"))
        return rows

    async def _failed(self, item: outbox.Claimed, exc: BaseException) -> None:
        self._tried.add(item.id)
        permanent = isinstance(exc, Permanent | MappingError)
        text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, CalsyncError) else str(exc)
        text = text.splitlines()[0][:1000] if text else type(exc).__name__
        if not isinstance(exc, CalsyncError | sa.exc.SQLAlchemyError):
            log.exception("schedule %s: unexpected error in delivery", item.schedule_id)
        try:
            status, attempts, next_at = await self._db(self._fail_tx, item, text, permanent)
        except Exception:  # the OA itself is failing: the lease lapses and a later drain retries
            log.exception("schedule %s: could not record the failure", item.schedule_id)
            self.report.errors.append(f"schedule {item.schedule_id}: {text}")
            self.report.add("failed")
            return
        self.report.add("dead" if status == "dead" else "retry")
        self.report.errors.append(f"schedule {item.schedule_id}: {text}")
        log.warning(
            "schedule %s: delivery failed (attempt %d%s): %s",
            item.schedule_id,
            attempts,
            ", dead" if status == "dead" else f", next at {next_at:%H:%M:%S}Z",
            text,
        )

    def _fail_tx(
        self, item: outbox.Claimed, text: str, permanent: bool
    ) -> tuple[str, int, dt.datetime | None]:
        ex = self.config.execution
        with self.engine.begin() as conn:
            status, attempts, next_at = outbox.fail(
                conn,
                item,
                text,
                max_attempts=1 if permanent else ex.max_attempts,
                base_s=ex.retry_backoff_s,
                max_s=ex.retry_backoff_max_s,
            )
            message = (
                f"dead after {attempts} attempt(s): {text}"
                if status == "dead"
                else f"attempt {attempts}/{ex.max_attempts} failed, retry at "
                f"{next_at:%Y-%m-%d %H:%M:%S}Z: {text}"
            )
            store.write_logs(
                conn,
                [
                    {
                        "logged_at": store.utcnow(),
                        "integration_id": self.config.id,
                        "run_id": self.run.run_id,
                        "dag_id": self.run.dag_id,
                        "direction": "reverse",
                        "action": "failed",
                        "user_id": None,
                        "mailbox": None,
                        "schedule_id": item.schedule_id,
                        "suite_id": None,
                        "title": None,
                        "message": message[:4000],
                    }
                ],
            )
        return status, attempts, next_at


# --- the whole drain ---------------------------------------------------------------------


def route_all(engine: sa.Engine, configs: list[IntegrationConfig]) -> outbox.RouteResult:
    """Route every unrouted outbox row (in batches) to the reverse integrations' deliveries."""
    reverse = [c for c in configs if c.enabled and c.reverse]
    with engine.connect() as conn:
        targets = [
            outbox.RouteTarget(
                c.id,
                frozenset(u.id for u in store.resolve_scope(conn, c.scope, c.binding).users),
            )
            for c in reverse
        ]
    total = outbox.RouteResult()
    while True:
        with engine.begin() as conn:
            part = outbox.route(conn, targets)
        total.rows += part.rows
        total.echoes += part.echoes
        total.deliveries += part.deliveries
        total.out_of_scope += part.out_of_scope
        if part.rows == 0:
            return total


ConnectorFactory = Callable[[IntegrationConfig], SuiteConnector]


async def drain(
    engine: sa.Engine,
    configs: list[IntegrationConfig],
    library: Any,
    connector_factory: ConnectorFactory,
    run: store.RunInfo,
    *,
    worker: str,
    time_budget_s: float = 300.0,
    confirm_deletes: bool = False,
) -> dict[str, Any]:
    """Route new changes, then deliver every reverse integration's due changes, each
    integration on its own (one failing suite never blocks another). ``confirm_deletes``:
    release the deletions the mass-deletion guard held, and hold none (E10)."""
    process_tuning.tune_for_sync()  # GIL switch interval and GC thresholds (see the module)
    routed = await asyncio.to_thread(route_all, engine, configs)
    deadline = time.monotonic() + time_budget_s
    reverse = [c for c in configs if c.enabled and c.reverse]

    async def one(config: IntegrationConfig) -> DrainReport:
        try:
            async with connector_factory(config) as connector:
                runner = await asyncio.to_thread(
                    IntegrationDrain,
                    engine,
                    config,
                    library,
                    connector,
                    run,
                    worker,
                    confirm_deletes,
                )
                return await runner.run_until_empty(deadline)
        except Exception as exc:
            log.exception("integration %s: drain failed", config.id)
            report = DrainReport(config.id)
            report.errors.append(f"{type(exc).__name__}: {exc}"[:500])
            return report

    reports = await asyncio.gather(*(one(c) for c in reverse))
    return {
        "routed": {
            "rows": routed.rows,
            "echoes": routed.echoes,
            "deliveries": routed.deliveries,
            "out_of_scope": routed.out_of_scope,
        },
        "integrations": [r.as_dict() for r in reports],
    }
