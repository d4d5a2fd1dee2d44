"""The three suites as the safety scenarios (issue 9, E12–E17) drive them: one small interface
over the Graph, EWS and Alibaba Mail emulators, so a scenario is written once and run against
each suite that has its concept.

A ``Suite`` adds events in the suite's own format (through the emulator's Python API, as a
user of the suite would: those writes are not calsync's), moves or cancels one occurrence of a
series, and reports what calsync did to the suite: its write requests (``writes``) and the
meeting messages the suite sent (``mail``) — both counted by the emulators from the HTTP
requests they served.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.config import parse_integration, resolve_timezone
from calsync.oa import schema as t
from calsync.oa.seed import seed_demo
from tests.contract.conftest import ALIMAIL_CONN, EWS_CONN
from tests.integration.conftest import GRAPH_CONN, people

ZONE = "Asia/Shanghai"
ORGANISER = "zhangwei@contoso.com"
LINA = "lina@contoso.com"
ROOM = "meeting01@contoso.com"
ROOM_NAME = "会议室01"
SUITES = ("office365", "exchange", "alimail_v2")


@dataclass(frozen=True)
class Ev:
    """An event as a suite user makes it: wall times in ``zone`` (IANA or Windows name)."""

    subject: str
    start: dt.datetime | None = None  # naive wall time in ``zone``
    end: dt.datetime | None = None
    zone: str = ZONE
    all_day: tuple[dt.date, dt.date] | None = None  # (first, end exclusive)
    attendees: tuple[str, ...] = ()
    room: bool = False
    weekly: int = 0  # a weekly series of that many occurrences
    daily: int = 0  # a daily series of that many occurrences


@dataclass(frozen=True)
class Stored:
    """An event's times as a suite stores them: UTC instants, or dates for all-day; ``zone``
    is the suite's own zone name (Windows or IANA)."""

    start: dt.datetime | None
    end: dt.datetime | None
    dates: tuple[dt.date, dt.date] | None
    zone: str


def _instant(wall: str, zone: str) -> dt.datetime:
    """A wall time in a zone (IANA or Windows name) as an aware UTC datetime."""
    local = dt.datetime.fromisoformat(wall[:19])
    return local.replace(tzinfo=zoneinfo.ZoneInfo(resolve_timezone(zone))).astimezone(dt.UTC)


def _wall(value: dt.datetime) -> str:
    return value.replace(tzinfo=None).isoformat(timespec="seconds")


def _recurrence(ev: Ev) -> dict[str, Any] | None:
    if not (ev.weekly or ev.daily):
        return None
    first = ev.all_day[0] if ev.all_day else ev.start.date()  # type: ignore[union-attr]
    pattern: dict[str, Any] = {"type": "daily", "interval": 1}
    if ev.weekly:
        pattern = {"type": "weekly", "interval": 1, "daysOfWeek": [first.strftime("%A").lower()]}
    return {
        "pattern": pattern,
        "range": {
            "type": "numbered",
            "numberOfOccurrences": ev.weekly or ev.daily,
            "startDate": first.isoformat(),
            "recurrenceTimeZone": ev.zone,
        },
    }


def suite_yaml(kind: str, connection: str, section: str, zone: str, direction: str) -> str:
    """An integration's YAML; ``section`` (the suite's section and any extra keys) may set
    ``filters`` of its own."""
    filters = "" if "\nfilters:" in section else "filters: [skip_cancelled, skip_title_pattern]\n"
    return (
        f"name: safety {kind}\ntype: {kind}\nconnection_id: {connection}\n"
        f"oa_connection_id: calsync_oa_test\nwindow_days: 3\ntimezone: {zone}\n"
        f"direction: {direction}\n{filters}"
        "execution: {concurrency: 4, retries: 0, max_attempts: 3, retry_backoff_s: 0}\n" + section
    )


class Suite:
    kind = ""

    def __init__(self, server: Any) -> None:
        self.server = server

    def config(
        self, zone: str = ZONE, direction: str = "forward", extra: str = "", notify: bool = True
    ) -> Any:
        """The integration over this suite; ``notify``: the reverse write modes that send
        meeting messages (EWS SendOnlyToAll, Alibaba sendNotification) or none (Graph has no
        such switch)."""
        raise NotImplementedError

    def _parse(self, connection: str, section: str, zone: str, direction: str) -> Any:
        text = suite_yaml(self.kind, connection, section, zone, direction)
        return parse_integration(Path(f"safety_{self.kind}.yaml"), text)

    def add(self, mailbox: str, ev: Ev, deliver: bool = True) -> str:
        """Makes the event; returns its id (a series: the master's)."""
        raise NotImplementedError

    def move_occurrence(
        self, mailbox: str, master: str, day: dt.date, start: dt.datetime, end: dt.datetime
    ) -> None:
        raise NotImplementedError

    def cancel_occurrence(self, mailbox: str, master: str, day: dt.date) -> None:
        raise NotImplementedError

    def update(self, mailbox: str, suite_id: str, subject: str) -> None:
        raise NotImplementedError

    def room_responds(self, mailbox: str, suite_id: str, response: str) -> None:
        """The room's reply (accepted / declined) reaches the organiser's event."""
        raise NotImplementedError

    def delete(self, mailbox: str, suite_id: str) -> None:
        raise NotImplementedError

    def subjects(self, mailbox: str) -> list[str]:
        """Subjects of the events stored in the mailbox (series once)."""
        return sorted(str(e.get("subject", "")) for e in self.stored(mailbox))

    def stored(self, mailbox: str) -> list[dict[str, Any]]:
        """The emulator's own records of the mailbox's events."""
        return list(self.server.store.events(mailbox))

    def times(self, mailbox: str, subject: str) -> Stored:
        """When the stored event (not a series) is, read from the emulator's own record."""
        [item] = [e for e in self.stored(mailbox) if e.get("subject") == subject]
        return self._times_of(item)

    def _times_of(self, item: dict[str, Any]) -> Stored:
        raise NotImplementedError

    def writes(self) -> dict[str, int]:
        """calsync's create / update / delete requests served so far."""
        raise NotImplementedError

    def mail(self) -> int:
        """Meeting messages (invitations, updates, cancellations) the suite sent so far."""
        raise NotImplementedError

    def requests_for(self, mailbox: str) -> int:
        """API requests (reads and writes) calsync sent for ``mailbox`` so far."""
        return int(self.server.stats.snapshot()["by_mailbox"].get(mailbox, 0))

    def expire_feeds(self) -> None:
        """The suite forgets every change-feed state it handed out."""


class GraphSuite(Suite):
    kind = "office365_global"
    has_change_feed = True

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        server.reset()
        for email, name in people():
            server.store.add_mailbox(email, name)
        server.store.add_mailbox(ROOM, ROOM_NAME)

    def config(
        self, zone: str = ZONE, direction: str = "forward", extra: str = "", notify: bool = True
    ) -> Any:
        assert notify, "Graph sends meeting messages for every organiser write: no switch"
        return self._parse(GRAPH_CONN, "office365: {page_size: 10}\n" + extra, zone, direction)

    def _times(self, ev: Ev) -> dict[str, Any]:
        if ev.all_day:
            first, last = ev.all_day
            return {
                "isAllDay": True,
                "start": {"dateTime": f"{first}T00:00:00", "timeZone": ev.zone},
                "end": {"dateTime": f"{last}T00:00:00", "timeZone": ev.zone},
            }
        assert ev.start is not None and ev.end is not None
        return {
            "start": {"dateTime": _wall(ev.start), "timeZone": ev.zone},
            "end": {"dateTime": _wall(ev.end), "timeZone": ev.zone},
        }

    def add(self, mailbox: str, ev: Ev, deliver: bool = True) -> str:
        body: dict[str, Any] = {
            "subject": ev.subject,
            **self._times(ev),
            "attendees": [
                {"type": "required", "emailAddress": {"address": a, "name": a}}
                for a in ev.attendees
            ]
            + (
                [{"type": "resource", "emailAddress": {"address": ROOM, "name": ROOM_NAME}}]
                if ev.room
                else []
            ),
        }
        if (recurrence := _recurrence(ev)) is not None:
            body["recurrence"] = recurrence
        return str(self.server.store.add_event(mailbox, body, deliver=deliver)["id"])

    def move_occurrence(
        self, mailbox: str, master: str, day: dt.date, start: dt.datetime, end: dt.datetime
    ) -> None:
        zone = self._series_zone(mailbox, master)
        patch = {
            "start": {"dateTime": _wall(start), "timeZone": zone},
            "end": {"dateTime": _wall(end), "timeZone": zone},
        }
        self.server.store.modify_occurrence(mailbox, master, day, patch)

    def _series_zone(self, mailbox: str, master: str) -> str:
        [item] = [e for e in self.server.store.events(mailbox) if e["id"] == master]
        return str(item["start"]["timeZone"])

    def cancel_occurrence(self, mailbox: str, master: str, day: dt.date) -> None:
        self.server.store.cancel_occurrence(mailbox, master, day)

    def update(self, mailbox: str, suite_id: str, subject: str) -> None:
        self.server.store.update_event(mailbox, suite_id, {"subject": subject})

    def delete(self, mailbox: str, suite_id: str) -> None:
        self.server.store.delete_event(mailbox, suite_id)

    def room_responds(self, mailbox: str, suite_id: str, response: str) -> None:
        [item] = [e for e in self.stored(mailbox) if e["id"] == suite_id]
        attendees = [dict(a) for a in item["attendees"]]
        for node in attendees:
            if node["emailAddress"]["address"].lower() == ROOM:
                node["status"] = {"response": response, "time": "2026-01-01T00:00:00Z"}
        self.server.store.update_event(mailbox, suite_id, {"attendees": attendees})

    def writes(self) -> dict[str, int]:
        kinds = self.server.stats.snapshot()["by_kind"]
        return {
            "create": kinds.get("events_create", 0),
            "update": kinds.get("event_update", 0),
            "delete": kinds.get("event_delete", 0),
        }

    def mail(self) -> int:
        snap = self.server.stats.snapshot()
        kinds = ("invitations_sent", "updates_sent", "cancellations_sent")
        return sum(sum(snap[k].values()) for k in kinds)

    def expire_feeds(self) -> None:
        self.server.store.expire_delta_tokens()

    def _times_of(self, item: dict[str, Any]) -> Stored:
        start, end = item["start"], item["end"]
        if item.get("isAllDay"):
            dates = (dt.date.fromisoformat(start["dateTime"][:10]),
                     dt.date.fromisoformat(end["dateTime"][:10]))  # fmt: skip
            return Stored(None, None, dates, start["timeZone"])
        return Stored(
            _instant(start["dateTime"], start["timeZone"]),
            _instant(end["dateTime"], end["timeZone"]),
            None,
            start["timeZone"],
        )


class ExchangeSuite(Suite):
    kind = "exchange"
    has_change_feed = True

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        server.reset()
        for email, name in people():
            server.store.add_mailbox(email, name)
        server.store.add_mailbox(ROOM, ROOM_NAME, kind="Room")

    def config(
        self, zone: str = ZONE, direction: str = "forward", extra: str = "", notify: bool = True
    ) -> Any:
        mode = "SendOnlyToAll" if notify else "SendToNone"
        section = (
            f"exchange: {{server: '{self.server.service_endpoint}', invitation_mode: {mode}, "
            f"cancellation_mode: {mode}}}\n" + extra
        )
        return self._parse(EWS_CONN, section, zone, direction)

    def add(self, mailbox: str, ev: Ev, deliver: bool = True) -> str:
        if ev.all_day:
            times: dict[str, Any] = {
                "start": ev.all_day[0].isoformat(),
                "end": ev.all_day[1].isoformat(),
                "is_all_day": True,
            }
        else:
            assert ev.start is not None and ev.end is not None
            times = {"start": _wall(ev.start), "end": _wall(ev.end)}
        body: dict[str, Any] = {
            "subject": ev.subject,
            "timezone": ev.zone,
            **times,
            "required_attendees": list(ev.attendees),
            "resources": [ROOM] if ev.room else [],
        }
        if (recurrence := _recurrence(ev)) is not None:
            body["recurrence"] = recurrence
        return str(self.server.store.add_event(mailbox, body, deliver=deliver)["id"])

    def move_occurrence(
        self, mailbox: str, master: str, day: dt.date, start: dt.datetime, end: dt.datetime
    ) -> None:
        self.server.store.modify_occurrence(
            mailbox, master, day, {"start": _wall(start), "end": _wall(end)}
        )

    def cancel_occurrence(self, mailbox: str, master: str, day: dt.date) -> None:
        self.server.store.cancel_occurrence(mailbox, master, day)

    def update(self, mailbox: str, suite_id: str, subject: str) -> None:
        self.server.store.update_event(mailbox, suite_id, {"subject": subject})

    def delete(self, mailbox: str, suite_id: str) -> None:
        self.server.store.delete_event(mailbox, suite_id)

    def room_responds(self, mailbox: str, suite_id: str, response: str) -> None:
        reply = {"accepted": "Accept", "declined": "Decline"}[response]
        self.server.store.record_response(mailbox, suite_id, ROOM, reply)

    def writes(self) -> dict[str, int]:
        ops = self.server.stats.snapshot()["by_operation"]
        return {
            "create": ops.get("CreateItem", 0),
            "update": ops.get("UpdateItem", 0),
            "delete": ops.get("DeleteItem", 0),
        }

    def mail(self) -> int:
        return len(self.server.messages)

    def expire_feeds(self) -> None:
        self.server.store.invalidate_sync_states()

    def _times_of(self, item: dict[str, Any]) -> Stored:
        if item["is_all_day"]:
            dates = (dt.date.fromisoformat(item["start_date"]),
                     dt.date.fromisoformat(item["end_date"]))  # fmt: skip
            return Stored(None, None, dates, item["timezone"])
        start = dt.datetime.fromisoformat(item["start"].replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(item["end"].replace("Z", "+00:00"))
        return Stored(start, end, None, item["timezone"])


class AlimailSuite(Suite):
    kind = "alimail_v2"
    has_change_feed = False  # no change feed: every run reads each view (a digest in the state)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        server.reset()
        for email, name in people():
            server.store.add_mailbox(email, name)
        server.store.add_mailbox(ROOM, ROOM_NAME)

    def config(
        self, zone: str = ZONE, direction: str = "forward", extra: str = "", notify: bool = True
    ) -> Any:
        flag = "true" if notify else "false"
        section = (
            f"alimail: {{endpoint: '{self.server.endpoint}', send_notifications: {flag}}}\n" + extra
        )
        return self._parse(ALIMAIL_CONN, section, zone, direction)

    def add(self, mailbox: str, ev: Ev, deliver: bool = True) -> str:
        if ev.all_day:
            times: dict[str, Any] = {
                "isAllDay": True,
                "start": {"date": ev.all_day[0].isoformat()},
                "end": {"date": ev.all_day[1].isoformat()},
                "timeZone": ev.zone,
            }
        else:
            assert ev.start is not None and ev.end is not None
            times = {
                "start": {"dateTime": _wall(ev.start), "timeZone": ev.zone},
                "end": {"dateTime": _wall(ev.end), "timeZone": ev.zone},
            }
        body: dict[str, Any] = {
            "subject": ev.subject,
            **times,
            "attendees": [{"email": a, "name": a} for a in ev.attendees]
            + ([{"email": ROOM, "name": ROOM_NAME, "type": "resource"}] if ev.room else []),
        }
        if (recurrence := _recurrence(ev)) is not None:
            body["recurrence"] = recurrence
        return str(self.server.store.add_event(mailbox, body)["id"])

    def move_occurrence(
        self, mailbox: str, master: str, day: dt.date, start: dt.datetime, end: dt.datetime
    ) -> None:
        [item] = [e for e in self.stored(mailbox) if e["id"] == master]
        zone = item["start"].get("timeZone") or item.get("timeZone") or ZONE
        patch = {
            "start": {"dateTime": _wall(start), "timeZone": zone},
            "end": {"dateTime": _wall(end), "timeZone": zone},
        }
        self.server.store.update_event(mailbox, f"{master}_{day:%Y%m%d}", patch)

    def cancel_occurrence(self, mailbox: str, master: str, day: dt.date) -> None:
        self.server.store.delete_event(mailbox, f"{master}_{day:%Y%m%d}")

    def update(self, mailbox: str, suite_id: str, subject: str) -> None:
        self.server.store.update_event(mailbox, suite_id, {"subject": subject})

    def delete(self, mailbox: str, suite_id: str) -> None:
        self.server.store.delete_event(mailbox, suite_id)

    def room_responds(self, mailbox: str, suite_id: str, response: str) -> None:
        [item] = [e for e in self.stored(mailbox) if e["id"] == suite_id]
        attendees = [dict(a) for a in item["attendees"]]
        for node in attendees:
            if node["email"].lower() == ROOM:
                node["status"] = {"response": response}
        self.server.store.update_event(mailbox, suite_id, {"attendees": attendees})

    def writes(self) -> dict[str, int]:
        kinds = self.server.stats.snapshot()["by_kind"]
        return {
            "create": kinds.get("event_create", 0),
            "update": kinds.get("event_update", 0),
            "delete": kinds.get("event_delete", 0),
        }

    def mail(self) -> int:
        return sum(self.server.stats.snapshot()["notifications"].values())

    def _times_of(self, item: dict[str, Any]) -> Stored:
        start, end = item["start"], item["end"]
        zone = start.get("timeZone") or item.get("timeZone") or "UTC"
        if item.get("isAllDay"):
            first = start.get("date") or start["dateTime"][:10]
            last = end.get("date") or end["dateTime"][:10]
            return Stored(
                None, None, (dt.date.fromisoformat(first), dt.date.fromisoformat(last)), zone
            )
        return Stored(
            _instant(start["dateTime"], zone),
            _instant(end["dateTime"], end.get("timeZone") or zone),
            None,
            zone,
        )


NO_WRITES = {"create": 0, "update": 0, "delete": 0}


@pytest.fixture(params=SUITES)
def suite(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Suite]:
    """Each suite's emulator, emptied, with the demo mailboxes and the room."""
    made: Suite
    if request.param == "office365":
        made = GraphSuite(request.getfixturevalue("graph_server"))
    elif request.param == "exchange":
        from exchangelib.protocol import close_connections

        server = request.getfixturevalue("ews_server")
        monkeypatch.setenv(f"AIRFLOW_CONN_{EWS_CONN.upper()}", server.airflow_conn_json())
        made = ExchangeSuite(server)
        request.addfinalizer(close_connections)
    else:
        server = request.getfixturevalue("alimail_server")
        monkeypatch.setenv(f"AIRFLOW_CONN_{ALIMAIL_CONN.upper()}", server.airflow_conn_json())
        made = AlimailSuite(server)
    yield made
    made.server.reset()


@pytest.fixture
def oa(sqlite_oa_engine: sa.Engine) -> sa.Engine:
    """A seeded SQLite OA (demo users, rooms and room mappings)."""
    seed_demo(sqlite_oa_engine)
    return sqlite_oa_engine


@pytest.fixture
def oa_any(oa_engine: sa.Engine) -> sa.Engine:
    """The seeded OA on each database (SQLite, PostgreSQL, MariaDB)."""
    seed_demo(oa_engine)
    return oa_engine


# --- reading the OA ------------------------------------------------------------------------


def meetings(engine: sa.Engine, integration_id: str) -> dict[str, int]:
    """Meeting identity key → schedule id."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.meetings.c.identity_key, t.meetings.c.schedule_id).where(
                t.meetings.c.integration_id == integration_id
            )
        )
        return {r.identity_key: r.schedule_id for r in rows}


def schedules(engine: sa.Engine) -> dict[int, Any]:
    with engine.connect() as conn:
        return {r.id: r for r in conn.execute(sa.select(t.schedules))}


def links(engine: sa.Engine, integration_id: str) -> set[tuple[str, str, int]]:
    """(mailbox, identity key, schedule id) of every link."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.links).where(t.links.c.integration_id == integration_id))
        return {(r.mailbox, r.identity_key, r.schedule_id) for r in rows}


def utc(value: dt.datetime | None) -> dt.datetime | None:
    """A naive UTC time as the OA stores it, made aware."""
    return None if value is None else value.replace(tzinfo=dt.UTC)
