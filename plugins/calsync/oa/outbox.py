"""The OA side of reverse sync: write origin, routing outbox rows to deliveries, claims.

Flow (DESIGN, data flow): triggers write ``calsync_outbox`` rows (migration 0003) → ``route``
claims unrouted rows, and for each schedule changed by the OA (not by calsync, F25) upserts one
pending ``calsync_deliveries`` row per reverse integration whose scope holds the schedule's
creator → ``claim`` hands due deliveries of one integration to one drain → the drain marks
each ``finish`` (done, unless a newer change arrived meanwhile) or ``fail`` (retry with
back-off; ``dead`` after the last attempt).

Concurrency: rows are claimed with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MariaDB (two
drains take disjoint rows without waiting), and SQLite's single writer (calsync begins its
transactions IMMEDIATE) serialises claims there. A claim is a lease: a drain killed mid-work
leaves rows that another drain takes over once the lease ends.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from calsync.oa import schema as t

ORIGIN_OA = "oa"
_CHUNK = 500  # ids per IN (...) list


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def forward_origin(integration_id: str) -> str:
    return f"calsync:{integration_id}"[:100]


@contextlib.contextmanager
def write_origin(conn: sa.Connection, origin: str) -> Iterator[None]:
    """Mark the caller's transaction as calsync's: triggers fired inside it record ``origin``.

    The marker row is deleted again before the caller commits, so no other transaction ever
    sees it; on an error the whole transaction (marker included) is rolled back."""
    token = secrets.token_hex(16)
    conn.execute(sa.insert(t.write_origin).values(token=token, origin=origin))
    yield
    conn.execute(sa.delete(t.write_origin).where(t.write_origin.c.token == token))


def chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    """Slices of at most ``size`` items, e.g. for ``IN (...)`` lists."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _skip_locked(query: sa.Select[Any], conn: sa.Connection) -> sa.Select[Any]:
    if conn.dialect.name == "sqlite":
        return query  # no row locks; the IMMEDIATE transaction is the lock
    return query.with_for_update(skip_locked=True)


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """A reverse integration and the OA user ids in its scope."""

    integration_id: str
    user_ids: frozenset[int]


@dataclass(slots=True)
class RouteResult:
    rows: int = 0  # outbox rows consumed
    echoes: int = 0  # rows written by calsync itself (F25: never pushed back)
    deliveries: int = 0  # (integration, schedule) deliveries made pending
    out_of_scope: int = 0  # schedules no reverse integration covers


def _upsert_deliveries(conn: sa.Connection, rows: list[dict[str, Any]], now: dt.datetime) -> None:
    """Insert or re-arm deliveries: a new change makes even a dead delivery pending again."""
    if not rows:
        return
    name = conn.dialect.name
    table = t.deliveries
    rearm = {
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "updated_at": now,
        "confirmed": False,  # a new change is guarded anew (E10)
    }
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(table)
        stmt = stmt.on_conflict_do_update(
            constraint="uq_calsync_deliveries_schedule",
            set_={**rearm, "outbox_id": stmt.excluded.outbox_id},
        )
    elif name in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as my_insert

        stmt = my_insert(table)
        stmt = stmt.on_duplicate_key_update(**rearm, outbox_id=stmt.inserted.outbox_id)
        # PyMySQL's executemany rewrites INSERT … VALUES and trips over the ON DUPLICATE KEY
        # tail (``format requires a mapping``): one statement per row instead.
        for row in rows:
            conn.execute(stmt, row)
        return
    else:
        from sqlalchemy.dialects.sqlite import insert as sq_insert

        stmt = sq_insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["integration_id", "schedule_id"],
            set_={**rearm, "outbox_id": stmt.excluded.outbox_id},
        )
    conn.execute(stmt, rows)


def route(conn: sa.Connection, targets: Iterable[RouteTarget], limit: int = 5000) -> RouteResult:
    """Consume up to ``limit`` unrouted outbox rows inside the caller's transaction."""
    now = utcnow()
    ob = t.outbox
    rows = conn.execute(
        _skip_locked(
            sa.select(ob.c.id, ob.c.schedule_id, ob.c.origin, ob.c.creator_id)
            .where(ob.c.routed_at.is_(None))
            .order_by(ob.c.id)
            .limit(limit),
            conn,
        )
    ).all()
    result = RouteResult(rows=len(rows))
    if not rows:
        return result
    newest: dict[int, int] = {}  # schedule id → newest OA-made change
    creators: dict[int, int] = {}
    for row in rows:
        if row.origin != ORIGIN_OA:
            result.echoes += 1
            continue
        newest[row.schedule_id] = max(row.id, newest.get(row.schedule_id, 0))
        if row.creator_id is not None:
            creators[row.schedule_id] = row.creator_id
    missing = [sid for sid in newest if sid not in creators]
    for chunk in chunks(missing):
        for sid, creator in conn.execute(
            sa.select(t.schedules.c.id, t.schedules.c.creator_id).where(t.schedules.c.id.in_(chunk))
        ):
            creators[sid] = creator
    targets = list(targets)
    pending: list[dict[str, Any]] = []
    for sid, outbox_id in newest.items():
        creator = creators.get(sid)
        hits = [tg for tg in targets if creator is not None and creator in tg.user_ids]
        if not hits:
            result.out_of_scope += 1
        for tg in hits:
            pending.append(
                {
                    "integration_id": tg.integration_id,
                    "schedule_id": sid,
                    "outbox_id": outbox_id,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "last_error": "",
                    "created_at": now,
                    "updated_at": now,
                }
            )
    _upsert_deliveries(conn, pending, now)
    result.deliveries = len(pending)
    ids = [row.id for row in rows]
    for chunk in chunks(ids):
        conn.execute(sa.update(ob).where(ob.c.id.in_(chunk)).values(routed_at=now))
    return result


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    schedule_id: int
    outbox_id: int
    attempts: int
    # The schedule's first delivery to this integration, never tried before (see ``claim``):
    # a create may skip looking for an event carrying calsync's key.
    fresh: bool = False
    creator_id: int | None = None  # the schedule's creator (its mailbox), when known


def _due(
    integration_id: str, now: dt.datetime, exclude: Iterable[int]
) -> list[sa.ColumnElement[bool]]:
    """A due delivery of the integration: pending, its time come, not under a live claim,
    not among ``exclude``."""
    d = t.deliveries
    return [
        d.c.integration_id == integration_id,
        d.c.status == "pending",
        d.c.next_attempt_at <= now,
        sa.or_(d.c.claim_expires_at.is_(None), d.c.claim_expires_at < now),
        *([d.c.id.not_in(list(exclude))] if exclude else []),
    ]


OTHERS_READ = 8  # × the claim's limit: the most same-creator deliveries a claim reads

_CLAIM_COLUMNS = (
    t.deliveries.c.id,
    t.deliveries.c.schedule_id,
    t.deliveries.c.outbox_id,
    t.deliveries.c.attempts,
    t.deliveries.c.claimed_by,
    t.deliveries.c.claim_expires_at,
    t.deliveries.c.last_error,
    t.deliveries.c.created_at,
    t.deliveries.c.updated_at,
)


def _creators_together(
    conn: sa.Connection,
    first: list[sa.Row[Any]],
    due: list[sa.ColumnElement[bool]],
    limit: int,
    locked: Callable[..., list[sa.Row[Any]]],
    per_creator: int | None = None,
) -> list[tuple[sa.Row[Any], int | None]]:
    """What a claim takes, each with its schedule's creator, in the order taken: ``first``
    (the oldest due deliveries, locked) grouped by creator, each group followed by its
    creator's other due deliveries (locked here, skipping what another drain holds), groups in
    the order their oldest came, ``limit`` in all (the last group may be cut; the rest of
    ``first`` is left for the next claim), a group grown to ``per_creator`` at most by what it
    pulls along. One drain then holds a mailbox's changes together: a connector can send them
    in one request (EWS CreateItem) after one lookup (a mailbox's calendar), where first-come
    order spreads them over every drain and claim."""
    d, s, ob = t.deliveries, t.schedules, t.outbox
    creator_of: dict[int, int | None] = {}
    for chunk in chunks([r.id for r in first]):  # a deleted schedule's: its delete's
        creator_of.update(
            conn.execute(
                sa.select(d.c.id, sa.func.coalesce(s.c.creator_id, ob.c.creator_id))
                .select_from(
                    d.outerjoin(s, s.c.id == d.c.schedule_id).outerjoin(
                        ob, ob.c.id == d.c.outbox_id
                    )
                )
                .where(d.c.id.in_(chunk))
            ).all()
        )
    groups: dict[Any, list[sa.Row[Any]]] = {}
    for row in first:  # a row without a known creator is a group of its own
        creator = creator_of.get(row.id)
        groups.setdefault(("row", row.id) if creator is None else creator, []).append(row)
    held = {r.id for r in first}
    others: dict[Any, list[int]] = {}
    creators = [c for c in groups if not isinstance(c, tuple)]
    for chunk in chunks(creators):
        for delivery_id, creator in conn.execute(
            sa.select(d.c.id, s.c.creator_id)
            .select_from(d.join(s, s.c.id == d.c.schedule_id))
            .where(*due, s.c.creator_id.in_(chunk))
            .order_by(d.c.next_attempt_at, d.c.id)
            # bounded: one creator's bulk import (tens of thousands due) is not read per claim
            .limit(OTHERS_READ * limit)
        ):
            if delivery_id not in held:
                others.setdefault(creator, []).append(delivery_id)
    # (creator, a locked row or an id still to lock)
    plan: list[tuple[int | None, sa.Row[Any] | int]] = []
    for key, rows in groups.items():
        if len(plan) >= limit:
            break
        creator = None if isinstance(key, tuple) else key
        pulled = others.get(key, [])
        if per_creator is not None:
            pulled = pulled[: max(0, per_creator - len(rows))]
        plan += [(creator, x) for x in [*rows, *pulled]][: limit - len(plan)]
    wanted = [x for _, x in plan if isinstance(x, int)]
    got: dict[int, sa.Row[Any]] = {}
    for chunk in chunks(wanted):
        got.update((r.id, r) for r in locked(d.c.id.in_(chunk)))
    out: list[tuple[sa.Row[Any], int | None]] = []
    for creator, x in plan:
        if not isinstance(x, int):
            out.append((x, creator))
        elif x in got:  # not taken meanwhile by another drain
            out.append((got[x], creator))
    return out


def claim(
    conn: sa.Connection,
    integration_id: str,
    worker: str,
    *,
    limit: int,
    lease: dt.timedelta,
    exclude: Iterable[int] = (),
    per_creator: int | None = None,
) -> list[Claimed]:
    """Take up to ``limit`` due pending deliveries of one integration (caller's transaction):
    the oldest, each with its creator's other due deliveries beside it (``_creators_together``,
    a creator's group grown to ``per_creator`` at most); ``exclude``: deliveries this drain
    already tried (a retry waits for a later drain)."""
    now = utcnow()
    d = t.deliveries
    due = _due(integration_id, now, exclude)

    def locked(*where: sa.ColumnElement[bool], limit: int | None = None) -> list[sa.Row[Any]]:
        query = sa.select(*_CLAIM_COLUMNS).where(*due, *where).order_by(d.c.next_attempt_at, d.c.id)
        return conn.execute(_skip_locked(query.limit(limit), conn)).all()

    taken = _creators_together(conn, locked(limit=limit), due, limit, locked, per_creator)
    rows = [row for row, _ in taken]
    # ``fresh``: no drain ever touched the row (claims, finishing, failures and re-arming all
    # move ``updated_at``; a lapsed lease also keeps its claim, a failure its error), and the
    # routing that created it consumed the schedule's creation in the OA (same timestamp):
    # the schedule has never had a delivery to this integration before, so no create of it
    # can have reached the suite.
    untouched = {
        r.schedule_id: r
        for r in rows
        if r.updated_at == r.created_at
        and r.claim_expires_at is None
        and r.claimed_by is None
        and not r.attempts
        and not r.last_error
    }
    created: set[int] = set()
    ob = t.outbox
    for chunk in chunks(list(untouched)):
        for sid, oid, routed_at in conn.execute(
            sa.select(ob.c.schedule_id, ob.c.id, ob.c.routed_at).where(
                ob.c.schedule_id.in_(chunk), ob.c.op == "insert", ob.c.origin == ORIGIN_OA
            )
        ):
            row = untouched[sid]
            if oid <= row.outbox_id and routed_at == row.created_at:
                created.add(sid)
    claimed = [
        Claimed(
            r.id,
            r.schedule_id,
            r.outbox_id,
            r.attempts,
            fresh=r.schedule_id in created,
            creator_id=creator,
        )
        for r, creator in taken
    ]
    for chunk in chunks([c.id for c in claimed]):
        conn.execute(
            sa.update(d)
            .where(d.c.id.in_(chunk))
            .values(claimed_by=worker[:100], claim_expires_at=now + lease, updated_at=now)
        )
    return claimed


def has_due(conn: sa.Connection, integration_id: str, exclude: Iterable[int] = ()) -> bool:
    """Whether a due, unclaimed delivery of the integration is there, by a plain read (no
    lock). ``claim`` can skip such a row while another transaction holds it for a moment:
    a locking scan of a small table under READ COMMITTED locks each row it reads before it
    filters, so another integration's claim can hold this one's row as it passes."""
    query = sa.select(t.deliveries.c.id).where(*_due(integration_id, utcnow(), exclude))
    return conn.execute(query.limit(1)).first() is not None


def finish(conn: sa.Connection, item: Claimed) -> bool:
    """Mark a delivery done; False (left pending, claim released) when a newer change of the
    schedule arrived while it was being delivered."""
    d = t.deliveries
    now = utcnow()
    done = conn.execute(
        sa.update(d)
        .where(d.c.id == item.id, d.c.outbox_id == item.outbox_id)
        .values(
            status="done",
            attempts=0,
            last_error="",
            claimed_by=None,
            claim_expires_at=None,
            updated_at=now,
        )
    ).rowcount
    if not done:
        release(conn, item)
    return bool(done)


def finish_many(conn: sa.Connection, items: Sequence[Claimed]) -> set[int]:
    """``finish`` for many deliveries in a few statements; the ids marked done. The rows are
    locked first (``FOR UPDATE``; SQLite: the transaction's write lock), so a change routed
    meanwhile either re-arms a row before it is read here or waits for this transaction."""
    d = t.deliveries
    now = utcnow()
    wanted = {item.id: item.outbox_id for item in items}
    current: dict[int, int] = {}
    for chunk in chunks(list(wanted)):
        query = sa.select(d.c.id, d.c.outbox_id).where(d.c.id.in_(chunk))
        if conn.dialect.name != "sqlite":
            query = query.with_for_update()
        for delivery_id, outbox_id in conn.execute(query):
            current[delivery_id] = outbox_id
    done = [i for i, outbox_id in wanted.items() if current.get(i) == outbox_id]
    newer = [i for i in wanted if i in current and current[i] != wanted[i]]
    for chunk in chunks(done):
        conn.execute(
            sa.update(d)
            .where(d.c.id.in_(chunk))
            .values(
                status="done",
                attempts=0,
                last_error="",
                claimed_by=None,
                claim_expires_at=None,
                updated_at=now,
            )
        )
    for chunk in chunks(newer):  # left pending for the newer change, claim released
        conn.execute(
            sa.update(d)
            .where(d.c.id.in_(chunk))
            .values(claimed_by=None, claim_expires_at=None, updated_at=now)
        )
    return set(done)


def release(conn: sa.Connection, item: Claimed) -> None:
    conn.execute(
        sa.update(t.deliveries)
        .where(t.deliveries.c.id == item.id)
        .values(claimed_by=None, claim_expires_at=None, updated_at=utcnow())
    )


def backoff(attempt: int, base_s: float, max_s: float) -> dt.timedelta:
    """Exponential back-off: base, 2×base, 4×base … capped."""
    return dt.timedelta(seconds=min(max_s, base_s * (2 ** max(0, attempt - 1))))


def fail(
    conn: sa.Connection,
    item: Claimed,
    error: str,
    *,
    max_attempts: int,
    base_s: float,
    max_s: float,
) -> tuple[str, int, dt.datetime | None]:
    """Record a failed attempt; returns (status, attempts, next attempt time or None if dead).

    A newer change that arrived meanwhile still counts the attempt (the failure may be the
    suite's, not the change's), but never revives a delivery past its last attempt."""
    now = utcnow()
    attempts = item.attempts + 1
    dead = attempts >= max_attempts
    next_at = None if dead else now + backoff(attempts, base_s, max_s)
    conn.execute(
        sa.update(t.deliveries)
        .where(t.deliveries.c.id == item.id)
        .values(
            status="dead" if dead else "pending",
            attempts=attempts,
            next_attempt_at=next_at or now,
            last_error=error[:4000],
            claimed_by=None,
            claim_expires_at=None,
            updated_at=now,
        )
    )
    return ("dead" if dead else "pending"), attempts, next_at


def deleted_links(conn: sa.Connection, integration_id: str, schedule_id: int) -> list[sa.Row[Any]]:
    dl = t.deleted_links
    return list(
        conn.execute(
            sa.select(dl.c.mailbox, dl.c.suite_id, dl.c.identity_key)
            .where(dl.c.integration_id == integration_id, dl.c.schedule_id == schedule_id)
            .order_by(dl.c.id)
        )
    )


def backlog(conn: sa.Connection) -> tuple[int, int]:
    """(count, newest id) of unrouted outbox rows: what the watcher trigger polls."""
    ob = t.outbox
    row = conn.execute(
        sa.select(sa.func.count(), sa.func.max(ob.c.id)).where(ob.c.routed_at.is_(None))
    ).one()
    return int(row[0] or 0), int(row[1] or 0)


def next_wake(conn: sa.Connection, after: dt.datetime) -> dt.datetime | None:
    """The earliest time in (after, now] at which a pending delivery became due — a retry's
    back-off ended or a dead drain's lease ran out — for the watcher to start a drain."""
    d = t.deliveries
    wake = sa.case(
        (
            sa.and_(d.c.claim_expires_at.is_not(None), d.c.claim_expires_at > d.c.next_attempt_at),
            d.c.claim_expires_at,
        ),
        else_=d.c.next_attempt_at,
    )
    return conn.execute(
        sa.select(sa.func.min(wake)).where(d.c.status == "pending", wake > after, wake <= utcnow())
    ).scalar()
