"""F21: each user's own Exchange login and password, stored encrypted in the OA database.

Encryption is Fernet (``cryptography``: AES-128-CBC + HMAC-SHA256, authenticated), with keys
taken from an Airflow connection (default ``calsync_secrets``: its password holds one key or a
comma-separated list, newest first) or the ``CALSYNC_ACCOUNT_KEYS`` environment variable —
never from the repository. Each row records the id of the key that encrypted it (the first
16 hex digits of the key's SHA-256), so a rotation is: put the new key first in the list,
run ``python -m calsync.accounts rotate``, then drop the old key.

Table ``calsync_user_accounts`` (user_id, login, password_encrypted, key_id, updated_at) is
what an OA personal-settings page writes to through :func:`set_account`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from calsync.errors import CalsyncError
from calsync.oa import schema as t

DEFAULT_KEYS_CONNECTION = "calsync_secrets"
KEYS_ENV = "CALSYNC_ACCOUNT_KEYS"


@dataclass(frozen=True, slots=True)
class Account:
    login: str
    password: str

    def __repr__(self) -> str:  # never show the password, even in a traceback's locals
        return f"Account(login={self.login!r}, password=***)"


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class AccountVault:
    """Encrypts and decrypts personal passwords with the configured keys (newest first)."""

    def __init__(self, keys: Sequence[str]) -> None:
        keys = [k.strip() for k in keys if k.strip()]
        if not keys:
            raise CalsyncError(
                f"no account encryption key: set connection {DEFAULT_KEYS_CONNECTION!r} "
                f"(password = a Fernet key) or {KEYS_ENV}"
            )
        try:
            self._fernets = [Fernet(k.encode()) for k in keys]
        except ValueError:
            raise CalsyncError("an account encryption key is not a valid Fernet key") from None
        self._multi = MultiFernet(self._fernets)
        self.current_key_id = key_id(keys[0])

    @classmethod
    def from_environment(cls, conn_id: str = DEFAULT_KEYS_CONNECTION) -> AccountVault:
        raw = os.environ.get(KEYS_ENV)
        if not raw:
            try:
                from airflow.sdk import BaseHook

                raw = BaseHook.get_connection(conn_id).password or ""
            except Exception:  # an unknown connection is reported as "no key" below
                raw = ""
        return cls(raw.split(","))

    def encrypt(self, password: str) -> str:
        return self._multi.encrypt(password.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._multi.decrypt(token.encode()).decode()
        except InvalidToken:
            raise CalsyncError(
                "a stored Exchange password cannot be decrypted with the configured keys "
                "(wrong or rotated-away key)"
            ) from None

    def rotate(self, token: str) -> str:
        return self._multi.rotate(token.encode()).decode()


def set_account(
    conn: sa.Connection, vault: AccountVault, user_id: int, login: str, password: str
) -> None:
    """Create or replace one user's personal account (in the caller's transaction)."""
    if not login.strip() or not password:
        raise CalsyncError("an Exchange account needs a login and a password")
    values = {
        "login": login.strip(),
        "password_encrypted": vault.encrypt(password),
        "key_id": vault.current_key_id,
        "updated_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
    }
    updated = conn.execute(
        sa.update(t.user_accounts).where(t.user_accounts.c.user_id == user_id).values(**values)
    ).rowcount
    if not updated:
        conn.execute(sa.insert(t.user_accounts).values(user_id=user_id, **values))


def load_accounts(
    conn: sa.Connection, vault: AccountVault, user_ids: Sequence[int]
) -> dict[int, Account]:
    """Decrypted accounts of these users (those without one are absent)."""
    out: dict[int, Account] = {}
    ids = list(user_ids)
    for i in range(0, len(ids), 500):
        rows = conn.execute(
            sa.select(t.user_accounts).where(t.user_accounts.c.user_id.in_(ids[i : i + 500]))
        )
        for row in rows:
            try:
                password = vault.decrypt(row.password_encrypted)
            except CalsyncError as exc:  # say whose row, and under which key it was written
                raise CalsyncError(
                    f"{t.user_accounts.name} row of OA user {row.user_id} (key id {row.key_id}): "
                    f"{exc}"
                ) from None
            out[row.user_id] = Account(row.login, password)
    return out


def rotate_all(conn: sa.Connection, vault: AccountVault) -> int:
    """Re-encrypt every row not yet under the newest key; returns how many changed."""
    changed = 0
    for row in conn.execute(sa.select(t.user_accounts)).all():
        if row.key_id == vault.current_key_id:
            continue
        conn.execute(
            sa.update(t.user_accounts)
            .where(t.user_accounts.c.id == row.id)
            .values(
                password_encrypted=vault.rotate(row.password_encrypted), key_id=vault.current_key_id
            )
        )
        changed += 1
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    from calsync.oa.db import engine_from_airflow_connection, engine_from_url

    parser = argparse.ArgumentParser(prog="python -m calsync.accounts", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="SQLAlchemy URL of the OA database")
    where.add_argument("--conn-id", help="Airflow connection of the OA database")
    sub = parser.add_subparsers(dest="command", required=True)
    set_cmd = sub.add_parser("set", help="set one user's Exchange login and password")
    set_cmd.add_argument("--user", required=True, help="OA login name of the user")
    set_cmd.add_argument("--login", required=True, help="Exchange login, e.g. zhao4@exchange.com")
    set_cmd.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    sub.add_parser("rotate", help="re-encrypt every password with the newest key")
    args = parser.parse_args(argv)

    engine = engine_from_url(args.url) if args.url else engine_from_airflow_connection(args.conn_id)
    vault = AccountVault.from_environment()
    with engine.begin() as conn:
        if args.command == "rotate":
            print(f"re-encrypted {rotate_all(conn, vault)} account(s)")
            return 0
        user_id = conn.execute(
            sa.select(t.users.c.id).where(t.users.c.login_name == args.user)
        ).scalar()
        if user_id is None:
            print(f"unknown OA user {args.user!r}", file=sys.stderr)
            return 2
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass()
        set_account(conn, vault, user_id, args.login, password)
    print(f"account of {args.user} set (login {args.login})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
