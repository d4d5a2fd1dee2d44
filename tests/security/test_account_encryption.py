"""Per-user Exchange passwords at rest (F21, issue 7): authenticated encryption (Fernet) in the
OA table, never the password in the database file; a tampered row or a row whose key was
dropped too early fails with a message naming the user and the key id (and never the
password); rotation re-encrypts every row under the newest key, after which the old key can
go."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from calsync.accounts import Account, AccountVault, key_id, load_accounts, rotate_all, set_account
from calsync.errors import CalsyncError
from calsync.oa import schema as t
from calsync.oa.seed import seed_demo

PASSWORD = "Zh4o-Personal-Pa55!"


def user_ids(engine: sa.Engine, *logins: str) -> list[int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.users.c.login_name, t.users.c.id).where(t.users.c.login_name.in_(logins))
        )
        found = dict(rows.all())
    return [found[login] for login in logins]


@pytest.fixture
def oa(sqlite_oa_engine: sa.Engine) -> sa.Engine:
    seed_demo(sqlite_oa_engine)
    return sqlite_oa_engine


def test_the_password_is_never_stored_in_clear(oa: sa.Engine):
    key = Fernet.generate_key().decode()
    vault = AccountVault([key])
    zhao, lina = user_ids(oa, "zhao4", "lina")
    with oa.begin() as conn:
        set_account(conn, vault, zhao, "zhao4@exchange.com", PASSWORD)
        set_account(conn, vault, lina, "lina@exchange.com", PASSWORD)
    with oa.connect() as conn:
        rows = conn.execute(sa.select(t.user_accounts).order_by(t.user_accounts.c.user_id)).all()
    tokens = [r.password_encrypted for r in rows]
    assert all(PASSWORD not in token for token in tokens)
    assert tokens[0] != tokens[1]  # a fresh IV each time: equal passwords do not show
    assert {r.key_id for r in rows} == {key_id(key)} and key not in str(rows)
    oa.dispose()  # fold SQLite's WAL into the file, then read the file itself
    raw = Path(str(oa.url.database)).read_bytes()
    for form in (PASSWORD.encode(), base64.b64encode(PASSWORD.encode())):
        assert form not in raw
    assert b"zhao4@exchange.com" in raw  # the login is not secret; the scan does read the file
    assert repr(Account("zhao4@exchange.com", PASSWORD)).count(PASSWORD) == 0


def test_a_tampered_row_fails_naming_the_user_not_the_password(oa: sa.Engine):
    vault = AccountVault([Fernet.generate_key().decode()])
    [zhao] = user_ids(oa, "zhao4")
    with oa.begin() as conn:
        set_account(conn, vault, zhao, "zhao4@exchange.com", PASSWORD)
        token = conn.execute(sa.select(t.user_accounts.c.password_encrypted)).scalar_one()
        forged = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
        conn.execute(sa.update(t.user_accounts).values(password_encrypted=forged))
    with oa.connect() as conn, pytest.raises(CalsyncError) as refused:
        load_accounts(conn, vault, [zhao])
    message = str(refused.value)
    assert f"OA user {zhao}" in message and "cannot be decrypted" in message
    assert vault.current_key_id in message and PASSWORD not in message


def test_rotation_moves_every_row_to_the_new_key_then_the_old_key_can_go(oa: sa.Engine):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    ids = user_ids(oa, "zhao4", "lina", "wangfang")
    with oa.begin() as conn:
        for uid in ids:
            set_account(conn, AccountVault([old]), uid, f"u{uid}@exchange.com", f"{PASSWORD}{uid}")

    # 1. the new key first, the old one still there: everything still reads
    both = AccountVault([new, old])
    with oa.connect() as conn:
        assert {a.password for a in load_accounts(conn, both, ids).values()} == {
            f"{PASSWORD}{uid}" for uid in ids
        }
    # 2. rotate: every row re-encrypted under the new key (and a second rotate has nothing to do)
    with oa.begin() as conn:
        assert rotate_all(conn, both) == len(ids)
        assert rotate_all(conn, both) == 0
        assert set(conn.execute(sa.select(t.user_accounts.c.key_id)).scalars()) == {key_id(new)}
    # 3. the old key dropped: still readable; the old key alone no longer is
    with oa.connect() as conn:
        accounts = load_accounts(conn, AccountVault([new]), ids)
        assert [accounts[uid].password for uid in ids] == [f"{PASSWORD}{uid}" for uid in ids]
        with pytest.raises(CalsyncError, match="cannot be decrypted with the configured keys"):
            load_accounts(conn, AccountVault([old]), ids)


def test_no_key_or_a_bad_key_is_a_clear_error():
    with pytest.raises(CalsyncError, match="no account encryption key"):
        AccountVault(["", " "])
    with pytest.raises(CalsyncError, match="not a valid Fernet key") as bad:
        AccountVault(["not-a-key-Secret123"])
    assert "Secret123" not in str(bad.value)
