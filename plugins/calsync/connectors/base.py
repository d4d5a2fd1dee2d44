"""The one small interface every suite connector implements (DESIGN principle 3).

Reads: a window of a mailbox's default calendar with series expanded (``list_events``), and,
where the suite offers it, the changes since a stored state (``list_changes``, E7). Writes
(reverse sync): ``create_event`` (idempotent through the calsync key: a retry after a crash
finds the event it already made instead of making a second one; a write marked ``known_new``
skips that lookup), ``update_event`` (in place,
never delete + re-create), ``delete_event`` (honouring the integration's delete and
cancellation modes; an item already gone is not an error), ``find_by_key`` and ``get_event``
(one item by its suite id, None once it is gone: what reverse sync checks before it writes).

Every event a connector returns carries the suite's version of it in ``change_key`` (Graph
``changeKey``, EWS ``ChangeKey``, Alibaba: see ``alimail_wire``), which changes on every
modification, and its ``last_modified`` time as an aware UTC datetime. ``update_event`` with
content the event already has writes nothing (so no meeting update goes out); attendees of
kind ``resource`` (rooms) go to the suite as resource attendees.

Every event calsync creates carries its key in a custom property of the suite (Graph
single-value extended property, EWS extended property, Alibaba: see that connector); reads
return it in ``SuiteEvent.calsync_key``.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Callable, Mapping
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
    # The caller knows no earlier create with this key can have reached the suite (the
    # schedule's first delivery, never tried before): create_event may skip the lookup by key.
    known_new: bool = False


@dataclass(slots=True)
class ChangeSet:
    """What changed in a mailbox since a state: upserted events, removed suite ids, the state
    to store next; ``full`` when the connector had to fall back to a full window read (then
    every event of the window is in ``events`` and links not among them are gone)."""

    events: list[SuiteEvent]
    removed: list[str]
    state: str | None
    full: bool


@dataclass(frozen=True, slots=True)
class CalendarIds:
    """A run's news for ``calsync_calendar_ids``: ids looked up (mailbox → calendar id; kept,
    and their age restarts), and kept ids the suite said are gone (mailbox → that id)."""

    found: dict[str, str] = field(default_factory=dict)
    gone: dict[str, str] = field(default_factory=dict)


class IncrementalNotSupported(NotImplementedError):
    """The suite (or this connector) has no change feed: read the window in full."""


class SuiteConnector(abc.ABC):
    """Reads and writes one integration's mailboxes.

    Connectors are async so a task can serve many mailboxes at once while each suite's own
    per-mailbox limits hold; request-level throttling (Retry-After) is handled inside.
    """

    # Writes to one mailbox a reverse drain keeps in flight at once: Graph allows 4 concurrent
    # requests per mailbox; a connector that sends a mailbox's creates together in one request
    # (Exchange) takes more.
    writes_per_mailbox = 4
    # Whether writes to one mailbox asked for together leave in one request: a drain then keeps
    # a mailbox's changes side by side, else it takes them in turns over the mailboxes.
    batches_mailbox_writes = False

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

    async def get_event(self, mailbox: str, suite_id: str) -> SuiteEvent | None:
        """The event (or occurrence) with this suite id, ``change_key`` and ``last_modified``
        filled; None when it is gone (never an error for a missing item). An unknown mailbox
        still raises MailboxNotFound."""
        raise NotImplementedError(f"{type(self).__name__} cannot write yet")

    # Calendar ids kept across runs (``calsync_calendar_ids``): where the suite names the
    # calendar calsync writes to by an id looked up per mailbox (Alibaba Mail lists the
    # mailbox's calendars), a reverse drain starts with the ids earlier runs looked up.
    # Graph and EWS address the default calendar by a well-known name: they keep none.

    @property
    def calendar_name(self) -> str:
        """The configured calendar the ids stand for ('' = the mailbox's default)."""
        return ""

    def use_calendar_ids(self, ids: Mapping[str, str]) -> None:  # noqa: B027 - optional hook
        """Ids earlier runs looked up (mailbox → calendar id), used without a lookup. Where
        the suite answers that one is gone, or that an event is not in it, the calendar is
        looked up again before the answer is believed."""

    def calendar_ids(self) -> CalendarIds:
        """What to keep for the next runs: the ids looked up in this run, and the kept ids
        that turned out gone."""
        return CalendarIds()

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release HTTP clients; called once at the end of a task."""

    async def __aenter__(self) -> SuiteConnector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def write_differences(current: SuiteEvent, event: EventWrite) -> set[str]:
    """What an update would change on an event as read: a subset of ``subject``, ``body``,
    ``times``, ``location``, ``attendees``, ``sensitivity`` and ``key``. Empty: nothing to
    write. Instants are compared in UTC (the zone an event was made in is not content);
    attendees as (address, kind) sets, responses ignored; the key only when one is given."""
    changed: set[str] = set()
    if current.subject != event.subject:
        changed.add("subject")
    if current.body_type != event.body_type or (
        current.body != event.body
        if event.body_type == "html"
        else _plain(current.body) != _plain(event.body)
    ):
        changed.add("body")
    if event.all_day != current.all_day:
        changed.add("times")
    elif event.all_day:
        first = event.start_date
        last = event.end_date or (first + dt.timedelta(days=1) if first else None)
        if (current.start_date, current.end_date) != (first, last):
            changed.add("times")
    elif (
        event.start is None
        or event.end is None
        or current.start != event.start.astimezone(dt.UTC)
        or current.end != event.end.astimezone(dt.UTC)
    ):
        changed.add("times")
    if current.location != (event.location or "").strip():
        changed.add("location")
    have = {(a.email.strip().lower(), a.kind) for a in current.attendees if a.email.strip()}
    want = {(a.email.strip().lower(), a.kind) for a in event.attendees if a.email.strip()}
    if have != want:
        changed.add("attendees")
    if (current.sensitivity or "normal").lower() != (event.sensitivity or "normal").lower():
        changed.add("sensitivity")
    if event.key and current.calsync_key != event.key:
        changed.add("key")
    return changed


def _plain(text: str) -> str:
    """A text body as compared: line ends unified, trailing blanks and blank edges dropped
    (suites that store bodies as HTML give text back with their own line breaks)."""
    lines = (text or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


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
