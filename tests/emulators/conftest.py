"""Fixtures for the emulator tests: one Graph emulator per module (reset before each test)
and a small httpx client that holds a token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulators.graph import GraphEmulator
from emulators.tls import client_context

MAILBOXES = ("alice@contoso.com", "bob@contoso.com", "carol@contoso.com", "room1@contoso.com")


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("graph-tls")


@pytest.fixture(scope="module")
def graph_emulator(tls_dir: Path) -> Iterator[GraphEmulator]:
    emu = GraphEmulator(tls_dir=tls_dir, port=0, page_size=50)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def emu(graph_emulator: GraphEmulator) -> GraphEmulator:
    """The emulator, emptied, fault-free, with the mailboxes in MAILBOXES."""
    graph_emulator.reset()
    for address in MAILBOXES:
        graph_emulator.store.add_mailbox(address, address.split("@")[0].title())
    return graph_emulator


class GraphClient:
    """httpx against the emulator, trusting its CA; ``token`` is fetched on first use.

    Tests share ``http`` between threads: its context comes from ``client_context``, since with
    a plain ``ssl.create_default_context`` httpcore's per-connection ``set_alpn_protocols``
    races with ``SSL_new`` in other threads and now and then sends a malformed ClientHello.
    """

    def __init__(
        self,
        emu: GraphEmulator,
        *,
        token: str | None = None,
        timeout: float = 10,
        limits: httpx.Limits | None = None,
    ) -> None:
        self.emu = emu
        self.http = httpx.Client(
            verify=client_context(emu.ca_file),
            timeout=timeout,
            limits=limits or httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        self._token = token

    def request_token(self, **form: str) -> httpx.Response:
        data = {
            "grant_type": "client_credentials",
            "client_id": "calsync-client",
            "client_secret": "s3cr3t",
            "scope": "https://graph.microsoft.com/.default",
            **form,
        }
        return self.http.post(f"{self.emu.authority}/tenant-1/oauth2/v2.0/token", data=data)

    @property
    def token(self) -> str:
        if self._token is None:
            response = self.request_token()
            assert response.status_code == 200, response.text
            self._token = response.json()["access_token"]
        return self._token

    def call(
        self,
        method: str,
        path: str,
        *,
        prefer: str | None = None,
        auth: bool = True,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        url = path if path.startswith("https://") else self.emu.base_url + path
        sent = dict(headers or {})
        if auth:
            sent["Authorization"] = f"Bearer {self.token}"
        if prefer:
            sent["Prefer"] = prefer
        return self.http.request(method, url, headers=sent, **kwargs)

    def view(
        self, mailbox: str, start: str, end: str, prefer: str | None = None, **params: str
    ) -> tuple[list[dict[str, Any]], list[httpx.Response]]:
        """All calendarView pages (following @odata.nextLink): (events, responses)."""
        url = f"users/{mailbox}/calendarView"
        query: dict[str, str] | None = {"startDateTime": start, "endDateTime": end, **params}
        events: list[dict[str, Any]] = []
        pages: list[httpx.Response] = []
        while url:
            response = self.call("GET", url, prefer=prefer, params=query)
            assert response.status_code == 200, response.text
            pages.append(response)
            events.extend(response.json()["value"])
            url, query = response.json().get("@odata.nextLink"), None
            assert len(pages) < 100, "paging does not end"
        return events, pages

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def client(emu: GraphEmulator) -> Iterator[GraphClient]:
    graph_client = GraphClient(emu)
    yield graph_client
    graph_client.close()
