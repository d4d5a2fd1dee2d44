"""calsync.oa.bulk: bulk inserts (COPY on PostgreSQL) behave as an INSERT would, on every OA
database: every value round-trips, the outbox triggers fire, omitted columns take their
server defaults, and errors come as SQLAlchemy's exceptions inside the caller's transaction."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from calsync.oa import bulk
from calsync.oa import schema as t

NOW = dt.datetime(2026, 12, 1, 9, 30, 15, 123456)


def _user(conn: sa.Connection) -> int:
    return conn.execute(
        sa.insert(t.users).values(login_name="zhang", display_name="张伟").returning(t.users.c.id)
    ).scalar_one()


def _schedules(n: int, creator: int) -> list[dict[str, object]]:
    return [
        {
            "id": 1000 + i,
            "title": f"周会 {i} 'quoted' \\ tab\there; DROP TABLE oa_users; --",
            "start_utc": NOW + dt.timedelta(hours=i),
            "end_utc": NOW + dt.timedelta(hours=i, minutes=30),
            "all_day": i % 2 == 0,
            "start_date": dt.date(2026, 12, 1) if i % 2 == 0 else None,
            "end_date": dt.date(2026, 12, 2) if i % 2 == 0 else None,
            "timezone": "Asia/Shanghai",
            "location": "",
            "room_id": None,
            "details": "第一行\n第二行\r\n\\N not null 🎉",
            "creator_id": creator,
            "created_at": NOW,
            "updated_at": NOW,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [bulk.COPY_MIN_ROWS - 1, 200])  # executemany, then COPY
def test_rows_round_trip_and_triggers_fire(oa_engine: sa.Engine, n: int) -> None:
    with oa_engine.begin() as conn:
        creator = _user(conn)
        rows = _schedules(n, creator)
        bulk.insert_rows(conn, t.schedules, rows)
        participants = [
            {"schedule_id": r["id"], "kind": "user", "user_id": creator, "email": "a@b"}
            for r in rows
        ]
        bulk.insert_rows(conn, t.participants, participants)
    with oa_engine.connect() as conn:
        stored = {r.id: r for r in conn.execute(sa.select(t.schedules))}
        outbox = conn.execute(sa.select(sa.func.count()).select_from(t.outbox)).scalar_one()
        defaults = conn.execute(sa.select(t.participants.c.name, t.participants.c.response))
        assert {tuple(d) for d in defaults} == {("", "none")}  # server defaults
    assert outbox >= n  # the schedules' insert trigger ran for every row
    assert len(stored) == n
    for row in rows:
        got = stored[row["id"]]
        for key, value in row.items():
            assert getattr(got, key) == value, (key, getattr(got, key), value)
        assert got.color == ""  # omitted: the server default


def test_an_error_is_sqlalchemys_and_rolls_back_the_transaction(oa_engine: sa.Engine) -> None:
    with oa_engine.begin() as conn:
        creator = _user(conn)
    rows = _schedules(50, creator)
    rows[40]["id"] = rows[3]["id"]  # a duplicate primary key late in the stream
    with pytest.raises(sa.exc.IntegrityError), oa_engine.begin() as conn:
        bulk.insert_rows(conn, t.schedules, rows[:10])
        bulk.insert_rows(conn, t.schedules, rows[10:])
    with oa_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.schedules)).scalar() == 0
    # the connection went back to the pool in a usable state
    with oa_engine.begin() as conn:
        bulk.insert_rows(conn, t.schedules, _schedules(20, creator))
    with oa_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.schedules)).scalar() == 20


def test_an_unknown_column_is_refused_before_anything_is_sent(oa_engine: sa.Engine) -> None:
    rows = [{"title": "x", "no_such_column": 1}] * bulk.COPY_MIN_ROWS
    with pytest.raises(sa.exc.CompileError, match="no_such_column"), oa_engine.begin() as conn:
        bulk.insert_rows(conn, t.schedules, rows)
