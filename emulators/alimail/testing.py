"""Pytest fixtures for the Alibaba Mail emulator; a test module enables them with
``pytest_plugins = ["emulators.alimail.testing"]``.

- ``alimail_server``: one emulator per session (page size 10), started once.
- ``alimail``: that emulator reset (empty store, default faults, zero stats, default token
  lifetime) with the mailboxes in MAILBOXES.
- ``alimail_config``: a factory of ``IntegrationConfig`` for it (``alimail_v2``, Shanghai).
- ``alimail_connector``: a factory of ``AlimailConnector`` with the emulator's credentials
  passed directly (the Airflow-connection path has its own tests); closed after the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from emulators.alimail.server import DEFAULT_APP_ID, DEFAULT_APP_SECRET, AlimailEmulator

MAILBOXES = ("alice@example.com", "bob@example.com", "carol@example.com")
TEST_SECRET = "Ali-calsync-APP-SECRET-7c41"  # distinctive: tests scan messages and logs for it
CONN_ID = "calsync_alimail_test"


@pytest.fixture(scope="session")
def alimail_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlimailEmulator]:
    emu = AlimailEmulator(
        tls_dir=tmp_path_factory.mktemp("alimail-tls"),
        port=0,
        app_secret=TEST_SECRET,
        page_size=10,
    )
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def alimail(alimail_server: AlimailEmulator) -> AlimailEmulator:
    alimail_server.reset()
    alimail_server.token_lifetime_s = 7200
    for address in MAILBOXES:
        alimail_server.store.add_mailbox(address, address.split("@")[0].title())
    return alimail_server


@pytest.fixture
def alimail_config(alimail: AlimailEmulator) -> Callable[..., Any]:
    from calsync.config import IntegrationConfig

    def make(**alimail_params: Any) -> IntegrationConfig:
        return IntegrationConfig(
            id="alimail_test",
            name="Alibaba Mail test",
            type="alimail_v2",
            connection_id=CONN_ID,
            timezone="Asia/Shanghai",
            alimail={"endpoint": alimail.endpoint, **alimail_params},
            execution={"concurrency": 4},
        )

    return make


@pytest.fixture
def alimail_connector(
    alimail: AlimailEmulator, alimail_config: Callable[..., Any]
) -> Iterator[Callable[..., Any]]:
    from calsync.connectors.alimail import AlimailConnector
    from calsync.connectors.alimail_http import Credentials, RetryPolicy

    made: list[AlimailConnector] = []

    def make(
        *,
        secret: str = TEST_SECRET,
        extras: dict[str, Any] | None = None,
        policy: RetryPolicy | None = None,
        verify: bool | str | Path | None = None,
        **params: Any,
    ) -> AlimailConnector:
        creds = Credentials(
            DEFAULT_APP_ID,
            secret,
            str(alimail.ca_file) if verify is None else verify if verify is True else str(verify),
            extras or {},
        )
        connector = AlimailConnector(alimail_config(**params), credentials=creds, policy=policy)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        asyncio.run(connector.aclose())


__all__ = ["CONN_ID", "DEFAULT_APP_SECRET", "MAILBOXES", "TEST_SECRET"]
