"""The connector contract (tests/contract) run against ExchangeConnector and the EWS emulator.

The contract's test functions are imported here, so pytest collects them again in this module
with the ``suite`` fixture below; the connector is built by ``connector_for`` and reads the
service account from an ``AIRFLOW_CONN_*`` variable, as in a task. Throttling maps to EWS's
own: ErrorServerBusy with ``BackOffMilliseconds`` (and the emulator counts any request sent
before the back-off elapsed).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from calsync.config import parse_integration
from calsync.connectors.base import SuiteConnector, connector_for
from emulators.ews import EwsEmulator
from tests.contract.conftest import ZONE, Seed
from tests.contract.test_connector_contract import (  # noqa: F401 - collected here
    test_all_day_write_keeps_its_dates,
    test_create_is_idempotent_by_key_and_found_again,
    test_list_returns_the_window_only,
    test_paging_loses_and_repeats_nothing,
    test_throttling_is_survived_without_early_retries,
    test_time_zones_round_trip_through_a_write,
    test_update_in_place_and_delete_twice,
)

CONN = "calsync_ews_contract"


class ExchangeEnv:
    name = "exchange"
    mailbox = "lina@contoso.com"

    def __init__(self, server: EwsEmulator) -> None:
        self.server = server
        self.config = parse_integration(
            Path("contract_exchange.yaml"),
            f"name: contract\ntype: exchange\nconnection_id: {CONN}\ntimezone: {ZONE}\n"
            f"exchange: {{server: '{server.service_endpoint}'}}\n",
        )

    def seed(self, mailbox: str, events: list[Seed]) -> None:
        if not self.server.store.has_mailbox(mailbox):
            self.server.store.add_mailbox(mailbox)
        for ev in events:
            if ev.start_date is not None:
                assert ev.end_date is not None
                body = {"start": ev.start_date.isoformat(), "end": ev.end_date.isoformat()}
            else:
                assert ev.start is not None and ev.end is not None
                body = {
                    "start": ev.start.astimezone(dt.UTC).isoformat(),
                    "end": ev.end.astimezone(dt.UTC).isoformat(),
                }
            self.server.store.add_event(
                mailbox, {"subject": ev.subject, "timezone": ZONE, **body}, deliver=False
            )

    def count(self, mailbox: str) -> int:
        return len(self.server.store.events(mailbox))

    def throttle(self, rate_429: float, retry_after_s: int) -> None:
        self.server.faults.rate_server_busy = rate_429
        self.server.faults.back_off_ms = retry_after_s * 1000

    def violations(self) -> int:
        return int(self.server.stats["backoff_violations"])

    def connector(self) -> SuiteConnector:
        return connector_for(self.config)


@pytest.fixture(scope="module")
def ews_contract_server() -> Iterator[EwsEmulator]:
    emu = EwsEmulator().start()
    yield emu
    emu.stop()


@pytest.fixture
def suite(
    ews_contract_server: EwsEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ExchangeEnv]:
    server = ews_contract_server
    server.reset()
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", server.airflow_conn_json())
    server.store.add_mailbox(ExchangeEnv.mailbox)
    yield ExchangeEnv(server)
    server.reset()


def test_conn_json_is_a_generic_connection(ews_contract_server: EwsEmulator) -> None:
    conn = json.loads(ews_contract_server.airflow_conn_json())
    assert conn["conn_type"] == "generic" and conn["login"] and conn["password"]
