"""A generated tenant for the scale benchmark: U users × E events per user inside the sync
window, the same calendars rendered as seed JSON for each suite emulator, and the OA users,
rooms and room mappings that go with them.

Per user, E events in today ± 3 days (the window of the bench integration), each created by
the mailbox owner and not delivered to attendees (so a mailbox holds exactly its E events and
one event is one OA schedule):

- one daily series of 5 occurrences in the window (when E ≥ 10), the rest single events;
- ~10% all-day; ~30% in a room (a resource attendee whose mailbox is mapped to an OA room);
- 0–30 attendees (mostly a few, now and then a crowd), 70% colleagues and 30% external guests;
- CJK and emoji titles, HTML bodies.

Mailboxes are ``user00000@contoso.com`` …, rooms ``room001@contoso.com`` …, as in
``bench/reverse_drain.py``. Deterministic for a given ``seed`` and day.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from typing import Any

ZONE = "Asia/Shanghai"
DOMAIN = "contoso.com"
SERIES_LEN = 5
TITLES = ("项目周会", "需求评审", "客户拜访", "一对一", "架构讨论", "培训", "周报", "面试")


def user_mail(u: int) -> str:
    return f"user{u:05d}@{DOMAIN}"


def room_mail(r: int) -> str:
    return f"room{r:03d}@{DOMAIN}"


@dataclass(frozen=True, slots=True)
class Person:
    email: str
    name: str
    kind: str  # required / optional / resource


@dataclass(slots=True)
class Item:
    """One event (a single one or a series master) in a neutral form."""

    id: str
    uid: str
    subject: str
    body_html: str
    day: dt.date
    hour: int = 9
    minutes: int = 45
    all_day: bool = False
    series_days: int = 0  # > 0: a daily series of this many occurrences
    location: str = ""
    attendees: list[Person] = field(default_factory=list)


@dataclass(slots=True)
class Tenant:
    users: int
    events: int
    rooms: int
    today: dt.date
    seed: int = 7
    calendars: dict[str, list[Item]] = field(default_factory=dict)

    @property
    def total_events(self) -> int:
        return self.users * self.events

    def single_ids(self) -> list[tuple[str, str]]:
        """(mailbox, id) of every single (non-series) event, in a stable order."""
        return [
            (m, i.id) for m, items in self.calendars.items() for i in items if not i.series_days
        ]


def attendee_count(rng: random.Random) -> int:
    """0–30, mostly a handful: 1 in 20 meetings is a crowd."""
    if rng.random() < 0.05:
        return rng.randint(15, 30)
    return min(30, int(rng.expovariate(1 / 4)))


def generate(users: int, events: int, rooms: int = 40, seed: int = 7) -> Tenant:
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
    tenant = Tenant(users, events, rooms, today, seed)
    rng = random.Random(seed)
    for u in range(users):
        owner = user_mail(u)
        items: list[Item] = []
        left = events
        n = 0
        while left > 0:
            n += 1
            key = f"{u:05d}{n:04d}"
            title = f"{rng.choice(TITLES)} {u}-{n} 🎯 review"
            body = f"<p>议程 <b>{n}</b>: 进度 &amp; 风险</p><ul><li>第 {u} 组</li></ul>"
            item = Item(
                id=f"AAMkBench{key}",
                uid=f"040000008200E00074C5B7101A82E008{key:0>32}"[-64:],
                subject=title,
                body_html=body,
                day=today + dt.timedelta(days=rng.randint(-3, 3)),
                hour=rng.randint(8, 18),
            )
            if left >= SERIES_LEN and events >= 10 and not any(i.series_days for i in items):
                item.series_days = SERIES_LEN
                item.day = today - dt.timedelta(days=2)  # 5 days: today-2 … today+2
                item.subject = f"每日站会 {u} daily stand-up"
                left -= SERIES_LEN
            else:
                item.all_day = rng.random() < 0.1
                left -= 1
            people: list[Person] = []
            for k in range(attendee_count(rng)):
                if rng.random() < 0.7 and users > 1:
                    other = rng.randrange(users)
                    if other != u:
                        people.append(Person(user_mail(other), f"用户{other}", "required"))
                else:
                    people.append(Person(f"guest{k}@fabrikam.com", f"Guest {k}", "optional"))
            if not item.all_day and rng.random() < 0.3:
                r = rng.randint(1, rooms)
                people.append(Person(room_mail(r), f"会议室{r:02d}", "resource"))
                item.location = f"会议室{r:02d}"
            item.attendees = list({p.email: p for p in people}.values())
            items.append(item)
        tenant.calendars[owner] = items
    return tenant


# --- the suites' seed JSON ----------------------------------------------------------------


def _graph_event(owner: str, item: Item) -> dict[str, Any]:
    start = dt.datetime.combine(item.day, dt.time(item.hour))
    end = start + dt.timedelta(minutes=item.minutes)
    event: dict[str, Any] = {
        "id": item.id,
        "iCalUId": item.uid,
        "subject": item.subject,
        "body": {"contentType": "html", "content": item.body_html},
        "organizer": {"emailAddress": {"address": owner, "name": owner.split("@")[0]}},
        "attendees": [
            {"type": p.kind, "emailAddress": {"address": p.email, "name": p.name}}
            for p in item.attendees
        ],
        "deliver": False,
    }
    if item.location:
        room = next(p.email for p in item.attendees if p.kind == "resource")
        event["location"] = {"displayName": item.location, "locationEmailAddress": room}
    if item.all_day:
        nxt = item.day + dt.timedelta(days=1)
        event |= {
            "isAllDay": True,
            "start": {"dateTime": f"{item.day}T00:00:00", "timeZone": ZONE},
            "end": {"dateTime": f"{nxt}T00:00:00", "timeZone": ZONE},
        }
    else:
        event |= {
            "start": {"dateTime": start.isoformat(), "timeZone": ZONE},
            "end": {"dateTime": end.isoformat(), "timeZone": ZONE},
        }
    if item.series_days:
        event["recurrence"] = {
            "pattern": {"type": "daily", "interval": 1},
            "range": {
                "type": "numbered",
                "numberOfOccurrences": item.series_days,
                "startDate": item.day.isoformat(),
                "recurrenceTimeZone": ZONE,
            },
        }
    return event


def graph_seed(tenant: Tenant) -> dict[str, Any]:
    boxes: dict[str, Any] = {room_mail(r): {"events": []} for r in range(1, tenant.rooms + 1)}
    for owner, items in tenant.calendars.items():
        boxes[owner] = {"events": [_graph_event(owner, i) for i in items]}
    return {"mailboxes": boxes}


def alimail_seed(tenant: Tenant) -> dict[str, Any]:
    """Alibaba Mail takes Graph-like events ({dateTime, timeZone} / {date}; attendees as
    {email, name, type})."""
    boxes: dict[str, Any] = {}
    for owner, items in tenant.calendars.items():
        events = []
        for item in items:
            event = _graph_event(owner, item)
            del event["deliver"]
            event["organizer"] = {"email": owner, "name": owner.split("@")[0]}
            event["attendees"] = [
                {"email": p.email, "name": p.name, "type": p.kind} for p in item.attendees
            ]
            event["location"] = {"displayName": item.location} if item.location else None
            if event["location"] is None:
                del event["location"]
            if item.all_day:
                nxt = item.day + dt.timedelta(days=1)
                event["start"] = {"date": item.day.isoformat()}
                event["end"] = {"date": nxt.isoformat()}
            events.append(event)
        boxes[owner] = {"displayName": owner.split("@")[0], "events": events}
    return {"mailboxes": boxes}


def exchange_seed(tenant: Tenant) -> dict[str, Any]:
    boxes: dict[str, Any] = {
        room_mail(r): {"display_name": f"会议室{r:02d}", "kind": "Room", "events": []}
        for r in range(1, tenant.rooms + 1)
    }
    for owner, items in tenant.calendars.items():
        events = []
        for item in items:
            start = dt.datetime.combine(item.day, dt.time(item.hour))
            event: dict[str, Any] = {
                "id": item.id,
                "uid": item.uid,
                "subject": item.subject,
                "body": item.body_html,
                "body_type": "HTML",
                "timezone": ZONE,
                "organizer": owner,
                "required_attendees": [
                    {"email": p.email, "name": p.name}
                    for p in item.attendees
                    if p.kind == "required"
                ],
                "optional_attendees": [
                    {"email": p.email, "name": p.name}
                    for p in item.attendees
                    if p.kind == "optional"
                ],
                "resources": [
                    {"email": p.email, "name": p.name}
                    for p in item.attendees
                    if p.kind == "resource"
                ],
                "deliver": False,
            }
            if item.location:
                event["location"] = item.location
            if item.all_day:
                event |= {
                    "is_all_day": True,
                    "start": item.day.isoformat(),
                    "end": (item.day + dt.timedelta(days=1)).isoformat(),
                }
            else:
                event |= {
                    "start": start.isoformat(),
                    "end": (start + dt.timedelta(minutes=item.minutes)).isoformat(),
                }
            if item.series_days:
                event["recurrence"] = {
                    "pattern": {"type": "daily", "interval": 1},
                    "range": {"type": "numbered", "numberOfOccurrences": item.series_days},
                }
            events.append(event)
        boxes[owner] = {"display_name": owner.split("@")[0], "events": events}
    return {"mailboxes": boxes}


SEEDS = {"graph": graph_seed, "exchange": exchange_seed, "alimail": alimail_seed}


# --- the OA side --------------------------------------------------------------------------


def seed_oa(engine: Any, tenant: Tenant) -> None:
    """Users (login ``userNNNNN``, email = the mailbox), rooms and their mailbox mappings."""
    import sqlalchemy as sa

    from calsync.oa import schema as t

    with engine.begin() as conn:
        conn.execute(
            sa.insert(t.users),
            [
                {
                    "login_name": f"user{u:05d}",
                    "display_name": f"用户{u}",
                    "email": user_mail(u),
                    "active": True,
                }
                for u in range(tenant.users)
            ],
        )
        conn.execute(
            sa.insert(t.rooms),
            [{"name": f"会议室{r:02d}", "capacity": 8} for r in range(1, tenant.rooms + 1)],
        )
        ids = list(conn.execute(sa.select(t.rooms.c.id).order_by(t.rooms.c.id)).scalars())
        conn.execute(
            sa.insert(t.room_mappings),
            [{"room_id": rid, "suite_mailbox": room_mail(n)} for n, rid in enumerate(ids, 1)],
        )
