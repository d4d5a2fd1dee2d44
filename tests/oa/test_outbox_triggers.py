"""The outbox triggers on every OA database (row triggers on MySQL/MariaDB and SQLite,
statement triggers with transition tables on PostgreSQL): one outbox row per schedule
inserted or updated, one per OA-made participant change, none for calsync's own participant
writes, and nothing for a statement that changes no row."""

from __future__ import annotations

import sqlalchemy as sa

from calsync.oa import outbox
from calsync.oa import schema as t
from tests.oa.test_bulk import NOW, _schedules, _user


def _outbox(conn: sa.Connection, after: int) -> list[tuple[int, str, str, int | None]]:
    o = t.outbox
    # sorted, not by id: a statement trigger writes its rows in no promised order
    rows = conn.execute(
        sa.select(o.c.schedule_id, o.c.op, o.c.origin, o.c.creator_id).where(o.c.id > after)
    )
    return _sorted([tuple(r) for r in rows])


def _sorted(rows: list[tuple[int, str, str, int | None]]) -> list[tuple[int, str, str, int | None]]:
    return sorted(rows, key=repr)


def _last(conn: sa.Connection) -> int:
    return conn.execute(sa.select(sa.func.coalesce(sa.func.max(t.outbox.c.id), 0))).scalar_one()


def test_each_changed_row_is_recorded_once_with_its_origin(oa_engine: sa.Engine) -> None:
    s, p = t.schedules, t.participants
    with oa_engine.begin() as conn:  # the OA application, several rows per statement
        creator = _user(conn)
        conn.execute(sa.insert(s), _schedules(3, creator))
        conn.execute(
            sa.insert(p),
            [
                {"schedule_id": 1000 + i % 3, "kind": "external", "email": f"g{i}@x"}
                for i in range(5)
            ],
        )
        assert _outbox(conn, 0) == _sorted(
            [(1000 + i, "insert", "oa", creator) for i in range(3)]
            + [(1000 + i % 3, "update", "oa", None) for i in range(5)]
        )

        mark = _last(conn)
        conn.execute(sa.update(p).where(p.c.email.in_(["g0@x", "g1@x"])).values(schedule_id=1002))
        conn.execute(sa.delete(p).where(p.c.email == "g4@x"))
        conn.execute(sa.update(s).where(s.c.id < 1002).values(updated_at=NOW))
        conn.execute(sa.update(s).where(s.c.id > 5000).values(updated_at=NOW))  # no row
        conn.execute(sa.delete(p).where(p.c.email == "nobody"))  # no row
        assert _outbox(conn, mark) == _sorted(
            [(1002, "update", "oa", None)] * 2
            + [(1001, "update", "oa", None)]  # g4 was in 1000 + 4 % 3
            + [(1000, "update", "oa", creator), (1001, "update", "oa", creator)]
        )

    with oa_engine.begin() as conn:  # calsync's own write: schedules only, with its origin
        mark = _last(conn)
        origin = outbox.forward_origin("demo")
        with outbox.write_origin(conn, origin):
            conn.execute(sa.insert(s), [{**_schedules(1, creator)[0], "id": 2000}])
            conn.execute(
                sa.insert(p),
                [{"schedule_id": 2000, "kind": "external", "email": f"c{i}@x"} for i in range(4)],
            )
            conn.execute(sa.delete(p).where(p.c.schedule_id == 1000))
        assert _outbox(conn, mark) == [(2000, "insert", origin, creator)]
