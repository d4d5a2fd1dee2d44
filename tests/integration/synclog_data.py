"""Sync-log page test data: a seeded OA (demo users) plus sync-log records, reverse deliveries
and outbox rows with known contents, so tests can compute what the page must show.

Titles include CJK, emoji and HTML/script payloads (issue 7: stored safely, never rendered
unescaped)."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from calsync.oa import schema as t

INTEGRATIONS = ("demo_office365", "demo_exchange", "demo_alimail")
FORWARD_ACTIONS = ("created", "updated", "deleted", "linked", "skipped", "failed", "unchanged")
REVERSE_ACTIONS = ("created", "updated", "deleted", "failed", "conflict")
XSS_TITLE = "周会 <script>window.__calsync_xss = 1; alert('x')</script>"
XSS_ATTR = '"><img src=x onerror="window.__calsync_xss=2">'
TITLES = (
    "项目周会",
    "客户拜访 🚀",
    "Quarterly review",
    "预算评审 100%",
    "1000 units",
    "under_score",
    XSS_TITLE,
    XSS_ATTR,
)
DEAD_ERROR = "Permanent: mailbox chenjing@contoso.com not found <b>(404)</b>"


@dataclass
class Seeded:
    now: dt.datetime  # naive UTC
    rows: list[dict[str, Any]] = field(default_factory=list)  # as inserted, with ids
    users: dict[int, tuple[str, str, str | None]] = field(default_factory=dict)  # id → login…
    dead: dict[str, int] = field(default_factory=dict)  # integration → dead deliveries
    pending: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)  # deletions held by the E10 guard
    unrouted: int = 0

    def match(self, **f: Any) -> list[dict[str, Any]]:
        """The rows a filter should give, newest first (as the page orders them)."""
        out = []
        for r in self.rows:
            if f.get("integration") and r["integration_id"] != f["integration"]:
                continue
            if f.get("direction") and r["direction"] != f["direction"]:
                continue
            if f.get("actions") and r["action"] not in f["actions"]:
                continue
            if f.get("since") and r["logged_at"] < f["since"]:
                continue
            if f.get("until") and r["logged_at"] >= f["until"]:
                continue
            if f.get("run_id") and r["run_id"] != f["run_id"]:
                continue
            if f.get("text"):
                needle = f["text"].lower()
                if needle not in (r["title"] or "").lower() and needle not in r["message"].lower():
                    continue
            if f.get("user"):
                needle = f["user"].lower()
                login, name, _ = self.users.get(r["user_id"], ("", "", None))
                hay = [(r["mailbox"] or "").lower(), login.lower(), name.lower()]
                if not any(needle in h for h in hay) and str(r["user_id"]) != f["user"]:
                    continue
            out.append(r)
        return sorted(out, key=lambda r: (r["logged_at"], r["id"]), reverse=True)


def seed_sync_log(engine: sa.Engine, count: int = 600, seed: int = 7) -> Seeded:
    """``count`` sync-log records over the last 10 days for the demo integrations (OA users
    must be seeded), 3 dead and 2 pending reverse deliveries for demo_exchange (1 dead for
    demo_alimail), 4 unrouted outbox rows."""
    rnd = random.Random(seed)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    seeded = Seeded(now)
    with engine.begin() as conn:
        for uid, login, name, email in conn.execute(
            sa.select(t.users.c.id, t.users.c.login_name, t.users.c.display_name, t.users.c.email)
        ):
            seeded.users[uid] = (login, name, email)
        people = [(uid, email) for uid, (_, _, email) in seeded.users.items() if email]
        rows = []
        for i in range(count):
            integration = INTEGRATIONS[i % 3]
            direction = "reverse" if i % 5 == 0 else "forward"
            actions = REVERSE_ACTIONS if direction == "reverse" else FORWARD_ACTIONS
            uid, mailbox = rnd.choice(people)
            at = now - dt.timedelta(seconds=rnd.randint(60, 10 * 86400))
            slot = at - dt.timedelta(minutes=at.minute % 30)
            forward = direction == "forward"
            run = f"scheduled__{slot:%Y-%m-%dT%H:%M}:00+00:00"
            rows.append(
                {
                    "logged_at": at,
                    "integration_id": integration,
                    "run_id": run if forward else f"asset_triggered__{at:%Y%m%d%H}",
                    "dag_id": f"calsync_{integration}" if forward else "calsync_reverse",
                    "direction": direction,
                    "action": rnd.choice(actions),
                    "user_id": uid,
                    "mailbox": mailbox,
                    "schedule_id": rnd.randint(1, 500),
                    "suite_id": f"AAMk{i:06d}",
                    "title": rnd.choice(TITLES),
                    "message": rnd.choice(("", "ok", "mailbox read failed: 503", "无变化")),
                }
            )
        # the newest record of all: a script in the title, a known run
        rows.append(
            {
                **rows[0],
                "logged_at": now - dt.timedelta(seconds=30),
                "integration_id": "demo_office365",
                "direction": "forward",
                "dag_id": "calsync_demo_office365",
                "run_id": "manual__2026-11-30T10:00:00+00:00",
                "action": "failed",
                "title": XSS_TITLE,
                "message": f"bad <b>event</b> {XSS_ATTR}",
            }
        )
        ids = []
        for chunk in range(0, len(rows), 500):
            part = rows[chunk : chunk + 500]
            conn.execute(sa.insert(t.sync_log), part)
        ids = list(conn.execute(sa.select(t.sync_log.c.id).order_by(t.sync_log.c.id)).scalars())
        for row, row_id in zip(rows, ids, strict=True):
            row["id"] = row_id
        seeded.rows = rows
        # reverse deliveries: dead (with the reason) and pending; outbox rows not yet routed
        outbox_rows = [
            {
                "schedule_id": 900 + k,
                "op": "update",
                "origin": "oa",
                "changed_at": now - dt.timedelta(minutes=10 + k),
                "creator_id": people[0][0],
                "title": f"变更 {k} <i>x</i>",
                "routed_at": None if k < 4 else now,
            }
            for k in range(8)
        ]
        conn.execute(sa.insert(t.outbox), outbox_rows)
        seeded.unrouted = 4
        box = list(conn.execute(sa.select(t.outbox.c.id).order_by(t.outbox.c.id)).scalars())
        deliveries = []
        for k, (integration, status) in enumerate(
            [("demo_exchange", "dead")] * 3
            + [("demo_exchange", "pending")] * 2
            + [("demo_alimail", "dead"), ("demo_office365", "done"), ("demo_office365", "held")]
        ):
            deliveries.append(
                {
                    "integration_id": integration,
                    "schedule_id": 900 + k,
                    "outbox_id": box[k],
                    "status": status,
                    "attempts": 8 if status == "dead" else 2,
                    "next_attempt_at": now + dt.timedelta(minutes=-1 if k == 3 else 60),
                    "last_error": DEAD_ERROR if status == "dead" else "",
                    "created_at": now - dt.timedelta(hours=k + 1),
                    "updated_at": now - dt.timedelta(minutes=k),
                }
            )
            if status in ("dead", "pending", "held"):
                target = {"dead": seeded.dead, "pending": seeded.pending}.get(status, seeded.held)
                target[integration] = target.get(integration, 0) + 1
        conn.execute(sa.insert(t.deliveries), deliveries)
    return seeded
