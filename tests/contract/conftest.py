"""The connector contract: every suite connector passes the same tests against its emulator.

A suite joins by providing a ``ContractEnv`` fixture (below, one per suite) that seeds its
emulator with suite-neutral events and exposes the knobs the tests need.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from calsync.config import IntegrationConfig, parse_integration
from calsync.connectors.base import SuiteConnector, connector_for
from tests.integration.conftest import GRAPH_CONN

ZONE = "Asia/Shanghai"
EWS_CONN = "calsync_ews_contract"
ALIMAIL_CONN = "calsync_alimail_contract"


@dataclass
class Seed:
    """A suite-neutral event to put into a mailbox."""

    subject: str
    start: dt.datetime | None = None  # aware
    end: dt.datetime | None = None
    start_date: dt.date | None = None  # all-day, end exclusive
    end_date: dt.date | None = None


class ContractEnv(Protocol):
    name: str
    config: IntegrationConfig
    mailbox: str

    def seed(self, mailbox: str, events: list[Seed]) -> None: ...
    def count(self, mailbox: str) -> int: ...
    def throttle(self, rate_429: float, retry_after_s: int) -> None: ...
    def violations(self) -> int: ...
    def connector(self) -> SuiteConnector: ...
    def with_invitations(self) -> None: ...
    def messages_sent(self) -> int: ...


class GraphEnv:
    name = "office365"
    mailbox = "lina@contoso.com"

    def __init__(self, server: Any) -> None:
        self.server = server
        self.config = parse_integration(
            Path("contract_o365.yaml"),
            f"name: contract\ntype: office365_global\nconnection_id: {GRAPH_CONN}\n"
            f"timezone: {ZONE}\noffice365: {{page_size: 10}}\n",
        )

    def seed(self, mailbox: str, events: list[Seed]) -> None:
        if not self.server.store.has_mailbox(mailbox):
            self.server.store.add_mailbox(mailbox)
        for ev in events:
            if ev.start_date is not None:
                assert ev.end_date is not None
                body = {
                    "isAllDay": True,
                    "start": {"dateTime": f"{ev.start_date}T00:00:00", "timeZone": ZONE},
                    "end": {"dateTime": f"{ev.end_date}T00:00:00", "timeZone": ZONE},
                }
            else:
                assert ev.start is not None and ev.end is not None
                body = {
                    "start": {
                        "dateTime": ev.start.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                        "timeZone": "UTC",
                    },
                    "end": {
                        "dateTime": ev.end.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                        "timeZone": "UTC",
                    },
                }
            self.server.store.add_event(mailbox, {"subject": ev.subject, **body}, deliver=False)

    def count(self, mailbox: str) -> int:
        return len(self.server.store.events(mailbox))

    def throttle(self, rate_429: float, retry_after_s: int) -> None:
        self.server.faults.rate_429 = rate_429
        self.server.faults.retry_after_s = retry_after_s

    def violations(self) -> int:
        return self.server.stats["retry_after_violations"]

    def connector(self) -> SuiteConnector:
        return connector_for(self.config)

    def with_invitations(self) -> None:
        """Graph always sends meeting messages for an organiser's writes."""

    def messages_sent(self) -> int:
        kinds = ("invitations_sent", "updates_sent", "cancellations_sent")
        return sum(sum(self.server.stats[kind].values()) for kind in kinds)


class ExchangeEnv:
    name = "exchange"
    mailbox = "lina@contoso.com"

    def __init__(self, server: Any) -> None:
        self.server = server
        self.config = self._config("")

    def _config(self, extra: str) -> IntegrationConfig:
        return parse_integration(
            Path("contract_exchange.yaml"),
            f"name: contract\ntype: exchange\nconnection_id: {EWS_CONN}\ntimezone: {ZONE}\n"
            f"exchange: {{server: '{self.server.service_endpoint}'{extra}}}\n",
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

    def with_invitations(self) -> None:
        self.config = self._config(", invitation_mode: SendOnlyToAll")

    def messages_sent(self) -> int:
        return len(self.server.messages)


class AlimailEnv:
    name = "alimail_v2"
    mailbox = "lina@example.com"

    def __init__(self, server: Any) -> None:
        self.server = server
        self.config = self._config("")

    def _config(self, extra: str) -> IntegrationConfig:
        return parse_integration(
            Path("contract_alimail.yaml"),
            f"name: contract\ntype: alimail_v2\nconnection_id: {ALIMAIL_CONN}\ntimezone: {ZONE}\n"
            f"alimail: {{endpoint: '{self.server.endpoint}'{extra}}}\n",
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

    def with_invitations(self) -> None:
        self.config = self._config(", send_notifications: true")

    def messages_sent(self) -> int:
        return sum(self.server.stats["notifications"].values())


@pytest.fixture(params=["office365", "exchange", "alimail_v2"])
def suite(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ContractEnv]:
    """Each connector against its emulator, built by ``connector_for`` from an integration
    config and an ``AIRFLOW_CONN_*`` connection, as in a task."""
    env: Any
    if request.param == "office365":
        server = request.getfixturevalue("graph_server")
        env = GraphEnv(server)
    elif request.param == "exchange":
        server = request.getfixturevalue("ews_server")
        monkeypatch.setenv(f"AIRFLOW_CONN_{EWS_CONN.upper()}", server.airflow_conn_json())
        env = ExchangeEnv(server)
    else:
        server = request.getfixturevalue("alimail_server")
        monkeypatch.setenv(f"AIRFLOW_CONN_{ALIMAIL_CONN.upper()}", server.airflow_conn_json())
        env = AlimailEnv(server)
    server.reset()
    server.store.add_mailbox(env.mailbox)
    yield env
    server.reset()
