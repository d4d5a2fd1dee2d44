"""TLS verification is on by default for every connector (issue 7): each suite's emulator
serves HTTPS from a private CA; a connector built as a task builds it (``connector_for`` +
an ``AIRFLOW_CONN_*`` connection) without that CA refuses the server with a clear,
non-retriable error that says how to trust it, and sends no API request. Given the CA, the
same call works, so the refusal was the certificate's."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from calsync.config import parse_integration
from calsync.connectors.base import connector_for
from calsync.errors import ConnectorError
from calsync.model import Window

MAILBOX = "lina@contoso.com"
WINDOW = Window(dt.date(2026, 12, 1), dt.date(2026, 12, 3), "Asia/Shanghai")
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture
def no_ca_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the system CAs: other tests point these variables at an emulator's CA."""
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ews_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from emulators.ews import EwsEmulator

    emu = EwsEmulator(tls_dir=tmp_path_factory.mktemp("ews-tls")).start()
    emu.store.add_mailbox(MAILBOX)
    yield emu
    emu.stop()


def list_events(config: Any) -> Any:
    async def go() -> Any:
        async with connector_for(config) as connector:
            return await connector.list_events(MAILBOX, WINDOW)

    return asyncio.run(go())


def graph_case(server: Any, monkeypatch: pytest.MonkeyPatch, trusted: bool) -> tuple[Any, int]:
    conn_id = f"calsync_tls_graph_{'ca' if trusted else 'noca'}"  # hooks are cached per id
    conn = json.loads(server.airflow_conn_json())
    if not trusted:
        del conn["extra"]["verify"]
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    server.reset()
    server.store.add_mailbox(MAILBOX)
    text = f"name: tls\ntype: office365_global\nconnection_id: {conn_id}\n"
    return parse_integration(Path("tls_o365.yaml"), text), 0


def exchange_case(server: Any, monkeypatch: pytest.MonkeyPatch, trusted: bool) -> tuple[Any, int]:
    monkeypatch.setenv("AIRFLOW_CONN_CALSYNC_TLS_EWS", server.airflow_conn_json())
    ca = f", ca_bundle: '{server.ca_file}'" if trusted else ""
    text = (
        "name: tls\ntype: exchange\nconnection_id: calsync_tls_ews\n"
        f"exchange: {{server: '{server.service_endpoint}'{ca}}}\n"
    )
    return parse_integration(Path("tls_ews.yaml"), text), 0


def alimail_case(server: Any, monkeypatch: pytest.MonkeyPatch, trusted: bool) -> tuple[Any, int]:
    conn = json.loads(server.airflow_conn_json())
    if not trusted:
        del conn["extra"]["verify"]
    monkeypatch.setenv("AIRFLOW_CONN_CALSYNC_TLS_ALI", json.dumps(conn))
    server.reset()
    server.store.add_mailbox(MAILBOX)
    text = (
        "name: tls\ntype: alimail_v2\nconnection_id: calsync_tls_ali\n"
        f"alimail: {{endpoint: '{server.endpoint}'}}\n"
    )
    return parse_integration(Path("tls_ali.yaml"), text), 0


SUITES = {
    "office365": ("graph_server", graph_case, "verify"),
    "exchange": ("ews_tls", exchange_case, "ca_bundle"),
    "alimail_v2": ("alimail_server", alimail_case, "verify"),
}


def api_requests(server: Any) -> int:
    stats = server.stats.snapshot()
    by_kind = stats.get("by_kind") or stats.get("by_operation") or {}
    return sum(n for kind, n in by_kind.items() if kind != "token")


@pytest.mark.parametrize("suite", list(SUITES))
def test_a_server_signed_by_an_untrusted_ca_is_refused(
    suite: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    no_ca_in_environment: None,
):
    fixture, case, hint = SUITES[suite]
    server = request.getfixturevalue(fixture)
    assert server.ca_file, "the emulator must serve HTTPS for this test"
    untrusted, _ = case(server, monkeypatch, trusted=False)
    server.stats.reset()
    with pytest.raises(ConnectorError) as refused:
        list_events(untrusted)
    message = str(refused.value)
    assert "TLS" in message or "certificate" in message.lower(), message
    assert "CERTIFICATE_VERIFY_FAILED" in message or "verify failed" in message, message
    assert f"'{hint}'" in message, message  # says where the CA goes
    assert not refused.value.retriable  # retrying will not make the certificate trusted
    assert api_requests(server) == 0  # nothing was sent past the handshake

    trusted, _ = case(server, monkeypatch, trusted=True)
    assert list_events(trusted) == []
