"""OA store queries for forward sync: scope, rooms, link state, and applying a mailbox plan.

Everything goes through SQLAlchemy Core with bound parameters. A mailbox's plan is applied
in one transaction together with its sync-log rows: either the whole mailbox lands, or
nothing of it does (and a single ``failed`` record says why).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from calsync.config import Binding, Scope
from calsync.model import OAUser, ScheduleData
from calsync.oa import bulk, outbox
from calsync.oa import schema as t
from calsync.sync.plan import (
    Create,
    Drop,
    Fail,
    LinkRow,
    LinkTo,
    MailboxPlan,
    MeetingRow,
    Prepared,
    Skip,
    Update,
    event_extent,
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _naive(value: dt.datetime | None) -> dt.datetime | None:
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value is not None else None


# --- users and rooms -------------------------------------------------------------------


@dataclass(slots=True)
class ScopeResult:
    users: list[OAUser] = field(default_factory=list)
    # (user id, display name, reason) for users in scope that cannot take part (F22)
    skipped: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def by_mailbox(self) -> dict[str, OAUser]:
        return {u.mailbox: u for u in self.users}


def _condition_holds(row: dict[str, Any], cond: Any) -> bool:
    value = row.get(cond.attribute)
    target = cond.value
    text = "" if value is None else str(value)
    if cond.op == "eq":
        return text == str(target) if not isinstance(target, bool) else bool(value) is target
    if cond.op == "ne":
        return text != str(target) if not isinstance(target, bool) else bool(value) is not target
    if cond.op in ("in", "not_in"):
        inside = text in {str(v) for v in target}
        return inside if cond.op == "in" else not inside
    if cond.op == "contains":
        return str(target) in text
    if cond.op == "startswith":
        return text.startswith(str(target))
    raise ValueError(f"unknown op {cond.op!r}")


def resolve_scope(
    conn: sa.Connection, scope: Scope, binding: Binding, only_logins: Iterable[str] | None = None
) -> ScopeResult:
    """The active OA users in scope (F7) with their mailbox from the binding field (F4)."""
    departments = conn.execute(
        sa.select(t.departments.c.id, t.departments.c.name, t.departments.c.parent_id)
    ).all()
    wanted_depts: set[int] = set()
    if scope.departments:
        names = {str(d) for d in scope.departments}
        wanted_depts = {d.id for d in departments if d.name in names or str(d.id) in names}
        if scope.include_subdepartments:
            children: dict[int, list[int]] = {}
            for d in departments:
                if d.parent_id is not None:
                    children.setdefault(d.parent_id, []).append(d.id)
            stack = list(wanted_depts)
            while stack:
                for child in children.get(stack.pop(), []):
                    if child not in wanted_depts:
                        wanted_depts.add(child)
                        stack.append(child)
    explicit = {u.lower() for u in scope.users}
    excluded = {u.lower() for u in scope.exclude_users}
    only = {u.lower() for u in only_logins} if only_logins is not None else None
    result = ScopeResult()
    seen_mailboxes: dict[str, str] = {}
    rows = conn.execute(sa.select(t.users).order_by(t.users.c.id)).mappings().all()
    for row in rows:
        login = (row["login_name"] or "").lower()
        if not row["active"] or login in excluded:
            continue
        selected = row["department_id"] in wanted_depts or login in explicit
        if (scope.departments or scope.users) and not selected:
            continue
        if not all(_condition_holds(dict(row), c) for c in scope.conditions):
            continue
        if only is not None and login not in only and (row["email"] or "").lower() not in only:
            continue
        mailbox = binding.mailbox_for(row[binding.field])
        if mailbox is None:
            result.skipped.append(
                (row["id"], row["display_name"], f"no mailbox in HR field {binding.field!r}")
            )
            continue
        if mailbox in seen_mailboxes:
            result.skipped.append(
                (
                    row["id"],
                    row["display_name"],
                    f"mailbox {mailbox} is also bound to user {seen_mailboxes[mailbox]!r}",
                )
            )
            continue
        seen_mailboxes[mailbox] = row["login_name"]
        result.users.append(
            OAUser(row["id"], mailbox, row["display_name"], row["department_id"], login)
        )
    return result


def load_rooms(conn: sa.Connection) -> tuple[dict[str, int], dict[int, str], list[str]]:
    """Room mailbox → room id, room id → name, and problems (a mailbox mapped twice)."""
    names = {r.id: r.name for r in conn.execute(sa.select(t.rooms.c.id, t.rooms.c.name))}
    by_mailbox: dict[str, int] = {}
    problems: list[str] = []
    for row in conn.execute(sa.select(t.room_mappings).order_by(t.room_mappings.c.id)):
        mailbox = row.suite_mailbox.strip().lower()
        if mailbox in by_mailbox and by_mailbox[mailbox] != row.room_id:
            problems.append(
                f"room mailbox {mailbox} is mapped to rooms {by_mailbox[mailbox]} and "
                f"{row.room_id}; the first mapping is used"
            )
            continue
        by_mailbox[mailbox] = row.room_id
    return by_mailbox, names, problems


# --- link state --------------------------------------------------------------------------


def load_mailbox_state(
    conn: sa.Connection, integration_id: str, mailbox: str, identity_keys: Iterable[str]
) -> tuple[list[LinkRow], dict[str, MeetingRow]]:
    """A mailbox's links, and the meetings with one of these identities or of its links."""
    links = [
        _link_row(r)
        for r in conn.execute(
            sa.select(t.links).where(
                t.links.c.integration_id == integration_id, t.links.c.mailbox == mailbox
            )
        )
    ]
    keys = set(identity_keys) | {link.identity_key for link in links}
    return links, _meetings(conn, integration_id, keys)


class PreloadedStates:
    """``load_mailbox_state`` for a group's mailboxes, read with a few statements for the
    whole group instead of two per mailbox (each a round trip the writer waits for).

    It holds what the database had when it was read: the caller drops it as soon as anything
    is written that a later mailbox's state could include (a flush of the group's pending
    creates, a plan that is not deferred); a mailbox's own deferred creates touch only its own
    links and meetings of its own identities. Bounded by the group."""

    def __init__(
        self, conn: sa.Connection, integration_id: str, keys: dict[str, list[str]]
    ) -> None:
        self._links: dict[str, list[LinkRow]] = {mailbox: [] for mailbox in keys}
        for chunk in outbox.chunks(list(keys)):
            for r in conn.execute(
                sa.select(t.links).where(
                    t.links.c.integration_id == integration_id, t.links.c.mailbox.in_(chunk)
                )
            ):
                self._links[r.mailbox].append(_link_row(r))
        wanted = {key for mailbox_keys in keys.values() for key in mailbox_keys}
        wanted.update(link.identity_key for links in self._links.values() for link in links)
        self._meetings = _meetings(conn, integration_id, wanted)

    def take(
        self, mailbox: str, identity_keys: Iterable[str]
    ) -> tuple[list[LinkRow], dict[str, MeetingRow]] | None:
        """What ``load_mailbox_state`` would return now (once per mailbox; None if not read)."""
        links = self._links.pop(mailbox, None)
        if links is None:
            return None
        keys = set(identity_keys) | {link.identity_key for link in links}
        meetings = {key: self._meetings[key] for key in keys if key in self._meetings}
        return links, meetings


def load_source_hashes(
    conn: sa.Connection, integration_id: str, mailboxes: Iterable[str]
) -> dict[str, dict[str, str]]:
    """Per mailbox, its links' known source hashes by suite id (forward sync's hint of which
    events it need not map again; checked against the link when the mailbox is written)."""
    found: dict[str, dict[str, str]] = {}
    for chunk in outbox.chunks(sorted(set(mailboxes))):
        for mailbox, suite_id, source in conn.execute(
            sa.select(t.links.c.mailbox, t.links.c.suite_id, t.links.c.source_hash).where(
                t.links.c.integration_id == integration_id,
                t.links.c.mailbox.in_(chunk),
                t.links.c.source_hash != "",
            )
        ):
            found.setdefault(mailbox, {})[suite_id] = source
    return found


def _link_row(r: sa.Row[Any]) -> LinkRow:
    return LinkRow(
        id=r.id,
        mailbox=r.mailbox,
        suite_id=r.suite_id,
        identity_key=r.identity_key,
        schedule_id=r.schedule_id,
        change_key=r.change_key,
        content_hash=r.content_hash,
        source_hash=r.source_hash,
        event_start_utc=r.event_start_utc,
        event_end_utc=r.event_end_utc,
        event_start_date=r.event_start_date,
        event_end_date=r.event_end_date,
    )


def _meetings(conn: sa.Connection, integration_id: str, keys: set[str]) -> dict[str, MeetingRow]:
    meetings: dict[str, MeetingRow] = {}
    for chunk in outbox.chunks(sorted(keys), 500):
        for r in conn.execute(
            sa.select(t.meetings).where(
                t.meetings.c.integration_id == integration_id,
                t.meetings.c.identity_key.in_(chunk),
            )
        ):
            meetings[r.identity_key] = MeetingRow(
                r.id, r.identity_key, r.schedule_id, r.owner_mailbox, r.content_hash
            )
    return meetings


# --- applying a plan -------------------------------------------------------------------


@dataclass(slots=True)
class RunInfo:
    integration_id: str
    dag_id: str | None = None
    run_id: str | None = None
    # Two-way (direction both): deletions of linked schedules propagate, and a suite change
    # meeting an OA change not yet pushed is a conflict settled by ``conflict_policy``.
    two_way: bool = False
    conflict_policy: str = "latest_wins"


@dataclass(slots=True)
class MailboxOutcome:
    mailbox: str
    user_id: int
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, action: str, n: int = 1) -> None:
        self.counts[action] = self.counts.get(action, 0) + n


def _schedule_values(data: ScheduleData) -> dict[str, Any]:
    return {
        "title": data.title[:500],
        "start_utc": _naive(data.start),
        "end_utc": _naive(data.end),
        "all_day": data.all_day,
        "start_date": data.start_date,
        "end_date": data.end_date,
        "timezone": data.timezone,
        "location": data.location[:500],
        "room_id": data.room_id,
        "details": data.details,
        "color": data.color,
        "creator_id": data.creator_id,
    }


def _participant_rows(schedule_id: int, data: ScheduleData) -> list[dict[str, Any]]:
    return [
        {
            "schedule_id": schedule_id,
            "kind": p.kind,
            "user_id": p.user_id,
            "room_id": p.room_id,
            "email": p.email[:320],
            "name": p.name[:200],
            "response": p.response[:32],
        }
        for p in data.participants
    ]


def _link_values(item: Prepared) -> dict[str, Any]:
    event = item.event
    start_utc, end_utc, start_date, end_date = event_extent(event)
    return {
        "suite_id": event.suite_id,
        "ical_uid": event.ical_uid[:400],
        "identity_key": event.identity_key[:400],
        "change_key": event.change_key[:200],
        "content_hash": item.hash,
        "source_hash": item.source_hash,
        "event_start_utc": start_utc,
        "event_end_utc": end_utc,
        "event_start_date": start_date,
        "event_end_date": end_date,
    }


@dataclass(slots=True)
class _PlanWrites:
    """The row writes of a plan's common actions (create, link, update), held back and sent
    as one executemany per table and kind by :meth:`flush`: a mailbox costs a handful of
    statements, not a few per event. Rare paths (adoption, conflicts, drops) write at once,
    after a flush, so every statement still sees the writes of the actions before it."""

    integration_id: str
    mailbox: str
    now: dt.datetime
    # (item, its sync-log row, the mailbox it was read from)
    creates: list[tuple[Prepared, dict[str, Any], str]] = field(default_factory=list)
    schedule_updates: list[tuple[int, ScheduleData]] = field(default_factory=list)
    meeting_inserts: list[dict[str, Any]] = field(default_factory=list)
    meeting_updates: list[dict[str, Any]] = field(default_factory=list)
    link_inserts: list[dict[str, Any]] = field(default_factory=list)
    link_updates: list[dict[str, Any]] = field(default_factory=list)
    # a group's buffer: new schedules go there at the flush, written with the group's
    deferred: _PlanWrites | None = None

    def create(self, item: Prepared, log_row: dict[str, Any]) -> None:
        """A new schedule; ``log_row`` gets its id at the flush."""
        self.creates.append((item, log_row, self.mailbox))

    def link(self, item: Prepared, schedule_id: int, mailbox: str | None = None) -> None:
        self.link_inserts.append(
            {
                "integration_id": self.integration_id,
                "mailbox": mailbox or self.mailbox,
                "schedule_id": schedule_id,
                "created_at": self.now,
                "updated_at": self.now,
                **_link_values(item),
            }
        )

    def update_link(self, link_id: int, item: Prepared) -> None:
        self.link_updates.append({"b_id": link_id, "updated_at": self.now, **_link_values(item)})

    def add_meeting(self, identity_key: str, schedule_id: int, owner: str, hash_: str) -> None:
        self.meeting_inserts.append(
            {
                "integration_id": self.integration_id,
                "identity_key": identity_key,
                "schedule_id": schedule_id,
                "owner_mailbox": owner,
                "content_hash": hash_,
            }
        )

    def update_schedule(
        self, meeting_id: int | None, schedule_id: int, item: Prepared, take_ownership: bool
    ) -> None:
        """Write the item's content over the schedule (participants replaced) and record the
        new content hash on its meeting (taking the meeting over if asked)."""
        assert item.data is not None
        self.schedule_updates.append((schedule_id, item.data))
        if meeting_id is not None:
            values: dict[str, Any] = {"b_id": meeting_id, "content_hash": item.hash}
            if take_ownership:
                values["owner_mailbox"] = self.mailbox
            self.meeting_updates.append(values)

    def flush(self, conn: sa.Connection) -> None:
        participants: list[dict[str, Any]] = []
        if self.creates and self.deferred is not None:
            self.deferred.creates.extend(self.creates)
            self.creates.clear()
        if self.creates:
            rows = [
                {
                    **_schedule_values(item.data),
                    "source_integration": self.integration_id,
                    "created_at": self.now,
                    "updated_at": self.now,
                }
                for item, _, _ in self.creates
                if item.data is not None
            ]
            ids = _insert_schedules(conn, rows)
            for (item, log_row, mailbox), schedule_id in zip(self.creates, ids, strict=True):
                assert item.data is not None
                log_row["schedule_id"] = schedule_id
                participants.extend(_participant_rows(schedule_id, item.data))
                self.add_meeting(
                    item.event.identity_key[:400],
                    schedule_id,
                    item.owner_mailbox or mailbox,
                    item.hash,
                )
                self.link(item, schedule_id, mailbox)
        if self.schedule_updates:
            conn.execute(
                sa.update(t.schedules).where(t.schedules.c.id == sa.bindparam("b_id")),
                [
                    {"b_id": sid, **_schedule_values(data), "updated_at": self.now}
                    for sid, data in self.schedule_updates
                ],
            )
            updated = sorted({sid for sid, _ in self.schedule_updates})
            for chunk in outbox.chunks(updated):
                conn.execute(
                    sa.delete(t.participants).where(t.participants.c.schedule_id.in_(chunk))
                )
            for sid, data in self.schedule_updates:
                participants.extend(_participant_rows(sid, data))
        bulk.insert_rows(conn, t.participants, participants)
        bulk.insert_rows(conn, t.meetings, self.meeting_inserts)
        for keys in sorted({tuple(sorted(row)) for row in self.meeting_updates}):
            conn.execute(
                sa.update(t.meetings).where(t.meetings.c.id == sa.bindparam("b_id")),
                [row for row in self.meeting_updates if tuple(sorted(row)) == keys],
            )
        bulk.insert_rows(conn, t.links, self.link_inserts)
        if self.link_updates:
            conn.execute(
                sa.update(t.links).where(t.links.c.id == sa.bindparam("b_id")), self.link_updates
            )
        for pending in (
            self.creates,
            self.schedule_updates,
            self.meeting_inserts,
            self.meeting_updates,
            self.link_inserts,
            self.link_updates,
        ):
            pending.clear()


class GroupWrites:
    """New schedules of several mailboxes' plans, written together when the group is
    applied (a first sync is nearly all creates: one statement per table for the group, not
    per mailbox). Only plans of creates alone are deferred (:func:`deferrable`); before any
    other plan, and before a mailbox that may hold one of the pending meetings, the caller
    flushes, so every statement still sees the writes planned before it."""

    def __init__(self, integration_id: str) -> None:
        self._writes = _PlanWrites(integration_id, "", utcnow())
        # The pending creates' identities, kept up to date as plans add creates (a set
        # rebuilt on each call made a group's checks quadratic in its events).
        self._pending: set[str] = set()
        self._seen = 0

    def holds_any(self, identity_keys: Iterable[str]) -> bool:
        """Whether a pending new meeting has one of these identities."""
        creates = self._writes.creates
        if self._seen > len(creates):  # flushed meanwhile
            self._pending.clear()
            self._seen = 0
        self._pending.update(item.event.identity_key[:400] for item, _, _ in creates[self._seen :])
        self._seen = len(creates)
        return bool(self._pending) and any(key[:400] in self._pending for key in identity_keys)

    def flush(self, conn: sa.Connection) -> None:
        self._writes.now = utcnow()
        self._writes.flush(conn)
        self._pending.clear()
        self._seen = 0


def deferrable(plan: MailboxPlan, run: RunInfo) -> bool:
    """Whether a plan's writes may wait for its group's (:class:`GroupWrites`): creates,
    skips and failures only, one-way, none adopting an event calsync made earlier."""
    if run.two_way:
        return False
    for action in plan.actions:
        if isinstance(action, Create):
            if _may_adopt(run.integration_id, action.item):
                return False
        elif not isinstance(action, Skip | Fail):
            return False
    return True


def _insert_schedules(conn: sa.Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert schedule rows; their new ids, in order."""
    if conn.dialect.name == "postgresql":
        # A RETURNING executemany becomes one huge INSERT … SELECT per 1000 rows that psycopg
        # re-parses in Python; ids taken from the table's sequence and a plain (pipelined)
        # executemany cost a quarter of the client CPU.
        ids = (
            conn.execute(
                sa.text(
                    "SELECT nextval(pg_get_serial_sequence('oa_schedules', 'id')) "
                    "FROM generate_series(1, :n)"
                ),
                {"n": len(rows)},
            )
            .scalars()
            .all()
        )
        bulk.insert_rows(
            conn, t.schedules, [{**row, "id": i} for row, i in zip(rows, ids, strict=True)]
        )
        return list(ids)
    insert = sa.insert(t.schedules).returning(t.schedules.c.id, sort_by_parameter_order=True)
    return list(conn.execute(insert, rows).scalars().all())


def apply_plan(
    conn: sa.Connection,
    plan: MailboxPlan,
    user: OAUser,
    run: RunInfo,
    group: GroupWrites | None = None,
) -> tuple[MailboxOutcome, list[dict[str, Any]]]:
    """Apply a plan inside the caller's transaction; returns counts and sync-log rows.

    The common actions' rows go out in bulk (:class:`_PlanWrites`); the effect is that of
    applying the actions one after another, in order. ``group``: a :func:`deferrable`
    plan's new schedules wait there (their sync-log rows get their ids when it is flushed,
    before they are written)."""
    now = utcnow()
    outcome = MailboxOutcome(plan.mailbox, user.id)
    if plan.unchanged:
        outcome.add("unchanged", plan.unchanged)
    logs: list[dict[str, Any]] = []
    writes = _PlanWrites(
        run.integration_id, plan.mailbox, now, deferred=group._writes if group else None
    )

    def log(
        action: str,
        item: Prepared | None,
        schedule_id: int | None,
        message: str = "",
        suite_id: str | None = None,
        title: str | None = None,
    ) -> dict[str, Any]:
        outcome.add(action)
        row = {
            "logged_at": now,
            "integration_id": run.integration_id,
            "run_id": run.run_id,
            "dag_id": run.dag_id,
            "direction": "forward",
            "action": action,
            "user_id": user.id,
            "mailbox": plan.mailbox,
            "schedule_id": schedule_id,
            "suite_id": (item.event.suite_id if item else suite_id),
            "title": (title if title is not None else (item.event.subject if item else None)),
            "message": message[:4000],
        }
        logs.append(row)
        return row

    def suite_wins(schedule_id: int, item: Prepared, link: LinkRow | None = None) -> bool:
        if schedule_id in held:
            writes.flush(conn)  # the conflict check reads and writes the OA
        return _suite_wins(conn, held, schedule_id, item, run, log, link)

    held = _oa_changes_pending(conn, plan, run)
    deleted = _oa_deletes_pending(conn, plan, run)
    for action in plan.actions:
        if isinstance(action, Create) and action.item.event.identity_key[:400] in deleted:
            log("skipped", action.item, None, "deleted in the OA; reverse sync deletes it")
            continue
        if isinstance(action, Create | LinkTo) and _may_adopt(run.integration_id, action.item):
            writes.flush(conn)
            if _adopt(conn, action, plan, run, now, log):
                continue
        if isinstance(action, Create):
            assert action.item.data is not None
            row = log("created", action.item, None, title=action.item.data.title)
            writes.create(action.item, row)
        elif isinstance(action, LinkTo):
            item, meeting = action.item, action.meeting
            writes.link(item, meeting.schedule_id)
            if action.write_schedule and suite_wins(meeting.schedule_id, item):
                writes.update_schedule(meeting.id, meeting.schedule_id, item, action.take_ownership)
                log("updated", item, meeting.schedule_id, "linked another copy of the meeting")
            else:
                log("linked", item, meeting.schedule_id, "copy of a meeting already in the OA")
        elif isinstance(action, Update):
            item, link = action.item, action.link
            writes.update_link(link.id, item)
            if action.write_schedule and not suite_wins(link.schedule_id, item, link):
                pass
            elif action.write_schedule:
                if action.meeting is None:
                    writes.add_meeting(link.identity_key, link.schedule_id, plan.mailbox, item.hash)
                    writes.update_schedule(None, link.schedule_id, item, False)
                else:
                    writes.update_schedule(
                        action.meeting.id, link.schedule_id, item, action.take_ownership
                    )
                note = "re-linked: the suite gave the item a new id" if action.relinked else ""
                log("updated", item, link.schedule_id, note)
            elif action.relinked:
                log("relinked", item, link.schedule_id, "the suite gave the item a new id")
            else:
                outcome.add("unchanged")
        elif isinstance(action, Drop):
            writes.flush(conn)  # the drop counts the schedule's remaining links
            _drop(conn, action, run, log)
        elif isinstance(action, Skip):
            log("skipped", action.item, None, action.item.skip or "")
        elif isinstance(action, Fail):
            log("failed", action.item, None, action.item.error or "")
    writes.flush(conn)
    return outcome, logs


def _may_adopt(integration_id: str, item: Prepared) -> bool:
    """Whether the event carries a calsync key of this integration (see :func:`_adopt`)."""
    key = item.event.calsync_key
    prefix = f"calsync:{integration_id}:"
    return bool(key) and key.startswith(prefix) and key[len(prefix) :].isdigit()


def _adopt(
    conn: sa.Connection,
    action: Create | LinkTo,
    plan: MailboxPlan,
    run: RunInfo,
    now: dt.datetime,
    log: Any,
) -> bool:
    """An event reverse sync made for an OA schedule, met before reverse sync recorded its
    link (it crashed, or is still at work): link it to that schedule, never a second one.

    If an attendee's copy (which carries no calsync key) was read first, this run already made
    a schedule for the meeting: that schedule, created by this integration a moment ago, is
    merged into the OA's own one (links and meeting moved, the duplicate deleted)."""
    item = action.item
    adopted = _adoptable(conn, run.integration_id, item.event.calsync_key)
    if adopted is None:
        return False
    if isinstance(action, LinkTo):
        dup = action.meeting.schedule_id
        source = conn.execute(
            sa.select(t.schedules.c.source_integration).where(t.schedules.c.id == dup)
        ).scalar()
        if dup == adopted or source != run.integration_id:
            return False
        conn.execute(
            sa.update(t.links)
            .where(t.links.c.integration_id == run.integration_id, t.links.c.schedule_id == dup)
            .values(schedule_id=adopted)
        )
        conn.execute(
            sa.update(t.meetings)
            .where(t.meetings.c.id == action.meeting.id)
            .values(schedule_id=adopted, owner_mailbox=plan.mailbox, content_hash=item.hash)
        )
        conn.execute(sa.delete(t.participants).where(t.participants.c.schedule_id == dup))
        conn.execute(sa.delete(t.schedules).where(t.schedules.c.id == dup))
        note = f"the event calsync created for this OA schedule; merged duplicate schedule {dup}"
    else:
        conn.execute(
            sa.insert(t.meetings).values(
                integration_id=run.integration_id,
                identity_key=item.event.identity_key[:400],
                schedule_id=adopted,
                owner_mailbox=plan.mailbox,
                content_hash=item.hash,
            )
        )
        note = "the event calsync created for this OA schedule"
    conn.execute(
        sa.insert(t.links).values(
            integration_id=run.integration_id,
            mailbox=plan.mailbox,
            schedule_id=adopted,
            created_at=now,
            updated_at=now,
            **_link_values(item),
        )
    )
    log("linked", item, adopted, note)
    return True


def _adoptable(conn: sa.Connection, integration_id: str, key: str | None) -> int | None:
    """The OA schedule a calsync key of this integration names, if it still exists."""
    prefix = f"calsync:{integration_id}:"
    if not key or not key.startswith(prefix) or not key[len(prefix) :].isdigit():
        return None
    schedule_id = int(key[len(prefix) :])
    found = conn.execute(
        sa.select(t.schedules.c.id).where(t.schedules.c.id == schedule_id)
    ).scalar()
    taken = conn.execute(
        sa.select(t.meetings.c.id).where(
            t.meetings.c.integration_id == integration_id,
            t.meetings.c.schedule_id == schedule_id,
        )
    ).first()
    return found if found is not None and taken is None else None


def _oa_changes_pending(conn: sa.Connection, plan: MailboxPlan, run: RunInfo) -> set[int]:
    """Two-way: schedules of this plan with OA changes reverse sync has not pushed yet."""
    if not run.two_way:
        return set()
    ids: set[int] = set()
    for action in plan.actions:
        if isinstance(action, Update) and action.write_schedule:
            ids.add(action.link.schedule_id)
        elif isinstance(action, LinkTo) and action.write_schedule:
            ids.add(action.meeting.schedule_id)
    return _unpushed(conn, run.integration_id, sorted(ids)) if ids else set()


def _unpushed(
    conn: sa.Connection, integration_id: str, ids: list[int], op: str | None = None
) -> set[int]:
    """Of ``ids``, the schedules with an OA change (``op`` only, if given) reverse sync has
    not pushed yet: a pending, dead or held (E10) delivery, or an OA-made outbox row not yet
    routed."""
    d, ob = t.deliveries, t.outbox
    pending: set[int] = set()
    for chunk in outbox.chunks(ids):
        pending.update(
            conn.execute(
                sa.select(d.c.schedule_id).where(
                    d.c.integration_id == integration_id,
                    d.c.status.in_(("pending", "dead", "held")),
                    d.c.schedule_id.in_(chunk),
                )
            ).scalars()
        )
        pending.update(
            conn.execute(
                sa.select(ob.c.schedule_id).where(
                    ob.c.routed_at.is_(None),
                    ob.c.origin == outbox.ORIGIN_OA,
                    *([ob.c.op == op] if op else []),
                    ob.c.schedule_id.in_(chunk),
                )
            ).scalars()
        )
    return pending


def _oa_deletes_pending(conn: sa.Connection, plan: MailboxPlan, run: RunInfo) -> set[str]:
    """Two-way: identities of this plan's new meetings that are linked schedules the OA
    deleted, the delete not yet pushed (the delete trigger kept their links as tombstones).
    Forward sync must not bring them back: reverse sync is about to delete the events."""
    if not run.two_way:
        return set()
    keys = sorted({a.item.event.identity_key[:400] for a in plan.actions if isinstance(a, Create)})
    if not keys:
        return set()
    dl = t.deleted_links
    gone: dict[str, set[int]] = {}
    for chunk in outbox.chunks(keys):
        for key, schedule_id in conn.execute(
            sa.select(dl.c.identity_key, dl.c.schedule_id).where(
                dl.c.integration_id == run.integration_id, dl.c.identity_key.in_(chunk)
            )
        ):
            gone.setdefault(key, set()).add(schedule_id)
    if not gone:
        return set()
    pending = _unpushed(conn, run.integration_id, sorted(set().union(*gone.values())), op="delete")
    return {key for key, schedule_ids in gone.items() if schedule_ids & pending}


def _suite_wins(
    conn: sa.Connection,
    held: set[int],
    schedule_id: int,
    item: Prepared,
    run: RunInfo,
    log: Any,
    link: LinkRow | None = None,
) -> bool:
    """Whether forward sync may write the suite's version over the schedule: always, unless
    the OA changed it too since the last sync (a conflict, settled by the policy and logged).

    With an OA change pending, an event whose change key is still the one its link recorded
    was not edited in the suite: its mapped content differs from the schedule only by what
    mapping each way normalises (as after reverse sync wrote it). No conflict: the OA's
    version stands, for reverse sync to push."""
    if schedule_id not in held:
        return True
    if link is not None and link.change_key and link.change_key == item.event.change_key:
        return False
    policy = run.conflict_policy
    if policy == "latest_wins":
        oa_time = conn.execute(
            sa.select(t.schedules.c.updated_at).where(t.schedules.c.id == schedule_id)
        ).scalar()
        suite_time = item.event.last_modified
        wins = (
            suite_time is not None
            and oa_time is not None
            and suite_time > oa_time.replace(tzinfo=dt.UTC)
        )
    else:
        wins = policy == "suite_wins"
    verdict = "suite version written" if wins else "OA version kept (reverse sync pushes it)"
    log("conflict", item, schedule_id, f"conflict: edited on both sides; {policy}: {verdict}")
    if wins:
        # the OA's pending change is superseded: reverse sync finds nothing left to push
        conn.execute(
            sa.update(t.deliveries)
            .where(
                t.deliveries.c.integration_id == run.integration_id,
                t.deliveries.c.schedule_id == schedule_id,
                t.deliveries.c.status == "dead",
            )
            .values(status="done", last_error="superseded by the suite's newer version")
        )
    return wins


def _drop(conn: sa.Connection, action: Drop, run: RunInfo, log: Any) -> None:
    link = action.link
    conn.execute(sa.delete(t.links).where(t.links.c.id == link.id))
    remaining = conn.execute(
        sa.select(sa.func.count())
        .select_from(t.links)
        .where(
            t.links.c.integration_id == run.integration_id,
            t.links.c.schedule_id == link.schedule_id,
        )
    ).scalar_one()
    schedule = conn.execute(
        sa.select(t.schedules.c.title, t.schedules.c.source_integration).where(
            t.schedules.c.id == link.schedule_id
        )
    ).first()
    title = schedule.title if schedule else None
    if remaining:
        log(
            "unlinked",
            None,
            link.schedule_id,
            f"{action.reason}; other mailboxes still hold the meeting",
            suite_id=link.suite_id,
            title=title,
        )
        return
    conn.execute(
        sa.delete(t.meetings).where(
            t.meetings.c.integration_id == run.integration_id,
            t.meetings.c.schedule_id == link.schedule_id,
        )
    )
    if schedule is not None and (schedule.source_integration == run.integration_id or run.two_way):
        conn.execute(
            sa.delete(t.participants).where(t.participants.c.schedule_id == link.schedule_id)
        )
        conn.execute(sa.delete(t.schedules).where(t.schedules.c.id == link.schedule_id))
        log("deleted", None, link.schedule_id, action.reason, suite_id=link.suite_id, title=title)
    else:
        # E17: a schedule this integration did not create is only unlinked, never deleted
        # (two-way: a linked schedule's deletion propagates, whoever created it).
        log(
            "unlinked",
            None,
            link.schedule_id,
            f"{action.reason}; schedule not created by this integration, kept",
            suite_id=link.suite_id,
            title=title,
        )


def write_logs(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    bulk.insert_rows(conn, t.sync_log, rows)


def log_row(
    run: RunInfo,
    action: str,
    message: str,
    *,
    user_id: int | None = None,
    mailbox: str | None = None,
    direction: str = "forward",
) -> dict[str, Any]:
    return {
        "logged_at": utcnow(),
        "integration_id": run.integration_id,
        "run_id": run.run_id,
        "dag_id": run.dag_id,
        "direction": direction,
        "action": action,
        "user_id": user_id,
        "mailbox": mailbox,
        "schedule_id": None,
        "suite_id": None,
        "title": None,
        "message": message[:4000],
    }


def refresh_link_statistics(engine: sa.Engine) -> None:
    """PostgreSQL: ANALYZE the link tables after a bulk load. Without statistics (a fresh
    table that autovacuum has not analysed yet, or autovacuum off) the planner takes
    ``integration_id = … AND identity_key IN (…)`` for selective on its first column and
    scans every meeting of the integration per mailbox: a first sync of thousands of
    mailboxes slows down as the table grows (50-500 ms per lookup at 50,000 meetings against
    ~1 ms with statistics). Other databases need nothing."""
    if engine.dialect.name != "postgresql":
        return
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ANALYZE {t.meetings.name}, {t.links.name}")
    except sa.exc.SQLAlchemyError as exc:  # an optimisation only: the sync goes on without
        first_line = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        logging.getLogger(__name__).warning("could not ANALYZE the link tables: %s", first_line)


# --- change-feed state (E7) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncStateRow:
    """A mailbox's stored change-feed state and the window it was started for."""

    window_start: dt.date
    window_end: dt.date
    state: str


def load_sync_states(
    conn: sa.Connection, integration_id: str, mailboxes: Iterable[str]
) -> dict[str, SyncStateRow]:
    """The stored states of ``mailboxes`` (those that have one)."""
    wanted = sorted(set(mailboxes))
    found: dict[str, SyncStateRow] = {}
    for i in range(0, len(wanted), 500):
        for r in conn.execute(
            sa.select(
                t.sync_state.c.mailbox,
                t.sync_state.c.window_start,
                t.sync_state.c.window_end,
                t.sync_state.c.state,
            ).where(
                t.sync_state.c.integration_id == integration_id,
                t.sync_state.c.mailbox.in_(wanted[i : i + 500]),
            )
        ):
            found[r.mailbox] = SyncStateRow(r.window_start, r.window_end, r.state)
    return found


def save_sync_states(
    conn: sa.Connection,
    integration_id: str,
    window_start: dt.date,
    window_end: dt.date,
    states: dict[str, str],
) -> None:
    """Store (insert or replace) mailboxes' feed states inside the caller's transaction, so
    they land together with the OA changes they stand for: one query for which exist, one
    executemany of updates, one bulk insert of the rest. A concurrent insert of the same
    mailbox raises IntegrityError (the caller re-plans)."""
    if not states:
        return
    values = {"window_start": window_start, "window_end": window_end, "updated_at": utcnow()}
    wanted = sorted(states)
    existing: set[str] = set()
    for chunk in outbox.chunks(wanted):
        existing.update(
            conn.execute(
                sa.select(t.sync_state.c.mailbox).where(
                    t.sync_state.c.integration_id == integration_id,
                    t.sync_state.c.mailbox.in_(chunk),
                )
            ).scalars()
        )
    updates = [{"b_mailbox": m, "state": states[m], **values} for m in wanted if m in existing]
    if updates:
        conn.execute(
            sa.update(t.sync_state).where(
                t.sync_state.c.integration_id == integration_id,
                t.sync_state.c.mailbox == sa.bindparam("b_mailbox"),
            ),
            updates,
        )
    bulk.insert_rows(
        conn,
        t.sync_state,
        [
            {"integration_id": integration_id, "mailbox": m, "state": states[m], **values}
            for m in wanted
            if m not in existing
        ],
    )


def clear_sync_state(conn: sa.Connection, integration_id: str, mailbox: str | None = None) -> int:
    """Forget the states of an integration (or of one mailbox): the next scheduled run reads
    in full. Returns the number of rows removed."""
    condition = t.sync_state.c.integration_id == integration_id
    if mailbox is not None:
        condition = sa.and_(condition, t.sync_state.c.mailbox == mailbox)
    return conn.execute(sa.delete(t.sync_state).where(condition)).rowcount or 0
