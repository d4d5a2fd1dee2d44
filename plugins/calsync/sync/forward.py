"""Forward sync (suite → OA) for a batch of users: fetch → filter + map → plan → apply.

Mailboxes are read concurrently (``execution.concurrency``) while one writer thread applies
the mailboxes read so far as a group, in one transaction (group commit), each with its
sync-log rows and its rows written in bulk. One user's failure (unknown mailbox, suite error,
a bad record, an OA write error: the group is then applied again one mailbox per transaction)
never stops the others: it is logged and reported, and the caller decides whether the task
fails (so Airflow retries just it).

Incremental runs (E7, ``incremental=True``: the scheduled run): a mailbox with a stored
change-feed state for the same window (and the same mapping context, below) is read with
``list_changes``; otherwise, or when the connector has no feed, it is read in full. A full
read (including a connector's fall-back after an expired token) is planned as always; a
partial one with the planner's partial mode, so unchanged events keep their links. The new
state is written in the mailbox's transaction, so it never runs ahead of the OA. A manual
range run (``incremental=False``) reads in full and leaves the stored state alone.

The stored state row holds ``{"context": <fingerprint>, "feed": <the connector's state>}``:
the fingerprint covers what turns suite events into OA content besides the events themselves
(integration settings, mapping files, users in scope, rooms). When it changes, unchanged
events would map differently, so the next run starts a new round (a full read).

Events read again unchanged are not mapped again: a link keeps the hash of the event it was
last written from, together with that fingerprint (:func:`source_hash`). An event with its
link's hash would map to the content the link records, so the mapper only marks it
(``Prepared.unmapped``, given the link's content hash when its mailbox is written); a full
read of an unchanged mailbox (a suite without a change feed, or a new round) costs a hash
per event, not a mapping. The mapper learns the hashes from a read at the start of the task;
the writer checks each against the link as it is then, and maps whatever does not match or
whatever the planner would act on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import operator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from calsync.config import IntegrationConfig
from calsync.connectors.base import ChangeSet, IncrementalNotSupported, SuiteConnector
from calsync.errors import AccountMissing, ConnectorError, MailboxNotFound
from calsync.model import Attendee, OAUser, SuiteEvent, Window
from calsync.oa import calendar_ids, outbox, store
from calsync.oa.db import OADatabaseUnavailable
from calsync.oa.rekey import calsync_key_prefix, rekey_meetings
from calsync.sync import process_tuning
from calsync.sync.guard import hold_reason
from calsync.sync.plan import (
    Create,
    Drop,
    LinkRow,
    LinkTo,
    MailboxPlan,
    MeetingRow,
    Prepared,
    Update,
    plan_mailbox,
)
from calsync.sync.prepare import PrepareContext, prepare_event

log = logging.getLogger(__name__)
APPLY_ATTEMPTS = 3  # a concurrent task may create the same meeting first: re-plan and retry


@dataclass(slots=True)
class UserResult:
    mailbox: str
    user_id: int
    name: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    retriable: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "mailbox": self.mailbox,
            "user_id": self.user_id,
            "name": self.name,
            "counts": self.counts,
            "error": self.error,
            "retriable": self.retriable,
        }


# The columns of a run's per-mailbox count table (DAG summary and `calsync sync`).
RUN_ACTIONS = (
    "created",
    "updated",
    "deleted",
    "linked",
    "unlinked",
    "relinked",
    "unchanged",
    "skipped",
    "conflict",
    "held",
    "failed",
)


def count_table(per_mailbox: list[tuple[str, dict[str, int]]]) -> list[str]:
    """Lines of a table: one row per mailbox, a TOTAL row, a column per action."""
    totals: dict[str, int] = {}
    for _, counts in per_mailbox:
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    rows = [*per_mailbox, ("TOTAL", totals)]
    return [f"{'mailbox':40} " + " ".join(f"{k:>9}" for k in RUN_ACTIONS)] + [
        f"{name:40} " + " ".join(f"{counts.get(k, 0):>9}" for k in RUN_ACTIONS)
        for name, counts in rows
    ]


def build_context(
    conn: sa.Connection, config: IntegrationConfig, library: Any
) -> tuple[PrepareContext, list[str]]:
    """The per-task mapping context: scope index, rooms, mapping and filters."""
    scope = store.resolve_scope(conn, config.scope, config.binding)
    rooms, room_names, problems = store.load_rooms(conn)
    variables = {"color": config.color, **config.variables}
    ctx = PrepareContext(
        integration_id=config.id,
        timezone=config.timezone,
        color=config.color,
        mapping=library.mapping(config.mapping_name),
        filters=library.filters(list(config.filters), direction="forward", variables=variables),
        users_by_mailbox=scope.by_mailbox,
        rooms_by_mailbox=rooms,
        room_names=room_names,
        variables=variables,
    )
    return ctx, problems


def context_fingerprint(config: IntegrationConfig, ctx: PrepareContext, library: Any) -> str:
    """A short hash of everything besides the events that decides the OA content a forward
    run writes: a change makes the next scheduled run read in full (module docstring)."""
    digest = hashlib.sha256()
    digest.update(config.model_dump_json().encode())
    directory = getattr(library, "directory", None)
    if directory is not None and Path(directory).is_dir():
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(directory)).encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
    people = sorted((m, u.id, u.name) for m, u in ctx.users_by_mailbox.items())
    rooms = sorted(ctx.rooms_by_mailbox.items())
    names = sorted(ctx.room_names.items())
    digest.update(json.dumps([people, rooms, names], default=str).encode())
    return digest.hexdigest()[:20]


def source_hash(context: str, event: SuiteEvent) -> str:
    """A hash of everything mapping ``event`` reads: the event as normalised (every field) and
    the mapping context's fingerprint (the mailbox's user is in it). Equal hashes map equally;
    a value hashed by its ``repr`` that is not stable only costs a mapping."""
    fields = list(_EVENT_FIELDS(event))
    # People as plain tuples: orjson reads a slots dataclass field by field through Python
    # (~1 µs each), which made this hash 35 µs for an event with 15 attendees, not 7.
    fields[_ORGANIZER] = _PERSON(event.organizer) if event.organizer is not None else None
    fields[_ATTENDEES] = [_PERSON(a) for a in event.attendees]
    raw = orjson.dumps(fields, default=repr, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(context.encode() + b"\0" + raw, digest_size=16).hexdigest()


_EVENT_NAMES = [f.name for f in dataclasses.fields(SuiteEvent)]
_EVENT_FIELDS = operator.attrgetter(*_EVENT_NAMES)
_ORGANIZER, _ATTENDEES = _EVENT_NAMES.index("organizer"), _EVENT_NAMES.index("attendees")
_PERSON = operator.attrgetter(*(f.name for f in dataclasses.fields(Attendee)))


def _stored_for(row: store.SyncStateRow | None, window: Window) -> str | None:
    """The stored state row's text when it was made for ``window``, else None."""
    if row is None or (row.window_start, row.window_end) != (window.start, window.end):
        return None
    return row.state


def _feed_state(row: store.SyncStateRow | None, window: Window, context: str) -> str | None:
    """The connector state to continue from, or None to start a new round."""
    stored = _stored_for(row, window)
    if stored is None:
        return None
    try:
        data = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("context") != context:
        return None
    feed = data.get("feed")
    return feed if isinstance(feed, str) and feed else None


def _guard(
    config: IntegrationConfig,
    plan: Any,
    links: list[Any],
    window: Window,
    events: list[SuiteEvent],
    partial: bool = False,
) -> tuple[int, str] | None:
    """(deletions, reason) when the plan's deletions must be held (E10), else None."""
    drops = plan.of(Drop)
    if not drops or not config.delete_guard.enabled:
        return None
    in_window = sum(1 for link in links if link.in_window(window))
    reason = hold_reason(
        len(drops), in_window, None if partial else len(events), config.delete_guard
    )
    return (len(drops), reason) if reason else None


def _note_rows(plan: Any, run: store.RunInfo, user: OAUser) -> list[dict[str, Any]]:
    """Sync-log lines for what a written schedule's notes say (E16: a room declined)."""
    rows = []
    for action in plan.actions:
        if isinstance(action, Create) or (
            isinstance(action, Update | LinkTo) and action.write_schedule
        ):
            for note in action.item.notes:
                row = store.log_row(run, "declined", note, user_id=user.id, mailbox=user.mailbox)
                row["suite_id"] = action.item.event.suite_id
                row["title"] = action.item.event.subject[:500]
                rows.append(row)
    return rows


def _state_row(context: str, feed: str) -> str:
    return json.dumps({"context": context, "feed": feed}, separators=(",", ":"))


@dataclass(slots=True)
class ReadMailbox:
    """A mailbox read and waiting for its OA write; ``changes`` for an incremental read."""

    user: OAUser
    events: list[SuiteEvent]
    changes: ChangeSet | None = None
    prepared: list[Any] | None = None  # the events mapped (``_prepare``), once done
    known: dict[str, str] | None = None  # suite id → source hash of its link, when read
    stored_state: str | None = None  # the state row stored for this window, if any


@dataclass(frozen=True, slots=True)
class ApplySettings:
    """What applying any mailbox of a task needs besides the mailbox."""

    config: IntegrationConfig
    ctx: PrepareContext
    window: Window
    run: store.RunInfo
    context: str = ""
    confirm_deletes: bool = False


@dataclass(slots=True)
class _Tail:
    """The writes a transaction makes last, for all its mailboxes at once: new schedules of
    plans of creates alone (:class:`store.GroupWrites`), sync-log rows and change-feed states
    (one statement per table per group, not per mailbox)."""

    creates: store.GroupWrites
    logs: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)
    # The link state of the group's fully read mailboxes, read up front (an incremental read
    # needs little of it, or none); dropped once a write could have changed it.
    preloaded: store.PreloadedStates | None = None

    def flush(self, conn: sa.Connection, s: ApplySettings) -> None:
        self.creates.flush(conn)  # first: the sync-log rows take the new schedules' ids
        store.write_logs(conn, self.logs)
        store.save_sync_states(conn, s.config.id, s.window.start, s.window.end, self.states)
        self.logs, self.states = [], {}


def _keep_state(tail: _Tail, read: ReadMailbox, row: str) -> None:
    """Queue the mailbox's new state row, unless it is the one stored (a connector without a
    change feed hands back the same state each run: no write for it)."""
    if row != read.stored_state:
        tail.states[read.user.mailbox] = row


def _identity_keys(prepared: list[Any]) -> list[str]:
    return [p.event.identity_key for p in prepared if p.data is not None or p.unmapped]


def _mapped(s: ApplySettings, user: OAUser, event: SuiteEvent, source: str) -> Prepared:
    """``event`` filtered and mapped, carrying its source hash (stored with its link)."""
    item = prepare_event(event, user, s.ctx)
    item.source_hash = source
    return item


def _vouched(
    s: ApplySettings, user: OAUser, prepared: list[Prepared], links: list[LinkRow]
) -> list[Prepared]:
    """``prepared`` with each unmapped item given its link's content hash, or mapped now when
    the link (as the transaction sees it) no longer has the item's source hash."""
    if not any(p.unmapped for p in prepared):
        return prepared
    by_suite = {link.suite_id: link for link in links}
    out = []
    for item in prepared:
        if item.unmapped:
            link = by_suite.get(item.event.suite_id)
            if link is not None and link.source_hash == item.source_hash:
                item._hash = link.content_hash
            else:
                item = _mapped(s, user, item.event, item.source_hash)
        out.append(item)
    return out


def _plan(
    s: ApplySettings,
    read: ReadMailbox,
    prepared: list[Prepared],
    links: list[LinkRow],
    meetings: dict[str, MeetingRow],
    removed: list[str] | None,
) -> MailboxPlan:
    """The mailbox's plan. An unmapped item the plan would act on is mapped, and the mailbox
    planned again (planning is pure and cheap): every action sees real content."""
    prepared = _vouched(s, read.user, prepared, links)
    while True:  # each pass maps at least one item, so it ends
        plan = plan_mailbox(
            read.user.mailbox,
            prepared,
            links,
            meetings,
            s.window,
            frozenset(s.ctx.users_by_mailbox),
            removed,
            marker_prefix=calsync_key_prefix(s.config.id),
        )
        acted_on = {
            id(item)
            for action in plan.actions
            if (item := getattr(action, "item", None)) is not None and item.unmapped
        }
        if not acted_on:
            return plan
        prepared = [
            _mapped(s, read.user, p.event, p.source_hash) if id(p) in acted_on else p
            for p in prepared
        ]


def _apply_in(
    conn: sa.Connection,
    s: ApplySettings,
    read: ReadMailbox,
    prepared: list[Any],
    tail: _Tail,
) -> dict[str, int]:
    """Plan and apply one prepared mailbox inside the caller's transaction (the write origin
    marker already set); its sync-log rows and new feed state go to ``tail``, which the
    caller flushes before it commits. Returns the action counts."""
    user, events, changes = read.user, read.events, read.changes
    removed = changes.removed if changes is not None and not changes.full else None
    state = changes.state if changes is not None else None
    if _unchanged(read, prepared):  # no plan to make, just the new state
        if state:
            _keep_state(tail, read, _state_row(s.context, state))
        return {}
    keys = _identity_keys(prepared)
    if tail.creates.holds_any(keys):  # a meeting an earlier mailbox of the group creates
        tail.creates.flush(conn)
        tail.preloaded = None  # it holds none of what the flush wrote
    loaded = tail.preloaded.take(user.mailbox, keys) if tail.preloaded is not None else None
    if loaded is None:
        loaded = store.load_mailbox_state(conn, s.config.id, user.mailbox, keys)
    links, meetings = loaded
    plan = _plan(s, read, prepared, links, meetings, removed)
    held = (
        None
        if s.confirm_deletes
        else _guard(s.config, plan, links, s.window, events, removed is not None)
    )
    if held is not None:
        plan.actions = [a for a in plan.actions if not isinstance(a, Drop)]
    deferred = store.deferrable(plan, s.run)
    if not deferred:  # its statements must see every write planned before it
        tail.creates.flush(conn)
        tail.preloaded = None  # and its writes may reach later mailboxes' links and meetings
    rekey_meetings(conn, s.config.id, plan)  # E11: a re-link by marker with a new iCalUId
    outcome, logs = store.apply_plan(conn, plan, user, s.run, tail.creates if deferred else None)
    logs.extend(_note_rows(plan, s.run, user))
    if held is not None:
        count, reason = held
        outcome.add("held", count)
        logs.append(
            store.log_row(
                s.run,
                "held",
                f"{count} deletion(s) held: {reason}. Check the mailbox, then run "
                "the DAG by hand with confirm_deletes to apply them.",
                user_id=user.id,
                mailbox=user.mailbox,
            )
        )
        log.warning("mailbox %s: %d deletion(s) held: %s", user.mailbox, count, reason)
    tail.logs.extend(logs)
    # A held read keeps the old feed state: the same removals come again next time.
    if state and held is None:
        _keep_state(tail, read, _state_row(s.context, state))
    return outcome.counts


def _prepare(s: ApplySettings, read: ReadMailbox) -> list[Any]:
    """The mailbox's events mapped, or marked unmapped where their link's source hash (read
    at the start of the task) says they were read exactly so before."""
    if not s.context:
        return [prepare_event(event, read.user, s.ctx) for event in read.events]
    known = read.known or {}
    out = []
    for event in read.events:
        source = source_hash(s.context, event)
        if known.get(event.suite_id) == source:
            out.append(Prepared(event, source_hash=source, unmapped=True))
        else:
            out.append(_mapped(s, read.user, event, source))
    return out


def apply_mailbox(
    engine: sa.Engine, s: ApplySettings, read: ReadMailbox, prepared: list[Any] | None = None
) -> dict[str, int]:
    """Plan and apply one mailbox in one transaction; returns the action counts. A unique
    violation (a concurrent task linked the same meeting first) re-plans, up to
    ``APPLY_ATTEMPTS`` times."""
    if prepared is None:
        prepared = _prepare(s, read)
    for attempt in range(1, APPLY_ATTEMPTS + 1):
        try:
            with (
                engine.begin() as conn,
                outbox.write_origin(conn, outbox.forward_origin(s.config.id)),
            ):
                tail = _Tail(store.GroupWrites(s.config.id))
                counts = _apply_in(conn, s, read, prepared, tail)
                tail.flush(conn, s)
                return counts
        except sa.exc.IntegrityError:
            if attempt == APPLY_ATTEMPTS:
                raise
            log.info(
                "mailbox %s: a concurrent task linked a meeting first; re-planning",
                read.user.mailbox,
            )
    raise AssertionError("unreachable")


# A write error of the OA (or the OA gone): the mailbox fails alone, nothing of it committed.
OA_WRITE_ERRORS = (sa.exc.SQLAlchemyError, OADatabaseUnavailable)


def apply_group(
    engine: sa.Engine, s: ApplySettings, group: list[ReadMailbox]
) -> list[dict[str, int] | Exception]:
    """Apply several read mailboxes in one transaction (group commit: one commit, and one
    write-origin marker, for all of them); per mailbox its counts or its OA write error.

    Mailboxes are planned one after another inside the transaction, each seeing what the ones
    before it wrote (a meeting several mailboxes hold is created once and linked by the
    others). If anything fails, the whole group is rolled back and its mailboxes are applied
    again one by one, each in its own transaction: one bad mailbox never takes others with it.
    A mailbox with nothing to write (``_idle``) gets no transaction at all.
    """
    prepared = [read.prepared if read.prepared is not None else _prepare(s, read) for read in group]
    busy = [i for i, (r, p) in enumerate(zip(group, prepared, strict=True)) if not _idle(s, r, p)]
    if len(busy) < len(group):  # no BEGIN, write-origin marker and COMMIT for nothing
        results: list[dict[str, int] | Exception] = [{} for _ in group]
        if busy:
            applied = _apply_prepared(
                engine, s, [group[i] for i in busy], [prepared[i] for i in busy]
            )
            for i, outcome in zip(busy, applied, strict=True):
                results[i] = outcome
        return results
    return _apply_prepared(engine, s, group, prepared)


def _unchanged(read: ReadMailbox, prepared: list[Any]) -> bool:
    """An incremental read that changed nothing since the stored state."""
    changes = read.changes
    return changes is not None and not changes.full and not prepared and not changes.removed


def _idle(s: ApplySettings, read: ReadMailbox, prepared: list[Any]) -> bool:
    """Nothing to write for this mailbox: an unchanged read whose new feed state is the one
    stored (what ``_apply_in`` would do with it: nothing)."""
    if not _unchanged(read, prepared):
        return False
    state = read.changes.state if read.changes is not None else None
    return not state or _state_row(s.context, state) == read.stored_state


def _apply_prepared(
    engine: sa.Engine, s: ApplySettings, group: list[ReadMailbox], prepared: list[list[Any]]
) -> list[dict[str, int] | Exception]:
    if len(group) > 1:
        try:
            with (
                engine.begin() as conn,
                outbox.write_origin(conn, outbox.forward_origin(s.config.id)),
            ):
                tail = _Tail(store.GroupWrites(s.config.id))
                full_reads = {
                    r.user.mailbox: _identity_keys(p)
                    for r, p in zip(group, prepared, strict=True)
                    if r.changes is None or r.changes.full
                }
                if full_reads:
                    tail.preloaded = store.PreloadedStates(conn, s.config.id, full_reads)
                counts = [
                    _apply_in(conn, s, r, p, tail) for r, p in zip(group, prepared, strict=True)
                ]
                tail.flush(conn, s)
                return counts
        except OA_WRITE_ERRORS as exc:
            log.info(
                "a group of %d mailboxes failed to apply (%s); applying them one by one",
                len(group),
                type(exc).__name__,
            )
    results: list[dict[str, int] | Exception] = []
    for read, items in zip(group, prepared, strict=True):
        try:
            results.append(apply_mailbox(engine, s, read, items))
        except OA_WRITE_ERRORS as exc:
            log.warning("mailbox %s: OA write failed: %s", read.user.mailbox, exc)
            results.append(exc)
    return results


def _write_error(exc: Exception) -> str:
    # OADatabaseUnavailable: the OA went away (restart, failover) before the transaction
    # began; either way nothing of this mailbox was committed.
    first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"OA write failed: {type(exc).__name__}: {first_line}"


# Group commit: the writer takes every read mailbox waiting, up to these limits, into one
# transaction. Fewer mailboxes wait when reads are the slower side (nothing is held back
# to fill a group); when the OA is, groups grow and commits get rarer. Groups start at one
# mailbox and may double each time (slow start): the first mailboxes of a run are durable
# at once, and a small run keeps a commit per mailbox or two.
GROUP_MAILBOXES = 50
GROUP_EVENTS = 4000
# Links made by a run before the link tables' statistics are refreshed, then 4× as many
# each time (store.refresh_link_statistics: a first sync is a bulk load).
ANALYZE_AFTER_LINKS = 2000


MARKER_LOOKUPS = 20  # per mailbox and run (E11: see _complete_markers)


async def _complete_markers(
    connector: SuiteConnector, mailbox: str, events: list[SuiteEvent]
) -> None:
    """E11 on a change feed without extended properties (Graph's delta): a change set that
    removes items may hold one of them come back with a new id and a new iCalUId (a copy +
    delete move), found again only by calsync's marker. Its single events' markers are read
    (at most ``MARKER_LOOKUPS``) so the planner can re-link it instead of delete + create."""
    wanted = [e for e in events if e.calsync_key is None and e.series_id is None]

    async def one(event: SuiteEvent) -> None:
        try:
            full = await connector.get_event(mailbox, event.suite_id)
        except ConnectorError as exc:  # the read itself succeeded: plan without the marker
            log.info("mailbox %s: no marker for %s: %s", mailbox, event.suite_id, exc)
            return
        if full is not None and full.calsync_key:
            event.calsync_key = full.calsync_key

    await asyncio.gather(*(one(e) for e in wanted[:MARKER_LOOKUPS]))


async def sync_users(
    engine: sa.Engine,
    config: IntegrationConfig,
    library: Any,
    connector: SuiteConnector,
    users: list[OAUser],
    window: Window,
    run: store.RunInfo,
    incremental: bool = False,
    confirm_deletes: bool = False,
) -> list[UserResult]:
    """Forward-sync ``users`` for ``window``; returns one result per user, in order.
    ``incremental``: use the change feed where a state allows it (the scheduled run);
    ``confirm_deletes``: apply deletions the mass-deletion guard would hold (E10).

    ``execution.concurrency`` mailboxes are read at once; read mailboxes queue for one writer
    thread, which applies what is waiting as a group (:func:`apply_group`). The queue is
    bounded, so at most about ``concurrency + 2 × GROUP_MAILBOXES`` mailboxes' events are in
    memory whatever the number of users (besides the source hashes of the task's links, a
    suite id and a hash each, dropped as their mailboxes are read); results keep counts only."""
    process_tuning.tune_for_sync()  # GIL switch interval and GC thresholds (see the module)
    with engine.connect() as conn:
        ctx, room_problems = build_context(conn, config, library)
        mailboxes = [u.mailbox for u in users]
        states = store.load_sync_states(conn, config.id, mailboxes) if incremental else {}
        known = store.load_source_hashes(conn, config.id, mailboxes)
    context = context_fingerprint(config, ctx, library)
    settings = ApplySettings(config, ctx, window, run, context, confirm_deletes)
    feed = {"supported": incremental}
    if room_problems:
        with engine.begin() as conn:
            store.write_logs(conn, [store.log_row(run, "failed", p) for p in room_problems])
    results = {u.mailbox: UserResult(u.mailbox, u.id, u.name) for u in users}
    semaphore = asyncio.Semaphore(config.execution.concurrency)
    ready: asyncio.Queue[ReadMailbox | None] = asyncio.Queue(maxsize=GROUP_MAILBOXES)
    # One writer thread: groups are applied one after another while reads go on. A mapper
    # thread maps each mailbox as it is read (pure CPU), so that work overlaps the writer's
    # waits on the OA database instead of adding to them.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calsync-oa")
    mapper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calsync-map")
    loop = asyncio.get_running_loop()

    async def failed(user: OAUser, message: str) -> None:
        result = results[user.mailbox]
        result.error = message
        await loop.run_in_executor(writer, _log_user, engine, run, user, "failed", message)
        result.counts = {"failed": 1}

    async def read(user: OAUser) -> None:
        result = results[user.mailbox]
        changes: ChangeSet | None = None
        try:
            async with semaphore:
                if feed["supported"]:
                    prior = _feed_state(states.get(user.mailbox), window, context)
                    try:
                        changes = await connector.list_changes(user.mailbox, window, prior)
                    except IncrementalNotSupported:
                        feed["supported"] = False
                if changes is None:
                    events = await connector.list_events(user.mailbox, window)
                else:
                    events = changes.events
                    if changes.removed and not getattr(connector, "markers_in_changes", True):
                        await _complete_markers(connector, user.mailbox, events)
                read_box = ReadMailbox(
                    user,
                    events,
                    changes,
                    known=known.pop(user.mailbox, None),
                    stored_state=_stored_for(states.get(user.mailbox), window),
                )
                read_box.prepared = await loop.run_in_executor(mapper, _prepare, settings, read_box)
                # queued before the slot is given up: a full queue stops reading, so only
                # the in-flight mailboxes' events are ever held
                await ready.put(read_box)
        except AccountMissing as exc:  # F21: skipped with a clear record, not a failure
            await loop.run_in_executor(writer, _log_user, engine, run, user, "skipped", str(exc))
            result.counts = {"skipped": 1}
            return
        except MailboxNotFound as exc:
            result.retriable = False
            await failed(user, str(exc))
            return
        except ConnectorError as exc:
            result.retriable = exc.retriable
            await failed(user, str(exc))
            return
        except Exception as exc:  # one user's surprise never stops the others
            log.exception("mailbox %s: unexpected error while reading", user.mailbox)
            await failed(user, f"{type(exc).__name__}: {exc}")

    async def write() -> None:
        done, limit = False, 1
        linked, analyze_at = 0, ANALYZE_AFTER_LINKS
        while not done:
            item = await ready.get()
            if item is None:
                break
            group, size = [item], len(item.events)
            while len(group) < limit and size < GROUP_EVENTS and not ready.empty():
                item = ready.get_nowait()
                if item is None:
                    done = True
                    break
                group.append(item)
                size += len(item.events)
            limit = min(GROUP_MAILBOXES, 2 * limit)
            outcomes = await loop.run_in_executor(writer, apply_group, engine, settings, group)
            for mailbox_read, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    await failed(mailbox_read.user, _write_error(outcome))
                else:
                    results[mailbox_read.user.mailbox].counts = outcome
                    linked += outcome.get("created", 0) + outcome.get("linked", 0)
            if linked >= analyze_at:
                analyze_at *= 4
                await loop.run_in_executor(writer, store.refresh_link_statistics, engine)

    async def read_all() -> None:
        try:
            await asyncio.gather(*(read(u) for u in users))
        finally:
            await ready.put(None)

    try:
        await _first_error(read_all(), write())
    finally:
        mapper.shutdown(wait=True)
        writer.shutdown(wait=True)
        # the calendar ids the reads looked up, for the reverse drains (a forward read itself
        # goes by its feed state's calendar); a failure is logged there, never raised
        await asyncio.to_thread(
            calendar_ids.save, engine, config.id, connector.calendar_name, connector.calendar_ids()
        )
    return [results[u.mailbox] for u in users]


async def _first_error(*coroutines: Any) -> None:
    """Run the coroutines together; the first exception cancels the others and is raised
    (a dead writer must not leave readers waiting on a full queue)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def _log_user(
    engine: sa.Engine, run: store.RunInfo, user: OAUser, action: str, message: str | None
) -> None:
    row = store.log_row(run, action, message or "", user_id=user.id, mailbox=user.mailbox)
    try:
        with engine.begin() as conn:
            store.write_logs(conn, [row])
    except (sa.exc.SQLAlchemyError, OADatabaseUnavailable):
        log.exception("could not write the %s record of %s", action, user.mailbox)
