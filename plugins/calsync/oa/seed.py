"""Demo data for the OA database: departments, HR users, meeting rooms, room mappings.

    python -m calsync.oa.seed --url sqlite:////path/oa.db [--domain contoso.com]

Idempotent: rows are matched by natural key (department name + parent, login name, room name,
room + mailbox) and only missing ones are inserted; existing rows are left as they are (a demo
may have edited them). ``DEMO_USERS`` / ``DEMO_ROOMS`` are the same data for seeding the suite
emulators, so both sides of a demo agree.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TypedDict

import sqlalchemy as sa

from calsync.oa import schema as t

DEFAULT_DOMAIN = "contoso.com"

# (name, parent name) in insertion order: parents first.
DEMO_DEPARTMENTS: tuple[tuple[str, str | None], ...] = (
    ("总经办", None),
    ("研发部", None),
    ("平台组", "研发部"),
    ("销售部", None),
    ("行政部", None),
)


class DemoUser(TypedDict):
    login: str
    name: str
    email: str | None  # None: F22's "skipped: no binding value"
    department: str
    position: str
    city: str
    employee_no: str
    alt_email: str | None
    active: bool


class DemoRoom(TypedDict):
    name: str
    capacity: int
    building: str
    mailbox: str | None  # suite room mailbox (F18), None: not mapped


# login, name, mailbox local part, department, position, city, employee no., alt local, active
_USERS: tuple[tuple[str, str, str | None, str, str, str, str, str | None, bool], ...] = (
    ("zhangwei", "张伟", "zhangwei", "总经办", "总经理", "北京", "E0001", None, True),
    ("lina", "李娜", "lina", "研发部", "研发经理", "北京", "E0002", None, True),
    ("wangfang", "王芳", "wangfang", "平台组", "高级工程师", "上海", "E0003", "fang.wang", True),
    ("liuyang", "刘洋", "liuyang", "平台组", "工程师", "深圳", "E0004", None, True),
    ("chenjing", "陈静", "chenjing", "销售部", "销售经理", "上海", "E0005", None, True),
    # F21: the Exchange login (zhao4) differs from the mailbox alias (zhao4b)
    ("zhao4", "赵四", "zhao4b", "销售部", "销售代表", "广州", "E0006", None, True),
    # F22: no mailbox on the HR card -> skipped with a log record, not an error
    ("sunli", "孙丽", None, "行政部", "行政专员", "北京", "E0007", None, True),
    # left the company: never in scope
    ("zhouqiang", "周强", "zhouqiang", "研发部", "测试工程师", "杭州", "E0008", None, False),
)


def _at(local: str | None, domain: str) -> str | None:
    return f"{local}@{domain}" if local else None


def demo_users(mailbox_domain: str = DEFAULT_DOMAIN) -> list[DemoUser]:
    """The demo's HR users with addresses in ``mailbox_domain``."""
    return [
        DemoUser(
            login=login,
            name=name,
            email=_at(local, mailbox_domain),
            department=dept,
            position=position,
            city=city,
            employee_no=number,
            alt_email=_at(alt, mailbox_domain),
            active=active,
        )
        for login, name, local, dept, position, city, number, alt, active in _USERS
    ]


def demo_rooms(mailbox_domain: str = DEFAULT_DOMAIN) -> list[DemoRoom]:
    """The demo's meeting rooms; 大会议室 has no suite mailbox on purpose."""
    return [
        DemoRoom(
            name="会议室01", capacity=10, building="A座 3F", mailbox=f"meeting01@{mailbox_domain}"
        ),
        DemoRoom(
            name="会议室02", capacity=8, building="A座 5F", mailbox=f"meeting02@{mailbox_domain}"
        ),
        DemoRoom(name="大会议室", capacity=40, building="B座 1F", mailbox=None),
    ]


# The seeded data at the default domain, e.g. for the suite emulators' seed (dicts).
DEMO_USERS: list[DemoUser] = demo_users()
DEMO_ROOMS: list[DemoRoom] = demo_rooms()


def _insert(conn: sa.Connection, table: sa.Table, **values: object) -> int:
    pk = conn.execute(sa.insert(table).values(**values)).inserted_primary_key
    assert pk is not None
    return int(pk[0])


def seed_demo(engine: sa.Engine, mailbox_domain: str = DEFAULT_DOMAIN) -> dict[str, int]:
    """Insert the demo data that is missing, in one transaction.

    Returns the demo rows present per table and how many this call inserted, e.g.
    ``{"departments": 5, "users": 8, "rooms": 3, "room_mappings": 2, "inserted": 18}``.
    """
    users = demo_users(mailbox_domain)
    rooms = demo_rooms(mailbox_domain)
    inserted = 0
    with engine.begin() as conn:
        dept_ids: dict[str, int] = {}
        for name, parent in DEMO_DEPARTMENTS:
            parent_id = dept_ids[parent] if parent else None
            found = conn.execute(
                sa.select(t.departments.c.id)
                .where(
                    t.departments.c.name == name,
                    t.departments.c.parent_id.is_(None)
                    if parent_id is None
                    else t.departments.c.parent_id == parent_id,
                )
                .order_by(t.departments.c.id)
            ).first()
            if found is None:
                dept_ids[name] = _insert(conn, t.departments, name=name, parent_id=parent_id)
                inserted += 1
            else:
                dept_ids[name] = found.id

        existing = set(
            conn.scalars(
                sa.select(t.users.c.login_name).where(
                    t.users.c.login_name.in_([u["login"] for u in users])
                )
            )
        )
        for u in users:
            if u["login"] in existing:
                continue
            _insert(
                conn,
                t.users,
                login_name=u["login"],
                display_name=u["name"],
                email=u["email"],
                alt_email=u["alt_email"],
                employee_no=u["employee_no"],
                department_id=dept_ids[u["department"]],
                position=u["position"],
                city=u["city"],
                active=u["active"],
            )
            inserted += 1

        mappings = 0
        for r in rooms:
            room_id = conn.scalar(sa.select(t.rooms.c.id).where(t.rooms.c.name == r["name"]))
            if room_id is None:
                room_id = _insert(
                    conn, t.rooms, name=r["name"], capacity=r["capacity"], building=r["building"]
                )
                inserted += 1
            if r["mailbox"] is None:
                continue
            mappings += 1
            mapped = conn.scalar(
                sa.select(sa.func.count())
                .select_from(t.room_mappings)
                .where(
                    t.room_mappings.c.room_id == room_id,
                    sa.func.lower(t.room_mappings.c.suite_mailbox) == r["mailbox"].lower(),
                )
            )
            if not mapped:
                _insert(conn, t.room_mappings, room_id=room_id, suite_mailbox=r["mailbox"])
                inserted += 1
    return {
        "departments": len(DEMO_DEPARTMENTS),
        "users": len(users),
        "rooms": len(rooms),
        "room_mappings": mappings,
        "inserted": inserted,
    }


def main(argv: Sequence[str] | None = None) -> int:
    from calsync.oa.db import engine_from_airflow_connection, engine_from_url, redacted
    from calsync.oa.migrate import upgrade

    parser = argparse.ArgumentParser(prog="python -m calsync.oa.seed", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="SQLAlchemy URL of the OA database")
    where.add_argument("--conn-id", help="Airflow connection id of the OA database")
    parser.add_argument("--domain", default=DEFAULT_DOMAIN, help="mailbox domain of the users")
    parser.add_argument(
        "--no-migrate", action="store_true", help="do not upgrade the schema to head first"
    )
    args = parser.parse_args(argv)
    engine = engine_from_url(args.url) if args.url else engine_from_airflow_connection(args.conn_id)
    try:
        if not args.no_migrate:
            upgrade(engine)
        summary = seed_demo(engine, args.domain)
    finally:
        engine.dispose()
    counts = ", ".join(f"{k} {v}" for k, v in summary.items())
    print(f"{redacted(engine.url)}: demo data seeded ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
