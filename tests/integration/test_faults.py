"""Fault injection against the Graph emulator (issue 7): the suite down for a whole run, the OA
database restarted mid-run (a private PostgreSQL, never the shared one), token expiry mid-run,
paging links that fail once, and a reverse throttling storm. Each ends in the state a calm run
gives, with a clear sync-log record where something failed, and each is bounded in time.

(The crash trials are in ``test_crash_trials.py``; the forward throttling storm is in
``test_forward_sync.py``.)"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from calsync.oa.db import engine_from_url
from calsync.oa.migrate import upgrade
from calsync.oa.seed import seed_demo
from tests.integration.conftest import GRAPH_CONN, ForwardRunner
from tests.integration.reverse_helpers import ReverseRunner, deliveries, oa_create
from tests.integration.test_reverse_sync import reverse_config

CREATORS = ("zhangwei", "lina", "wangfang", "liuyang", "chenjing", "zhao4")
MAILBOX = {
    "zhangwei": "zhangwei@contoso.com",
    "lina": "lina@contoso.com",
    "wangfang": "wangfang@contoso.com",
    "liuyang": "liuyang@contoso.com",
    "chenjing": "chenjing@contoso.com",
    "zhao4": "zhao4b@contoso.com",
}
PG_BIN = Path("/usr/lib/postgresql/15/bin")


# --- helpers -----------------------------------------------------------------------------------


def content(engine: sa.Engine) -> dict[str, Any]:
    """What a forward run decides, without ids or timestamps: comparable across databases."""
    s, lk = t.schedules, t.links
    with engine.connect() as conn:
        schedules = sorted(
            (r.title, str(r.start_utc), str(r.start_date), str(r.end_utc), str(r.end_date))
            for r in conn.execute(sa.select(s))
        )
        links = sorted(
            (r.mailbox, r.title)
            for r in conn.execute(
                sa.select(lk.c.mailbox, s.c.title).join(s, s.c.id == lk.c.schedule_id)
            )
        )
        meetings = conn.execute(sa.select(sa.func.count()).select_from(t.meetings)).scalar()
    return {"schedules": schedules, "links": links, "meetings": meetings}


def written(engine: sa.Engine) -> dict[str, int]:
    """Row counts of everything a forward run writes besides the sync log."""
    with engine.connect() as conn:
        return {
            name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
            for name, table in (
                ("schedules", t.schedules),
                ("participants", t.participants),
                ("links", t.links),
                ("meetings", t.meetings),
                ("sync_state", t.sync_state),
            )
        }


def sync_log(engine: sa.Engine, run_id: str | None = None) -> list[dict[str, Any]]:
    q = sa.select(t.sync_log).order_by(t.sync_log.c.id)
    if run_id is not None:
        q = q.where(t.sync_log.c.run_id == run_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


@pytest.fixture
def reference(tmp_path: Path, config: Any) -> Callable[[], dict[str, Any]]:
    """The content a calm forward run gives for the emulator as it is now (a fresh SQLite OA)."""

    def calm() -> dict[str, Any]:
        engine = engine_from_url(f"sqlite:///{tmp_path / 'reference.db'}")
        try:
            upgrade(engine)
            seed_demo(engine)
            result = ForwardRunner(engine, config)()
            assert not [r.error for r in result["results"].values() if r.error]
            return content(engine)
        finally:
            engine.dispose()

    return calm


@pytest.fixture
def sqlite_forward(sqlite_oa_engine: sa.Engine, config: Any, graph: Any) -> ForwardRunner:
    """Suite faults do not depend on the OA database: SQLite keeps these fast."""
    seed_demo(sqlite_oa_engine)
    return ForwardRunner(sqlite_oa_engine, config)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def down_connection(graph: Any) -> str:
    """The emulator's connection with its port swapped for one nobody listens on."""
    conn = json.loads(graph.airflow_conn_json())
    port, dead = f":{graph.port}", f":{free_port()}"
    conn["extra"] = {
        k: v.replace(port, dead) if isinstance(v, str) else v for k, v in conn["extra"].items()
    }
    return json.dumps(conn)


def when(predicate: Callable[[], bool], action: Callable[[], None], limit: float = 30) -> Any:
    """Run ``action`` in a thread as soon as ``predicate`` holds (polled every 10 ms)."""
    done = threading.Event()

    def watch() -> None:
        end = time.monotonic() + limit
        while time.monotonic() < end and not predicate():
            time.sleep(0.01)
        action()
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    return done


def requests_seen(graph: Any, n: int) -> Callable[[], bool]:
    return lambda: graph.stats.snapshot()["requests"] >= n


def suite_copies(graph: Any, integration: str, schedule_ids: list[int]) -> dict[int, int]:
    """How many events in all mailboxes carry each schedule's calsync key (as organiser)."""
    found = dict.fromkeys(schedule_ids, 0)
    for mailbox in graph.store.mailboxes():
        for event in graph.store.events(mailbox):
            for prop in event.get("singleValueExtendedProperties") or []:
                value = str(prop.get("value", ""))
                prefix = f"calsync:{integration}:"
                if value.startswith(prefix) and int(value[len(prefix) :]) in found:
                    found[int(value[len(prefix) :])] += 1
    return found


def make_schedules(engine: sa.Engine, n: int, title: str) -> list[int]:
    base = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
    return [
        oa_create(
            engine,
            CREATORS[i % len(CREATORS)],
            f"{title} {i}",
            base + dt.timedelta(hours=i),
            attendees=(CREATORS[(i + 1) % len(CREATORS)],),
        )
        for i in range(n)
    ]


def assert_delivered_once(engine: sa.Engine, graph: Any, integration: str, ids: list[int]) -> None:
    assert suite_copies(graph, integration, ids) == dict.fromkeys(ids, 1)
    with engine.connect() as conn:
        links = conn.execute(
            sa.select(t.links.c.schedule_id, sa.func.count())
            .where(t.links.c.integration_id == integration, t.links.c.schedule_id.in_(ids))
            .group_by(t.links.c.schedule_id)
        ).all()
    assert dict(links) == dict.fromkeys(ids, 1)  # linked once, no orphan
    assert {d["status"] for d in deliveries(engine)} == {"done"}


def drain_until_done(runner: ReverseRunner, limit: int = 12, pause: float = 0.0) -> list[Any]:
    summaries = []
    for _ in range(limit):
        summary = runner()
        summaries.append(summary)
        due = [d for d in deliveries(runner.engine) if d["status"] != "done"]
        if not due:
            return summaries
        time.sleep(pause)
    raise AssertionError(f"deliveries not done after {limit} drains: {deliveries(runner.engine)}")


# --- the suite down for a whole run -------------------------------------------------------


@pytest.mark.parametrize("how", ["connection refused", "503 everywhere"])
def test_suite_down_fails_the_run_clearly_then_a_later_run_finishes(
    sqlite_forward: ForwardRunner, graph: Any, monkeypatch: pytest.MonkeyPatch, reference, how
):
    engine = sqlite_forward.engine
    if how == "connection refused":
        monkeypatch.setenv(f"AIRFLOW_CONN_{GRAPH_CONN.upper()}", down_connection(graph))
    else:
        graph.faults.update(rate_503=1.0, retry_after_s=1)
    started = time.monotonic()
    result = sqlite_forward()
    assert time.monotonic() - started < 40
    errors = {m: r.error for m, r in result["results"].items()}
    assert all(errors.values()) and all(r.retriable for r in result["results"].values())
    expected = "unreachable" if how == "connection refused" else "ServiceUnavailable"
    assert all(expected in e for e in errors.values()), errors
    assert all(" at 0x" not in e for e in errors.values())  # no object reprs in messages
    # nothing half-written: not a schedule, link, meeting or feed state
    assert set(written(engine).values()) == {0}
    # one failed record per user, naming the mailbox and the integration
    failed = [r for r in sync_log(engine, "run-1") if r["action"] == "failed"]
    assert sorted(r["mailbox"] for r in failed) == sorted(errors)
    assert {r["integration_id"] for r in failed} == {"it_o365"}
    assert all(r["message"] == errors[r["mailbox"]] for r in failed)
    if how == "503 everywhere":
        assert graph.stats["retry_after_violations"] == 0

    monkeypatch.setenv(f"AIRFLOW_CONN_{GRAPH_CONN.upper()}", graph.airflow_conn_json())
    graph.faults.update(rate_503=0.0)
    time.sleep(1.0 if how == "503 everywhere" else 0)  # the last Retry-After
    later = sqlite_forward()
    assert not [r.error for r in later["results"].values() if r.error]
    assert content(engine) == reference()


def test_reverse_suite_down_retries_then_delivers_once(
    sqlite_oa_engine: sa.Engine, graph: Any, monkeypatch: pytest.MonkeyPatch
):
    seed_demo(sqlite_oa_engine)
    config = reverse_config()
    runner = ReverseRunner(sqlite_oa_engine, [config])
    ids = make_schedules(sqlite_oa_engine, 3, "suite down")
    monkeypatch.setenv(f"AIRFLOW_CONN_{GRAPH_CONN.upper()}", down_connection(graph))
    started = time.monotonic()
    summary = runner()
    assert time.monotonic() - started < 40
    assert runner.counts(summary) == {"retry": 3}
    assert [d["status"] for d in deliveries(sqlite_oa_engine)] == ["pending"] * 3
    assert all("unreachable" in d["last_error"] for d in deliveries(sqlite_oa_engine))
    logs = [r for r in sync_log(sqlite_oa_engine) if r["direction"] == "reverse"]
    assert sorted(r["schedule_id"] for r in logs) == ids
    assert all(r["action"] == "failed" and r["integration_id"] == config.id for r in logs)
    assert all("unreachable" in r["message"] and "retry at" in r["message"] for r in logs)
    with sqlite_oa_engine.connect() as conn:  # nothing half-written
        assert conn.execute(sa.select(sa.func.count()).select_from(t.links)).scalar() == 0

    monkeypatch.setenv(f"AIRFLOW_CONN_{GRAPH_CONN.upper()}", graph.airflow_conn_json())
    summary = runner()
    assert runner.counts(summary) == {"created": 3}
    assert_delivered_once(sqlite_oa_engine, graph, config.id, ids)


# --- token expiry mid-run ---------------------------------------------------------------------


def test_token_expiry_mid_forward_run_is_transparent(
    sqlite_forward: ForwardRunner, graph, reference
):
    graph.faults.latency_ms = 100
    graph.faults.expire_tokens_after = 3  # inside the 3rd request (see the reverse test below)
    result = sqlite_forward()
    assert graph.faults.expire_tokens_after == 0
    assert not {m: r.error for m, r in result["results"].items() if r.error}
    stats = graph.stats.snapshot()
    assert stats["by_status"].get("401", 0) >= 1  # the expiry did hit requests in flight
    assert stats["by_kind"]["token"] >= 2  # … and calsync signed in again
    graph.faults.latency_ms = 0
    assert content(sqlite_forward.engine) == reference()


def test_token_expiry_mid_reverse_drain_is_transparent(sqlite_oa_engine: sa.Engine, graph: Any):
    seed_demo(sqlite_oa_engine)
    config = reverse_config()
    runner = ReverseRunner(sqlite_oa_engine, [config])
    ids = make_schedules(sqlite_oa_engine, 8, "token expiry")
    graph.faults.latency_ms = 50
    # The tokens expire inside the 4th request the emulator counts (the token's, the first
    # $batch's sub-requests...): a thread polling the counters could fire too late in a large
    # test process (a collector pause outlasts the batch), and nothing would see a 401.
    graph.faults.expire_tokens_after = 4
    summary = runner()
    assert graph.faults.expire_tokens_after == 0  # it happened
    assert runner.counts(summary) == {"created": 8}, summary
    stats = graph.stats.snapshot()
    assert stats["by_status"].get("401", 0) >= 1 and stats["by_kind"]["token"] >= 2
    assert_delivered_once(sqlite_oa_engine, graph, config.id, ids)


# --- paging links that fail once ---------------------------------------------------------------


def crowd(graph: Any, mailbox: str = "zhao4b@contoso.com", n: int = 14) -> None:
    """Enough events for a second page (the emulator pages by 10)."""
    from tests.integration.conftest import TODAY

    for i in range(n):
        day = TODAY + dt.timedelta(days=i % 5 - 2)
        graph.store.add_event(
            mailbox,
            {
                "subject": f"Filler {i}",
                "start": {"dateTime": f"{day}T{8 + i % 9:02}:00:00", "timeZone": "Asia/Shanghai"},
                "end": {"dateTime": f"{day}T{8 + i % 9:02}:30:00", "timeZone": "Asia/Shanghai"},
            },
        )


def test_a_page_answered_503_once_is_retried_within_the_run(
    sqlite_forward: ForwardRunner, graph: Any, reference
):
    crowd(graph)
    crowd(graph, "chenjing@contoso.com")
    graph.faults.update(fail_next=[("skiptoken", 503), ("skiptoken", 504)], retry_after_s=1)
    result = sqlite_forward()
    assert not {m: r.error for m, r in result["results"].items() if r.error}
    assert graph.faults.fail_next == []  # both pages did fail once
    assert graph.stats["retry_after_violations"] == 0
    assert content(sqlite_forward.engine) == reference()


def test_a_page_failing_500_fails_its_mailbox_alone_then_a_rerun_finishes(
    sqlite_forward: ForwardRunner, graph: Any, reference
):
    crowd(graph)
    graph.faults.update(fail_next=[("skiptoken", 500)])
    result = sqlite_forward()
    errors = {m: r.error for m, r in result["results"].items() if r.error}
    assert list(errors) == ["zhao4b@contoso.com"] and graph.faults.fail_next == []
    failed = [r for r in sync_log(sqlite_forward.engine, "run-1") if r["action"] == "failed"]
    assert [(r["mailbox"], r["message"]) for r in failed] == [
        ("zhao4b@contoso.com", errors["zhao4b@contoso.com"])
    ]
    with sqlite_forward.engine.connect() as conn:  # nothing of the failed mailbox applied
        assert not conn.execute(
            sa.select(t.links).where(t.links.c.mailbox == "zhao4b@contoso.com")
        ).first()
    rerun = sqlite_forward()
    assert not [r.error for r in rerun["results"].values() if r.error]
    assert content(sqlite_forward.engine) == reference()  # nothing duplicated, nothing lost
    assert set(sqlite_forward()["totals"]) <= {"unchanged", "skipped"}


# --- a reverse throttling storm ---------------------------------------------------------------


def test_reverse_storm_delivers_each_change_once_within_retry_after(
    sqlite_oa_engine: sa.Engine, graph: Any
):
    seed_demo(sqlite_oa_engine)
    config = reverse_config()
    runner = ReverseRunner(sqlite_oa_engine, [config])
    ids = make_schedules(sqlite_oa_engine, 18, "storm")
    graph.faults.update(rate_429=0.3, rate_503=0.05, retry_after_s=1)
    started = time.monotonic()
    drain_until_done(runner)
    elapsed = time.monotonic() - started
    stats = graph.stats.snapshot()
    graph.faults.update(rate_429=0.0, rate_503=0.0)
    assert stats["throttled_429"] > 0 and stats["unavailable_503"] >= 0
    assert stats["retry_after_violations"] == 0
    assert elapsed < 90, elapsed  # bounded: Retry-After 1 s, a few retries per request
    assert_delivered_once(sqlite_oa_engine, graph, config.id, ids)


# --- the OA database restarted mid-run (a private PostgreSQL) --------------------------------


class PrivatePostgres:
    """A PostgreSQL 15 cluster of our own in a temp dir on a free port (never the shared one)."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="calsync-pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.log = self.base / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
            shutil.chown(self.base, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-N")
        self.start()

    def _run(self, *args: Any) -> None:
        subprocess.run(
            [*self._as, *map(str, args)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        try:
            subprocess.run(
                [
                    *self._as,
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "stop",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"{PG_BIN}/initdb not installed")
    server = PrivatePostgres()
    yield server
    server.close()


@pytest.fixture
def private_oa(private_pg: PrivatePostgres) -> Iterator[sa.Engine]:
    name = f"oa_{time.monotonic_ns()}"
    admin = engine_from_url(private_pg.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} ENCODING 'UTF8'")
    engine = engine_from_url(private_pg.url(name))
    upgrade(engine)
    seed_demo(engine)
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


def outage(server: PrivatePostgres, seconds: float) -> Callable[[], None]:
    def go() -> None:
        server.stop("fast")  # ends every session, mid-transaction ones included
        try:
            time.sleep(seconds)
        finally:
            server.start()

    return go


def test_oa_restart_mid_forward_run_then_retry_converges(
    private_pg: PrivatePostgres, private_oa: sa.Engine, config: Any, graph: Any, reference
):
    forward = ForwardRunner(private_oa, config)
    graph.faults.latency_ms = 150
    done = when(requests_seen(graph, 3), outage(private_pg, 1.5))
    first = forward()
    assert done.wait(20)
    graph.faults.latency_ms = 0
    failed = {m: r.error for m, r in first["results"].items() if r.error}
    assert failed, "the outage hit no OA write: the test did not test anything"
    assert all("OA" in e or "OA database" in e for e in failed.values()), failed
    assert all(r.retriable for r in first["results"].values())
    retry = forward()
    assert not [r.error for r in retry["results"].values() if r.error]
    assert content(private_oa) == reference()
    assert set(forward()["totals"]) <= {"unchanged", "skipped"}


def test_oa_restart_mid_reverse_drain_then_retry_delivers_once(
    private_pg: PrivatePostgres, private_oa: sa.Engine, graph: Any
):
    from calsync.config import parse_integration
    from tests.integration.conftest import INTEGRATION_YAML

    text = INTEGRATION_YAML.replace("execution: {concurrency: 4, retries: 0}", "")
    text += "direction: reverse\nexecution: {concurrency: 4, max_attempts: 5, "
    text += "retry_backoff_s: 0, claim_lease_s: 0.5}\n"  # a killed drain's claims lapse fast
    config = parse_integration(Path("it_rev.yaml"), text)
    runner = ReverseRunner(private_oa, [config])
    ids = make_schedules(private_oa, 10, "restart")
    graph.faults.latency_ms = 150
    done = when(requests_seen(graph, 4), outage(private_pg, 1.5))
    first = runner()
    assert done.wait(20)
    hit = first["integrations"][0]["errors"] or any(
        d["status"] != "done" for d in deliveries(private_oa)
    )
    assert hit, "the outage hit no OA work: the test did not test anything"
    graph.faults.latency_ms = 0
    drain_until_done(runner, pause=0.6)  # a killed drain's claims lapse after the lease
    assert_delivered_once(private_oa, graph, config.id, ids)
