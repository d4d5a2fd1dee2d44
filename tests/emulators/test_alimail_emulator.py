"""The Alibaba Mail emulator over real HTTPS with plain ``requests``: token endpoint, auth,
calendars, the event view (window, paging, all-day, series), writes and notifications,
faults and throttling, the control API and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from calsync.connectors import alimail_wire as wire
from emulators.alimail import AlimailEmulator, FailSpec
from emulators.alimail.store import DEFAULT_CALENDAR, OTHER_CALENDAR

pytest_plugins = ["emulators.alimail.testing"]

ROOT = Path(__file__).resolve().parents[2]
A, B, C = "alice@example.com", "bob@example.com", "carol@example.com"


def timed(subject: str, start: str, end: str, zone: str = "Asia/Shanghai", **more: Any) -> dict:
    return {
        "subject": subject,
        "start": {"dateTime": start, "timeZone": zone},
        "end": {"dateTime": end, "timeZone": zone},
        **more,
    }


class Client:
    """requests against the emulator, trusting its CA, with a token fetched on first use."""

    def __init__(self, emu: AlimailEmulator) -> None:
        self.emu = emu
        self.http = requests.Session()
        self.secret = emu.apps.apps[emu.app_id]
        self._token: str | None = None

    def token_response(self, **form: str) -> requests.Response:
        data = {
            "grant_type": "client_credentials",
            "client_id": self.emu.app_id,
            "client_secret": self.secret,
            **form,
        }
        return self.http.post(
            self.emu.endpoint + wire.TOKEN_PATH, data=data, verify=str(self.emu.ca_file)
        )

    @property
    def token(self) -> str:
        if self._token is None:
            response = self.token_response()
            assert response.status_code == 200, response.text
            self._token = response.json()["access_token"]
        return self._token

    def call(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"bearer {self.token}"} if auth else {}
        return self.http.request(
            method, self.emu.endpoint + path, headers=headers, verify=str(self.emu.ca_file), **kw
        )

    def control(self, method: str, action: str, **kw: Any) -> requests.Response:
        url = f"{self.emu.endpoint}/_emulator/{action}"
        return self.http.request(method, url, verify=str(self.emu.ca_file), **kw)

    def calendar(self, user: str, name: str = DEFAULT_CALENDAR) -> str:
        return self.emu.store.calendar_id(user, name)

    def view(self, user: str, start: str, end: str, calendar: str | None = None, **q: str):
        cal = calendar or self.calendar(user)
        path = f"/v2/users/{user}/calendars/{cal}/eventsview"
        events, pages, cursor = [], 0, ""
        while True:
            query = {"startTime": start, "endTime": end, **q}
            if cursor:
                query["cursor"] = cursor
            response = self.call("GET", path, params=query)
            assert response.status_code == 200, response.text
            body = response.json()
            events.extend(body["events"])
            pages += 1
            assert pages < 50
            if not body["hasMore"]:
                assert body["nextCursor"] == ""
                return events, pages
            cursor = body["nextCursor"]


@pytest.fixture
def client(alimail: AlimailEmulator) -> Client:
    return Client(alimail)


# --- token and auth ----------------------------------------------------------------------


def test_token_endpoint(client: Client, alimail: AlimailEmulator) -> None:
    good = client.token_response()
    assert good.status_code == 200
    body = good.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 7200
    bad = client.token_response(client_secret="wrong-secret-123")
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    assert "wrong-secret-123" not in bad.text and client.secret not in bad.text
    assert client.token_response(grant_type="password").status_code == 400
    assert client.token_response(client_id="other-app").status_code == 401
    assert alimail.stats["tokens_issued"] == 1 and alimail.stats["token_refusals"] == 3


def test_short_token_lifetime_and_expiry(client: Client, alimail: AlimailEmulator) -> None:
    alimail.token_lifetime_s = 0.3
    assert client.token_response().json()["expires_in"] == 0.3
    path = f"/v2/users/{A}/calendars"
    assert client.call("GET", path).status_code == 200
    time.sleep(0.35)
    expired = client.call("GET", path)
    assert expired.status_code == 401
    assert expired.json()["code"] == wire.CODE_INVALID_TOKEN
    assert "expired" in expired.json()["message"]


def test_api_needs_a_valid_bearer(client: Client, alimail: AlimailEmulator) -> None:
    path = f"/v2/users/{A}/calendars"
    missing = client.call("GET", path, auth=False)
    assert missing.status_code == 401 and set(missing.json()) == {"code", "message", "requestId"}
    assert client.call("GET", path).status_code == 200
    alimail.expire_tokens()
    assert client.call("GET", path).status_code == 401
    assert alimail.stats["unauthorized"] == 2


# --- calendars ---------------------------------------------------------------------------


def test_calendars_per_user(client: Client, alimail: AlimailEmulator) -> None:
    body = client.call("GET", f"/v2/users/{A}/calendars").json()
    names = {c["name"]: c for c in body["calendars"]}
    assert set(names) == {DEFAULT_CALENDAR, OTHER_CALENDAR}
    assert names[DEFAULT_CALENDAR]["isDefault"] is True
    assert names[OTHER_CALENDAR]["isDefault"] is False
    alimail.store.add_calendar(A, "Team")
    assert len(client.call("GET", f"/v2/users/{A}/calendars").json()["calendars"]) == 3
    unknown = client.call("GET", "/v2/users/nobody%40example.com/calendars")
    assert unknown.status_code == 404 and unknown.json()["code"] == wire.CODE_USER_NOT_FOUND
    # The address may be sent percent-encoded or not, in any case.
    assert client.call("GET", "/v2/users/ALICE%40example.com/calendars").status_code == 200


# --- the view ----------------------------------------------------------------------------


def test_view_pages_without_duplicates_or_gaps(client: Client, alimail: AlimailEmulator) -> None:
    for i in range(25):
        day = dt.date(2026, 12, 1) + dt.timedelta(days=i % 5)
        alimail.store.add_event(A, timed(f"e{i:02}", f"{day}T09:00:00", f"{day}T10:00:00"))
    events, pages = client.view(A, "2026-11-30T16:00:00Z", "2026-12-06T16:00:00Z")
    assert pages == 3  # page size 10
    assert sorted(e["subject"] for e in events) == [f"e{i:02}" for i in range(25)]
    assert len({e["id"] for e in events}) == 25
    small, pages = client.view(A, "2026-11-30T16:00:00Z", "2026-12-06T16:00:00Z", size="4")
    assert pages == 7 and len(small) == 25


def test_view_is_stable_under_changes_between_pages(
    client: Client, alimail: AlimailEmulator
) -> None:
    made = [
        alimail.store.add_event(
            A, timed(f"e{i:02}", f"2026-12-01T{8 + i:02}:00:00", f"2026-12-01T{8 + i:02}:30:00")
        )
        for i in range(12)
    ]
    cal = client.calendar(A)
    path = f"/v2/users/{A}/calendars/{cal}/eventsview"
    window = {"startTime": "2026-12-01T00:00:00+08:00", "endTime": "2026-12-02T00:00:00+08:00"}
    first = client.call("GET", path, params=window).json()
    # Between pages: an early event is deleted and one is added before the cursor.
    alimail.store.delete_event(A, made[0]["id"])
    alimail.store.add_event(A, timed("early", "2026-12-01T07:00:00", "2026-12-01T07:30:00"))
    second = client.call("GET", path, params={**window, "cursor": first["nextCursor"]}).json()
    subjects = [e["subject"] for e in first["events"] + second["events"]]
    assert subjects == [f"e{i:02}" for i in range(12)]  # unchanged events: once each
    other = client.call(
        "GET",
        path,
        params={
            "startTime": "2026-12-01T00:00:00Z",
            "endTime": "2026-12-03T00:00:00Z",
            "cursor": first["nextCursor"],
        },
    )
    assert other.status_code == 400 and other.json()["code"] == wire.CODE_INVALID_PARAMETER


def test_view_window_all_day_and_zones(client: Client, alimail: AlimailEmulator) -> None:
    store = alimail.store
    store.add_event(A, timed("inside", "2026-12-02T09:00:00", "2026-12-02T10:00:00"))
    store.add_event(A, timed("ends at start", "2026-12-01T23:00:00", "2026-12-02T00:00:00"))
    store.add_event(
        A, timed("berlin", "2026-12-02T08:00:00", "2026-12-02T09:00:00", "Europe/Berlin")
    )
    store.add_event(
        A,
        timed("windows zone", "2026-12-02T11:00:00", "2026-12-02T12:00:00", "China Standard Time"),
    )
    store.add_event(
        A,
        {
            "subject": "day",
            "isAllDay": True,
            "start": {"date": "2026-12-02"},
            "end": {"date": "2026-12-03"},
        },
    )
    store.add_event(
        A,
        {
            "subject": "day before",
            "isAllDay": True,
            "start": {"date": "2026-12-01"},
            "end": {"date": "2026-12-02"},
        },
    )
    store.add_event(
        A,
        timed("other folder", "2026-12-02T09:00:00", "2026-12-02T10:00:00"),
        calendar=OTHER_CALENDAR,
    )
    events, _ = client.view(A, "2026-12-02T00:00:00+08:00", "2026-12-03T00:00:00+08:00")
    by_subject = {e["subject"]: e for e in events}
    assert set(by_subject) == {"inside", "berlin", "windows zone", "day"}
    assert by_subject["berlin"]["start"] == {
        "dateTime": "2026-12-02T08:00:00",
        "timeZone": "Europe/Berlin",
    }
    other, _ = client.view(
        A,
        "2026-12-02T00:00:00+08:00",
        "2026-12-03T00:00:00+08:00",
        calendar=client.calendar(A, OTHER_CALENDAR),
    )
    assert [e["subject"] for e in other] == ["other folder"]


def test_view_expands_series_with_stable_ids(client: Client, alimail: AlimailEmulator) -> None:
    master = alimail.store.add_event(
        A,
        timed(
            "weekly",
            "2026-12-01T09:00:00",
            "2026-12-01T10:00:00",
            "Europe/Berlin",
            recurrence={
                "pattern": {"type": "weekly", "daysOfWeek": ["tuesday", "thursday"]},
                "range": {"type": "endDate", "endDate": "2026-12-17"},
            },
        ),
    )
    events, _ = client.view(A, "2026-11-30T00:00:00Z", "2027-01-01T00:00:00Z")
    assert [e["start"]["dateTime"][:10] for e in events] == [
        "2026-12-01",
        "2026-12-03",
        "2026-12-08",
        "2026-12-10",
        "2026-12-15",
        "2026-12-17",
    ]
    assert {e["seriesMasterId"] for e in events} == {master["id"]}
    assert all(e["type"] == "occurrence" for e in events)
    assert events[0]["originalStart"] == "2026-12-01T08:00:00Z"
    cal = client.calendar(A)
    one = client.call("GET", f"/v2/users/{A}/calendars/{cal}/events/{events[2]['id']}")
    assert one.status_code == 200 and one.json()["event"]["start"] == events[2]["start"]
    gone = client.call("DELETE", f"/v2/users/{A}/calendars/{cal}/events/{events[2]['id']}")
    assert gone.status_code == 204
    again, _ = client.view(A, "2026-11-30T00:00:00Z", "2027-01-01T00:00:00Z")
    assert [e["id"] for e in again] == [e["id"] for e in events if e["id"] != events[2]["id"]]
    # a deleted occurrence is a change of the series: a new change key and modification time
    series = client.call("GET", f"/v2/users/{A}/calendars/{cal}/events/{master['id']}")
    after = series.json()["event"]
    assert after[wire.EV_CHANGE_KEY[0]] != master[wire.EV_CHANGE_KEY[0]]
    assert after[wire.EV_LAST_MODIFIED[0]] > master[wire.EV_LAST_MODIFIED[0]]
    assert {e[wire.EV_CHANGE_KEY[0]] for e in again} == {after[wire.EV_CHANGE_KEY[0]]}


def test_patching_one_occurrence_makes_it_an_exception(
    client: Client, alimail: AlimailEmulator
) -> None:
    master = alimail.store.add_event(
        A,
        timed(
            "daily",
            "2026-12-01T09:00:00",
            "2026-12-01T10:00:00",
            "Europe/Berlin",
            recurrence={"pattern": {"type": "daily"}, "range": {"type": "numbered",
                        "numberOfOccurrences": 3}},
        ),
    )  # fmt: skip
    cal = client.calendar(A)
    moved = f"{master['id']}_20261202"
    patch = {
        "subject": "daily (moved)",
        "start": {"dateTime": "2026-12-02T15:00:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": "2026-12-02T16:00:00", "timeZone": "Europe/Berlin"},
    }
    path = f"/v2/users/{A}/calendars/{cal}/events/{moved}"
    answer = client.call("PATCH", path, json={"event": patch})
    assert answer.status_code == 200, answer.text
    events, _ = client.view(A, "2026-11-30T00:00:00Z", "2026-12-31T00:00:00Z")
    by_id = {e["id"]: e for e in events}
    assert len(events) == 3
    exception = by_id[moved]
    assert (exception["type"], exception["subject"]) == ("exception", "daily (moved)")
    assert exception["start"]["dateTime"].startswith("2026-12-02T15:00")
    assert exception["originalStart"] == "2026-12-02T08:00:00Z"  # still its original slot
    assert exception["seriesMasterId"] == master["id"]
    others = [e for e in events if e["id"] != moved]
    assert {(e["type"], e["subject"]) for e in others} == {("occurrence", "daily")}
    assert client.call("GET", path).json()["event"]["subject"] == "daily (moved)"
    # times that make no sense are refused and change nothing
    bad = {"end": {"dateTime": "2026-12-02T08:00:00", "timeZone": "Europe/Berlin"}}
    assert client.call("PATCH", path, json={"event": bad}).status_code == 400
    assert client.call("GET", path).json()["event"]["end"] == exception["end"]
    # a cancelled occurrence cannot be patched
    gone = f"{master['id']}_20261203"
    assert client.call("DELETE", f"/v2/users/{A}/calendars/{cal}/events/{gone}").status_code == 204
    assert client.call("PATCH", f"/v2/users/{A}/calendars/{cal}/events/{gone}",
                       json={"event": {"subject": "x"}}).status_code == 404  # fmt: skip


def test_view_parameters_are_checked(client: Client) -> None:
    cal = client.calendar(A)
    path = f"/v2/users/{A}/calendars/{cal}/eventsview"
    assert client.call("GET", path).status_code == 400
    assert client.call("GET", path, params={"startTime": "x", "endTime": "y"}).status_code == 400
    bad = client.call(
        "GET",
        f"/v2/users/{A}/calendars/nope/eventsview",
        params={"startTime": "2026-12-01T00:00:00Z", "endTime": "2026-12-02T00:00:00Z"},
    )
    assert bad.status_code == 404 and bad.json()["code"] == wire.CODE_CALENDAR_NOT_FOUND


# --- writes and notifications ----------------------------------------------------------------


def test_create_get_update_delete_with_notifications(
    client: Client, alimail: AlimailEmulator
) -> None:
    cal = client.calendar(A)
    base = f"/v2/users/{A}/calendars/{cal}/events"
    body = timed(
        "Review",
        "2026-12-01T09:00:00",
        "2026-12-01T10:00:00",
        attendees=[{"email": B, "name": "Bob"}, {"email": C}, {"email": A}],
        someFutureField={"kept": True},
    )
    created = client.call("POST", base, params={"sendNotification": "true"}, json={"event": body})
    assert created.status_code == 200
    event = created.json()["event"]
    assert event["calendarId"] == cal and event["organizer"]["email"] == A
    assert event["someFutureField"] == {"kept": True}  # unknown fields are kept
    assert alimail.stats["invitations_sent"] == {B: 1, C: 1}  # never the organiser
    fetched = client.call("GET", f"{base}/{event['id']}").json()["event"]
    assert fetched == event
    patched = client.call(
        "PATCH",
        f"{base}/{event['id']}",
        params={"sendNotification": "true"},
        json={"event": {"subject": "Review 2", "attendees": [{"email": B}]}},
    )
    assert patched.status_code == 200 and patched.json()["event"]["subject"] == "Review 2"
    assert patched.json()["event"]["changeKey"] != event["changeKey"]
    assert alimail.stats["updates_sent"] == {B: 1}
    assert alimail.stats["cancellations_sent"] == {C: 1}  # dropped from the meeting
    assert client.call("DELETE", f"{base}/{event['id']}").status_code == 204  # switch off
    assert alimail.stats["cancellations_sent"] == {C: 1}
    missing = client.call("DELETE", f"{base}/{event['id']}")
    assert missing.status_code == 404 and missing.json()["code"] == wire.CODE_EVENT_NOT_FOUND
    assert alimail.stats["notifications"] == {B: 2, C: 2}


def test_writes_are_validated(client: Client) -> None:
    base = f"/v2/users/{A}/calendars/{client.calendar(A)}/events"
    assert client.call("POST", base, json={"event": {"subject": "no times"}}).status_code == 400
    backwards = timed("x", "2026-12-01T10:00:00", "2026-12-01T09:00:00")
    assert client.call("POST", base, json={"event": backwards}).status_code == 400
    zone = timed("x", "2026-12-01T09:00:00", "2026-12-01T10:00:00", "Mars/Olympus")
    assert client.call("POST", base, json=zone).status_code == 400
    assert client.call("POST", base, data=b"not json").status_code == 400
    assert client.call("PUT", base).status_code == 405


# --- faults ------------------------------------------------------------------------------------


def test_fail_next_before_and_after(client: Client, alimail: AlimailEmulator) -> None:
    base = f"/v2/users/{A}/calendars/{client.calendar(A)}/events"
    body = {"event": timed("x", "2026-12-01T09:00:00", "2026-12-01T10:00:00")}
    alimail.faults.fail_next = [FailSpec("/events", 503)]
    refused = client.call("POST", base, json=body)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert alimail.store.events(A) == []
    alimail.faults.retry_after_s = 0.01
    time.sleep(1.05)
    alimail.faults.update(fail_next=[{"path": "/events", "status": 502, "after": True}])
    ambiguous = client.call("POST", base, json=body)
    assert ambiguous.status_code == 502 and "Retry-After" not in ambiguous.headers
    assert len(alimail.store.events(A)) == 1  # done, though the answer said otherwise


def test_random_throttling_and_retry_after_violations(
    client: Client, alimail: AlimailEmulator
) -> None:
    path = f"/v2/users/{A}/calendars"
    alimail.faults.update(rate_429=1.0, retry_after_s=0.3)
    first = client.call("GET", path)
    assert first.status_code == 429 and first.headers["Retry-After"] == "0.3"
    early = client.call("GET", path)  # before Retry-After elapsed
    assert early.status_code == 429
    assert alimail.stats["retry_after_violations"] == 1
    alimail.faults.rate_429 = 0.0
    assert client.call("GET", f"/v2/users/{B}/calendars").status_code == 200  # other mailbox
    time.sleep(0.35)
    assert client.call("GET", path).status_code == 200
    alimail.faults.update(rate_5xx=1.0, status_5xx=500, retry_after_s=None)
    failed = client.call("GET", f"/v2/users/{C}/calendars")
    assert failed.status_code == 500 and "Retry-After" not in failed.headers
    assert alimail.stats["errors_5xx"] == 1 and alimail.stats["throttled_429"] == 2


def test_per_tenant_concurrency_cap(client: Client, alimail: AlimailEmulator) -> None:
    alimail.faults.update(per_tenant_concurrency=2, latency_ms=300, retry_after_s=1)
    client.token  # noqa: B018 - fetched once, before the threads
    statuses: list[int] = []

    def one(user: str) -> None:
        statuses.append(client.call("GET", f"/v2/users/{user}/calendars").status_code)

    threads = [threading.Thread(target=one, args=(u,)) for u in (A, B, C, A, B)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses).count(200) >= 2 and 429 in statuses
    assert alimail.stats["max_concurrency_seen"]["calsync-app"] == 3  # the refused one counted


def test_latency(client: Client, alimail: AlimailEmulator) -> None:
    client.token  # noqa: B018
    alimail.faults.latency_ms = 150
    started = time.monotonic()
    assert client.call("GET", f"/v2/users/{A}/calendars").status_code == 200
    assert time.monotonic() - started >= 0.15


# --- control API, seed, CLI ------------------------------------------------------------------


def test_control_api_and_seed(client: Client, alimail: AlimailEmulator) -> None:
    seed = {
        "mailboxes": {
            "dave@example.com": {
                "displayName": "Dave",
                "calendars": ["Team"],
                "events": [
                    timed("seeded", "2026-12-01T09:00:00", "2026-12-01T10:00:00"),
                    {
                        **timed("team", "2026-12-01T11:00:00", "2026-12-01T12:00:00"),
                        "calendar": "Team",
                    },
                ],
            }
        }
    }
    loaded = client.control("POST", "seed", json=seed).json()
    assert loaded == {"mailboxes": 1, "events": 2}
    assert len(alimail.store.events("dave@example.com", "Team")) == 1
    listed = client.control("GET", "events", params={"mailbox": "dave@example.com"}).json()
    assert {e["subject"] for e in listed["events"]} == {"seeded", "team"}
    assert client.control("POST", "faults", json={"rate_429": 0.5}).json()["rate_429"] == 0.5
    assert client.control("POST", "faults", json={"nope": 1}).status_code == 400
    assert client.control("GET", "stats").json()["notifications"] == {}
    assert client.control("POST", "reset").status_code == 204
    assert alimail.faults.rate_429 == 0 and alimail.store.mailboxes() == []


def test_cli_prints_state_and_stops_on_sigterm(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "mailboxes": {
                    A: {
                        "events": [timed("from seed", "2026-12-01T09:00:00", "2026-12-01T10:00:00")]
                    }
                }
            }
        )
    )
    state_file = tmp_path / "state.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulators.alimail",
            "--port",
            "0",
            "--tls-dir",
            str(tmp_path / "tls"),
            "--seed",
            str(seed),
            "--state-file",
            str(state_file),
            "--token-lifetime",
            "60",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        state = json.loads(line)
        assert json.loads(state_file.read_text()) == state
        conn = json.loads(state["airflow_conn_json"])
        assert conn["login"] == state["app_id"] and conn["extra"]["verify"] == state["ca_file"]
        token = requests.post(
            state["endpoint"] + wire.TOKEN_PATH,
            data={
                "grant_type": "client_credentials",
                "client_id": conn["login"],
                "client_secret": conn["password"],
            },
            verify=state["ca_file"],
            timeout=10,
        ).json()
        assert token["expires_in"] == 60
        stats = requests.get(
            state["endpoint"] + "/_emulator/events",
            params={"mailbox": A},
            verify=state["ca_file"],
            timeout=10,
        ).json()
        assert [e["subject"] for e in stats["events"]] == ["from seed"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert not state_file.exists()


def test_move_between_calendars_gives_a_new_id_and_keeps_uid_and_body(
    client: Client, alimail: AlimailEmulator
) -> None:
    """E11: a move to another calendar (or within one) re-issues the event id; the UID and the
    body (where calsync's marker lives) stay, and the default calendar's view follows."""
    made = alimail.store.add_event(
        A,
        timed("Moved", "2026-12-01T09:00:00", "2026-12-01T10:00:00", body="x [calsync:k]"),
    )
    span = ("2026-11-30T00:00:00Z", "2026-12-03T00:00:00Z")
    away = alimail.store.move_event(A, made["id"], OTHER_CALENDAR)
    assert away != made["id"]
    assert client.view(A, *span)[0] == []
    [there] = client.view(A, *span, calendar=client.calendar(A, OTHER_CALENDAR))[0]
    assert there["id"] == away
    back = alimail.store.move_event(A, away)
    [event] = client.view(A, *span)[0]
    assert event["id"] == back and back not in (away, made["id"])
    uid = wire.EV_UID[0]
    assert event[uid] == made[uid] and event["subject"] == "Moved"
    assert "[calsync:k]" in str(alimail.store.events(A)[0])
