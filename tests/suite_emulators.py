"""The session-wide EWS and Alibaba Mail emulators (``ews_server``, ``alimail_server``) for
every test directory, defined once as a plugin of the root conftest (as ``graph_server`` is:
see tests/graph_emulator.py). A module that imported the fixture functions made a session
fixture of its own, so each such module started its own pair of emulators. Tests point their
connection variables at these with ``monkeypatch``; a module that needs other settings (a
service login, TLS) defines its own module fixture of the same name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ews_server() -> Iterator[Any]:
    from emulators.ews import EwsEmulator

    emu = EwsEmulator().start()
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def alimail_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from emulators.alimail import AlimailEmulator

    emu = AlimailEmulator(tls_dir=tmp_path_factory.mktemp("alimail-tls"))
    emu.start()
    yield emu
    emu.stop()
