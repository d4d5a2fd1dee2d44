"""calsync.oa.seed: demo data, idempotent on every backend, consistent with DEMO_USERS."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from calsync.oa import seed
from calsync.oa.db import engine_from_url
from calsync.oa.seed import DEMO_ROOMS, DEMO_USERS, demo_users, seed_demo


def _users(engine: sa.Engine) -> dict[str, tuple[object, ...]]:
    query = sa.select(
        t.users.c.login_name,
        t.users.c.display_name,
        t.users.c.email,
        t.departments.c.name,
        t.users.c.active,
    ).join(t.departments, t.users.c.department_id == t.departments.c.id)
    with engine.connect() as conn:
        return {r[0]: (r[1], r[2], r[3], bool(r[4])) for r in conn.execute(query)}


def _counts(engine: sa.Engine) -> dict[str, int]:
    tables = (t.departments, t.users, t.rooms, t.room_mappings)
    with engine.connect() as conn:
        return {
            tb.name: conn.scalar(sa.select(sa.func.count()).select_from(tb)) or 0 for tb in tables
        }


def test_seed_demo_is_idempotent(oa_engine: sa.Engine) -> None:
    first = seed_demo(oa_engine)
    counts = _counts(oa_engine)
    second = seed_demo(oa_engine)
    assert first == {**second, "inserted": 18}
    assert second == {"departments": 5, "users": 8, "rooms": 3, "room_mappings": 2, "inserted": 0}
    assert (
        _counts(oa_engine)
        == counts
        == {
            "oa_departments": 5,
            "oa_users": 8,
            "oa_meeting_rooms": 3,
            "calsync_room_mappings": 2,
        }
    )
    assert _users(oa_engine) == {
        u["login"]: (u["name"], u["email"], u["department"], u["active"]) for u in DEMO_USERS
    }
    with oa_engine.connect() as conn:
        mappings = conn.execute(
            sa.select(t.rooms.c.name, t.room_mappings.c.suite_mailbox).join(
                t.rooms, t.rooms.c.id == t.room_mappings.c.room_id
            )
        ).all()
        child = t.departments.alias("child")
        parent = conn.execute(
            sa.select(t.departments.c.name).join(child, child.c.parent_id == t.departments.c.id)
        ).scalar_one()
    assert sorted(mappings) == [
        ("会议室01", "meeting01@contoso.com"),
        ("会议室02", "meeting02@contoso.com"),
    ]
    assert parent == "研发部"


def test_demo_users_cover_the_demo_cases() -> None:
    by_login = {u["login"]: u for u in DEMO_USERS}
    assert len(by_login) == len(DEMO_USERS) == 8
    assert by_login["zhao4"]["email"] == "zhao4b@contoso.com"  # F21: login ≠ mailbox alias
    assert [u["login"] for u in DEMO_USERS if u["email"] is None] == ["sunli"]  # F22
    assert [u["login"] for u in DEMO_USERS if not u["active"]] == ["zhouqiang"]
    emails = [u["email"] for u in DEMO_USERS if u["email"]]
    assert len(set(emails)) == len(emails)
    assert {r["name"] for r in DEMO_ROOMS} == {"会议室01", "会议室02", "大会议室"}


def test_seed_demo_with_another_domain(sqlite_oa_engine: sa.Engine) -> None:
    seed_demo(sqlite_oa_engine, mailbox_domain="example.cn")
    emails = {login: row[1] for login, row in _users(sqlite_oa_engine).items()}
    assert emails == {u["login"]: u["email"] for u in demo_users("example.cn")}
    assert emails["zhao4"] == "zhao4b@example.cn"


def test_seed_cli_migrates_and_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'oa.db'}"
    assert seed.main(["--url", url]) == 0
    assert seed.main(["--url", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("inserted 18)") and out[1].endswith("inserted 0)")
    engine = engine_from_url(url)
    try:
        assert _counts(engine)["oa_users"] == 8
    finally:
        engine.dispose()
