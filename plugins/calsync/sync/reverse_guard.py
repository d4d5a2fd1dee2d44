"""The mass-deletion guard of reverse sync (E10): an OA bulk delete never mass-deletes events.

A bad OA job (or a wrong cleanup script) that deletes many schedules at once would otherwise
have reverse sync delete — and cancel, with mail to every attendee — as many suite events.
Before a drain delivers anything, :func:`hold_deletes` counts the pending deliveries of
deleted schedules that would delete a suite event (a link tombstone in the creator's mailbox)
and sets them to ``held`` when, with the rules of :mod:`calsync.sync.guard`:

- per creator mailbox: the deletions exceed ``delete_count``, or (with at least ``min_links``
  linked schedules) ``delete_share`` of the schedules linked there before the deletions;
- per integration: they exceed ``delete_share`` of all its linked schedules (a job deleting a
  few schedules of each of many users).

Deletions delivered within the last ``RECENT`` (from the sync log; released ones not) count
too, so a job that deletes one schedule at a time while drains run meanwhile is caught as
well once its total breaks a rule.

A held delivery is not claimed, retried or counted as failed; its tombstones and outbox rows
stay (housekeeping keeps every delivery that is not done) and two-way forward sync treats it
as an OA delete not yet pushed (it does not bring the schedule back). One ``held`` sync-log
record per mailbox says how many and why. Creates and updates go on. An admin who checked
releases them with the reverse DAG's ``confirm_deletes`` parameter or ``calsync deletes
release``: :func:`release_held` makes them pending again and ``confirmed`` (migration 0004),
which the guard lets pass; a drain with ``confirm_deletes`` holds nothing. A new change of the
schedule (a restore under the same id) re-arms its delivery unconfirmed.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from calsync.config import IntegrationConfig
from calsync.model import OAUser
from calsync.oa import outbox, store
from calsync.oa import schema as t
from calsync.sync.guard import reverse_hold_reason

HELD = "held"
RECENT = dt.timedelta(hours=1)  # delivered deletions that still count towards the rules


@dataclass(frozen=True, slots=True)
class HeldDeletes:
    """Deletions held (or released) for one mailbox."""

    mailbox: str
    count: int  # newly held (or released) by this call
    total: int  # held for the mailbox after it
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "mailbox": self.mailbox,
            "count": self.count,
            "total": self.total,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class _Delete:
    delivery_id: int
    status: str
    mailbox: str


def _suite_deletes(
    conn: sa.Connection, integration_id: str, users: dict[int, OAUser], now: dt.datetime
) -> list[_Delete]:
    """Pending (not claimed by a live drain) and held deliveries of deleted schedules that
    would delete an event in the creator's mailbox."""
    d, s = t.deliveries, t.schedules
    rows = conn.execute(
        sa.select(d.c.id, d.c.schedule_id, d.c.status)
        .select_from(d.outerjoin(s, s.c.id == d.c.schedule_id))
        .where(
            d.c.integration_id == integration_id,
            s.c.id.is_(None),
            sa.not_(d.c.confirmed),
            sa.or_(
                d.c.status == HELD,
                sa.and_(
                    d.c.status == "pending",
                    sa.or_(d.c.claim_expires_at.is_(None), d.c.claim_expires_at < now),
                ),
            ),
        )
    ).all()
    if not rows:
        return []
    ids = [r.schedule_id for r in rows]
    creators: dict[int, int] = {}
    tombstones: dict[int, set[str]] = defaultdict(set)
    ob, dl = t.outbox, t.deleted_links
    for chunk in outbox.chunks(ids):
        for sid, creator in conn.execute(
            sa.select(ob.c.schedule_id, ob.c.creator_id)
            .where(ob.c.schedule_id.in_(chunk), ob.c.op == "delete")
            .order_by(ob.c.id)
        ):
            if creator is not None:
                creators[sid] = creator  # the newest delete's creator wins
        for sid, mailbox in conn.execute(
            sa.select(dl.c.schedule_id, dl.c.mailbox).where(
                dl.c.integration_id == integration_id, dl.c.schedule_id.in_(chunk)
            )
        ):
            tombstones[sid].add(mailbox)
    found = []
    for r in rows:
        owner = users.get(creators.get(r.schedule_id, -1))
        if owner is not None and owner.mailbox in tombstones[r.schedule_id]:
            found.append(_Delete(r.id, r.status, owner.mailbox))
    return found


def _recent(conn: sa.Connection, integration_id: str, now: dt.datetime) -> dict[str, int]:
    """Suite deletions delivered within ``RECENT`` per mailbox, released ones left out."""
    log, d = t.sync_log, t.deliveries
    rows = conn.execute(
        sa.select(log.c.mailbox, sa.func.count())
        .select_from(
            log.join(
                d,
                sa.and_(
                    d.c.integration_id == log.c.integration_id,
                    d.c.schedule_id == log.c.schedule_id,
                ),
            )
        )
        .where(
            log.c.integration_id == integration_id,
            log.c.logged_at >= now - RECENT,
            log.c.direction == "reverse",
            log.c.action == "deleted",
            sa.not_(d.c.confirmed),
        )
        .group_by(log.c.mailbox)
    )
    return {mailbox: int(count) for mailbox, count in rows if mailbox}


def _linked(conn: sa.Connection, integration_id: str) -> tuple[dict[str, int], int]:
    """Linked schedules per mailbox, and of the whole integration."""
    lk = t.links
    per_mailbox = dict(
        conn.execute(
            sa.select(lk.c.mailbox, sa.func.count(sa.distinct(lk.c.schedule_id)))
            .where(lk.c.integration_id == integration_id)
            .group_by(lk.c.mailbox)
        ).all()
    )
    total = conn.execute(
        sa.select(sa.func.count(sa.distinct(lk.c.schedule_id))).where(
            lk.c.integration_id == integration_id
        )
    ).scalar_one()
    return per_mailbox, int(total or 0)


def hold_deletes(
    conn: sa.Connection,
    config: IntegrationConfig,
    users: Iterable[OAUser],
    run: store.RunInfo,
) -> list[HeldDeletes]:
    """Hold the pending suite deletions that break the guard's rules (module docstring),
    inside the caller's transaction; returns what each affected mailbox holds now."""
    guard = config.delete_guard
    if not guard.enabled:
        return []
    users = list(users)
    now = store.utcnow()
    deletes = _suite_deletes(conn, config.id, {u.id: u for u in users}, now)
    if not deletes:
        return []
    by_mailbox: dict[str, list[_Delete]] = defaultdict(list)
    for item in deletes:
        by_mailbox[item.mailbox].append(item)
    linked, linked_total = _linked(conn, config.id)
    recent = _recent(conn, config.id, now)
    # The deleted schedules' links are gone (tombstones): count them back in.
    total = len(deletes) + sum(recent.values())
    overall = reverse_hold_reason(total, linked_total + total, guard, None)
    found: list[HeldDeletes] = []
    to_hold: list[int] = []
    logs: list[dict[str, Any]] = []
    users_by_mailbox = {u.mailbox: u for u in users}
    for mailbox, items in sorted(by_mailbox.items()):
        count = len(items)
        gone = count + recent.get(mailbox, 0)
        reason = reverse_hold_reason(gone, linked.get(mailbox, 0) + gone, guard, mailbox) or overall
        new = [i.delivery_id for i in items if i.status != HELD]
        if reason is None:
            if len(new) < count:  # some held before: they stay held until released
                found.append(HeldDeletes(mailbox, 0, count - len(new), "held before"))
            continue
        to_hold.extend(new)
        found.append(HeldDeletes(mailbox, len(new), count, reason))
        if new:
            user = users_by_mailbox.get(mailbox)
            logs.append(
                store.log_row(
                    run,
                    HELD,
                    f"{len(new)} suite deletion(s) held ({count} in all for this mailbox): "
                    f"{reason}. Check the OA (a bulk delete?), then release them with the "
                    "reverse DAG's confirm_deletes parameter or `calsync deletes release "
                    f"--integration {config.id}`.",
                    user_id=user.id if user else None,
                    mailbox=mailbox,
                    direction="reverse",
                )
                | {"integration_id": config.id}
            )
    d = t.deliveries
    for chunk in outbox.chunks(to_hold):
        conn.execute(
            sa.update(d)
            .where(d.c.id.in_(chunk), d.c.status == "pending")
            .values(status=HELD, last_error="held by the mass-deletion guard", updated_at=now)
        )
    store.write_logs(conn, logs)
    return found


def held_counts(conn: sa.Connection, integration_id: str | None = None) -> dict[str, int]:
    """Held deliveries per integration (of one, if given)."""
    d = t.deliveries
    query = sa.select(d.c.integration_id, sa.func.count()).where(d.c.status == HELD)
    if integration_id is not None:
        query = query.where(d.c.integration_id == integration_id)
    return dict(conn.execute(query.group_by(d.c.integration_id)).all())


def release_held(
    conn: sa.Connection,
    integration_id: str,
    run: store.RunInfo,
    who: str = "confirm_deletes",
) -> int:
    """Make an integration's held deliveries pending again (the caller's transaction), with
    one ``released`` sync-log record; returns how many."""
    d = t.deliveries
    now = store.utcnow()
    released = (
        conn.execute(
            sa.update(d)
            .where(d.c.integration_id == integration_id, d.c.status == HELD)
            .values(
                status="pending",
                attempts=0,
                next_attempt_at=now,
                last_error="",
                claimed_by=None,
                claim_expires_at=None,
                updated_at=now,
                confirmed=True,
            )
        ).rowcount
        or 0
    )
    if released:
        row = store.log_row(
            run,
            "released",
            f"{released} held suite deletion(s) released by {who}",
            direction="reverse",
        )
        store.write_logs(conn, [row | {"integration_id": integration_id}])
    return released


@dataclass(frozen=True, slots=True)
class HeldDelivery:
    schedule_id: int
    title: str
    held_at: dt.datetime


def held_list(conn: sa.Connection, integration_id: str, limit: int = 1000) -> list[HeldDelivery]:
    """An integration's held deletions, oldest first, with the deleted schedule's title."""
    d, ob = t.deliveries, t.outbox
    rows = conn.execute(
        sa.select(d.c.schedule_id, ob.c.title, d.c.updated_at)
        .select_from(d.outerjoin(ob, ob.c.id == d.c.outbox_id))
        .where(d.c.integration_id == integration_id, d.c.status == HELD)
        .order_by(d.c.updated_at, d.c.id)
        .limit(limit)
    ).all()
    return [HeldDelivery(r.schedule_id, r.title or "", r.updated_at) for r in rows]
