"""The one small interface every suite connector implements (DESIGN principle 3)."""

from __future__ import annotations

import abc

from calsync.config import IntegrationConfig
from calsync.model import SuiteEvent, Window


class SuiteConnector(abc.ABC):
    """Reads (and later writes) one integration's mailboxes.

    Connectors are async so a task can read many mailboxes at once while each suite's own
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

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release HTTP clients; called once at the end of a task."""

    async def __aenter__(self) -> SuiteConnector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def connector_for(config: IntegrationConfig) -> SuiteConnector:
    """The connector of the integration's suite type."""
    if config.type in ("office365_global", "office365_cn"):
        from calsync.connectors.graph import GraphConnector

        return GraphConnector(config)
    raise NotImplementedError(
        f"integration {config.id!r}: suite type {config.type!r} has no connector in this version"
    )
