"""What the sync-log page shows, read from an OA database: filtered, paged sync-log records and
a per-integration overview (last runs, counts per action, failing users, dead reverse
deliveries, outbox backlog).

SQLAlchemy Core with bound parameters only: a filter value is never part of the SQL text
(LIKE patterns are escaped and bound too). Every list is bounded (``MAX_PAGE_SIZE``,
``MAX_LIST``). Reads run in a DEFERRED transaction on SQLite, so the page never takes the
write lock a sync needs. Times in the database are naive UTC; callers convert.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa

from calsync.oa import schema as t
from calsync.oa.db import SQLITE_BEGIN_OPTION

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_PAGE = 100_000
MAX_TEXT = 200  # characters of a free-text or user filter
MAX_LIST = 50  # failing users / dead deliveries listed per integration
DEFAULT_DAYS = 7
MAX_DAYS = 366
DIRECTIONS = ("forward", "reverse")
# The actions calsync writes (forward: calsync.oa.store; reverse: calsync.sync.reverse).
ACTIONS = (
    "created",
    "updated",
    "deleted",
    "linked",
    "unlinked",
    "relinked",
    "unchanged",
    "skipped",
    "failed",
    "conflict",
    "held",
    "released",
    "declined",
)
PROBLEM_ACTIONS = ("failed", "conflict", "skipped")
_ACTION_SHAPE = re.compile(r"[a-z_]{1,16}")
_LIKE_ESCAPE = "/"  # not a backslash: MySQL treats that specially inside string literals


def read_only(conn: sa.Connection) -> sa.Connection:
    """The connection with a read transaction that never waits for SQLite's write lock."""
    return conn.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})


def zone(name: str | None, default: str = "UTC") -> ZoneInfo:
    try:
        return ZoneInfo(name or default)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(default)


def to_utc(value: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """A wall-clock time in ``tz`` as the database's naive UTC."""
    return value.replace(tzinfo=tz).astimezone(dt.UTC).replace(tzinfo=None)


def from_utc(value: dt.datetime | None, tz: dt.tzinfo) -> dt.datetime | None:
    """The database's naive UTC as an aware time in ``tz``."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC).astimezone(tz)


# --- filters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilter:
    """Which sync-log records to show. Times are naive UTC; ``until`` is exclusive."""

    integration: str | None = None
    direction: str | None = None
    user: str | None = None  # mailbox, OA login or display name (substring), or OA user id
    actions: tuple[str, ...] = ()
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    text: str | None = None  # substring of title or message
    run_id: str | None = None


@dataclass(frozen=True)
class Paging:
    page: int = 1
    size: int = DEFAULT_PAGE_SIZE

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size


@dataclass
class Parsed:
    """A request's filters and paging, with the problems found (shown, never fatal)."""

    filter: LogFilter
    paging: Paging
    problems: list[str] = field(default_factory=list)


def _one(params: Mapping[str, Sequence[str]], key: str) -> str | None:
    values = params.get(key) or []
    value = (values[-1] if values else "").strip()
    return value or None


def _parse_when(text: str, tz: dt.tzinfo, end: bool) -> dt.datetime:
    """``YYYY-MM-DD`` (a whole day: the start, or the start of the next day for an end) or
    ``YYYY-MM-DDTHH:MM[:SS]``, in ``tz``."""
    if len(text) == 10:
        day = dt.date.fromisoformat(text)
        start = dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time())
        return to_utc(start, tz)
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return to_utc(value, tz)


def bounded_int(
    text: str | None, default: int, low: int, high: int, what: str, problems: list[str]
) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        problems.append(f"{what}: not a number: {text[:20]!r}")
        return default
    if not low <= value <= high:
        problems.append(f"{what}: must be between {low} and {high}")
        return min(max(value, low), high)
    return value


def parse_params(params: Mapping[str, Sequence[str]], tz: dt.tzinfo) -> Parsed:
    """Filters and paging from query parameters (``integration``, ``direction``, ``user``,
    ``action`` (repeatable, or ``problems``), ``since``, ``until``, ``q``, ``run_id``,
    ``page``, ``size``). Bad values are dropped or clamped, each with a problem."""
    problems: list[str] = []

    def text(key: str, limit: int = MAX_TEXT) -> str | None:
        value = _one(params, key)
        if value is not None and len(value) > limit:
            problems.append(f"{key}: longer than {limit} characters, cut")
            value = value[:limit]
        return value

    direction = _one(params, "direction")
    if direction is not None and direction not in DIRECTIONS:
        problems.append(f"direction: must be one of {', '.join(DIRECTIONS)}")
        direction = None
    actions: list[str] = []
    for raw in params.get("action") or []:
        for value in raw.split(","):
            value = value.strip()
            if not value:
                continue
            if value == "problems":
                actions.extend(PROBLEM_ACTIONS)
            elif _ACTION_SHAPE.fullmatch(value):
                actions.append(value)
            else:
                problems.append(f"action: not an action: {value[:20]!r}")
    when: dict[str, dt.datetime | None] = {}
    for key in ("since", "until"):
        value = _one(params, key)
        when[key] = None
        if value is not None:
            try:
                when[key] = _parse_when(value[:40], tz, end=key == "until")
            except ValueError:
                problems.append(f"{key}: not a date (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM)")
    size = bounded_int(_one(params, "size"), DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE, "size", problems)
    page = bounded_int(_one(params, "page"), 1, 1, MAX_PAGE, "page", problems)
    return Parsed(
        LogFilter(
            integration=text("integration", 64),
            direction=direction,
            user=text("user", 320),
            actions=tuple(dict.fromkeys(actions)),
            since=when["since"],
            until=when["until"],
            text=text("q"),
            run_id=text("run_id", 250),
        ),
        Paging(page, size),
        problems,
    )


def _contains(column: Any, needle: str) -> Any:
    """Case-insensitive substring match with an escaped, bound pattern (lower() on both sides,
    so each database folds case its own way)."""
    escaped = (
        needle.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
        .replace("%", f"{_LIKE_ESCAPE}%")
        .replace("_", f"{_LIKE_ESCAPE}_")
    )
    pattern = sa.bindparam(None, f"%{escaped}%", type_=sa.String)
    return sa.func.lower(column).like(sa.func.lower(pattern), escape=_LIKE_ESCAPE)


def _conditions(f: LogFilter) -> list[Any]:
    log, users = t.sync_log.c, t.users.c
    where: list[Any] = []
    if f.integration:
        where.append(log.integration_id == f.integration)
    if f.direction:
        where.append(log.direction == f.direction)
    if f.actions:
        where.append(log.action.in_(f.actions))
    if f.since is not None:
        where.append(log.logged_at >= f.since)
    if f.until is not None:
        where.append(log.logged_at < f.until)
    if f.run_id:
        where.append(log.run_id == f.run_id)
    if f.user:
        match = [
            _contains(log.mailbox, f.user),
            _contains(users.login_name, f.user),
            _contains(users.display_name, f.user),
        ]
        if f.user.isdigit() and len(f.user) < 10:
            match.append(log.user_id == int(f.user))
        where.append(sa.or_(*match))
    if f.text:
        where.append(sa.or_(_contains(log.title, f.text), _contains(log.message, f.text)))
    return where


# --- the log ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogRecord:
    id: int
    logged_at: dt.datetime  # naive UTC
    integration_id: str
    direction: str
    action: str
    run_id: str | None
    dag_id: str | None
    user_id: int | None
    user_login: str | None
    user_name: str | None
    mailbox: str | None
    schedule_id: int | None
    suite_id: str | None
    title: str | None
    message: str

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["logged_at"] = self.logged_at.replace(tzinfo=dt.UTC).isoformat()
        return data


@dataclass(frozen=True)
class LogPage:
    records: list[LogRecord]
    total: int
    paging: Paging

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.paging.size))


def _from_log() -> Any:
    return t.sync_log.outerjoin(t.users, t.users.c.id == t.sync_log.c.user_id)


def query_log(conn: sa.Connection, f: LogFilter, paging: Paging) -> LogPage:
    """One page of matching records, newest first, and how many match in all."""
    conn = read_only(conn)
    log, users = t.sync_log.c, t.users.c
    where = _conditions(f)
    total = conn.execute(
        sa.select(sa.func.count()).select_from(_from_log()).where(*where)
    ).scalar_one()
    rows = conn.execute(
        sa.select(
            log.id,
            log.logged_at,
            log.integration_id,
            log.direction,
            log.action,
            log.run_id,
            log.dag_id,
            log.user_id,
            users.login_name.label("user_login"),
            users.display_name.label("user_name"),
            log.mailbox,
            log.schedule_id,
            log.suite_id,
            log.title,
            log.message,
        )
        .select_from(_from_log())
        .where(*where)
        .order_by(log.logged_at.desc(), log.id.desc())
        .limit(paging.size)
        .offset(paging.offset)
    ).all()
    return LogPage([LogRecord(**r._asdict()) for r in rows], total, paging)


# --- the overview ----------------------------------------------------------------------------


@dataclass
class LastRun:
    logged_at: dt.datetime
    run_id: str | None
    dag_id: str | None


@dataclass
class FailingUser:
    user_id: int | None
    user_name: str | None
    mailbox: str | None
    failures: int
    last_at: dt.datetime
    last_message: str


@dataclass
class DeadDelivery:
    schedule_id: int
    title: str | None
    attempts: int
    updated_at: dt.datetime
    last_error: str


@dataclass
class IntegrationOverview:
    integration_id: str
    last_runs: dict[str, LastRun] = field(default_factory=dict)  # by direction
    counts: dict[str, int] = field(default_factory=dict)  # action → records in the period
    failing_users: list[FailingUser] = field(default_factory=list)
    dead_total: int = 0
    dead: list[DeadDelivery] = field(default_factory=list)
    pending: int = 0
    pending_due: int = 0
    oldest_pending: dt.datetime | None = None
    held: int = 0  # suite deletions the mass-deletion guard holds (E10), awaiting release


@dataclass
class Overview:
    since: dt.datetime  # naive UTC: counts and failing users are from here on
    integrations: list[IntegrationOverview]
    unrouted: int  # outbox rows no drain has routed yet
    oldest_unrouted: dt.datetime | None


def integrations_in_log(conn: sa.Connection) -> list[str]:
    """Integration ids that have sync-log records or reverse deliveries."""
    conn = read_only(conn)
    found = set(conn.execute(sa.select(t.sync_log.c.integration_id).distinct()).scalars())
    found.update(conn.execute(sa.select(t.deliveries.c.integration_id).distinct()).scalars())
    return sorted(found)


def _last_runs(conn: sa.Connection, integration_id: str) -> dict[str, LastRun]:
    log = t.sync_log.c
    runs: dict[str, LastRun] = {}
    for direction in DIRECTIONS:
        row = conn.execute(
            sa.select(log.logged_at, log.run_id, log.dag_id)
            .where(log.integration_id == integration_id, log.direction == direction)
            .order_by(log.logged_at.desc(), log.id.desc())
            .limit(1)
        ).first()
        if row is not None:
            runs[direction] = LastRun(row.logged_at, row.run_id, row.dag_id)
    return runs


def _failing_users(
    conn: sa.Connection, since: dt.datetime, wanted: set[str]
) -> dict[str, list[FailingUser]]:
    """Per integration: users (by mailbox or OA user) with ``failed`` records since ``since``,
    most failures first, with the newest failure's time and message."""
    log = t.sync_log.c
    who = (log.integration_id, log.mailbox, log.user_id)
    ranked = (
        sa.select(
            log.integration_id,
            log.mailbox,
            log.user_id,
            log.logged_at,
            log.message,
            sa.func.count().over(partition_by=who).label("failures"),
            sa.func.row_number()
            .over(partition_by=who, order_by=(log.logged_at.desc(), log.id.desc()))
            .label("rn"),
        )
        .where(
            log.action == "failed",
            log.logged_at >= since,
            sa.or_(log.mailbox.is_not(None), log.user_id.is_not(None)),
        )
        .subquery()
    )
    rows = conn.execute(
        sa.select(ranked, t.users.c.display_name)
        .select_from(ranked.outerjoin(t.users, t.users.c.id == ranked.c.user_id))
        .where(ranked.c.rn == 1)
        .order_by(ranked.c.failures.desc(), ranked.c.logged_at.desc())
    ).all()
    found: dict[str, list[FailingUser]] = {}
    for r in rows:
        if r.integration_id not in wanted:
            continue
        per = found.setdefault(r.integration_id, [])
        if len(per) < MAX_LIST:
            per.append(
                FailingUser(
                    r.user_id, r.display_name, r.mailbox, r.failures, r.logged_at, r.message
                )
            )
    return found


def overview(
    conn: sa.Connection,
    integration_ids: Iterable[str],
    days: int = DEFAULT_DAYS,
    now: dt.datetime | None = None,
) -> Overview:
    """The overview of the given integrations over the last ``days`` days."""
    conn = read_only(conn)
    log, d = t.sync_log.c, t.deliveries.c
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    since = now - dt.timedelta(days=days)
    ids = list(dict.fromkeys(integration_ids))
    wanted = set(ids)
    items = {i: IntegrationOverview(i) for i in ids}
    for i in ids:
        items[i].last_runs = _last_runs(conn, i)
    for integration_id, action, count in conn.execute(
        sa.select(log.integration_id, log.action, sa.func.count())
        .where(log.logged_at >= since, log.integration_id.in_(ids))
        .group_by(log.integration_id, log.action)
    ):
        items[integration_id].counts[action] = count
    for integration_id, users in _failing_users(conn, since, wanted).items():
        items[integration_id].failing_users = users
    # reverse deliveries: dead ones (with the reason), the backlog still pending, and the
    # deletions held by the mass-deletion guard
    for integration_id, status, count, oldest, due in conn.execute(
        sa.select(
            d.integration_id,
            d.status,
            sa.func.count(),
            sa.func.min(d.created_at),
            sa.func.sum(sa.case((d.next_attempt_at <= now, 1), else_=0)),
        )
        .where(d.integration_id.in_(ids), d.status.in_(("dead", "pending", "held")))
        .group_by(d.integration_id, d.status)
    ):
        item = items[integration_id]
        if status == "dead":
            item.dead_total = count
        elif status == "held":
            item.held = count
        else:
            item.pending, item.oldest_pending, item.pending_due = count, oldest, int(due or 0)
    title = sa.func.coalesce(t.schedules.c.title, t.outbox.c.title)
    for i in ids:
        if not items[i].dead_total:
            continue
        rows = conn.execute(
            sa.select(d.schedule_id, title.label("title"), d.attempts, d.updated_at, d.last_error)
            .select_from(
                t.deliveries.outerjoin(t.schedules, t.schedules.c.id == d.schedule_id).outerjoin(
                    t.outbox, t.outbox.c.id == d.outbox_id
                )
            )
            .where(d.integration_id == i, d.status == "dead")
            .order_by(d.updated_at.desc(), d.id.desc())
            .limit(MAX_LIST)
        ).all()
        items[i].dead = [DeadDelivery(**r._asdict()) for r in rows]
    unrouted, oldest = conn.execute(
        sa.select(sa.func.count(), sa.func.min(t.outbox.c.changed_at)).where(
            t.outbox.c.routed_at.is_(None)
        )
    ).one()
    return Overview(since, [items[i] for i in ids], unrouted, oldest)
