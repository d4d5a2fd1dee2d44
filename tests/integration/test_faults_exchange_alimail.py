"""Fault injection against the Exchange (EWS) and Alibaba Mail emulators (issue 7; Office
365's are in test_faults.py): a throttling storm (30% busy/429 + 5% 503) on forward and
reverse runs, the suite down for a whole run, the login failing mid-run (EWS: the service
account's password changed; Alibaba: every token revoked) and a page failing once. Each ends
in the state a calm run gives, with a clear sync-log record where something failed, no
request sent before the Retry-After / BackOffMilliseconds it was given, and a bounded time.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.config import IntegrationConfig, parse_integration
from calsync.oa import schema as t
from calsync.oa.db import engine_from_url
from calsync.oa.migrate import upgrade
from calsync.oa.seed import seed_demo
from tests.contract.conftest import ALIMAIL_CONN, EWS_CONN
from tests.integration.conftest import TODAY, ForwardRunner, people
from tests.integration.reverse_helpers import ReverseRunner, deliveries, oa_create
from tests.integration.test_faults import content, free_port, sync_log, when, written

ZONE = "Asia/Shanghai"
LOGINS = ("zhangwei", "lina", "wangfang", "liuyang", "chenjing", "zhao4")
MAILBOX = {login: f"{login}@contoso.com".replace("zhao4@", "zhao4b@") for login in LOGINS}
# Bounded budgets: a run facing a dead or always-throttling suite gives up in seconds.
EXECUTION = "execution: {concurrency: 4, retries: 0, max_attempts: 5, retry_backoff_s: 0}\n"


class Suite:
    """One suite's emulator seen through its knobs (a subclass per suite)."""

    kind: str
    conn_id: str
    execution = EXECUTION

    def __init__(self, server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.server = server
        self.monkeypatch = monkeypatch
        server.reset()
        self.connect()
        for email, name in people():
            self.add_mailbox(email, name)
        for i, login in enumerate(LOGINS):  # 4 events a mailbox, spread over the window
            for j in range(4):
                day = TODAY + dt.timedelta(days=(i + j) % 5 - 2)
                self.add_event(MAILBOX[login], f"{login} 会议 {j}", day, 9 + j)

    def connect(self, **extras: Any) -> None:
        conn = json.loads(self.server.airflow_conn_json())
        conn["extra"] = {**(conn.get("extra") or {}), **self.budget(), **extras}
        self.monkeypatch.setenv(f"AIRFLOW_CONN_{self.conn_id.upper()}", json.dumps(conn))

    def config(self, direction: str = "forward", endpoint: str | None = None) -> IntegrationConfig:
        text = (
            f"name: faults {self.kind}\ntype: {self.kind}\nconnection_id: {self.conn_id}\n"
            f"oa_connection_id: calsync_oa_test\ntimezone: {ZONE}\nwindow_days: 3\n"
            f"direction: {direction}\n" + self.execution + self.section(endpoint or self.endpoint)
        )
        return parse_integration(Path(f"faults_{self.kind}.yaml"), text)

    def dead_endpoint(self) -> str:
        return self.endpoint.replace(f":{self.server.port}", f":{free_port()}")

    def count(self, mailbox: str, subject: str) -> int:
        return sum(1 for e in self.server.store.events(mailbox) if e.get("subject") == subject)

    # per suite
    endpoint: str

    def budget(self) -> dict[str, Any]:
        raise NotImplementedError

    def section(self, endpoint: str) -> str:
        raise NotImplementedError

    def add_mailbox(self, email: str, name: str) -> None:
        raise NotImplementedError

    def add_event(self, mailbox: str, subject: str, day: dt.date, hour: int) -> None:
        raise NotImplementedError

    def storm(self, rate_throttle: float, rate_503: float) -> None:
        raise NotImplementedError

    def calm(self) -> None:
        self.server.faults.update(fail_next=[])
        self.storm(0.0, 0.0)

    def stats(self) -> dict[str, Any]:
        return dict(self.server.stats.snapshot())

    def violations(self) -> int:
        raise NotImplementedError

    def throttled(self) -> int:
        raise NotImplementedError


class ExchangeSuite(Suite):
    kind = "exchange"
    conn_id = EWS_CONN
    # One mailbox at a time: impersonation puts every mailbox under one login, which EWS
    # throttles as a whole, so concurrent requests on the wire when a busy answer goes out
    # would land in its window by no fault of the client (the emulator counts those apart
    # only as far as an in-process clock can tell). Sequential, the count must be 0;
    # test_reverse_suites.py covers throttled drains with concurrency.
    execution = EXECUTION.replace("concurrency: 4", "concurrency: 1")

    @property
    def endpoint(self) -> str:
        return str(self.server.service_endpoint)

    def budget(self) -> dict[str, Any]:
        return {"max_wait_s": 5, "total_wait_s": 8}

    def section(self, endpoint: str) -> str:
        return f"exchange: {{server: '{endpoint}'}}\n"

    def add_mailbox(self, email: str, name: str) -> None:
        self.server.store.add_mailbox(email, name)

    def add_event(self, mailbox: str, subject: str, day: dt.date, hour: int) -> None:
        self.server.store.add_event(
            mailbox,
            {
                "subject": subject,
                "start": f"{day}T{hour:02}:00:00",
                "end": f"{day}T{hour:02}:45:00",
                "timezone": "China Standard Time",
            },
            deliver=False,
        )

    def storm(self, rate_throttle: float, rate_503: float) -> None:
        # ErrorServerBusy asks for 300 ms; a 503 for its Retry-After (whole seconds in EWS)
        self.server.faults.update(
            rate_server_busy=rate_throttle, rate_503=rate_503, back_off_ms=300, retry_after_s=1
        )

    def violations(self) -> int:
        return int(self.stats()["backoff_violations"])

    def throttled(self) -> int:
        s = self.stats()
        return int(s["server_busy"]) + int(s["unavailable_503"])


class AlimailSuite(Suite):
    kind = "alimail_v2"
    conn_id = ALIMAIL_CONN

    @property
    def endpoint(self) -> str:
        return str(self.server.endpoint)

    def budget(self) -> dict[str, Any]:
        return {"max_retry_wait_s": 8, "max_attempts": 8}

    def section(self, endpoint: str) -> str:
        return f"alimail: {{endpoint: '{endpoint}'}}\n"

    def add_mailbox(self, email: str, name: str) -> None:
        self.server.store.add_mailbox(email)

    def add_event(self, mailbox: str, subject: str, day: dt.date, hour: int) -> None:
        self.server.store.add_event(
            mailbox,
            {
                "subject": subject,
                "start": {"dateTime": f"{day}T{hour:02}:00:00", "timeZone": ZONE},
                "end": {"dateTime": f"{day}T{hour:02}:45:00", "timeZone": ZONE},
            },
        )

    def storm(self, rate_throttle: float, rate_503: float) -> None:
        self.server.faults.update(
            rate_429=rate_throttle, rate_5xx=rate_503, status_5xx=503, retry_after_s=0.3
        )

    def violations(self) -> int:
        return int(self.stats()["retry_after_violations"])

    def throttled(self) -> int:
        s = self.stats()
        return int(s["throttled_429"]) + int(s["errors_5xx"])


@pytest.fixture(params=["exchange", "alimail_v2"])
def suite(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Suite]:
    if request.param == "exchange":
        from exchangelib.protocol import close_connections

        server = request.getfixturevalue("ews_server")
        yield ExchangeSuite(server, monkeypatch)
        close_connections()  # protocols are cached per endpoint with their retry policy
    else:
        server = request.getfixturevalue("alimail_server")
        yield AlimailSuite(server, monkeypatch)
    server.reset()


@pytest.fixture
def oa(sqlite_oa_engine: sa.Engine) -> sa.Engine:
    seed_demo(sqlite_oa_engine)
    return sqlite_oa_engine


@pytest.fixture
def reference(tmp_path: Path, suite: Suite) -> Callable[[], dict[str, Any]]:
    """What a calm forward run gives for the suite as it is now (a fresh SQLite OA)."""

    def calm() -> dict[str, Any]:
        engine = engine_from_url(f"sqlite:///{tmp_path / 'reference.db'}")
        try:
            upgrade(engine)
            seed_demo(engine)
            result = ForwardRunner(engine, suite.config())()
            assert not [r.error for r in result["results"].values() if r.error]
            return content(engine)
        finally:
            engine.dispose()

    return calm


def errors(result: dict[str, Any]) -> dict[str, str]:
    return {m: r.error for m, r in result["results"].items() if r.error}


# --- throttling storms ---------------------------------------------------------------------


def test_forward_storm_completes_as_a_calm_run(suite: Suite, oa: sa.Engine, reference):
    suite.connect(page_size=2)  # Alibaba: more requests to throttle
    expected = reference()
    suite.server.stats.reset()
    suite.storm(0.3, 0.05)
    started = time.monotonic()
    result = ForwardRunner(oa, suite.config())()
    elapsed = time.monotonic() - started
    suite.calm()
    assert errors(result) == {}
    assert suite.throttled() >= 3, suite.stats()  # the storm did hit the run
    assert suite.violations() == 0
    assert elapsed < 60, elapsed
    assert content(oa) == expected
    assert result["totals"]["created"] == len(expected["schedules"])


def test_reverse_storm_delivers_each_change_once(suite: Suite, oa: sa.Engine):
    runner = ReverseRunner(oa, [suite.config("reverse")])
    base = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    made = {}
    for i in range(12):
        login = LOGINS[i % len(LOGINS)]
        start = base + dt.timedelta(days=1, hours=i)
        made[f"storm {i}"] = login
        oa_create(oa, login, f"storm {i}", start, attendees=(LOGINS[(i + 1) % len(LOGINS)],))
    suite.server.stats.reset()
    suite.storm(0.5, 0.05)
    started = time.monotonic()
    for _ in range(6):  # a change whose attempts ran out waits for the next drain
        runner()
        if all(d["status"] == "done" for d in deliveries(oa)):
            break
    elapsed = time.monotonic() - started
    suite.calm()
    assert [d["status"] for d in deliveries(oa)] == ["done"] * 12
    assert suite.throttled() >= 5, suite.throttled()
    assert suite.violations() == 0, (
        suite.stats().get("violation_delays"),
        suite.stats().get("in_flight_refusals"),
    )
    assert elapsed < 90, elapsed
    for subject, login in made.items():
        assert suite.count(MAILBOX[login], subject) == 1, subject
    with oa.connect() as conn:
        linked = conn.execute(
            sa.select(t.links.c.schedule_id, sa.func.count()).group_by(t.links.c.schedule_id)
        ).all()
    assert len(linked) == 12 and {n for _, n in linked} == {1}  # linked once, no orphan


# --- the suite down for a whole run --------------------------------------------------------


@pytest.mark.parametrize("how", ["connection refused", "503 everywhere"])
def test_suite_down_fails_each_user_clearly_then_a_later_run_finishes(
    suite: Suite, oa: sa.Engine, reference, how: str
):
    expected = reference()
    suite.connect(max_retry_wait_s=2, total_wait_s=1)  # short budgets: a down suite fails fast
    if how == "connection refused":
        config = suite.config(endpoint=suite.dead_endpoint())
    else:
        config = suite.config()
        suite.storm(0.0, 1.0)
    started = time.monotonic()
    down = ForwardRunner(oa, config)()
    assert time.monotonic() - started < 60
    suite.calm()
    failed = errors(down)
    assert set(failed) == set(MAILBOX.values())
    assert all(r.retriable for r in down["results"].values())
    word = "unreachable" if how == "connection refused" else ("busy|503|throttl|unavailable")
    assert all(any(w in e.lower() for w in word.split("|")) for e in failed.values()), failed
    assert set(written(oa).values()) == {0}  # nothing half-written
    logged = [r for r in sync_log(oa) if r["action"] == "failed"]
    assert sorted(r["mailbox"] for r in logged) == sorted(failed)
    assert all(r["message"] == failed[r["mailbox"]] for r in logged)
    assert all(" at 0x" not in r["message"] for r in logged)

    time.sleep(1.0)  # the last Retry-After
    later = ForwardRunner(oa, suite.config())()
    assert errors(later) == {}
    assert content(oa) == expected


# --- the login failing mid-run -------------------------------------------------------------


def test_alimail_token_revoked_mid_run_is_transparent(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, oa: sa.Engine, tmp_path
):
    suite = AlimailSuite(request.getfixturevalue("alimail_server"), monkeypatch)
    expected = reference_of(suite, tmp_path)
    suite.server.stats.reset()
    suite.server.faults.update(latency_ms=60)
    done = when(lambda: suite.stats()["requests"] >= 4, suite.server.expire_tokens)
    result = ForwardRunner(oa, suite.config())()
    assert done.wait(10)
    suite.server.faults.update(latency_ms=0)
    assert errors(result) == {}
    stats = suite.stats()
    assert stats["unauthorized"] >= 1  # requests in flight did meet the revoked token
    assert stats["tokens_issued"] >= 2  # … and calsync signed in again
    assert content(oa) == expected


def test_exchange_password_changed_mid_run_fails_clearly_then_a_retry_finishes(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, oa: sa.Engine, tmp_path
):
    """EWS has no token: a 401 means the login itself is refused. The mailboxes read after
    the change fail alone with a message naming the account (never its password); the
    mailboxes read before are complete; once the password is right again, a retry of the
    failed users finishes the job."""
    from exchangelib.protocol import close_connections

    server = request.getfixturevalue("ews_server")
    suite = ExchangeSuite(server, monkeypatch)
    expected = reference_of(suite, tmp_path)
    close_connections()
    server.stats.reset()
    password = json.loads(server.airflow_conn_json())["password"]
    server.faults.update(latency_ms=60)
    done = when(
        lambda: suite.stats()["requests"] >= 6,
        lambda: server.set_password(server.service_login, "rotated-elsewhere", impersonate=True),
    )
    runner = ForwardRunner(oa, suite.config())
    try:
        first = runner()
        assert done.wait(10)
    finally:
        server.faults.update(latency_ms=0)
        server.set_password(server.service_login, password, impersonate=True)
    failed = errors(first)
    assert failed, "the password change hit no request: the test did not test anything"
    assert all("Exchange login refused" in e and server.service_login in e for e in failed.values())
    assert all(password not in e for e in failed.values())
    assert all(not first["results"][m].retriable for m in failed)  # retrying won't help
    logged = {r["mailbox"]: r["message"] for r in sync_log(oa) if r["action"] == "failed"}
    assert logged == failed
    with oa.connect() as conn:  # nothing of a failed mailbox applied
        assert not conn.execute(sa.select(t.links).where(t.links.c.mailbox.in_(failed))).first()
    close_connections()
    retry = runner(only=sorted(failed))
    assert errors(retry) == {}
    assert content(oa) == expected
    server.reset()
    close_connections()


def reference_of(suite: Suite, tmp_path: Path) -> dict[str, Any]:
    engine = engine_from_url(f"sqlite:///{tmp_path / 'reference.db'}")
    try:
        upgrade(engine)
        seed_demo(engine)
        result = ForwardRunner(engine, suite.config())()
        assert errors(result) == {}
        return content(engine)
    finally:
        engine.dispose()


# --- a page failing once --------------------------------------------------------------------


def crowd(suite: Suite, login: str = "zhao4", n: int = 12) -> None:
    for i in range(n):
        day = TODAY + dt.timedelta(days=i % 5 - 2)
        suite.add_event(MAILBOX[login], f"Filler {i}", day, 8 + i % 9)


FAIL_ONCE = {  # a later page (Alibaba: a cursor; EWS: the GetItem of the items found)
    "exchange": lambda status: ("GetItem", status),
    "alimail_v2": lambda status: {"path": "cursor=", "status": status},
}
# A failure that is no use retrying (Alibaba retries any 5xx; EWS's 500 is a SOAP fault)
HARD = {"exchange": 500, "alimail_v2": 400}


def test_a_page_answered_503_once_is_retried_within_the_run(suite: Suite, oa: sa.Engine, reference):
    crowd(suite)
    suite.connect(page_size=5)  # Alibaba: pages of five (EWS reads items in one GetItem)
    expected = reference()
    suite.server.stats.reset()
    suite.server.faults.update(fail_next=[FAIL_ONCE[suite.kind](503)] * 2, retry_after_s=1)
    result = ForwardRunner(oa, suite.config())()
    assert suite.server.faults.fail_next == []  # both did fail once
    assert errors(result) == {}
    assert suite.violations() == 0
    assert content(oa) == expected


def test_a_page_failing_hard_fails_its_mailbox_alone_then_a_rerun_finishes(
    suite: Suite, oa: sa.Engine, reference
):
    crowd(suite)
    suite.connect(page_size=5)
    expected = reference()
    suite.server.faults.update(fail_next=[FAIL_ONCE[suite.kind](HARD[suite.kind])])
    runner = ForwardRunner(
        oa,
        suite.config(),
    )
    first = runner(only=[MAILBOX["zhao4"]])
    assert suite.server.faults.fail_next == []
    failed = errors(first)
    assert list(failed) == [MAILBOX["zhao4"]]
    logged = [(r["mailbox"], r["message"]) for r in sync_log(oa) if r["action"] == "failed"]
    assert logged == [(MAILBOX["zhao4"], failed[MAILBOX["zhao4"]])]
    assert set(written(oa).values()) == {0}  # nothing of the failed mailbox applied
    rerun = runner()
    assert errors(rerun) == {}
    assert content(oa) == expected
    assert set(runner()["totals"]) <= {"unchanged", "skipped"}
