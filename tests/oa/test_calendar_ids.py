"""calsync.oa.calendar_ids on SQLite, PostgreSQL and MariaDB: kept per integration and
calendar, believed for about TRUSTED_FOR (spread per mailbox), looked-up ids stored with
their age restarted, gone ids dropped only while the row still holds them, a race with
another run storing the same mailbox made good, and a table that cannot be read or written
never failing the run."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.connectors.base import CalendarIds
from calsync.oa import bulk, calendar_ids
from calsync.oa import schema as t
from calsync.oa.calendar_ids import TRUSTED_FOR

A, B, C = "a@contoso.com", "b@contoso.com", "c@contoso.com"


def rows(engine: sa.Engine) -> list[tuple[str, str, str, str]]:
    ci = t.calendar_ids.c
    with engine.connect() as conn:
        return sorted(
            conn.execute(sa.select(ci.integration_id, ci.mailbox, ci.calendar, ci.calendar_id))
        )


def save(engine: sa.Engine, found: dict[str, str], gone: dict[str, str] | None = None) -> int:
    return calendar_ids.save(engine, "ali", "", CalendarIds(found, gone or {}))


def load(engine: sa.Engine, calendar: str = "", now: dt.datetime | None = None) -> dict[str, str]:
    return calendar_ids.load(engine, "ali", calendar, now)


def age(engine: sa.Engine, mailbox: str, hours: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(t.calendar_ids)
            .where(t.calendar_ids.c.mailbox == mailbox)
            .values(updated_at=calendar_ids.utcnow() - dt.timedelta(hours=hours))
        )


def test_kept_per_integration_and_calendar(oa_engine: sa.Engine) -> None:
    assert save(oa_engine, {A: "cal-a", B: "cal-b"}) == 2
    assert calendar_ids.save(oa_engine, "ali", "项目", CalendarIds({A: "proj-a"})) == 1
    assert calendar_ids.save(oa_engine, "other", "", CalendarIds({A: "x-a"})) == 1
    assert load(oa_engine) == {A: "cal-a", B: "cal-b"}
    assert load(oa_engine, calendar="项目") == {A: "proj-a"}
    statements: list[str] = []

    @sa.event.listens_for(oa_engine, "before_cursor_execute")
    def _record(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    assert save(oa_engine, {}) == 0  # nothing looked up, nothing gone: no statement at all
    assert statements == []
    sa.event.remove(oa_engine, "before_cursor_execute", _record)
    # B's calendar was replaced, A's is gone with no other found, C is new
    assert save(oa_engine, {B: "cal-b2", C: "cal-c"}, {A: "cal-a", B: "cal-b"}) == 3
    assert rows(oa_engine) == [
        ("ali", A, "项目", "proj-a"),
        ("ali", B, "", "cal-b2"),
        ("ali", C, "", "cal-c"),
        ("other", A, "", "x-a"),
    ]


def test_an_id_is_believed_for_about_a_day_and_a_lookup_restarts_its_age(
    oa_engine: sa.Engine,
) -> None:
    mailboxes = [f"u{n}@contoso.com" for n in range(200)]
    save(oa_engine, dict.fromkeys(mailboxes, "cal"))
    now = calendar_ids.utcnow()
    assert len(load(oa_engine, now=now + TRUSTED_FOR * 0.74)) == 200
    spread = len(load(oa_engine, now=now + TRUSTED_FOR))
    assert 50 < spread < 150  # they do not all expire in the same drain
    assert load(oa_engine, now=now + TRUSTED_FOR * 1.26) == {}
    age(oa_engine, mailboxes[0], hours=TRUSTED_FOR.total_seconds() / 3600 * 2)
    assert mailboxes[0] not in load(oa_engine)
    save(oa_engine, {mailboxes[0]: "cal"})  # looked up again, the same id
    assert load(oa_engine)[mailboxes[0]] == "cal"


def test_a_gone_id_is_dropped_only_while_the_row_holds_it(oa_engine: sa.Engine) -> None:
    save(oa_engine, {A: "cal-a"})
    save(oa_engine, {A: "cal-a2"})  # another run listed a fresh id meanwhile
    assert save(oa_engine, {}, {A: "cal-a"}) == 1
    assert load(oa_engine) == {A: "cal-a2"}
    save(oa_engine, {}, {A: "cal-a2"})
    assert load(oa_engine) == {}


def test_overlong_ids_are_not_kept(oa_engine: sa.Engine) -> None:
    assert save(oa_engine, {A: "x" * 401, B: "cal-b"}) == 1
    assert load(oa_engine) == {B: "cal-b"}


def test_a_race_on_insert_is_made_again_once(
    oa_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run inserts the same mailbox between this one's read and its insert: the
    unique key refuses the insert, the transaction (its updates too) is rolled back and made
    again, and finds that row to update."""
    save(oa_engine, {A: "cal-a"})
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
    assert save(oa_engine, found) == 2
    assert load(oa_engine) == found  # this run's ids, B's row updated the second time
    assert calls == [1, 1 if oa_engine.dialect.name == "sqlite" else 0]


def test_a_second_refusal_stores_nothing_and_raises_nothing(
    oa_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    save(oa_engine, {A: "cal-a"})

    def refused(*_args: Any) -> None:
        raise sa.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))

    monkeypatch.setattr(bulk, "insert_rows", refused)
    with caplog.at_level("INFO", logger="calsync.oa.calendar_ids"):
        assert save(oa_engine, {A: "cal-a2", B: "cal-b"}) == 0
    assert "left for a later run" in caplog.text
    assert load(oa_engine) == {A: "cal-a"}  # the update rolled back with the refused insert


def test_a_table_that_cannot_be_read_costs_listings_not_the_run(
    oa_engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with oa_engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE calsync_calendar_ids"))
    with caplog.at_level("WARNING", logger="calsync.oa.calendar_ids"):
        assert load(oa_engine) == {}
    assert "kept calendar ids not read" in caplog.text


def test_a_table_that_cannot_be_written_costs_listings_not_the_run(
    oa_engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with oa_engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE calsync_calendar_ids"))
    with caplog.at_level("WARNING", logger="calsync.oa.calendar_ids"):
        assert save(oa_engine, {A: "cal-a"}, {B: "cal-b"}) == 0
    assert "calendar ids not stored" in caplog.text
