"""calsync.oa.calendar_ids on SQLite, PostgreSQL and MariaDB: kept per integration and
calendar, only what changed is written, a gone id is dropped, and a race with another run
storing the same mailbox costs nothing but the write."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from calsync.oa import bulk, calendar_ids
from calsync.oa import schema as t

A, B, C = "a@contoso.com", "b@contoso.com", "c@contoso.com"


def rows(engine: sa.Engine) -> list[tuple[str, str, str, str]]:
    ci = t.calendar_ids.c
    with engine.connect() as conn:
        return sorted(
            conn.execute(sa.select(ci.integration_id, ci.mailbox, ci.calendar, ci.calendar_id))
        )


def load(engine: sa.Engine, integration: str = "ali", calendar: str = "") -> dict[str, str]:
    with engine.connect() as conn:
        return calendar_ids.load(conn, integration, calendar)


def test_kept_per_integration_and_calendar_only_changes_written(oa_engine: sa.Engine) -> None:
    assert calendar_ids.save(oa_engine, "ali", "", {A: "cal-a", B: "cal-b"}, {}) == 2
    assert calendar_ids.save(oa_engine, "ali", "项目", {A: "proj-a"}, {}) == 1
    assert calendar_ids.save(oa_engine, "other", "", {A: "x-a"}, {}) == 1
    assert load(oa_engine) == {A: "cal-a", B: "cal-b"}
    assert load(oa_engine, calendar="项目") == {A: "proj-a"}
    known = load(oa_engine)
    statements: list[str] = []

    @sa.event.listens_for(oa_engine, "before_cursor_execute")
    def _record(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    # as used: nothing to write, no statement at all
    assert calendar_ids.save(oa_engine, "ali", "", {A: "cal-a", B: "cal-b"}, known) == 0
    assert statements == []
    sa.event.remove(oa_engine, "before_cursor_execute", _record)
    # B's calendar was replaced, A's is gone with no other found, C is new; an unknown
    # mailbox whose id is gone has nothing to drop
    found = {A: None, B: "cal-b2", C: "cal-c", "d@contoso.com": None}
    assert calendar_ids.save(oa_engine, "ali", "", found, known) == 3
    assert rows(oa_engine) == [
        ("ali", A, "项目", "proj-a"),
        ("ali", B, "", "cal-b2"),
        ("ali", C, "", "cal-c"),
        ("other", A, "", "x-a"),
    ]


def test_a_row_another_run_stored_first_is_updated(oa_engine: sa.Engine) -> None:
    calendar_ids.save(oa_engine, "ali", "", {A: "cal-a"}, {})
    # this run started before that row existed: it still lands as an update
    assert calendar_ids.save(oa_engine, "ali", "", {A: "cal-a2", B: "cal-b"}, {}) == 2
    assert load(oa_engine) == {A: "cal-a2", B: "cal-b"}


def test_a_race_on_insert_is_made_again_once(
    oa_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run inserts the same mailbox between this one's read and its insert: the
    unique key refuses the insert, the transaction (its updates too) is rolled back and made
    again, and finds that row to update."""
    calendar_ids.save(oa_engine, "ali", "", {A: "cal-a"}, {})
    real = bulk.insert_rows
    calls: list[int] = []

    def racing(conn: sa.Connection, table: sa.Table, values: list[dict[str, Any]]) -> None:
        calls.append(len(values))
        if len(calls) == 1:
            if oa_engine.dialect.name == "sqlite":  # one writer: the race cannot happen here
                raise sa.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))
            with oa_engine.begin() as other:  # committed before this transaction's insert
                other.execute(sa.insert(table), [dict(values[0], calendar_id="theirs")])
        real(conn, table, values)

    monkeypatch.setattr(bulk, "insert_rows", racing)
    found = {A: "cal-a2", B: "cal-b"}
    assert calendar_ids.save(oa_engine, "ali", "", found, {A: "cal-a"}) == 2
    assert load(oa_engine) == found  # this run's ids, B's row updated the second time
    assert calls == [1, 1 if oa_engine.dialect.name == "sqlite" else 0]


def test_a_second_refusal_stores_nothing_and_raises_nothing(
    oa_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calendar_ids.save(oa_engine, "ali", "", {A: "cal-a"}, {})

    def refused(*_args: Any) -> None:
        raise sa.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))

    monkeypatch.setattr(bulk, "insert_rows", refused)
    with caplog.at_level("INFO", logger="calsync.oa.calendar_ids"):
        assert calendar_ids.save(oa_engine, "ali", "", {A: "cal-a2", B: "cal-b"}, {A: "cal-a"}) == 0
    assert "left for the next run" in caplog.text
    assert load(oa_engine) == {A: "cal-a"}  # the update rolled back with the refused insert
