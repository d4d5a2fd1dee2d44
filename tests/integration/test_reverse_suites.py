"""Reverse sync (OA → suite) at engine level against the Exchange (EWS) and Alibaba Mail
emulators, on a SQLite OA: the create → update → delete round with an OA attendee, an external
attendee, a mapped room (a resource) and an all-day schedule; the configured write modes as
the emulators recorded them (Exchange: invitation, delete and cancellation modes; Alibaba:
the send-notification switch); and a crash between the suite write and the link that never
yields a duplicate on retry. Office 365's round is in test_reverse_sync.py."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.config import IntegrationConfig, parse_integration
from calsync.oa import schema as t
from calsync.oa.seed import seed_demo
from tests.contract.conftest import ALIMAIL_CONN, EWS_CONN
from tests.integration.conftest import people
from tests.integration.reverse_helpers import (
    ReverseRunner,
    deliveries,
    oa_create,
    oa_delete,
    oa_update,
    reverse_logs,
    user_id,
)

ZONE = "Asia/Shanghai"
SH = dt.timezone(dt.timedelta(hours=8))
ZHANG = "zhangwei@contoso.com"
LINA = "lina@contoso.com"
WANGFANG = "wangfang@contoso.com"
PARTNER = "partner@example.org"
ROOM01 = "meeting01@contoso.com"
EXECUTION = "execution: {concurrency: 4, retries: 0, max_attempts: 3, retry_backoff_s: 0}\n"


def reverse_yaml(kind: str, connection: str, section: str) -> IntegrationConfig:
    text = (
        f"name: reverse {kind}\ntype: {kind}\nconnection_id: {connection}\n"
        f"oa_connection_id: calsync_oa_test\ntimezone: {ZONE}\ndirection: reverse\n"
        + EXECUTION
        + section
    )
    return parse_integration(Path(f"rev_{kind}.yaml"), text)


@pytest.fixture
def oa(sqlite_oa_engine: sa.Engine) -> sa.Engine:
    seed_demo(sqlite_oa_engine)
    return sqlite_oa_engine


# --- the suites as seen from their emulators (not through the connector under test) -------


class ExchangeSide:
    kind = "exchange"

    def __init__(self, server: Any) -> None:
        self.server = server
        server.reset()
        for email, name in people():
            server.store.add_mailbox(email, name)
        server.store.add_mailbox(ROOM01, "会议室01", kind="Room")
        server.store.add_mailbox("meeting02@contoso.com", "会议室02", kind="Room")

    def config(
        self,
        invitation_mode: str = "SendToAllAndSaveCopy",
        delete_mode: str = "MoveToDeletedItems",
        cancellation_mode: str = "SendOnlyToAll",
    ) -> IntegrationConfig:
        return reverse_yaml(
            "exchange",
            EWS_CONN,
            f"exchange: {{server: '{self.server.service_endpoint}', "
            f"invitation_mode: {invitation_mode}, delete_mode: {delete_mode}, "
            f"cancellation_mode: {cancellation_mode}}}\n",
        )

    def events(self, mailbox: str, subject: str | None = None) -> list[dict[str, Any]]:
        out = []
        for e in self.server.store.events(mailbox):
            people_ = {a["email"].lower(): "required" for a in e["required_attendees"]}
            people_ |= {a["email"].lower(): "optional" for a in e["optional_attendees"]}
            people_ |= {a["email"].lower(): "resource" for a in e["resources"]}
            view = {
                "id": e["id"],
                "subject": e["subject"],
                "location": e["location"],
                "attendees": people_,
                "all_day": e["is_all_day"],
                "dates": (e.get("start_date"), e.get("end_date")),
                "cancelled": e["is_cancelled"],
                "organizer": e["organizer"]["email"].lower(),
                "body": e["body"],
                "start": None
                if e["is_all_day"]
                else dt.datetime.fromisoformat(e["start"].replace("Z", "+00:00")),
            }
            if subject is None or view["subject"] == subject:
                out.append(view)
        return out

    def creates(self) -> int:
        return sum(1 for r in self.server.records if r.operation == "CreateItem" and not r.error)

    def throttle(self, rate: float) -> None:
        self.server.faults.rate_server_busy = rate
        self.server.faults.back_off_ms = 200

    def check_backoff(self) -> None:
        """Impersonation puts every mailbox under one login, which EWS throttles as a whole:
        requests already on the wire when a busy answer went out land inside its window (the
        threads woken together at the end of a back-off race each other). Those arrive within
        milliseconds; a request sent after the client learnt of the back-off would arrive
        later in the window."""
        window_s = self.server.faults.back_off_ms / 1000
        opened: float | None = None
        late = []
        for r in self.server.stats.log:
            if r.outcome != "ErrorServerBusy":
                continue
            if opened is None or r.at - opened >= window_s:
                opened = r.at  # a fresh busy answer opens a window
            elif r.at - opened > 0.05:
                late.append((r.operation, round(r.at - opened, 3)))
        assert late == []

    def check_deleted_once(self, item_id: str) -> None:
        """Moved to Deleted Items once (the configured MoveToDeletedItems), not on into the
        dumpster by a second delete."""
        deletes = [r for r in self.server.records if r.operation == "DeleteItem"]
        assert [(r.deleted_to, r.error) for r in deletes if r.item_id == item_id] == [
            ("deleteditems", None),
            (None, "ErrorItemNotFound"),  # the retry: gone already, which counts as done
        ]
        assert len(self.server.folder(ZHANG, "deleteditems")) == 1
        assert self.server.folder(ZHANG, "recoverableitemsdeletions") == []


def day(node: dict[str, str]) -> str:
    """An all-day bound as Alibaba stores it: a date, or a midnight wall time."""
    return node.get("date") or node["dateTime"][:10]


def instant(node: dict[str, str]) -> dt.datetime:
    """A timed bound as Alibaba stores it: a wall time in a zone."""
    wall = dt.datetime.fromisoformat(node["dateTime"])
    return wall.replace(tzinfo=zoneinfo.ZoneInfo(node.get("timeZone") or ZONE))


class AlimailSide:
    kind = "alimail_v2"

    def __init__(self, server: Any) -> None:
        self.server = server
        server.reset()
        for email, _ in people():
            server.store.add_mailbox(email)

    def config(self, send_notifications: bool = False) -> IntegrationConfig:
        flag = "true" if send_notifications else "false"
        return reverse_yaml(
            "alimail_v2",
            ALIMAIL_CONN,
            f"alimail: {{endpoint: '{self.server.endpoint}', send_notifications: {flag}}}\n",
        )

    def events(self, mailbox: str, subject: str | None = None) -> list[dict[str, Any]]:
        out = []
        for e in self.server.store.events(mailbox):
            location = e.get("location") or {}
            view = {
                "id": e["id"],
                "subject": e.get("subject", ""),
                "location": location.get("displayName", "")
                if isinstance(location, dict)
                else str(location),
                "attendees": {
                    a["email"].lower(): a.get("type", "required") for a in e.get("attendees") or []
                },
                "all_day": bool(e.get("isAllDay")),
                "dates": (day(e["start"]), day(e["end"])) if e.get("isAllDay") else None,
                "body": (e.get("body") or {}).get("content", ""),
                "start": None if e.get("isAllDay") else instant(e["start"]),
            }
            if subject is None or view["subject"] == subject:
                out.append(view)
        return out

    def creates(self) -> int:
        """Events made (a create request refused with a 429 makes none; the emulator counts
        requests before it throttles them)."""
        return sum(len(self.server.store.events(m)) for m in self.server.store.mailboxes())

    def throttle(self, rate: float) -> None:
        self.server.faults.rate_429 = rate
        self.server.faults.retry_after_s = 1

    def check_backoff(self) -> None:
        """At most the requests already in flight for a mailbox (the engine sends up to
        ``writes_per_mailbox`` at once) land inside a 429's Retry-After."""
        stats = self.server.stats.snapshot()
        violations = stats["retry_after_violations"]  # answered 429 as well
        assert violations <= 3 * (stats["throttled_429"] - violations)

    def check_deleted_once(self, item_id: str) -> None:
        """The retry's DELETE found the event gone (404), which counts as done."""
        assert self.server.stats.snapshot()["by_kind"].get("event_delete") == 2
        assert self.events(ZHANG) == []

    def notified(self, kind: str) -> dict[str, int]:
        return dict(self.server.stats.snapshot()[kind])


@pytest.fixture
def exchange(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ExchangeSide]:
    from exchangelib.protocol import close_connections

    server = request.getfixturevalue("ews_server")
    monkeypatch.setenv(f"AIRFLOW_CONN_{EWS_CONN.upper()}", server.airflow_conn_json())
    yield ExchangeSide(server)
    close_connections()
    server.reset()


@pytest.fixture
def alimail(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AlimailSide]:
    server = request.getfixturevalue("alimail_server")
    monkeypatch.setenv(f"AIRFLOW_CONN_{ALIMAIL_CONN.upper()}", server.airflow_conn_json())
    yield AlimailSide(server)
    server.reset()


@pytest.fixture(params=["exchange", "alimail_v2"])
def side(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("exchange" if request.param == "exchange" else "alimail")


# --- the round --------------------------------------------------------------------------


def tomorrow_at(hour: int) -> dt.datetime:
    day = dt.datetime.now(SH).date() + dt.timedelta(days=1)
    return dt.datetime.combine(day, dt.time(hour), SH)


def make_meeting_and_day_off(oa: sa.Engine) -> tuple[int, int, dt.date]:
    meeting = oa_create(
        oa,
        "zhangwei",
        "季度评审 Q4 review",
        tomorrow_at(10),
        attendees=("lina",),
        externals=((PARTNER, "Partner"),),
        room="会议室01",
        details="议程：预算",
    )
    day = dt.datetime.now(SH).date() + dt.timedelta(days=2)
    day_off = oa_create(oa, "lina", "团建 offsite", all_day=day)
    return meeting, day_off, day


def swap_participants(oa: sa.Engine, schedule_id: int, drop_email: str, add_login: str) -> None:
    """As the OA does it: one participant removed, one added, in one transaction."""
    p = t.participants
    added = user_id(oa, add_login)
    with oa.begin() as conn:
        conn.execute(sa.delete(p).where(p.c.schedule_id == schedule_id, p.c.email == drop_email))
        conn.execute(
            sa.insert(p).values(
                schedule_id=schedule_id,
                kind="user",
                user_id=added,
                room_id=None,
                email="",
                name="",
            )
        )


def run_round(side: Any, runner: ReverseRunner, oa: sa.Engine) -> dict[str, Any]:
    """create → update → delete of a meeting and an all-day schedule; returns the suite ids
    and what each step left, for the suite-specific mode checks."""
    meeting, day_off, day = make_meeting_and_day_off(oa)
    assert runner.counts(runner()) == {"created": 2}
    [event] = side.events(ZHANG, "季度评审 Q4 review")
    assert event["attendees"] == {LINA: "required", PARTNER: "required", ROOM01: "resource"}
    assert "会议室01" in event["location"]
    assert event["start"] == tomorrow_at(10)
    [leave] = side.events(LINA, "团建 offsite")
    assert leave["all_day"] is True
    assert leave["dates"] == (day.isoformat(), (day + dt.timedelta(days=1)).isoformat())
    with oa.connect() as conn:
        links = {
            (r.schedule_id, r.mailbox): r.suite_id
            for r in conn.execute(sa.select(t.links).where(t.links.c.integration_id.like("rev_%")))
        }
    assert links == {(meeting, ZHANG): event["id"], (day_off, LINA): leave["id"]}
    assert {d["status"] for d in deliveries(oa)} == {"done"}

    # three edits of the meeting coalesce into one in-place update (retitled, moved an hour,
    # an online location, the partner dropped and 王芳 invited); the day off moves a day
    oa_update(oa, meeting, title="季度评审 (moved)")
    start = tomorrow_at(11)
    oa_update(
        oa,
        meeting,
        location="线上",
        start_utc=start.astimezone(dt.UTC).replace(tzinfo=None),
        end_utc=(start + dt.timedelta(hours=1)).astimezone(dt.UTC).replace(tzinfo=None),
    )
    swap_participants(oa, meeting, drop_email=PARTNER, add_login="wangfang")
    later = day + dt.timedelta(days=1)
    oa_update(oa, day_off, start_date=later, end_date=later + dt.timedelta(days=1))
    assert runner.counts(runner()) == {"updated": 2}
    [moved] = side.events(ZHANG, "季度评审 (moved)")
    assert moved["id"] == event["id"]
    assert "线上" in moved["location"]
    assert moved["start"] == start
    assert moved["attendees"] == {LINA: "required", WANGFANG: "required", ROOM01: "resource"}
    [leave2] = side.events(LINA, "团建 offsite")
    assert leave2["id"] == leave["id"]
    assert leave2["dates"] == (later.isoformat(), (later + dt.timedelta(days=1)).isoformat())
    assert runner.counts(runner()) == {}  # nothing changed since

    oa_delete(oa, meeting)
    oa_delete(oa, day_off)
    assert runner.counts(runner()) == {"deleted": 2}
    assert side.events(ZHANG, "季度评审 (moved)") == []
    assert side.events(LINA, "团建 offsite") == []
    actions = sorted((r["schedule_id"], r["action"]) for r in reverse_logs(oa))
    assert actions == sorted(
        (sid, action) for sid in (meeting, day_off) for action in ("created", "updated", "deleted")
    )
    with oa.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.deleted_links)).scalar() == 0
    return {"meeting": event["id"], "day_off": leave["id"]}


EWS_MODES = [
    ("SendToAllAndSaveCopy", "MoveToDeletedItems", "SendOnlyToAll"),
    ("SendOnlyToAll", "SoftDelete", "SendToAllAndSaveCopy"),
    ("SendToNone", "HardDelete", "SendToNone"),
]
WHERE_DELETED = {
    "HardDelete": "gone",
    "SoftDelete": "recoverableitemsdeletions",
    "MoveToDeletedItems": "deleteditems",
}


@pytest.mark.parametrize(("invitation", "delete", "cancellation"), EWS_MODES)
def test_exchange_round_honours_the_configured_modes(
    exchange: ExchangeSide, oa: sa.Engine, invitation: str, delete: str, cancellation: str
):
    config = exchange.config(invitation, delete, cancellation)
    ids = run_round(exchange, ReverseRunner(oa, [config]), oa)
    records = [r for r in exchange.server.records if r.item_id == ids["meeting"]]
    by_op = {r.operation: r for r in records}
    assert [r.operation for r in records] == ["CreateItem", "UpdateItem", "DeleteItem"]
    assert all(r.impersonating == ZHANG and r.mailbox == ZHANG for r in records)
    attendees = {LINA, PARTNER, ROOM01}

    # create: who got an invitation, and whether the organiser kept a copy in Sent Items
    create = by_op["CreateItem"]
    assert create.modes["SendMeetingInvitations"] == invitation
    sends = invitation != "SendToNone"
    assert set(create.recipients("invitation")) == (attendees if sends else set())
    assert bool(create.saved_copy_ids) == invitation.endswith("SaveCopy")
    saved = [e["message_kind"] for e in exchange.server.folder(ZHANG, "sentitems")]
    kept = ["invitation", "invitation", "update", "cancellation"] * invitation.endswith("SaveCopy")

    # update: the same mode; kept attendees hear of the change, the added one is invited,
    # the dropped one cancelled (or nobody hears of anything)
    update = by_op["UpdateItem"]
    assert update.modes["SendMeetingInvitationsOrCancellations"] == invitation
    assert set(update.recipients("update")) == ({LINA, ROOM01} if sends else set())
    assert update.recipients("invitation") == ([WANGFANG] if sends else [])
    assert update.recipients("cancellation") == ([PARTNER] if sends else [])
    attendees = {LINA, WANGFANG, ROOM01}

    # delete: where the item went and whether the attendees' copies were cancelled
    delete_record = by_op["DeleteItem"]
    assert delete_record.modes["DeleteType"] == delete
    assert delete_record.modes["SendMeetingCancellations"] == cancellation
    assert delete_record.deleted_to == WHERE_DELETED[delete]
    kept += ["cancellation"] if cancellation.endswith("SaveCopy") else []
    assert sorted(saved) == sorted(kept)  # the organiser's Sent Items copies
    for folder in ("deleteditems", "recoverableitemsdeletions"):
        held = [e["subject"] for e in exchange.server.folder(ZHANG, folder)]
        assert held == (["季度评审 (moved)"] if WHERE_DELETED[delete] == folder else [])
    cancels = cancellation != "SendToNone"
    assert set(delete_record.recipients("cancellation")) == (attendees if cancels else set())
    lina_copy = exchange.events(LINA, "Canceled: 季度评审 (moved)") + exchange.events(
        LINA, "季度评审 (moved)"
    )
    if not sends:
        assert lina_copy == []  # never invited: no copy to cancel
    else:
        [copy] = lina_copy
        assert copy["cancelled"] is cancels
        assert copy["organizer"] == ZHANG
    # the all-day schedule has no attendees: no mail either way
    day_records = [r for r in exchange.server.records if r.item_id == ids["day_off"]]
    assert [r.operation for r in day_records] == ["CreateItem", "UpdateItem", "DeleteItem"]
    assert all(r.messages == [] for r in day_records)


@pytest.mark.parametrize("notify", [True, False], ids=["notify", "silent"])
def test_alimail_round_honours_the_notification_switch(
    alimail: AlimailSide, oa: sa.Engine, notify: bool
):
    config = alimail.config(send_notifications=notify)
    run_round(alimail, ReverseRunner(oa, [config]), oa)

    def each(*addresses: str) -> dict[str, int]:
        return dict.fromkeys(addresses, 1) if notify else {}

    assert alimail.notified("invitations_sent") == each(LINA, PARTNER, ROOM01)
    assert alimail.notified("updates_sent") == each(LINA, WANGFANG, ROOM01)
    # the dropped partner on the update, everyone left on the delete
    assert alimail.notified("cancellations_sent") == each(PARTNER, LINA, WANGFANG, ROOM01)


# --- a crash between the suite write and the link --------------------------------------


def test_crash_after_suite_write_never_duplicates(
    side: Any, oa: sa.Engine, monkeypatch: pytest.MonkeyPatch
):
    """Every OA commit of the first drain fails after its suite write (links, log, done):
    the retry finds the events by calsync's key instead of creating them again, for a meeting
    with attendees (so no second invitation either) and an all-day schedule alike; a crash
    after a delete retries the delete of an event already gone."""
    from calsync.sync.reverse import IntegrationDrain

    runner = ReverseRunner(oa, [side.config()])
    real = IntegrationDrain._record
    crash = {"on": True, "n": 0}

    def crash_after_write(self: Any, *args: Any) -> None:
        if crash["on"]:
            crash["n"] += 1
            raise sa.exc.OperationalError("UPDATE", {}, Exception("connection lost"))
        real(self, *args)

    monkeypatch.setattr(IntegrationDrain, "_record", crash_after_write)
    meeting, day_off, _ = make_meeting_and_day_off(oa)
    assert runner.counts(runner()) == {"retry": 2}
    # written, links not recorded
    [written] = side.events(ZHANG, "季度评审 Q4 review")
    [leave] = side.events(LINA, "团建 offsite")
    assert side.creates() == 2
    crash["on"] = False
    assert runner.counts(runner()) == {"created": 2}  # the retry finds them by their keys
    assert [e["id"] for e in side.events(ZHANG, "季度评审 Q4 review")] == [written["id"]]
    assert [e["id"] for e in side.events(LINA, "团建 offsite")] == [leave["id"]]
    assert side.creates() == 2  # no second create request, so no second invitation
    assert [d["status"] for d in deliveries(oa)] == ["done", "done"]
    with oa.connect() as conn:
        links = {(r.schedule_id, r.mailbox, r.suite_id) for r in conn.execute(sa.select(t.links))}
    assert links == {(meeting, ZHANG, written["id"]), (day_off, LINA, leave["id"])}
    logged = sorted((r["schedule_id"], r["action"]) for r in reverse_logs(oa))
    assert logged == [(meeting, "created"), (meeting, "failed"), (day_off, "created"),
                      (day_off, "failed")]  # fmt: skip

    # the linked event is updated in place afterwards, not created again
    oa_update(oa, meeting, title="季度评审 v2")
    assert runner.counts(runner()) == {"updated": 1}
    assert [e["id"] for e in side.events(ZHANG, "季度评审 v2")] == [written["id"]]

    # a crash after a delete: the retry deletes an event already gone, which is fine
    crash["on"] = True
    oa_delete(oa, meeting)
    assert runner.counts(runner()) == {"retry": 1}
    assert side.events(ZHANG, "季度评审 v2") == []
    crash["on"] = False
    assert runner.counts(runner()) == {"deleted": 1}
    assert {d["status"] for d in deliveries(oa)} == {"done"}
    side.check_deleted_once(written["id"])


def test_room_moved_then_released(side: Any, oa: sa.Engine):
    """A schedule moved to another mapped room swaps the resource attendee; released from
    its room it keeps the location text only (the room is no attendee any more)."""
    runner = ReverseRunner(oa, [side.config()])
    sid = oa_create(oa, "zhangwei", "站会 stand-up", tomorrow_at(9), attendees=("lina",),
                    room="会议室01", details="<p>每日 <b>站会</b></p>")  # fmt: skip
    assert runner.counts(runner()) == {"created": 1}
    [made] = side.events(ZHANG, "站会 stand-up")
    assert made["attendees"] == {LINA: "required", ROOM01: "resource"}
    assert "<b>站会</b>" in made["body"]

    room02 = "meeting02@contoso.com"
    set_room(oa, sid, "会议室02")
    assert runner.counts(runner()) == {"updated": 1}
    [moved] = side.events(ZHANG, "站会 stand-up")
    assert moved["id"] == made["id"]
    assert moved["attendees"] == {LINA: "required", room02: "resource"}
    assert "会议室02" in moved["location"] and "会议室01" not in moved["location"]

    set_room(oa, sid, None, location="线上 online")
    assert runner.counts(runner()) == {"updated": 1}
    [released] = side.events(ZHANG, "站会 stand-up")
    assert released["id"] == made["id"]
    assert released["attendees"] == {LINA: "required"}
    assert released["location"] == "线上 online"
    assert runner.counts(runner()) == {}


def set_room(oa: sa.Engine, schedule_id: int, room: str | None, location: str = "") -> None:
    """As the OA does it: the schedule's room and its room participant row change together."""
    from tests.integration.reverse_helpers import room_id

    rid = room_id(oa, room) if room else None
    p = t.participants
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with oa.begin() as conn:
        conn.execute(
            sa.update(t.schedules)
            .where(t.schedules.c.id == schedule_id)
            .values(room_id=rid, location=location, updated_at=now)
        )
        conn.execute(sa.delete(p).where(p.c.schedule_id == schedule_id, p.c.kind == "room"))
        if rid is not None:
            conn.execute(
                sa.insert(p).values(
                    schedule_id=schedule_id,
                    kind="room",
                    room_id=rid,
                    user_id=None,
                    email="",
                    name="",
                )
            )


def drain_or_fail(runner: ReverseRunner, timeout_s: float = 120) -> dict[str, Any]:
    """A drain that fails the test instead of hanging it (exchangelib's session pool could
    deadlock under busy answers: see exchange_transport.install_pool_fix)."""
    import threading

    out: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: out.append(runner()), daemon=True)
    worker.start()
    worker.join(timeout_s)
    assert out, f"the drain did not finish within {timeout_s:g}s"
    return out[0]


def test_throttled_suite_still_gets_each_change_once(side: Any, oa: sa.Engine):
    """Busy answers (EWS ErrorServerBusy / Alibaba 429) on a third of the requests: every
    schedule arrives exactly once, and the back-off the suite asked for is honoured."""
    runner = ReverseRunner(oa, [side.config()])
    logins = ["zhangwei", "lina", "wangfang", "liuyang", "chenjing", "zhao4"]
    ids = [
        oa_create(
            oa,
            logins[i % len(logins)],
            f"busy {i}",
            tomorrow_at(8 + i % 10),
            attendees=("lina",) if i % 2 else (),
        )
        for i in range(12)
    ]
    side.throttle(0.3)
    first = drain_or_fail(runner)
    side.throttle(0.0)
    created = runner.counts(first).get("created", 0)
    if runner.counts(first).get("retry"):  # a change whose retries ran out: the next drain
        created += runner.counts(drain_or_fail(runner)).get("created", 0)
    assert created == len(ids)
    assert side.creates() == len(ids)
    for i in range(len(ids)):
        mailbox = f"{logins[i % len(logins)]}@contoso.com".replace("zhao4@", "zhao4b@")
        assert len(side.events(mailbox, f"busy {i}")) == 1
    side.check_backoff()


def test_a_mailboxs_new_events_go_out_together(side: Any, oa: sa.Engine):
    """A drain's claim holds a creator's changes together: Exchange sends each mailbox's new
    events in one CreateItem, Alibaba Mail lists each mailbox's calendars once; every
    schedule still arrives exactly once, in its creator's calendar."""
    logins = ["zhangwei", "lina", "wangfang"]
    for i in range(12):  # first come: the creators in turn
        oa_create(oa, logins[i % 3], f"together {i}", tomorrow_at(8 + i % 10))
    summary = drain_or_fail(ReverseRunner(oa, [side.config()]))
    assert ReverseRunner.counts(ReverseRunner(oa, []), summary) == {"created": 12}
    for i in range(12):
        assert len(side.events(f"{logins[i % 3]}@contoso.com", f"together {i}")) == 1
    if side.kind == "exchange":
        assert side.server.stats.by_operation["CreateItem"] == 3  # one per mailbox
    else:
        assert side.server.stats.snapshot()["by_kind"]["calendars_list"] == 3


def test_alimail_calendars_are_listed_once_across_drains(alimail: Any, oa: sa.Engine):
    """A drain keeps the calendar ids it looked up: the next drain lists no calendar. An id
    that is gone by then (the calendar was replaced) is looked up again, the change still
    lands once, and the new id is kept; an id looked up too long ago is looked up again."""
    logins = ["zhangwei", "lina", "wangfang"]

    def listings() -> int:
        return alimail.server.stats.snapshot()["by_kind"].get("calendars_list", 0)

    def kept() -> dict[str, str]:
        with oa.connect() as conn:
            ci = t.calendar_ids
            return dict(conn.execute(sa.select(ci.c.mailbox, ci.c.calendar_id)).all())

    config = alimail.config()
    for i in range(6):
        oa_create(oa, logins[i % 3], f"first {i}", tomorrow_at(8 + i))
    drain_or_fail(ReverseRunner(oa, [config]))
    assert listings() == 3
    ids = {f"{login}@contoso.com": alimail.server.store.calendar_id(f"{login}@contoso.com")
           for login in logins}  # fmt: skip
    assert kept() == ids
    for i in range(3):
        oa_create(oa, logins[i], f"second {i}", tomorrow_at(15 + i))
    drain_or_fail(ReverseRunner(oa, [config]))
    assert listings() == 3  # none more
    with oa.begin() as conn:  # lina's calendar as an earlier run knew it is gone
        conn.execute(
            sa.update(t.calendar_ids)
            .where(t.calendar_ids.c.mailbox == "lina@contoso.com")
            .values(calendar_id="replaced-calendar")
        )
    oa_create(oa, "lina", "third", tomorrow_at(19))
    drain_or_fail(ReverseRunner(oa, [config]))
    assert listings() == 4
    assert len(alimail.events("lina@contoso.com", "third")) == 1
    assert kept() == ids
    with oa.begin() as conn:  # wang's id was looked up two days ago: looked up again
        conn.execute(
            sa.update(t.calendar_ids)
            .where(t.calendar_ids.c.mailbox == "wangfang@contoso.com")
            .values(updated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(2))
        )
    oa_create(oa, "wangfang", "fourth", tomorrow_at(20))
    oa_create(oa, "zhangwei", "fourth", tomorrow_at(20))
    drain_or_fail(ReverseRunner(oa, [config]))
    assert listings() == 5
    with oa.connect() as conn:
        ages = dict(
            conn.execute(sa.select(t.calendar_ids.c.mailbox, t.calendar_ids.c.updated_at)).all()
        )
    assert ages["wangfang@contoso.com"] > ages["zhangwei@contoso.com"]  # its age restarted
    for i in range(6):
        assert len(alimail.events(f"{logins[i % 3]}@contoso.com", f"first {i}")) == 1
