"""Reverse sync (OA → suite): drain the change outbox into the suites (E1, E6, F6, F18, F25).

``drain`` routes new outbox rows to deliveries (one per reverse integration whose scope holds
the schedule's creator), then delivers each integration's due changes on its own, so one suite
being down never holds up another. A delivery reads the schedule as it is now (several changes
of one schedule coalesce into one write) and:

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

Failures are retried with exponential back-off; after ``max_attempts`` the delivery is dead,
with the reason in the sync log; other schedules flow on. A mapping error is dead at once
(retrying cannot fix it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
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
from calsync.oa import outbox, store
from calsync.oa import schema as t
from calsync.sync.plan import event_extent

log = logging.getLogger("calsync.reverse")

PER_MAILBOX = 4  # Graph allows 4 concurrent requests per mailbox; the others are no tighter


def calsync_key(integration_id: str, schedule_id: int) -> str:
    """The idempotency key and marker of the suite event made for one OA schedule."""
    return f"calsync:{integration_id}:{schedule_id}"


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
    row = (
        conn.execute(sa.select(t.schedules).where(t.schedules.c.id == schedule_id))
        .mappings()
        .first()
    )
    if row is None:
        return None
    p = t.participants
    parts = [
        Participant(
            kind=r.kind,
            email=r.email or "",
            name=r.name or "",
            user_id=r.user_id,
            room_id=r.room_id,
            response=r.response or "none",
        )
        for r in conn.execute(sa.select(p).where(p.c.schedule_id == schedule_id).order_by(p.c.id))
    ]
    user_ids = {x.user_id for x in parts if x.user_id is not None}
    mailboxes: dict[int, str] = {}
    if user_ids:
        field_col = t.users.c[config.binding.field]
        for uid, value in conn.execute(
            sa.select(t.users.c.id, field_col).where(t.users.c.id.in_(user_ids))
        ):
            mailbox = config.binding.mailbox_for(value)
            if mailbox:
                mailboxes[uid] = mailbox
    room_name = ""
    if row["room_id"] is not None:
        room_name = (
            conn.execute(sa.select(t.rooms.c.name).where(t.rooms.c.id == row["room_id"])).scalar()
            or ""
        )
    meeting = conn.execute(
        sa.select(t.meetings).where(
            t.meetings.c.integration_id == config.id, t.meetings.c.schedule_id == schedule_id
        )
    ).first()
    links = list(
        conn.execute(
            sa.select(t.links)
            .where(t.links.c.integration_id == config.id, t.links.c.schedule_id == schedule_id)
            .order_by(t.links.c.id)
        )
    )
    return Snapshot(
        schedule=dict(row),
        participants=parts,
        attendee_mailboxes=mailboxes,
        room_name=room_name,
        room_mailbox=room_mailboxes.get(row["room_id"], "") if row["room_id"] else "",
        meeting=meeting,
        links=links,
    )


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

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {"integration": self.integration_id, "counts": self.counts, "errors": self.errors}


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
    ) -> None:
        self.engine = engine
        self.config = config
        self.library = library
        self.connector = connector
        self.run = run
        self.worker = worker
        self.report = DrainReport(config.id)
        self._mailbox_locks: dict[str, asyncio.Semaphore] = {}
        self._tried: set[int] = set()  # failed in this drain: retried by a later one
        with engine.connect() as conn:
            scope = store.resolve_scope(conn, config.scope, config.binding)
            by_mailbox, _names, _problems = store.load_rooms(conn)
        self.users = {u.id: u for u in scope.users}
        self.room_mailboxes = {room_id: mailbox for mailbox, room_id in by_mailbox.items()}

    # The OA work runs in threads (sync SQLAlchemy); the suite calls are awaited.
    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    def _claim(self, limit: int) -> list[outbox.Claimed]:
        with self.engine.begin() as conn:
            return outbox.claim(
                conn,
                self.config.id,
                self.worker,
                limit=limit,
                lease=dt.timedelta(seconds=self.config.execution.claim_lease_s),
                exclude=self._tried,
            )

    async def run_until_empty(self, deadline: float, batch: int = 200) -> DrainReport:
        semaphore = asyncio.Semaphore(self.config.execution.concurrency * PER_MAILBOX)
        while time.monotonic() < deadline:
            claimed = await self._db(self._claim, batch)
            if not claimed:
                break

            async def one(item: outbox.Claimed) -> None:
                async with semaphore:
                    await self.deliver(item)

            await asyncio.gather(*(one(item) for item in claimed))
        return self.report

    def _lock(self, mailbox: str) -> asyncio.Semaphore:
        lock = self._mailbox_locks.get(mailbox)
        if lock is None:
            lock = self._mailbox_locks[mailbox] = asyncio.Semaphore(PER_MAILBOX)
        return lock

    async def deliver(self, item: outbox.Claimed) -> None:
        try:
            snap = await self._db(self._snapshot, item.schedule_id)
            if snap is None:
                outcome = await self._delete(item)
            else:
                outcome = await self._upsert(item, snap)
        except Exception as exc:  # one change's failure never stops the others
            await self._failed(item, exc)
            return
        try:
            await self._db(self._record, item, outcome, snap)
        except Exception as exc:
            await self._failed(item, exc)
            return
        self.report.add(outcome.action)
        if outcome.conflict:
            self.report.add("conflict")

    def _snapshot(self, schedule_id: int) -> Snapshot | None:
        with self.engine.connect() as conn:
            return load_snapshot(conn, self.config, schedule_id, self.room_mailboxes)

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

    def _record(self, item: outbox.Claimed, outcome: Outcome, snap: Snapshot | None) -> None:
        """Links, meeting, sync log and the delivery's status in one transaction."""
        for attempt in (1, 2):
            try:
                with self.engine.begin() as conn:
                    if outcome.event is not None and snap is not None:
                        self._store_link(conn, snap, outcome)
                    if outcome.action == "deleted":
                        conn.execute(
                            sa.delete(t.deleted_links).where(
                                t.deleted_links.c.integration_id == self.config.id,
                                t.deleted_links.c.schedule_id == item.schedule_id,
                            )
                        )
                    if outcome.action not in ("unchanged", "nothing"):
                        store.write_logs(conn, self._logs(item, outcome))
                    outbox.finish(conn, item)
                return
            except sa.exc.IntegrityError:  # forward sync linked the new event meanwhile
                if attempt == 2:
                    raise
                with self.engine.connect() as conn:
                    snap = load_snapshot(conn, self.config, item.schedule_id, self.room_mailboxes)

    def _store_link(self, conn: sa.Connection, snap: Snapshot, outcome: Outcome) -> None:
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
            "event_start_utc": start_utc,
            "event_end_utc": end_utc,
            "event_start_date": start_date,
            "event_end_date": end_date,
            "updated_at": now,
        }
        lk = t.links
        existing = conn.execute(
            sa.select(lk.c.id).where(
                lk.c.integration_id == self.config.id,
                lk.c.schedule_id == sid,
                lk.c.mailbox == outcome.mailbox,
            )
        ).first()
        if existing is not None:
            conn.execute(sa.update(lk).where(lk.c.id == existing.id).values(**values))
        else:
            conn.execute(
                sa.insert(lk).values(
                    integration_id=self.config.id,
                    mailbox=outcome.mailbox,
                    schedule_id=sid,
                    created_at=now,
                    **values,
                )
            )
        mt = t.meetings
        meeting = conn.execute(
            sa.select(mt.c.id).where(mt.c.integration_id == self.config.id, mt.c.schedule_id == sid)
        ).first()
        if meeting is not None:
            values = {"content_hash": data_hash}
            if outcome.action == "created":
                # a new event (the old one was deleted in the suite): the meeting is now known
                # by the new event's identity, so forward links its copies to it
                values |= {
                    "identity_key": event.identity_key[:400],
                    "owner_mailbox": outcome.mailbox,
                }
            conn.execute(sa.update(mt).where(mt.c.id == meeting.id).values(**values))
        else:
            conn.execute(
                sa.insert(mt).values(
                    integration_id=self.config.id,
                    identity_key=event.identity_key[:400],
                    schedule_id=sid,
                    owner_mailbox=outcome.mailbox,
                    content_hash=data_hash,
                )
            )

    def _logs(self, item: outbox.Claimed, outcome: Outcome) -> list[dict[str, Any]]:
        """The delivery's sync-log rows: a settled conflict is always one ``conflict`` row
        (naming the policy), followed by what was written, if anything."""
        owner = next((u for u in self.users.values() if u.mailbox == outcome.mailbox), None)

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
) -> dict[str, Any]:
    """Route new changes, then deliver every reverse integration's due changes, each
    integration on its own (one failing suite never blocks another)."""
    routed = await asyncio.to_thread(route_all, engine, configs)
    deadline = time.monotonic() + time_budget_s
    reverse = [c for c in configs if c.enabled and c.reverse]

    async def one(config: IntegrationConfig) -> DrainReport:
        try:
            async with connector_factory(config) as connector:
                runner = await asyncio.to_thread(
                    IntegrationDrain, engine, config, library, connector, run, worker
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
