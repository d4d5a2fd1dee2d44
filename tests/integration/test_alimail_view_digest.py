"""Alibaba Mail's scheduled runs (E7) on every OA database: the API has no change feed, so
each run reads every mailbox's view, but a view that is the one the stored state's digest
describes is not normalised, mapped nor planned, and its mailbox costs the OA nothing — no
transaction, no statement that writes. A view that changed is read and planned in full, as
before, and only its mailbox."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from tests.contract.conftest import ALIMAIL_CONN
from tests.integration.conftest import TODAY
from tests.integration.safety_suites import LINA, ORGANISER, AlimailSuite, Ev
from tests.integration.test_incremental_graph import IncrementalRunner

READS = ("SELECT", "PRAGMA", "SHOW", "SET ", "BEGIN", "COMMIT", "ROLLBACK")


def at(day: dt.date, hour: int) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour))


@pytest.fixture
def alimail_suite(
    alimail_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[AlimailSuite]:
    monkeypatch.setenv(f"AIRFLOW_CONN_{ALIMAIL_CONN.upper()}", alimail_server.airflow_conn_json())
    made = AlimailSuite(alimail_server)
    yield made
    made.server.reset()


@contextmanager
def writes_to(engine: sa.Engine) -> Iterator[list[str]]:
    """Every statement the OA is sent meanwhile that is not a read (or a transaction's own)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith(READS):
            seen.append(statement.split("\n")[0][:80])

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def views_and_listings(suite: AlimailSuite) -> tuple[int, int]:
    by_kind = suite.server.stats["by_kind"]
    return by_kind.get("events_view", 0), by_kind.get("calendars_list", 0)


def test_an_unchanged_view_costs_one_request_and_no_oa_write(
    alimail_suite: AlimailSuite,
    oa_any: sa.Engine,  # noqa: F811 - the fixture
) -> None:
    suite, oa = alimail_suite, oa_any
    review = suite.add(
        ORGANISER, Ev("评审 Review", at(TODAY, 10), at(TODAY, 11), attendees=(LINA,))
    )
    suite.add(
        LINA, Ev("年假 Leave", all_day=(TODAY + dt.timedelta(days=1), TODAY + dt.timedelta(days=2)))
    )
    run = IncrementalRunner(oa, suite.config())
    first = run()
    assert first["totals"].get("created") == 2, first["totals"]
    mailboxes = len(first["results"])
    with oa.connect() as conn:
        states = {r.mailbox: json.loads(r.state) for r in conn.execute(sa.select(t.sync_state))}
    feed = json.loads(states[ORGANISER]["feed"])
    assert set(feed) == {"calendar", "view"}

    views, listings = views_and_listings(suite)
    with writes_to(oa) as written:
        quiet = run()
    assert quiet["totals"] == {}
    assert not written, written  # no transaction's write-origin marker, no state row
    assert views_and_listings(suite) == (views + mailboxes, listings)  # one request a mailbox

    # one change: its mailbox (and the attendee's copy) is planned, nobody else's
    suite.update(ORGANISER, review, "评审 Review v2")
    changed = run()
    assert changed["totals"].get("updated") == 1, changed["totals"]
    planned = {m for m, r in changed["results"].items() if r.counts}
    assert ORGANISER in planned and len(planned) < mailboxes
    with oa.connect() as conn:
        titles = set(conn.execute(sa.select(t.schedules.c.title)).scalars())
    assert "评审 Review v2" in titles
    with writes_to(oa) as written:
        assert run()["totals"] == {}
    assert not written, written


# fixtures: the OA on each database (alimail_server: tests/suite_emulators.py)
from tests.integration.safety_suites import oa_any  # noqa: E402,F401
