"""The connector contract (tests/contract) run against AlimailConnector and its emulator.

The contract's test functions are imported here, so pytest collects them again in this module
with the ``suite`` fixture below; the connector is built by ``connector_for`` and reads its
credentials from an ``AIRFLOW_CONN_*`` variable, as in a task. (Moving ``AlimailEnv`` into
tests/contract/conftest.py's ``suite`` params would make this module unnecessary.)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from calsync.config import parse_integration
from calsync.connectors.base import SuiteConnector, connector_for
from emulators.alimail import AlimailEmulator
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

pytest_plugins = ["emulators.alimail.testing"]

CONN = "calsync_alimail_contract"


class AlimailEnv:
    name = "alimail_v2"
    mailbox = "lina@example.com"

    def __init__(self, server: AlimailEmulator) -> None:
        self.server = server
        self.config = parse_integration(
            Path("contract_alimail.yaml"),
            f"name: contract\ntype: alimail_v2\nconnection_id: {CONN}\ntimezone: {ZONE}\n"
            f"alimail: {{endpoint: '{server.endpoint}'}}\n",
        )

    def seed(self, mailbox: str, events: list[Seed]) -> None:
        if not self.server.store.has_mailbox(mailbox):
            self.server.store.add_mailbox(mailbox)
        for ev in events:
            if ev.start_date is not None:
                assert ev.end_date is not None
                body = {
                    "isAllDay": True,
                    "start": {"date": ev.start_date.isoformat()},
                    "end": {"date": ev.end_date.isoformat()},
                    "timeZone": ZONE,
                }
            else:
                assert ev.start is not None and ev.end is not None
                fmt = "%Y-%m-%dT%H:%M:%S"
                body = {
                    "start": {
                        "dateTime": ev.start.astimezone(dt.UTC).strftime(fmt),
                        "timeZone": "UTC",
                    },
                    "end": {"dateTime": ev.end.astimezone(dt.UTC).strftime(fmt), "timeZone": "UTC"},
                }
            self.server.store.add_event(mailbox, {"subject": ev.subject, **body})

    def count(self, mailbox: str) -> int:
        return len(self.server.store.events(mailbox))

    def throttle(self, rate_429: float, retry_after_s: int) -> None:
        self.server.faults.rate_429 = rate_429
        self.server.faults.retry_after_s = retry_after_s

    def violations(self) -> int:
        return int(self.server.stats["retry_after_violations"])

    def connector(self) -> SuiteConnector:
        return connector_for(self.config)


@pytest.fixture
def suite(alimail: AlimailEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[AlimailEnv]:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", alimail.airflow_conn_json())
    alimail.store.add_mailbox(AlimailEnv.mailbox)
    yield AlimailEnv(alimail)
    alimail.reset()
