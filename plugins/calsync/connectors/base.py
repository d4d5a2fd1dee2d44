"""The one small interface every suite connector implements (DESIGN principle 3).

Reads: a window of a mailbox's default calendar with series expanded (``list_events``), and,
where the suite offers it, the changes since a stored state (``list_changes``, E7). Writes
(reverse sync): ``create_event`` (idempotent through the calsync key: a retry after a crash
finds the event it already made instead of making a second one), ``update_event`` (in place,
never delete + re-create), ``delete_event`` (honouring the integration's delete and
cancellation modes; an item already gone is not an error) and ``find_by_key``.

Every event calsync creates carries its key in a custom property of the suite (Graph
single-value extended property, EWS extended property, Alibaba: see that connector); reads
return it in ``SuiteEvent.calsync_key``.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from calsync.config import IntegrationConfig
from calsync.model import Attendee, SuiteEvent, Window

if TYPE_CHECKING:
    from calsync.accounts import Account

# The name calsync's marker property carries in every suite (one GUID namespace for all).
CALSYNC_PROPERTY_SET = "6f9cbd8a-2f1e-4c51-9e0e-3c5a1d7b42c1"
CALSYNC_PROPERTY_NAME = "calsyncKey"


@dataclass(slots=True)
class EventWrite:
    """What reverse sync writes to a suite for one OA schedule (times as in SuiteEvent)."""

    subject: str
    start: dt.datetime | None
    end: dt.datetime | None
    all_day: bool = False
    start_date: dt.date | None = None
    end_date: dt.date | None = None  # exclusive
    timezone: str = "Asia/Shanghai"  # IANA; the zone the event is created in
    location: str = ""
    body: str = ""
    body_type: Literal["text", "html"] = "text"
    attendees: list[Attendee] = field(default_factory=list)  # rooms as kind="resource"
    key: str = ""  # calsync's idempotency key / marker
    sensitivity: str = "normal"


@dataclass(slots=True)
class ChangeSet:
    """What changed in a mailbox since a state: upserted events, removed suite ids, the state
    to store next; ``full`` when the connector had to fall back to a full window read (then
    every event of the window is in ``events`` and links not among them are gone)."""

    events: list[SuiteEvent]
    removed: list[str]
    state: str | None
    full: bool


class IncrementalNotSupported(NotImplementedError):
    """The suite (or this connector) has no change feed: read the window in full."""


class SuiteConnector(abc.ABC):
    """Reads and writes one integration's mailboxes.

    Connectors are async so a task can serve many mailboxes at once while each suite's own
    per-mailbox limits hold; request-level throttling (Retry-After) is handled inside.
    """

    def __init__(self, config: IntegrationConfig) -> None:
        self.config = config

    @abc.abstractmethod
    async def list_events(self, mailbox: str, window: Window) -> list[SuiteEvent]:
        """Every event of the mailbox's calendar overlapping the window, series expanded.

        Raises MailboxNotFound for an unknown mailbox and ConnectorError when the suite
        still fails after the connector's retries; never returns a partial read.
        """

    async def list_changes(self, mailbox: str, window: Window, state: str | None) -> ChangeSet:
        """Changes since ``state`` (None: start a new round with a full read)."""
        raise IncrementalNotSupported(f"{type(self).__name__} has no change feed")

    async def create_event(self, mailbox: str, event: EventWrite) -> SuiteEvent:
        raise NotImplementedError(f"{type(self).__name__} cannot write yet")

    async def update_event(self, mailbox: str, suite_id: str, event: EventWrite) -> SuiteEvent:
        raise NotImplementedError(f"{type(self).__name__} cannot write yet")

    async def delete_event(self, mailbox: str, suite_id: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot write yet")

    async def find_by_key(self, mailbox: str, key: str) -> SuiteEvent | None:
        raise NotImplementedError(f"{type(self).__name__} cannot write yet")

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release HTTP clients; called once at the end of a task."""

    async def __aenter__(self) -> SuiteConnector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


AccountLookup = Callable[[str], "Account | None"]


def connector_for(
    config: IntegrationConfig, accounts: AccountLookup | None = None
) -> SuiteConnector:
    """The connector of the integration's suite type. ``accounts`` maps a mailbox to its
    user's personal Exchange account (F21; Exchange in ``user`` access mode only)."""
    if config.type in ("office365_global", "office365_cn"):
        from calsync.connectors.graph import GraphConnector

        return GraphConnector(config)
    if config.type == "exchange":
        from calsync.connectors.exchange import ExchangeConnector

        return ExchangeConnector(config, accounts=accounts)
    if config.type == "alimail_v2":
        from calsync.connectors.alimail import AlimailConnector

        return AlimailConnector(config)
    raise ValueError(f"integration {config.id!r}: unknown suite type {config.type!r}")
