"""Forward sync (suite → OA) for a batch of users: fetch → filter + map → plan → apply.

Mailboxes are read concurrently (``execution.concurrency``) while the OA writes are applied
one mailbox at a time, each in its own transaction with its sync-log rows. One user's failure
(unknown mailbox, suite error, a bad record) never stops the others: it is logged and
reported, and the caller decides whether the task fails (so Airflow retries just it).

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
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from calsync.config import IntegrationConfig
from calsync.connectors.base import ChangeSet, IncrementalNotSupported, SuiteConnector
from calsync.errors import AccountMissing, ConnectorError, MailboxNotFound
from calsync.model import OAUser, SuiteEvent, Window
from calsync.oa import outbox, store
from calsync.oa.db import OADatabaseUnavailable
from calsync.sync.guard import hold_reason
from calsync.sync.plan import Create, Drop, LinkTo, Update, plan_mailbox
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


def _feed_state(row: store.SyncStateRow | None, window: Window, context: str) -> str | None:
    """The connector state to continue from, or None to start a new round."""
    if row is None or (row.window_start, row.window_end) != (window.start, window.end):
        return None
    try:
        data = json.loads(row.state)
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


def apply_mailbox(
    engine: sa.Engine,
    config: IntegrationConfig,
    ctx: PrepareContext,
    user: OAUser,
    events: list[SuiteEvent],
    window: Window,
    run: store.RunInfo,
    changes: ChangeSet | None = None,
    context: str = "",
    confirm_deletes: bool = False,
) -> dict[str, int]:
    """Plan and apply one mailbox in one transaction; returns the action counts.

    ``changes`` (an incremental read; ``events`` are its events): a partial one is planned in
    partial mode, and its state is stored in the same transaction."""
    prepared = [prepare_event(event, user, ctx) for event in events]
    keys = [p.event.identity_key for p in prepared if p.data is not None]
    in_scope = frozenset(ctx.users_by_mailbox)
    removed = changes.removed if changes is not None and not changes.full else None
    for attempt in range(1, APPLY_ATTEMPTS + 1):
        try:
            with (
                engine.begin() as conn,
                outbox.write_origin(conn, outbox.forward_origin(config.id)),
            ):
                links, meetings = store.load_mailbox_state(conn, config.id, user.mailbox, keys)
                plan = plan_mailbox(
                    user.mailbox, prepared, links, meetings, window, in_scope, removed
                )
                held = (
                    None
                    if confirm_deletes
                    else _guard(config, plan, links, window, events, removed is not None)
                )
                if held is not None:
                    plan.actions = [a for a in plan.actions if not isinstance(a, Drop)]
                outcome, logs = store.apply_plan(conn, plan, user, run)
                logs.extend(_note_rows(plan, run, user))
                if held is not None:
                    count, reason = held
                    outcome.add("held", count)
                    logs.append(
                        store.log_row(
                            run,
                            "held",
                            f"{count} deletion(s) held: {reason}. Check the mailbox, then run "
                            "the DAG by hand with confirm_deletes to apply them.",
                            user_id=user.id,
                            mailbox=user.mailbox,
                        )
                    )
                    log.warning("mailbox %s: %d deletion(s) held: %s", user.mailbox, count, reason)
                store.write_logs(conn, logs)
                # A held read keeps the old feed state: the same removals come again next time.
                if changes is not None and changes.state and held is None:
                    store.save_sync_state(
                        conn,
                        config.id,
                        user.mailbox,
                        window.start,
                        window.end,
                        _state_row(context, changes.state),
                    )
            return outcome.counts
        except sa.exc.IntegrityError:
            if attempt == APPLY_ATTEMPTS:
                raise
            log.info(
                "mailbox %s: a concurrent task linked a meeting first; re-planning", user.mailbox
            )
    raise AssertionError("unreachable")


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
    ``confirm_deletes``: apply deletions the mass-deletion guard would hold (E10)."""
    with engine.connect() as conn:
        ctx, room_problems = build_context(conn, config, library)
        states = (
            store.load_sync_states(conn, config.id, [u.mailbox for u in users])
            if incremental
            else {}
        )
    context = context_fingerprint(config, ctx, library) if incremental else ""
    feed = {"supported": incremental}
    if room_problems:
        with engine.begin() as conn:
            store.write_logs(conn, [store.log_row(run, "failed", p) for p in room_problems])
    results = {u.mailbox: UserResult(u.mailbox, u.id, u.name) for u in users}
    semaphore = asyncio.Semaphore(config.execution.concurrency)
    # One writer thread: mailboxes are applied one after another while reads go on.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calsync-oa")
    loop = asyncio.get_running_loop()

    async def one(user: OAUser) -> None:
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
        except AccountMissing as exc:  # F21: skipped with a clear record, not a failure
            await loop.run_in_executor(writer, _log_user, engine, run, user, "skipped", str(exc))
            result.counts = {"skipped": 1}
            return
        except MailboxNotFound as exc:
            result.error, result.retriable = str(exc), False
        except ConnectorError as exc:
            result.error, result.retriable = str(exc), exc.retriable
        except Exception as exc:  # one user's surprise never stops the others
            log.exception("mailbox %s: unexpected error while reading", user.mailbox)
            result.error = f"{type(exc).__name__}: {exc}"
        if result.error is None:
            try:
                result.counts = await loop.run_in_executor(
                    writer,
                    apply_mailbox,
                    engine,
                    config,
                    ctx,
                    user,
                    events,
                    window,
                    run,
                    changes,
                    context,
                    confirm_deletes,
                )
                return
            except (sa.exc.SQLAlchemyError, OADatabaseUnavailable) as exc:
                # OADatabaseUnavailable: the OA went away (restart, failover) before the
                # transaction began; either way nothing of this mailbox was committed.
                first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
                result.error = f"OA write failed: {type(exc).__name__}: {first_line}"
                log.warning("mailbox %s: OA write failed: %s", user.mailbox, exc)
        await loop.run_in_executor(writer, _log_user, engine, run, user, "failed", result.error)
        result.counts = {"failed": 1}

    try:
        await asyncio.gather(*(one(u) for u in users))
    finally:
        writer.shutdown(wait=True)
    return [results[u.mailbox] for u in users]


def _log_user(
    engine: sa.Engine, run: store.RunInfo, user: OAUser, action: str, message: str | None
) -> None:
    row = store.log_row(run, action, message or "", user_id=user.id, mailbox=user.mailbox)
    try:
        with engine.begin() as conn:
            store.write_logs(conn, [row])
    except (sa.exc.SQLAlchemyError, OADatabaseUnavailable):
        log.exception("could not write the %s record of %s", action, user.mailbox)
