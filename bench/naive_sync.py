"""The naive baseline of the scale benchmark: forward sync as a fair first attempt writes it.

One user at a time; each page of the user's calendar view read with one plain request
(``requests`` for Graph and Alibaba Mail with the largest page size the API takes, exchangelib's
own ``calendar.view()`` paging for Exchange, with impersonation); then, in one transaction per
user, the OA written with one statement per event and per row: look the event's link up, insert
the schedule, its participants, the meeting and the link and a sync-log line (or update them when
the content changed). SQLAlchemy Core throughout.

It reuses calsync's pure core — each suite's ``normalize_*`` (wire → event) and
``prepare_event`` (filters, mapping, participants) — so it writes exactly the OA rows the
engine writes; only the I/O strategy differs (no concurrency across mailboxes, no batching, no
incremental read). The harness compares the two OA databases afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests
import sqlalchemy as sa

from calsync.model import OAUser, SuiteEvent, Window
from calsync.oa import outbox, store
from calsync.oa import schema as t
from calsync.sync.forward import build_context
from calsync.sync.plan import Prepared
from calsync.sync.prepare import prepare_event

GRAPH_PAGE = 100  # a typical $top; the connector pages the same way
ALIMAIL_PAGE = 100  # the API's maximum


@dataclass
class NaiveResult:
    wall_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    failed: int = 0

    def add(self, action: str) -> None:
        self.counts[action] = self.counts.get(action, 0) + 1


# --- reads: one user at a time, one request per page --------------------------------------


class GraphReader:
    def __init__(self, conn_json: str) -> None:
        conn = json.loads(conn_json)
        extra = conn["extra"] if isinstance(conn.get("extra"), dict) else json.loads(conn["extra"])
        self.base = extra["base_url"].rstrip("/")
        self.http = requests.Session()
        self.http.verify = extra["verify"]
        token = self.http.post(
            f"{extra['authority'].rstrip('/')}/{extra['tenant_id']}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": conn["login"],
                "client_secret": conn["password"],
                "scope": "https://graph.microsoft.com/.default",
            },
            timeout=30,
        )
        token.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        self.http.headers["Prefer"] = 'outlook.timezone="UTC", IdType="ImmutableId"'

    def events(self, mailbox: str, window: Window) -> list[SuiteEvent]:
        from calsync.connectors.graph import EXPAND_MARKER, SELECT, normalize_event

        lo, hi = window.bounds_utc()
        url: str | None = f"{self.base}/users/{quote(mailbox, safe='@')}/calendarView"
        params: dict[str, str] | None = {
            "startDateTime": lo.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "endDateTime": hi.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "$select": SELECT,
            "$expand": EXPAND_MARKER,
            "$top": str(GRAPH_PAGE),
        }
        out = []
        while url:
            page = self.http.get(url, params=params, timeout=60)
            page.raise_for_status()
            body = page.json()
            out += [normalize_event(item, window.timezone) for item in body.get("value", [])]
            url, params = body.get("@odata.nextLink"), None
        return out

    def close(self) -> None:
        self.http.close()


class AlimailReader:
    def __init__(self, conn_json: str, endpoint: str) -> None:
        conn = json.loads(conn_json)
        extra = conn.get("extra") or {}
        extra = extra if isinstance(extra, dict) else json.loads(extra)
        self.base = endpoint.rstrip("/")
        self.http = requests.Session()
        self.http.verify = extra.get("verify", True)
        token = self.http.post(
            f"{self.base}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": conn["login"],
                "client_secret": conn["password"],
            },
            timeout=30,
        )
        token.raise_for_status()
        self.http.headers["Authorization"] = f"bearer {token.json()['access_token']}"

    def events(self, mailbox: str, window: Window) -> list[SuiteEvent]:
        from calsync.connectors import alimail_wire as wire
        from calsync.connectors.alimail import normalize_event, pick_calendar

        user = quote(mailbox, safe="@")
        listed = self.http.get(f"{self.base}/v2/users/{user}/calendars", timeout=60)
        listed.raise_for_status()
        calendar = pick_calendar(listed.json()["calendars"], None)
        calendar_id = str(wire.first(calendar, wire.CALENDAR_ID))
        lo, hi = window.bounds_utc()
        query = {
            "startTime": wire.view_instant(lo),
            "endTime": wire.view_instant(hi),
            "size": str(ALIMAIL_PAGE),
        }
        out = []
        url = f"{self.base}/v2/users/{user}/calendars/{quote(calendar_id, safe='')}/eventsview"
        while True:
            page = self.http.get(url, params=query, timeout=60)
            page.raise_for_status()
            body = page.json()
            for item in body.get("events", []):
                event = normalize_event(item, window.timezone)
                event.extra["calendar_id"] = event.extra.get("calendar_id") or calendar_id
                if window.overlaps(event.start, event.end, event.start_date, event.end_date):
                    out.append(event)
            if not body.get("hasMore"):
                return out
            query["cursor"] = body["nextCursor"]

    def close(self) -> None:
        self.http.close()


class ExchangeReader:
    """exchangelib as its documentation shows it: an impersonating Account per mailbox and
    ``calendar.view(start, end)`` (FindItem pages, GetItem in chunks of 100)."""

    def __init__(self, conn_json: str, ca_file: str | None, zone: str) -> None:
        from exchangelib import BASIC, IMPERSONATION, Configuration, Credentials, EWSTimeZone
        from exchangelib.version import Version

        from calsync.connectors.exchange import DEFAULT_BUILD
        from calsync.connectors.exchange_transport import trust_ca_bundle

        conn = json.loads(conn_json)
        endpoint = conn["host"]
        if ca_file:
            trust_ca_bundle(endpoint, ca_file)
        self.config = Configuration(
            service_endpoint=endpoint,
            credentials=Credentials(conn["login"], conn["password"]),
            auth_type=BASIC,
            version=Version(build=DEFAULT_BUILD),
        )
        self.access = IMPERSONATION
        self.zone = EWSTimeZone(zone)

    def events(self, mailbox: str, window: Window) -> list[SuiteEvent]:
        from exchangelib import Account, EWSDateTime

        from calsync.connectors.exchange import READ_FIELDS, normalize_item

        account = Account(
            primary_smtp_address=mailbox,
            config=self.config,
            autodiscover=False,
            access_type=self.access,
            default_timezone=self.zone,
        )
        lo, hi = window.bounds_utc()
        view = account.calendar.view(
            start=EWSDateTime.from_datetime(lo), end=EWSDateTime.from_datetime(hi)
        ).only(*READ_FIELDS)
        out = [normalize_item(item, window.timezone) for item in view]
        if any(e.event_type in ("occurrence", "exception") for e in out):
            masters = {
                m.uid: m.id for m in account.calendar.filter(type="RecurringMaster").only("uid")
            }
            for event in out:
                if event.event_type in ("occurrence", "exception"):
                    event.series_id = masters.get(event.ical_uid)
        return out

    def close(self) -> None:
        from exchangelib.protocol import close_connections

        close_connections()


# --- writes: one statement per event ------------------------------------------------------


def _write_event(
    conn: sa.Connection, config_id: str, user: OAUser, item: Prepared, run: Any, now: dt.datetime
) -> str:
    """One event: look its link up, then insert or update what it needs. Returns the action."""
    event, data = item.event, item.data
    if data is None:
        return "skipped" if item.skip is not None else "failed"
    link = conn.execute(
        sa.select(t.links.c.id, t.links.c.schedule_id, t.links.c.content_hash).where(
            t.links.c.integration_id == config_id,
            t.links.c.mailbox == user.mailbox,
            t.links.c.suite_id == event.suite_id,
        )
    ).first()
    link_values = store._link_values(item)  # the same link row calsync writes
    schedule = {
        "title": data.title[:500],
        "start_utc": data.start.replace(tzinfo=None) if data.start else None,
        "end_utc": data.end.replace(tzinfo=None) if data.end else None,
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
    if link is not None and link.content_hash == item.hash:
        return "unchanged"
    if link is None:
        schedule_id = conn.execute(
            sa.insert(t.schedules).values(
                **schedule, source_integration=config_id, created_at=now, updated_at=now
            )
        ).inserted_primary_key[0]
        conn.execute(
            sa.insert(t.meetings).values(
                integration_id=config_id,
                identity_key=event.identity_key[:400],
                schedule_id=schedule_id,
                owner_mailbox=item.owner_mailbox or user.mailbox,
                content_hash=item.hash,
            )
        )
        conn.execute(
            sa.insert(t.links).values(
                integration_id=config_id,
                mailbox=user.mailbox,
                schedule_id=schedule_id,
                created_at=now,
                updated_at=now,
                **link_values,
            )
        )
        action = "created"
    else:
        schedule_id = link.schedule_id
        conn.execute(
            sa.update(t.schedules)
            .where(t.schedules.c.id == schedule_id)
            .values(**schedule, updated_at=now)
        )
        conn.execute(sa.delete(t.participants).where(t.participants.c.schedule_id == schedule_id))
        conn.execute(
            sa.update(t.meetings)
            .where(t.meetings.c.schedule_id == schedule_id)
            .values(content_hash=item.hash)
        )
        conn.execute(
            sa.update(t.links).where(t.links.c.id == link.id).values(updated_at=now, **link_values)
        )
        action = "updated"
    for p in data.participants:
        conn.execute(
            sa.insert(t.participants).values(
                schedule_id=schedule_id,
                kind=p.kind,
                user_id=p.user_id,
                room_id=p.room_id,
                email=p.email[:320],
                name=p.name[:200],
                response=p.response[:32],
            )
        )
    row = store.log_row(run, action, "", user_id=user.id, mailbox=user.mailbox)
    row |= {"schedule_id": schedule_id, "suite_id": event.suite_id, "title": data.title[:500]}
    conn.execute(sa.insert(t.sync_log).values(**row))
    return action


def naive_sync(
    engine: sa.Engine,
    config: Any,
    library: Any,
    reader: Any,
    window: Window,
    run: Any,
    only: set[str] | None = None,
) -> NaiveResult:
    """Forward-sync every user in scope (or those of them whose mailbox is in ``only``), one
    after another."""
    result = NaiveResult()
    started = time.perf_counter()
    with engine.connect() as conn:
        ctx, _ = build_context(conn, config, library)
        users = store.resolve_scope(conn, config.scope, config.binding).users
    for user in users:
        if only is not None and user.mailbox not in only:
            continue
        try:
            events = reader.events(user.mailbox, window)
        except Exception:  # one user's failure must not stop the others
            result.failed += 1
            continue
        now = store.utcnow()
        with engine.begin() as conn, outbox.write_origin(conn, outbox.forward_origin(config.id)):
            for event in events:
                result.add(
                    _write_event(conn, config.id, user, prepare_event(event, user, ctx), run, now)
                )
    result.wall_s = time.perf_counter() - started
    return result
