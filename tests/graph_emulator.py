"""The one session-wide Graph emulator (``graph_server``) for every test directory.

Defined once, as a plugin of the root conftest: a conftest that re-imports the fixture function
makes a *second* session fixture (a second emulator) that repoints the process-wide
``AIRFLOW_CONN_CALSYNC_O365_TEST`` at itself, away from the emulator other tests seed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

GRAPH_CONN = "calsync_o365_test"
GRAPH_SECRET = "Zq7-calsync-CLIENT-SECRET-4e1f"  # distinctive: tests scan outputs for it


@pytest.fixture(scope="session")
def graph_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from emulators.graph import GraphEmulator

    emu = GraphEmulator(
        tls_dir=tmp_path_factory.mktemp("tls"), port=0, page_size=10, client_secret=GRAPH_SECRET
    )
    emu.start()
    bundle = tmp_path_factory.mktemp("ca") / "bundle.pem"
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    bundle.write_text(
        (system.read_text() if system.exists() else "") + Path(emu.ca_file).read_text()
    )
    conn_var = f"AIRFLOW_CONN_{GRAPH_CONN.upper()}"
    saved = {k: os.environ.get(k) for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", conn_var)}
    os.environ[conn_var] = emu.airflow_conn_json()
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
    yield emu
    emu.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
