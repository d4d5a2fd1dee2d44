"""``calsync sync``: one forward sync outside Airflow, for troubleshooting.

The same engine the DAG's ``sync_users`` task runs (:func:`calsync.sync.forward.sync_users`),
with the OA database and the suite credentials taken from the Airflow connections the
integration names, over a manual range (checked as the DAG checks it) or the scheduled window,
always read in full (the stored change-feed state is left alone).

``--dry-run`` reads the mailboxes and the OA and prints, per mailbox, what a run would do —
creates, updates, deletes, links, with titles — and writes nothing: every OA read goes through
one read-only transaction (``PRAGMA query_only`` on SQLite, ``READ ONLY`` transactions on
PostgreSQL and MariaDB), so not even a sync-log record can be written by mistake, and the
suite is only read. Mailboxes are planned one after another as a run applies them, so a
meeting in several mailboxes shows as one create and then links.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import sqlalchemy as sa

from calsync.config import IntegrationConfig
from calsync.errors import AccountMissing, CalsyncError, ConnectorError
from calsync.model import OAUser, SuiteEvent, Window
from calsync.oa import schema as t

KINDS = ("create", "update", "delete", "link", "unlink", "relink", "unchanged", "skip", "fail")


class CliError(CalsyncError):
    """A problem to report in one line (exit status 1)."""


# --- the OA --------------------------------------------------------------------------------


@contextlib.contextmanager
def read_only(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection whose one transaction the database itself keeps read-only."""
    with engine.connect() as conn:
        dialect = conn.dialect.name
        if dialect == "sqlite":
            conn = conn.execution_options(calsync_sqlite_begin="DEFERRED")
            conn.exec_driver_sql("PRAGMA query_only = ON")
            try:
                yield conn
            finally:
                conn.rollback()
                conn.exec_driver_sql("PRAGMA query_only = OFF")
                conn.rollback()
        elif dialect == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            try:
                yield conn
            finally:
                conn.rollback()
        else:  # MySQL/MariaDB: the driver sends no BEGIN of its own
            conn.exec_driver_sql("START TRANSACTION READ ONLY")
            try:
                yield conn
            finally:
                conn.rollback()


def check_schema(conn: sa.Connection, oa_connection_id: str) -> None:
    from alembic.runtime.migration import MigrationContext

    from calsync.oa.migrate import VERSION_TABLE, head

    have = MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE}
    ).get_current_revision()
    if have != head():
        raise CliError(
            f"the OA database of connection {oa_connection_id!r} is at schema revision "
            f"{have or 'none'}, calsync needs {head()}: run `python -m calsync.oa.migrate`"
        )


def oa_engine(config: IntegrationConfig) -> sa.Engine:
    """The OA engine from the Airflow connection the integration names."""
    from calsync.oa.db import engine_from_airflow_connection

    try:
        return engine_from_airflow_connection(config.oa_connection_id)
    except CalsyncError:
        raise
    except Exception as exc:  # AirflowNotFoundException and the like
        raise CliError(
            f"Airflow connection {config.oa_connection_id!r} (oa_connection_id): {exc}"
        ) from None


def pick_users(
    conn: sa.Connection, config: IntegrationConfig, requested: list[str]
) -> tuple[list[OAUser], list[tuple[int, str, str]]]:
    """(users to sync, users in scope skipped for want of a mailbox), as resolve_users."""
    from calsync.oa import store

    scope = store.resolve_scope(conn, config.scope, config.binding)
    wanted = [u.strip().lower() for u in requested if u.strip()]
    if not wanted:
        return scope.users, scope.skipped
    known = {u.login: u for u in scope.users} | {u.mailbox: u for u in scope.users}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise CliError(
            f"unknown user(s) for integration {config.id!r}: {', '.join(unknown)} "
            "(not in the OA, inactive, out of scope, or without a mailbox)"
        )
    ids = {known[name].id for name in wanted}
    return [u for u in scope.users if u.id in ids], []


def window_for(
    config: IntegrationConfig, start: str | None, end: str | None, now: dt.datetime
) -> tuple[Window, str]:
    from calsync.errors import RangeError
    from calsync.sync.window import manual_window, scheduled_window

    try:
        if start or end:
            return manual_window(start, end, now, config.timezone), "manual"
        return scheduled_window(now, config.timezone, config.window_days), "scheduled window"
    except RangeError as exc:
        raise CliError(f"range refused: {exc}") from None


def _accounts(config: IntegrationConfig, conn: sa.Connection, users: list[OAUser]) -> Any:
    """F21 personal accounts (Exchange, ``user`` mode): a mailbox → account lookup."""
    if config.type != "exchange" or config.exchange is None:
        return None
    if config.exchange.access_mode != "user":
        return None
    from calsync.accounts import AccountVault, load_accounts

    by_user = load_accounts(conn, AccountVault.from_environment(), [u.id for u in users])
    return {u.mailbox: by_user.get(u.id) for u in users}.get


# --- dry run -------------------------------------------------------------------------------


@dataclass
class Entry:
    kind: str
    title: str
    when: str = ""
    note: str = ""


@dataclass
class MailboxReport:
    user: OAUser
    entries: list[Entry] = field(default_factory=list)
    unchanged: int = 0
    error: str | None = None

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        for entry in self.entries:
            out[entry.kind] += 1
        out["unchanged"] += self.unchanged
        return out


def _when(event: SuiteEvent, zone: str) -> str:
    import zoneinfo

    if event.all_day and event.start_date is not None:
        last = (event.end_date or event.start_date + dt.timedelta(days=1)) - dt.timedelta(days=1)
        span = f"{event.start_date}" + (f"…{last}" if last > event.start_date else "")
        return f"{span} (all day)"
    if event.start is None:
        return ""
    tz = zoneinfo.ZoneInfo(zone)
    start = event.start.astimezone(tz)
    end = event.end.astimezone(tz) if event.end else None
    if end is None:
        return f"{start:%Y-%m-%d %H:%M}"
    same_day = end.date() == start.date()
    return (
        f"{start:%Y-%m-%d %H:%M}–{end:%H:%M}"
        if same_day
        else f"{start:%Y-%m-%d %H:%M}–{end:%Y-%m-%d %H:%M}"
    )


class DryRun:
    """Plans mailboxes one after another against the OA as read, and what the mailboxes
    planned before them would have changed (new meetings, dropped links)."""

    def __init__(self, conn: sa.Connection, config: IntegrationConfig, ctx: Any, run: Any) -> None:
        self.conn = conn
        self.config = config
        self.ctx = ctx
        self.run = run
        self.in_scope = frozenset(ctx.users_by_mailbox)
        self.new_meetings: dict[str, Any] = {}  # identity key → a MeetingRow to be created
        self.new_titles: dict[str, tuple[str, str]] = {}  # identity key → (title, mailbox)
        self.dropped: dict[int, set[int]] = {}  # schedule id → link ids dropped so far

    def _schedule(self, schedule_id: int) -> Any:
        if schedule_id < 0:
            return None
        return self.conn.execute(
            sa.select(t.schedules.c.title, t.schedules.c.source_integration).where(
                t.schedules.c.id == schedule_id
            )
        ).first()

    def plan(self, user: OAUser, events: list[SuiteEvent], window: Window) -> MailboxReport:
        from calsync.oa import store
        from calsync.sync.plan import (
            Create,
            Drop,
            Fail,
            LinkTo,
            MeetingRow,
            Skip,
            Update,
            plan_mailbox,
        )
        from calsync.sync.prepare import prepare_event

        report = MailboxReport(user)
        prepared = [prepare_event(event, user, self.ctx) for event in events]
        keys = [p.event.identity_key for p in prepared if p.data is not None]
        links, meetings = store.load_mailbox_state(self.conn, self.config.id, user.mailbox, keys)
        for key, meeting in self.new_meetings.items():
            meetings.setdefault(key, meeting)
        plan = plan_mailbox(user.mailbox, prepared, links, meetings, window, self.in_scope)
        held = store._oa_changes_pending(self.conn, plan, self.run)
        report.unchanged = plan.unchanged
        zone = self.config.timezone
        for action in plan.actions:
            if isinstance(action, Create):
                item = action.item
                title = item.data.title if item.data else item.event.subject
                adopted = store._adoptable(self.conn, self.config.id, item.event.calsync_key)
                when = _when(item.event, zone)
                if adopted is not None:
                    note = f"the event calsync created for OA schedule {adopted}"
                    report.entries.append(Entry("link", title, when, note))
                    continue
                key = item.event.identity_key
                self.new_meetings[key] = MeetingRow(
                    -len(self.new_meetings) - 1, key, -1, item.owner_mailbox or user.mailbox,
                    item.hash,
                )  # fmt: skip
                self.new_titles[key] = (title, user.mailbox)
                report.entries.append(Entry("create", title, when))
            elif isinstance(action, LinkTo):
                item, meeting = action.item, action.meeting
                title = item.data.title if item.data else item.event.subject
                if meeting.id < 0:
                    first = self.new_titles[meeting.identity_key][1]
                    note = f"copy of a meeting created above from {first}"
                else:
                    note = f"copy of a meeting already in the OA (schedule {meeting.schedule_id})"
                if action.write_schedule and meeting.id >= 0:
                    conflict = self._conflict(meeting.schedule_id, held)
                    report.entries.append(
                        Entry("update", title, _when(item.event, zone), note + conflict)
                    )
                else:
                    report.entries.append(Entry("link", title, _when(item.event, zone), note))
            elif isinstance(action, Update):
                item, link = action.item, action.link
                title = item.data.title if item.data else item.event.subject
                when = _when(item.event, zone)
                if action.write_schedule:
                    note = f"schedule {link.schedule_id}"
                    old = self._schedule(link.schedule_id)
                    if old is not None and old.title != title:
                        note += f", was {old.title!r}"
                    if action.relinked:
                        note += "; re-linked: the suite gave the item a new id"
                    note += self._conflict(link.schedule_id, held)
                    report.entries.append(Entry("update", title, when, note))
                elif action.relinked:
                    note = f"schedule {link.schedule_id}: the suite gave the item a new id"
                    report.entries.append(Entry("relink", title, when, note))
                else:
                    report.unchanged += 1
            elif isinstance(action, Drop):
                report.entries.append(self._drop(action))
            elif isinstance(action, Skip):
                item = action.item
                report.entries.append(
                    Entry("skip", item.event.subject, _when(item.event, zone), item.skip or "")
                )
            elif isinstance(action, Fail):
                item = action.item
                report.entries.append(
                    Entry("fail", item.event.subject, _when(item.event, zone), item.error or "")
                )
        return report

    def _conflict(self, schedule_id: int, held: set[int]) -> str:
        if schedule_id not in held:
            return ""
        return (
            f"; CONFLICT: also edited in the OA, {self.config.conflict_policy} decides when "
            "the run applies it"
        )

    def _drop(self, action: Any) -> Entry:
        link = action.link
        dropped = self.dropped.setdefault(link.schedule_id, set())
        dropped.add(link.id)
        total = self.conn.execute(
            sa.select(sa.func.count())
            .select_from(t.links)
            .where(
                t.links.c.integration_id == self.config.id,
                t.links.c.schedule_id == link.schedule_id,
            )
        ).scalar_one()
        schedule = self._schedule(link.schedule_id)
        title = schedule.title if schedule is not None else f"schedule {link.schedule_id}"
        if total - len(dropped) > 0:
            return Entry("unlink", title, note=f"{action.reason}; other mailboxes still hold it")
        created_here = schedule is not None and schedule.source_integration == self.config.id
        if schedule is not None and (created_here or self.run.two_way):
            return Entry("delete", title, note=f"schedule {link.schedule_id}: {action.reason}")
        return Entry(
            "unlink", title, note=f"{action.reason}; not created by this integration, kept"
        )


async def _read_all(
    connector: Any, users: list[OAUser], window: Window, concurrency: int
) -> dict[str, list[SuiteEvent] | Exception]:
    semaphore = asyncio.Semaphore(concurrency)
    out: dict[str, list[SuiteEvent] | Exception] = {}

    async def one(user: OAUser) -> None:
        async with semaphore:
            try:
                out[user.mailbox] = await connector.list_events(user.mailbox, window)
            except Exception as exc:  # reported per mailbox, as a run does
                out[user.mailbox] = exc

    await asyncio.gather(*(one(u) for u in users))
    return out


def dry_run(
    engine: sa.Engine,
    config: IntegrationConfig,
    library: Any,
    requested: list[str],
    window: Window,
    run: Any,
) -> tuple[list[MailboxReport], list[str]]:
    """The plan of every mailbox, and notes (skipped users, room-mapping problems)."""
    from calsync.connectors.base import connector_for
    from calsync.sync.forward import build_context

    notes: list[str] = []
    with read_only(engine) as conn:
        check_schema(conn, config.oa_connection_id)
        users, skipped = pick_users(conn, config, requested)
        notes += [f"skipped user {name} (id {uid}): {why}" for uid, name, why in skipped]
        ctx, room_problems = build_context(conn, config, library)
        notes += [f"room mapping: {p}" for p in room_problems]
        accounts = _accounts(config, conn, users)

        async def read() -> dict[str, list[SuiteEvent] | Exception]:
            async with connector_for(config, accounts=accounts) as connector:
                return await _read_all(connector, users, window, config.execution.concurrency)

        events = asyncio.run(read())
        planner = DryRun(conn, config, ctx, run)
        reports = []
        for user in users:
            got = events[user.mailbox]
            if isinstance(got, AccountMissing):
                report = MailboxReport(user)
                report.entries.append(Entry("skip", "(mailbox)", note=str(got)))
            elif isinstance(got, ConnectorError):
                report = MailboxReport(user, error=str(got))
            elif isinstance(got, Exception):
                report = MailboxReport(user, error=f"{type(got).__name__}: {got}")
            else:
                report = planner.plan(user, got, window)
            reports.append(report)
    return reports, notes


def print_plan(
    reports: list[MailboxReport], notes: list[str], header: str, out: TextIO | None = None
) -> None:
    print(header, file=out)
    for note in notes:
        print(f"note: {note}", file=out)
    totals = dict.fromkeys(KINDS, 0)
    for report in reports:
        counts = report.counts()
        for key, value in counts.items():
            totals[key] += value
        user = report.user
        if report.error:
            print(f"\n== {user.mailbox} ({user.name}): READ FAILED: {report.error}", file=out)
            continue
        summary = ", ".join(f"{counts[k]} {k}" for k in KINDS if counts[k]) or "nothing"
        print(f"\n== {user.mailbox} ({user.name}): {summary}", file=out)
        for entry in report.entries:
            text = f"  {entry.kind:<8} {entry.when:<31} {entry.title}"
            print(text.rstrip() + (f"  [{entry.note}]" if entry.note else ""), file=out)
    failed = [r.user.mailbox for r in reports if r.error]
    line = ", ".join(f"{totals[k]} {k}" for k in KINDS if totals[k]) or "nothing to do"
    print(f"\nTOTAL ({len(reports)} mailbox(es)): {line}", file=out)
    if failed:
        print(f"mailboxes that could not be read: {', '.join(failed)}", file=out)
    print(
        "dry run: nothing was written (no OA schedule, link, sync-log record or feed state) "
        "and nothing was sent to the suite",
        file=out,
    )


# --- a real run ----------------------------------------------------------------------------


def real_run(
    engine: sa.Engine,
    config: IntegrationConfig,
    library: Any,
    requested: list[str],
    window: Window,
    run: Any,
) -> list[Any]:
    """Sync as the DAG's tasks do (users skipped for want of a mailbox logged as there)."""
    from calsync.connectors.base import connector_for
    from calsync.oa import store
    from calsync.sync.forward import sync_users

    with read_only(engine) as conn:
        check_schema(conn, config.oa_connection_id)
        users, skipped = pick_users(conn, config, requested)
        accounts = _accounts(config, conn, users)
    if skipped:
        with engine.begin() as conn:
            store.write_logs(
                conn,
                [
                    store.log_row(run, "skipped", f"{name}: {why}", user_id=uid)
                    for uid, name, why in skipped
                ],
            )

    async def go() -> list[Any]:
        async with connector_for(config, accounts=accounts) as connector:
            return await sync_users(
                engine, config, library, connector, users, window, run, incremental=False
            )

    return asyncio.run(go())


def print_results(results: list[Any], header: str, out: TextIO | None = None) -> None:
    from calsync.sync.forward import count_table

    print(header, file=out)
    for line in count_table([(r.mailbox, r.counts) for r in results]):
        print(line, file=out)
    for r in results:
        if r.error:
            print(f"FAILED {r.mailbox}: {r.error}", file=out)
