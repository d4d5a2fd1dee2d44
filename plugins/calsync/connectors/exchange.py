"""Exchange Server (on-premises) through EWS with exchangelib (F12, F21, E4, E5, E7, E11–E14).

Parameters (``config.exchange``, F12): ``server`` (host or IP → ``https://{server}/EWS/
Exchange.asmx``; a full URL is taken as is), ``access_mode`` (``impersonation``: the service
account of the Airflow connection ``config.connection_id`` — login, password — acts for every
mailbox with ``ExchangeImpersonation``; ``user``: each mailbox's own account from the
``accounts`` lookup, F21, a missing one raising ``AccountMissing``), ``domain_auth`` (NTLM with
``DOMAIN\\user``, else Basic), ``check_mailbox_domain`` + ``domain`` (a mailbox outside it is
refused before any request), ``invitation_mode`` (CreateItem ``SendMeetingInvitations`` and
UpdateItem ``SendMeetingInvitationsOrCancellations``), ``delete_mode`` (DeleteItem
``DeleteType``), ``cancellation_mode`` (DeleteItem ``SendMeetingCancellations``), ``ca_bundle``
(an internal CA trusted for this server only; TLS is always verified). An event is created in
``EventWrite.timezone`` — the engine passes the integration's ``timezone`` there (F12; China
Standard Time by default) — sent to EWS as its Windows name; an unknown zone falls back to the
integration's.

Connection extras (optional): ``ntlm_domain`` (the NetBIOS domain put in front of a login
without one when ``domain_auth`` is on; a login ``DOMAIN\\user`` is used as is, an address
``user@domain`` is sent as a UPN), ``exchange_build`` (e.g. ``15.0.1497.2`` for Exchange 2013;
default 15.1 = Exchange 2016/2019), ``max_wait_s`` / ``total_wait_s`` (throttling budget).

exchangelib is synchronous: every call runs in a small thread pool (``execution.concurrency``
threads) so the async interface holds; each call carries its own back-off budget
(``BoundedFaultTolerance``: ErrorServerBusy's BackOffMilliseconds and a 503's Retry-After are
honoured, a single wait above ``max_wait_s`` or a total above ``total_wait_s`` ends in a
retriable ``ConnectorError``). ``version`` and ``access_type`` are always explicit and
autodiscover is off, so nothing is probed.

Reads: ``calendar.view(start, end)`` (CalendarView: series expanded, E4) for the window, each
item normalised by :func:`normalize_item` (UTC instants; all-day events as dates taken in the
item's own zone, never shifted; Windows zones → IANA through the CLDR table; occurrences keyed
by their ``RecurrenceId``; ``series_id`` = the master's item id, looked up only when the window
holds occurrences). calsync's key lives in an extended property (``CALSYNC_PROPERTY_SET`` /
``CALSYNC_PROPERTY_NAME``, string), read back as ``SuiteEvent.calsync_key`` (E11).

One item: ``get_event`` is a GetItem of the id (occurrence ids too; ``series_id`` looked up
for those), None on ErrorItemNotFound. Writes: rooms (attendees of kind ``resource``) go to
``Resources``, the location to ``Location``; ``update_event`` compares the item as it is with
the write and sends an UpdateItem of the changed fields only, none at all when nothing
changed — so ``invitation_mode`` only ever applies to a real change (an update to the
attendees, invitations to added ones), never to a rewrite of the same content.

Incremental reads (E7, E15): ``list_changes`` keeps an opaque state ``ews1.<base64 zlib JSON>``
holding the SyncFolderItems state, the window it was made for, and for each recurring master
with occurrences in that window the ids of those occurrences. SyncFolderItems reports changed
*items* (singles and masters, not occurrences), so: a changed single is re-read and returned if
it overlaps the window, else reported removed; a changed master is expanded with one
CalendarView of the window and its occurrences returned, those no longer there reported
removed; a deleted item is removed with the occurrences remembered for it. No state, an invalid
or unreadable state (ErrorInvalidSyncStateData) or a different window → a full window read
(``ChangeSet.full``) with a new state (the old SyncFolderItems state is carried on when it is
still valid, so a moved window costs one view, not a full folder enumeration).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import functools
import json
import logging
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    NTLM,
    Account,
    Build,
    CalendarItem,
    Configuration,
    Credentials,
    EWSDate,
    EWSDateTime,
    EWSTimeZone,
    ExtendedProperty,
    Version,
)
from exchangelib import errors as ews_errors
from exchangelib.folders import Calendar, Root
from exchangelib.items import AUTO_RESOLVE, ID_ONLY, SAVE_ONLY, SHALLOW, BulkCreateResult
from exchangelib.properties import Attendee as EwsAttendee
from exchangelib.properties import CalendarView, DistinguishedFolderId
from exchangelib.properties import Mailbox as EwsMailbox
from exchangelib.protocol import Protocol

from calsync.accounts import Account as PersonalAccount
from calsync.config import IntegrationConfig, resolve_timezone
from calsync.connectors.base import (
    CALSYNC_PROPERTY_NAME,
    CALSYNC_PROPERTY_SET,
    AccountLookup,
    ChangeSet,
    EventWrite,
    SuiteConnector,
)
from calsync.connectors.exchange_create import (
    RawCreateItem,
    calendar_item_element,
    with_item_id,
)
from calsync.connectors.exchange_raw import (
    CachedSyncFolderItems,
    RawFindItem,
    RawGetItem,
    RawSyncFolderItems,
    master_of,
    normalize_element,
    unreadable_element,
)
from calsync.connectors.exchange_transport import (
    BoundedFaultTolerance,
    endpoint_for,
    install_env_once,
    install_fast_bodies,
    install_log_filter,
    install_pool_fix,
    parse_build,
    trust_ca_bundle,
)
from calsync.connectors.mailbox_batch import MailboxBatcher
from calsync.errors import AccountMissing, ConnectorError, MailboxNotFound
from calsync.model import Attendee, SuiteEvent, Window

log = logging.getLogger(__name__)

DEFAULT_BUILD = Build(15, 1, 2507, 6)  # Exchange 2016 CU23; API version "Exchange2016"
DEFAULT_MAX_WAIT_S = 60.0  # one back-off longer than this fails the call at once
DEFAULT_TOTAL_WAIT_S = 120.0  # all back-offs of one call together
CREATE_BATCH = 50  # items per CreateItem (exchangelib's own chunk is 100)
SYNC_PAGE = 512  # SyncFolderItems MaxChangesReturned (EWS maximum)
STATE_PREFIX = "ews1."
T = TypeVar("T")


class CalsyncKeyProperty(ExtendedProperty):
    """calsync's marker / idempotency key on the items it creates (E11)."""

    property_set_id = CALSYNC_PROPERTY_SET
    property_name = CALSYNC_PROPERTY_NAME
    property_type = "String"


_register_lock = threading.Lock()


def _register_key_property() -> None:
    with _register_lock:
        if "calsync_key" not in {f.name for f in CalendarItem.FIELDS}:
            CalendarItem.register("calsync_key", CalsyncKeyProperty)


_register_key_property()
install_log_filter()
install_pool_fix()
install_fast_bodies()
install_env_once()

READ_FIELDS = (
    "subject",
    "body",
    "start",
    "end",
    "is_all_day",
    "location",
    "organizer",
    "required_attendees",
    "optional_attendees",
    "resources",
    "uid",
    "type",
    "recurrence_id",
    "original_start",
    "is_cancelled",
    "sensitivity",
    "legacy_free_busy_status",
    "importance",
    "categories",
    "last_modified_time",
    "is_meeting",
    "my_response_type",
    "_start_timezone",
    "_end_timezone",
    "calsync_key",
)
# What SyncFolderItems returns per changed item: enough to tell singles from series and to
# skip singles outside the window without reading them.
SYNC_FIELDS = ("uid", "type", "start", "end", "is_all_day", "_start_timezone", "_end_timezone")

EVENT_TYPES = {
    "Single": "singleInstance",
    "Occurrence": "occurrence",
    "Exception": "exception",
    "RecurringMaster": "seriesMaster",
}
RESPONSES = {
    "Unknown": "none",
    "NoResponseReceived": "none",
    "Organizer": "organizer",
    "Accept": "accepted",
    "Tentative": "tentativelyAccepted",
    "Decline": "declined",
}
SHOW_AS = {
    "Free": "free",
    "Tentative": "tentative",
    "Busy": "busy",
    "OOF": "oof",
    "WorkingElsewhere": "workingElsewhere",
    "NoData": "unknown",
}
KEY_PROPERTY = (CALSYNC_PROPERTY_SET, CALSYNC_PROPERTY_NAME)  # calsync's marker, as EWS names it
SENSITIVITY_OUT = {"normal": "Normal", "personal": "Personal", "private": "Private",
                   "confidential": "Confidential"}  # fmt: skip


# --- normalising ------------------------------------------------------------------------------


def _utc(value: dt.datetime) -> dt.datetime:
    """A plain aware UTC datetime (not an EWSDateTime)."""
    plain = dt.datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=value.tzinfo,
        fold=value.fold,
    )
    moment = plain.astimezone(dt.UTC)
    return dt.datetime(
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        moment.microsecond,
        tzinfo=dt.UTC,
    )


def _ews_utc(value: dt.datetime) -> EWSDateTime:
    """An aware datetime as exchangelib's EWSDateTime in UTC."""
    moment = _utc(value)
    return EWSDateTime(
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        moment.microsecond,
        tzinfo=EWSTimeZone("UTC"),
    )


def _plain_date(value: dt.date) -> dt.date:
    return dt.date(value.year, value.month, value.day)


def _zone_name(tz: Any, fallback: str) -> str:
    """IANA name of an item's EWSTimeZone (via its Windows id and the CLDR table)."""
    if tz is None:
        return fallback
    for candidate in (getattr(tz, "ms_id", None), getattr(tz, "key", None)):
        if candidate:
            try:
                return resolve_timezone(candidate)
            except ValueError:
                continue
    return fallback


def _person(mailbox: Any) -> tuple[str, str]:
    if mailbox is None:
        return "", ""
    return (mailbox.email_address or "").strip().lower(), (mailbox.name or "").strip()


def normalize_item(item: Any, default_zone: str) -> SuiteEvent:
    """An exchangelib ``CalendarItem`` (read with ``READ_FIELDS``) as a :class:`SuiteEvent`.

    Raises ValueError naming the problem for an item that cannot be understood.
    """
    if not getattr(item, "id", None):
        raise ValueError("item without an id")
    if item.start is None or item.end is None:
        raise ValueError("item without start or end")
    zone = _zone_name(getattr(item, "_start_timezone", None), default_zone)
    all_day = bool(item.is_all_day)
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    start_date: dt.date | None = None
    end_date: dt.date | None = None
    if all_day:
        # exchangelib gives all-day bounds as dates in the item's own zone with an inclusive
        # end; calsync keeps the exclusive end every other suite sends.
        first, last = item.start, item.end
        if isinstance(first, dt.datetime):  # no zone came back: take the dates as they are
            first = first.astimezone(EWSTimeZone(zone)).date()
        if isinstance(last, dt.datetime):
            last = (last.astimezone(EWSTimeZone(zone)) - dt.timedelta(days=1)).date()
        start_date = _plain_date(first)
        end_date = _plain_date(last) + dt.timedelta(days=1)
        if end_date <= start_date:
            end_date = start_date + dt.timedelta(days=1)
    else:
        if not isinstance(item.start, dt.datetime) or not isinstance(item.end, dt.datetime):
            raise ValueError("timed item with date-only start or end")
        start, end = _utc(item.start), _utc(item.end)
        if end < start:
            raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
    organizer_email, organizer_name = _person(item.organizer)
    attendees: list[Attendee] = []
    seen: set[str] = set()
    for kind, people in (
        ("required", item.required_attendees),
        ("optional", item.optional_attendees),
        ("resource", item.resources),
    ):
        for person in people or []:
            email, name = _person(person.mailbox)
            if not email or email in seen:
                continue
            seen.add(email)
            attendees.append(
                Attendee(email, name, kind, RESPONSES.get(person.response_type or "", "none"))
            )
    body = item.body or ""
    body_type = "html" if type(body).__name__ == "HTMLBody" else "text"
    kind = EVENT_TYPES.get(item.type or "Single", "singleInstance")
    original = item.recurrence_id or item.original_start
    key = getattr(item, "calsync_key", None) or None
    return SuiteEvent(
        suite_id=item.id,
        ical_uid=item.uid or item.id,
        subject=item.subject or "",
        start=start,
        end=end,
        all_day=all_day,
        start_date=start_date,
        end_date=end_date,
        timezone=zone,
        location=(item.location or "").strip(),
        body=str(body),
        body_type=body_type,
        organizer=Attendee(organizer_email, organizer_name, "required", "organizer")
        if organizer_email
        else None,
        attendees=attendees,
        series_id=None,
        original_start=_utc(original)
        if original is not None and kind in ("occurrence", "exception")
        else None,
        event_type=kind,
        is_cancelled=bool(item.is_cancelled),
        sensitivity=(item.sensitivity or "Normal").lower(),
        show_as=SHOW_AS.get(item.legacy_free_busy_status or "Busy", "busy"),
        importance=(item.importance or "Normal").lower(),
        categories=list(item.categories or []),
        change_key=item.changekey or "",
        last_modified=_utc(item.last_modified_time) if item.last_modified_time else None,
        calsync_key=key,
        extra={
            "my_response_type": item.my_response_type or "",
            "is_meeting": bool(item.is_meeting),
        },
    )


def _sync_item_outside(item: Any, window: Window, default_zone: str) -> bool:
    """Whether a SyncFolderItems change (read with SYNC_FIELDS) lies outside the window; an
    item that cannot be judged is read in full."""
    if not isinstance(item, CalendarItem):
        return False
    try:
        event = normalize_item(item, default_zone)
    except ValueError:
        return False
    return not window.overlaps(event.start, event.end, event.start_date, event.end_date)


def _unreadable(item: Any, reason: str) -> SuiteEvent:
    """A placeholder the engine logs as failed: one bad item never sinks the mailbox."""
    event = SuiteEvent(
        suite_id=str(getattr(item, "id", None) or "?"),
        ical_uid=str(getattr(item, "uid", None) or getattr(item, "id", None) or "?"),
        subject=str(getattr(item, "subject", "") or "")[:200],
        start=None,
        end=None,
    )
    event.extra["unreadable"] = reason
    return event


def _overlaps(event: SuiteEvent, window: Window) -> bool:
    if event.extra.get("unreadable"):
        return True
    return window.overlaps(event.start, event.end, event.start_date, event.end_date)


# --- incremental state --------------------------------------------------------------------


@dataclass
class SyncState:
    """What ``list_changes`` keeps between runs (opaque to the engine)."""

    sync: str | None
    window: list[str]
    series: dict[str, list[str]] = field(default_factory=dict)  # master id → occurrence ids

    def encode(self) -> str:
        raw = json.dumps(
            {"s": self.sync, "w": self.window, "m": self.series}, separators=(",", ":")
        )
        return STATE_PREFIX + base64.urlsafe_b64encode(zlib.compress(raw.encode(), 9)).decode()

    @classmethod
    def decode(cls, text: str | None) -> SyncState | None:
        if not text or not text.startswith(STATE_PREFIX):
            return None
        try:
            data = json.loads(zlib.decompress(base64.urlsafe_b64decode(text[len(STATE_PREFIX) :])))
            return cls(data.get("s"), list(data["w"]), {k: list(v) for k, v in data["m"].items()})
        except (ValueError, KeyError, TypeError, zlib.error):
            return None


def _window_key(window: Window) -> list[str]:
    return [window.start.isoformat(), window.end.isoformat(), window.timezone]


# --- the connector ------------------------------------------------------------------------


class ExchangeConnector(SuiteConnector):
    """Exchange Server (EWS) via exchangelib; see the module docstring."""

    # A mailbox's new events leave together in one CreateItem (``create_event``): a drain may
    # keep more of them in flight than Graph's 4 requests per mailbox, under the classic
    # EWSMaxConcurrency of 10 for what goes one by one (updates, deletes).
    writes_per_mailbox = 10
    batches_mailbox_writes = True

    def __init__(self, config: IntegrationConfig, accounts: AccountLookup | None = None) -> None:
        super().__init__(config)
        params = config.exchange
        if params is None:
            raise ConnectorError(
                f"integration {config.id!r}: type 'exchange' needs an 'exchange' section",
                retriable=False,
            )
        self.params = params
        self.accounts = accounts
        self.endpoint = endpoint_for(params.server)
        try:
            self.zone = EWSTimeZone(config.timezone)
        except Exception:  # a zone exchangelib cannot name in Windows terms
            raise ConnectorError(
                f"integration {config.id!r}: time zone {config.timezone!r} has no Windows name "
                "EWS would accept; use a zone of the CLDR table (e.g. Asia/Shanghai)",
                retriable=False,
            ) from None
        if params.ca_bundle:
            trust_ca_bundle(self.endpoint, params.ca_bundle)
        self._executor = ThreadPoolExecutor(
            max_workers=config.execution.concurrency, thread_name_prefix="calsync-ews"
        )
        self._lock = threading.Lock()
        self._accounts: dict[str, Account] = {}
        self._configs: list[Configuration] = []
        self._service: tuple[Configuration, str] | None = None  # (config, login shown in errors)
        self._secrets: set[str] = set()
        self._build = DEFAULT_BUILD
        self._max_wait = DEFAULT_MAX_WAIT_S
        self._total_wait = DEFAULT_TOTAL_WAIT_S
        self._closed = False
        self._settings_loaded = False
        self._ntlm_domain: str | None = None
        self._creates: MailboxBatcher[Any, SuiteEvent] = MailboxBatcher(
            self._send_creates, CREATE_BATCH
        )

    # --- plumbing ---

    def _connection(self, required: bool) -> tuple[str, str, dict[str, Any]]:
        """(login, password, extras) of the Airflow connection. In user mode it is optional
        (it may carry only extras); in impersonation mode it holds the service account."""
        from airflow.sdk import BaseHook

        try:
            conn = BaseHook.get_connection(self.config.connection_id)
        except Exception as exc:  # AirflowNotFoundException and friends
            if not required:
                return "", "", {}
            raise ConnectorError(
                f"Exchange connection {self.config.connection_id!r} is not available "
                f"({type(exc).__name__}): create it with the service account's login and password",
                retriable=False,
            ) from None
        if required and (not conn.login or not conn.password):
            raise ConnectorError(
                f"Exchange connection {self.config.connection_id!r} needs a login and a password "
                "(the impersonation service account)",
                retriable=False,
            )
        return conn.login or "", conn.password or "", dict(conn.extra_dejson or {})

    def _load_settings(self) -> None:
        """Read the connection once: the service account (impersonation) and the extras."""
        if self._settings_loaded:
            return
        required = self.params.access_mode == "impersonation"
        login, password, extras = self._connection(required)
        try:
            self._build = parse_build(extras.get("exchange_build"), DEFAULT_BUILD)
            self._max_wait = float(extras.get("max_wait_s") or DEFAULT_MAX_WAIT_S)
            self._total_wait = float(extras.get("total_wait_s") or DEFAULT_TOTAL_WAIT_S)
        except ValueError as exc:
            raise ConnectorError(
                f"connection {self.config.connection_id!r}: {exc}", retriable=False
            ) from None
        self._ntlm_domain = str(extras.get("ntlm_domain") or "") or None
        if required:
            username = self._username(login)
            self._service = (self._configuration(username, password), username)
        self._settings_loaded = True

    def _username(self, login: str) -> str:
        """``DOMAIN\\user`` for NTLM when the login has no domain and one is configured."""
        if self.params.domain_auth and "\\" not in login and "@" not in login and self._ntlm_domain:
            return f"{self._ntlm_domain}\\{login}"
        return login

    def _configuration(self, login: str, password: str) -> Configuration:
        self._secrets.add(password)
        config = Configuration(
            service_endpoint=self.endpoint,
            credentials=Credentials(login, password),
            auth_type=NTLM if self.params.domain_auth else BASIC,
            version=Version(build=self._build),
            retry_policy=BoundedFaultTolerance(self._max_wait, self._total_wait),
            max_connections=self.config.execution.concurrency,
        )
        self._configs.append(config)
        return config

    def _check_domain(self, mailbox: str) -> str:
        address = mailbox.strip().lower()
        if self.params.check_mailbox_domain:
            domain = (self.params.domain or "").strip().lower().lstrip("@")
            if not address.endswith("@" + domain):
                raise ConnectorError(
                    f"mailbox {address!r} is outside the domain {domain!r} this Exchange "
                    f"integration ({self.config.id}) is limited to (check_mailbox_domain)",
                    status=403,
                    retriable=False,
                )
        return address

    def _account(self, mailbox: str) -> tuple[Account, str]:
        """(exchangelib Account, the login used: for error messages)."""
        address = self._check_domain(mailbox)
        with self._lock:
            cached = self._accounts.get(address)
            if cached is not None:
                return cached, str(cached.protocol.credentials)
            if self.params.access_mode == "impersonation":
                assert self._service is not None
                config, login = self._service
                access = IMPERSONATION
            else:
                personal: PersonalAccount | None = self.accounts(address) if self.accounts else None
                if personal is None:
                    raise AccountMissing(address)
                login = self._username(personal.login)
                config = self._configuration(login, personal.password)
                access = DELEGATE
            account = Account(
                primary_smtp_address=address,
                config=config,
                autodiscover=False,
                access_type=access,
                default_timezone=self.zone,
            )
            _address_calendar_by_name(account)
            self._accounts[address] = account
            return account, login

    async def _run(self, mailbox: str, work: Callable[[Account], T]) -> T:
        if self._closed:
            raise ConnectorError("the Exchange connector is closed", retriable=False)
        # The connection is read here, in the event loop's thread (Airflow's task runtime
        # serves connections through the task's supervisor channel), not in a worker thread.
        with self._lock:
            self._load_settings()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(self._guarded, mailbox, work)
        )

    def _guarded(self, mailbox: str, work: Callable[[Account], T]) -> T:
        """Run ``work`` in this worker thread with a fresh back-off budget, errors mapped."""
        login = ""
        policy: Any = None
        try:
            account, login = self._account(mailbox)
            policy = account.protocol.retry_policy
            if isinstance(policy, BoundedFaultTolerance):
                policy.begin()
            return work(account)
        except ConnectorError:
            raise
        except Exception as exc:
            raise self._map_error(exc, mailbox, login) from None
        finally:
            if isinstance(policy, BoundedFaultTolerance):
                policy.end()

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text[:500]

    def _who(self, login: str) -> str:
        if self.params.access_mode == "impersonation":
            return f"service account {login!r} of connection {self.config.connection_id!r}"
        return f"personal Exchange account {login!r}"

    def _map_error(self, exc: Exception, mailbox: str, login: str) -> ConnectorError:
        name = type(exc).__name__
        text = self._scrub(str(exc))
        if isinstance(exc, ews_errors.ErrorNonExistentMailbox | ews_errors.ErrorInvalidSmtpAddress):
            return MailboxNotFound(mailbox)
        if isinstance(exc, ews_errors.UnauthorizedError):
            return ConnectorError(
                f"Exchange login refused for the {self._who(login)} at {self.endpoint}: "
                "check the login and password"
                + (" (NTLM domain authentication)" if self.params.domain_auth else ""),
                status=401,
                retriable=False,
            )
        if isinstance(exc, ews_errors.ErrorImpersonateUserDenied):
            return ConnectorError(
                f"the {self._who(login)} may not impersonate {mailbox}: grant it the "
                "ApplicationImpersonation role for this mailbox",
                status=403,
                retriable=False,
            )
        if isinstance(exc, ews_errors.ErrorAccessDenied):
            return ConnectorError(
                f"Exchange denied access to {mailbox} for the {self._who(login)}: {text}",
                status=403,
                retriable=False,
            )
        if isinstance(exc, ews_errors.RateLimitError):
            return ConnectorError(
                f"Exchange kept throttling {mailbox} beyond the back-off budget "
                f"({self._max_wait:g}s per wait, {self._total_wait:g}s in all): {text}",
                status=503,
                retriable=True,
            )
        if isinstance(exc, ews_errors.ErrorTimeoutExpired) and "ConnectionError" in text:
            # exchangelib's retries of a refused connection end as a timeout: not "busy"
            return ConnectorError(
                f"Exchange unreachable at {self.endpoint}: {text}", retriable=True
            )
        if isinstance(
            exc,
            ews_errors.ErrorServerBusy
            | ews_errors.ErrorInternalServerTransientError
            | ews_errors.ErrorTimeoutExpired
            | ews_errors.ErrorTooManyObjectsOpened,
        ):
            return ConnectorError(f"Exchange is busy ({name}): {text}", status=503, retriable=True)
        if isinstance(exc, ews_errors.ErrorInvalidSyncStateData):
            return ConnectorError(f"Exchange refused the sync state: {text}", retriable=True)
        if isinstance(exc, ews_errors.ResponseMessageError):  # an answer, not a lost connection
            # retriable as before: many codes are passing (AD, failover, proxy, resources)
            return ConnectorError(f"Exchange error on {mailbox} ({name}): {text}", retriable=True)
        if isinstance(exc, ews_errors.TransportError):
            tls = any(word in text for word in ("SSL", "certificate", "CERTIFICATE"))
            if tls:
                return ConnectorError(
                    f"TLS to {self.endpoint} failed ({text}); trust the server's CA with "
                    "'ca_bundle' in the integration's exchange section",
                    retriable=False,
                )
            return ConnectorError(
                f"Exchange unreachable at {self.endpoint}: {text}", retriable=True
            )
        if isinstance(exc, ews_errors.EWSError):
            return ConnectorError(f"Exchange error on {mailbox} ({name}): {text}", retriable=False)
        if isinstance(exc, OSError):
            return ConnectorError(f"Exchange unreachable ({name}): {text}", retriable=True)
        return ConnectorError(f"Exchange request failed ({name}): {text}", retriable=False)

    # --- reading ---

    def _ews_bounds(self, window: Window) -> tuple[EWSDateTime, EWSDateTime]:
        lo, hi = window.bounds_utc()
        return _ews_utc(lo), _ews_utc(hi)

    def _normalize_all(self, items: Iterable[Any]) -> list[SuiteEvent]:
        out: list[SuiteEvent] = []
        for item in items:
            if isinstance(item, ews_errors.ErrorItemNotFound):
                continue  # deleted between FindItem and GetItem
            if isinstance(item, Exception):
                raise item
            try:
                out.append(normalize_item(item, self.config.timezone))
            except ValueError as exc:
                out.append(_unreadable(item, str(exc)))
        return out

    def _read_element(self, elem: Any) -> SuiteEvent:
        """A ``t:CalendarItem`` of an answer as a SuiteEvent (``exchange_raw``)."""
        return normalize_element(
            elem,
            self.config.timezone,
            responses=RESPONSES,
            show_as=SHOW_AS,
            key_property=KEY_PROPERTY,
        )

    def _view(self, account: Account, window: Window) -> list[SuiteEvent]:
        """The window's items: FindItem over a CalendarView (ids), then GetItem with
        ``READ_FIELDS``, both read straight from the answers' XML (``exchange_raw``)."""
        lo, hi = self._ews_bounds(window)
        calendar = account.calendar
        ids: list[tuple[str, str]] = []
        for found in RawFindItem(account=account).call(
            folders=[calendar],
            additional_fields=None,
            restriction=None,
            order_fields=None,
            shape=ID_ONLY,
            query_string=None,
            depth=SHALLOW,
            calendar_view=CalendarView(start=lo, end=hi),
            max_items=None,
            offset=0,
        ):
            if isinstance(found, Exception):
                raise found
            ids.append(found)
        if not ids:
            return []
        paths = calendar.normalize_fields(fields=list(READ_FIELDS))
        fields = {f for f in paths if not f.field.is_attribute}
        out: list[SuiteEvent] = []
        for elem in RawGetItem(account=account).call(
            items=ids, additional_fields=fields, shape=ID_ONLY
        ):
            if isinstance(elem, ews_errors.ErrorItemNotFound):
                continue  # deleted between FindItem and GetItem
            if isinstance(elem, Exception):
                raise elem
            try:
                event = self._read_element(elem)
            except ValueError as exc:
                event = unreadable_element(elem, str(exc))
            if _overlaps(event, window):
                out.append(event)
        return out

    @staticmethod
    def _masters(account: Account) -> dict[str, str]:
        """uid → item id of the recurring masters in the calendar."""
        found: dict[str, str] = {}
        for item in account.calendar.filter(type="RecurringMaster").only("uid"):
            if isinstance(item, Exception):
                raise item
            if item.uid:
                found[item.uid] = item.id
        return found

    def _read_window(
        self, account: Account, window: Window, masters: dict[str, str] | None = None
    ) -> tuple[list[SuiteEvent], dict[str, list[str]]]:
        """Events of the window with series ids filled; master id → occurrence ids.
        ``masters``: uid → item id of the recurring masters, when already known."""
        events = self._view(account, window)
        series: dict[str, list[str]] = {}
        if any(e.event_type in ("occurrence", "exception") for e in events):
            if masters is None:
                masters = self._masters(account)
            for event in events:
                if event.event_type in ("occurrence", "exception"):
                    event.series_id = masters.get(event.ical_uid)
                    if event.series_id:
                        series.setdefault(event.series_id, []).append(event.suite_id)
        return events, series

    async def list_events(self, mailbox: str, window: Window) -> list[SuiteEvent]:
        return await self._run(mailbox, lambda account: self._read_window(account, window)[0])

    # --- incremental ---

    @staticmethod
    def _sync(
        account: Account, state: str | None, fields: tuple[str, ...] = SYNC_FIELDS
    ) -> tuple[list[tuple[str, Any]], str]:
        """The changes since ``state`` (item objects with ``fields``) and the new state:
        exchangelib's ``sync_items`` paging, its request built from cached parts."""
        folder = account.calendar
        svc = CachedSyncFolderItems(account=account)
        changes: list[tuple[str, Any]] = []
        while True:
            changes.extend(
                svc.call(
                    folder=folder,
                    shape=ID_ONLY,
                    additional_fields=_sync_fields(folder, fields, account.version),
                    sync_state=state,
                    ignore=None,
                    max_changes_returned=SYNC_PAGE,
                    sync_scope=None,
                )
            )
            # the same state back means no more pages, whatever IncludesLastItemInRange says
            if svc.sync_state == state or svc.includes_last_item_in_range:
                return changes, svc.sync_state
            state = svc.sync_state

    @staticmethod
    def _fresh_state(account: Account) -> tuple[str, dict[str, str]]:
        """A new sync state, and uid → item id of the calendar's recurring masters: a new
        state pages through every item anyway, so the masters come with it (UID and type
        read straight from the answer, no item objects) instead of two more requests."""
        folder = account.calendar
        fields = set(folder.normalize_fields(fields=["uid", "type"]))
        svc = RawSyncFolderItems(account=account)
        state: str | None = None
        masters: dict[str, str] = {}
        while True:
            for change in svc.call(
                folder=folder,
                shape=ID_ONLY,
                additional_fields=fields,
                sync_state=state,
                ignore=None,
                max_changes_returned=SYNC_PAGE,
                sync_scope=None,
            ):
                if isinstance(change, Exception):
                    raise change
                kind, elem = change
                found = master_of(elem) if kind == "create" else None
                if found is not None:
                    masters[found[0]] = found[1]
            if svc.sync_state == state or svc.includes_last_item_in_range:
                return svc.sync_state, masters
            state = svc.sync_state

    def _full(self, account: Account, window: Window, carried: str | None) -> ChangeSet:
        # Only the state matters here (the window is read next): a carried state's changes
        # come as ids alone, a new state's with what finds the recurring masters.
        sync, masters = None, None
        if carried:
            try:
                sync = self._sync(account, carried, ())[1]
            except ews_errors.ErrorInvalidSyncStateData:
                sync = None
        if sync is None:
            sync, masters = self._fresh_state(account)
        events, series = self._read_window(account, window, masters)
        state = SyncState(sync, _window_key(window), series)
        return ChangeSet(events=events, removed=[], state=state.encode(), full=True)

    def _changes(self, account: Account, window: Window, raw_state: str | None) -> ChangeSet:
        state = SyncState.decode(raw_state)
        if state is None or not state.sync:
            return self._full(account, window, None)
        if state.window != _window_key(window):
            return self._full(account, window, state.sync)
        try:
            changes, new_sync = self._sync(account, state.sync)
        except ews_errors.ErrorInvalidSyncStateData:
            log.info(
                "EWS sync state of %s is no longer valid: full read", account.primary_smtp_address
            )
            return self._full(account, window, None)
        latest: dict[str, tuple[str, Any]] = {}
        for kind, obj in changes:
            if kind == "read_flag_change" or not getattr(obj, "id", None):
                continue
            latest[obj.id] = (kind, obj)
        series = dict(state.series)
        events: list[SuiteEvent] = []
        removed: list[str] = []
        singles: list[str] = []
        masters: dict[str, str] = {}
        deleted: list[str] = []
        for item_id, (kind, obj) in latest.items():
            if kind == "delete":
                deleted.append(item_id)
            elif getattr(obj, "type", None) == "RecurringMaster":
                masters[item_id] = obj.uid
            elif _sync_item_outside(obj, window, self.config.timezone):
                removed.append(item_id)  # not (or no longer) in the window: no need to read it
                removed.extend(series.pop(item_id, []))
            else:
                singles.append(item_id)
        if singles:
            fetched = account.fetch(ids=[(i, None) for i in singles], only_fields=list(READ_FIELDS))
            for item_id, item in zip(singles, fetched, strict=True):
                if isinstance(item, ews_errors.ErrorItemNotFound):
                    removed.append(item_id)
                    continue
                if isinstance(item, Exception):
                    raise item
                try:
                    event = normalize_item(item, self.config.timezone)
                except ValueError as exc:
                    events.append(_unreadable(item, str(exc)))
                    continue
                if _overlaps(event, window):
                    events.append(event)
                else:
                    removed.append(item_id)  # moved out of the window
                removed.extend(series.pop(item_id, []))  # was a series, is a single now
        if masters:
            view = self._view(account, window)
            for master_id, uid in masters.items():
                occurrences = [
                    e
                    for e in view
                    if e.ical_uid == uid and e.event_type in ("occurrence", "exception")
                ]
                for event in occurrences:
                    event.series_id = master_id
                now_ids = [e.suite_id for e in occurrences]
                before = series.get(master_id)
                if before is None:
                    removed.append(master_id)  # e.g. a single that became a series
                removed.extend(i for i in before or [] if i not in now_ids)
                events.extend(occurrences)
                if now_ids:
                    series[master_id] = now_ids
                else:
                    series.pop(master_id, None)
        for item_id in deleted:
            removed.append(item_id)
            removed.extend(series.pop(item_id, []))
        new_state = SyncState(new_sync, _window_key(window), series)
        return ChangeSet(
            events=events,
            removed=list(dict.fromkeys(removed)),
            state=new_state.encode(),
            full=False,
        )

    async def list_changes(self, mailbox: str, window: Window, state: str | None) -> ChangeSet:
        return await self._run(mailbox, lambda account: self._changes(account, window, state))

    # --- writing ---

    def _fetch_one(self, account: Account, item_id: str) -> Any:
        found = list(account.fetch(ids=[(item_id, None)], only_fields=list(READ_FIELDS)))
        item = found[0] if found else ews_errors.ErrorItemNotFound("no item")
        if isinstance(item, Exception):
            raise item
        return item

    def _get(self, account: Account, suite_id: str) -> SuiteEvent | None:
        """GetItem of one id (an occurrence's too); None for ErrorItemNotFound (deleted, or
        moved out of the calendar: a move gives the item a new id)."""
        try:
            item = self._fetch_one(account, suite_id)
        except ews_errors.ErrorItemNotFound:
            return None
        try:
            event = normalize_item(item, self.config.timezone)
        except ValueError as exc:
            return _unreadable(item, str(exc))
        if event.event_type in ("occurrence", "exception"):
            event.series_id = self._masters(account).get(event.ical_uid)
        return event

    async def get_event(self, mailbox: str, suite_id: str) -> SuiteEvent | None:
        return await self._run(mailbox, lambda account: self._get(account, suite_id))

    def _find(self, account: Account, key: str) -> SuiteEvent | None:
        matches = [
            i
            for i in account.calendar.filter(calsync_key=key).only(*READ_FIELDS)
            if not isinstance(i, ews_errors.ErrorItemNotFound)
        ]
        events = self._normalize_all(matches)
        if len(events) > 1:
            log.warning(
                "%d items carry calsync key %s in %s; using the oldest",
                len(events),
                key,
                account.primary_smtp_address,
            )
            events.sort(key=lambda e: e.last_modified or dt.datetime.max.replace(tzinfo=dt.UTC))
        return events[0] if events else None

    async def find_by_key(self, mailbox: str, key: str) -> SuiteEvent | None:
        return await self._run(mailbox, lambda account: self._find(account, key))

    def _write_zone(self, event: EventWrite) -> EWSTimeZone:
        """The zone an event is created in: the write's own (the engine fills it from the
        integration's ``timezone``, F12), the integration's when that one is unknown."""
        try:
            return EWSTimeZone(resolve_timezone(event.timezone)) if event.timezone else self.zone
        except Exception:  # unknown to the CLDR table or to exchangelib's Windows map
            log.warning("time zone %r unknown to EWS: using %s", event.timezone, self.zone.key)
            return self.zone

    def _times(self, event: EventWrite) -> dict[str, Any]:
        zone = self._write_zone(event)
        if event.all_day:
            if event.start_date is None:
                raise ConnectorError("an all-day event needs start_date", retriable=False)
            first = event.start_date
            last_excl = event.end_date or first + dt.timedelta(days=1)
            last = max(first, last_excl - dt.timedelta(days=1))  # exchangelib: inclusive end
            return {
                "is_all_day": True,
                "start": EWSDate(first.year, first.month, first.day),
                "end": EWSDate(last.year, last.month, last.day),
                "_start_timezone": zone,
                "_end_timezone": zone,
            }
        if event.start is None or event.end is None:
            raise ConnectorError("a timed event needs start and end", retriable=False)
        if event.start.tzinfo is None or event.end.tzinfo is None:
            raise ConnectorError("event times must be time-zone aware", retriable=False)
        return {
            "is_all_day": False,
            "start": _ews_utc(event.start).astimezone(zone),
            "end": _ews_utc(event.end).astimezone(zone),
            "_start_timezone": zone,
            "_end_timezone": zone,
        }

    @staticmethod
    def _people(event: EventWrite) -> dict[str, list[tuple[str, str]]]:
        """(email, name) of the write's required, optional and resource attendees, each
        address once (the first kind it has wins)."""
        people: dict[str, list[tuple[str, str]]] = {"required": [], "optional": [], "resource": []}
        seen: set[str] = set()
        for person in event.attendees:
            email = person.email.strip().lower()
            if not email or email in seen:
                continue
            seen.add(email)
            people.get(person.kind, people["required"]).append((email, person.name))
        return people

    def _values(self, event: EventWrite) -> dict[str, Any]:
        from exchangelib import Body, HTMLBody

        people = {
            kind: [
                EwsAttendee(
                    mailbox=EwsMailbox(email_address=email, name=name or None),
                    response_type="Unknown",
                )
                for email, name in group
            ]
            for kind, group in self._people(event).items()
        }
        values = {
            "subject": event.subject,
            "body": HTMLBody(event.body) if event.body_type == "html" else Body(event.body),
            "location": event.location or None,
            "required_attendees": people["required"] or None,
            "optional_attendees": people["optional"] or None,
            "resources": people["resource"] or None,
            "sensitivity": SENSITIVITY_OUT.get(event.sensitivity.lower(), "Normal"),
            **self._times(event),
        }
        if event.key:
            values["calsync_key"] = event.key
        return values

    def _create(self, account: Account, event: EventWrite) -> SuiteEvent:
        """A create on its own: looked for by key first (unless ``known_new``)."""
        if event.key and not event.known_new:
            existing = self._find(account, event.key)
            if existing is not None:
                log.info(
                    "calsync key %s already in %s: not created again",
                    event.key,
                    account.primary_smtp_address,
                )
                return existing
        elem = self._item_element(event)
        if elem is None:  # values exchangelib refuses: its own item raises its own error
            item = CalendarItem(
                account=account,
                folder=account.calendar,
                uid=uuid.uuid4().hex,
                **self._values(event),
            )
            item.save(send_meeting_invitations=self.params.invitation_mode)
            return self._made(account, normalize_item(item, self.config.timezone))
        [made] = self._create_many(account, [elem])
        if isinstance(made, BaseException):
            raise made
        return made

    def _item_element(self, event: EventWrite) -> Any | None:
        """The create's ``t:CalendarItem`` (``exchange_create``), or None: exchangelib's own
        item must make it (it raises its own error). calsync gives the meeting its UID, so
        the new item is known without reading it back."""
        return calendar_item_element(
            subject=event.subject,
            body=event.body,
            html=event.body_type == "html",
            sensitivity=SENSITIVITY_OUT.get(event.sensitivity.lower(), "Normal"),
            key=event.key,
            key_property=KEY_PROPERTY,
            uid=uuid.uuid4().hex,
            times=self._times(event),
            location=event.location,
            people=self._people(event),
        )

    def _create_many(self, account: Account, elems: list[Any]) -> list[SuiteEvent | Exception]:
        """One CreateItem of several items into the mailbox's calendar: the new events, or
        for an item EWS refused, its error. CreateItem answers with each id and change key,
        the rest is what was written (one request per create instead of two); the modification
        time is the create's by this machine's clock (nothing decides on it: conflicts compare
        a fresh read's)."""
        results = list(
            RawCreateItem(account=account).call(
                items=elems,
                folder=account.calendar,
                message_disposition=SAVE_ONLY,
                send_meeting_invitations=self.params.invitation_mode,
            )
        )
        if len(results) != len(elems):
            raise ews_errors.MalformedResponseError(
                f"CreateItem answered {len(results)} of {len(elems)} items"
            )
        out: list[SuiteEvent | Exception] = []
        login = str(account.protocol.credentials)  # as ``_account`` names it
        for elem, result in zip(elems, results, strict=True):
            try:  # one item's odd answer is that item's error, not the others'
                if isinstance(result, Exception):
                    raise result
                if not isinstance(result, BulkCreateResult):
                    raise ews_errors.MalformedResponseError("CreateItem answered no item id")
                made = self._read_element(with_item_id(elem, result.id, result.changekey))
                out.append(self._made(account, made))
            except Exception as exc:
                out.append(self._map_error(exc, account.primary_smtp_address, login))
        return out

    @staticmethod
    def _made(account: Account, made: SuiteEvent) -> SuiteEvent:
        made.organizer = Attendee(account.primary_smtp_address.lower(), "", "required", "organizer")
        made.last_modified = dt.datetime.now(dt.UTC).replace(microsecond=0)  # as EWS gives it
        return made

    async def create_event(self, mailbox: str, event: EventWrite) -> SuiteEvent:
        """A new event's create joins the others asked for the same mailbox meanwhile in one
        CreateItem (``mailbox_batch``); one that may exist already (a retry, a takeover) is
        looked for by key first, on its own."""
        elem = None
        if not event.key or event.known_new:
            with contextlib.suppress(Exception):  # raised again, mapped, by ``_create`` below
                elem = self._item_element(event)
        if elem is None:
            return await self._run(mailbox, lambda account: self._create(account, event))
        return await self._creates.submit(mailbox, elem)

    async def _send_creates(self, mailbox: str, elems: list[Any]) -> list[Any]:
        return await self._run(mailbox, lambda account: self._create_many(account, elems))

    def _update(self, account: Account, suite_id: str, event: EventWrite) -> SuiteEvent:
        try:
            item = self._fetch_one(account, suite_id)
        except ews_errors.ErrorItemNotFound:
            raise ConnectorError(
                f"event {suite_id[:24]}… is no longer in {account.primary_smtp_address}",
                status=404,
                retriable=False,
            ) from None
        before = normalize_item(item, self.config.timezone)
        wanted = self._values(event)
        changed = _changed_fields(before, event, wanted)
        if not changed:  # nothing to write: no UpdateItem, so no meeting update goes out
            return before
        for name in changed:
            setattr(item, name, wanted.get(name))
        if "start" in changed or "end" in changed or "is_all_day" in changed:
            for name in ("start", "end", "is_all_day", "_start_timezone", "_end_timezone"):
                setattr(item, name, wanted[name])
                if name not in changed:
                    changed.append(name)
        item.save(
            update_fields=changed,
            conflict_resolution=AUTO_RESOLVE,
            send_meeting_invitations=self.params.invitation_mode,
        )
        return normalize_item(self._fetch_one(account, item.id), self.config.timezone)

    async def update_event(self, mailbox: str, suite_id: str, event: EventWrite) -> SuiteEvent:
        return await self._run(mailbox, lambda account: self._update(account, suite_id, event))

    def _delete(self, account: Account, suite_id: str) -> None:
        results = account.bulk_delete(
            ids=[(suite_id, None)],
            delete_type=self.params.delete_mode,
            send_meeting_cancellations=self.params.cancellation_mode,
        )
        for result in results:
            if isinstance(result, ews_errors.ErrorItemNotFound):
                log.info(
                    "event already gone from %s: nothing to delete", account.primary_smtp_address
                )
                continue
            if isinstance(result, Exception):
                raise result

    async def delete_event(self, mailbox: str, suite_id: str) -> None:
        await self._run(mailbox, lambda account: self._delete(account, suite_id))

    # --- closing ---

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._close_sync)

    def _close_sync(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            configs, self._configs = self._configs, []
            self._accounts.clear()
        for config in configs:
            try:
                protocol, _ = Protocol[config]
            except KeyError:
                continue
            try:
                protocol.close()
            except Exception:  # closing is best effort
                log.debug("closing an EWS protocol failed", exc_info=True)
            with contextlib.suppress(KeyError):
                del Protocol[config]


_SYNC_FIELDS: dict[tuple[Any, ...], frozenset[Any]] = {}


def _sync_fields(folder: Any, fields: tuple[str, ...], version: Any) -> frozenset[Any]:
    """The field paths SyncFolderItems asks for, as ``FolderCollection.sync_items`` makes
    them (validated, id and change key left out: they always come), once per version."""
    key = (type(folder).__name__, fields, version.build, version.api_version)
    paths = _SYNC_FIELDS.get(key)
    if paths is None:
        for name in fields:
            folder.validate_item_field(field=name, version=version)
        normalized = folder.normalize_fields(fields=list(fields))
        paths = _SYNC_FIELDS[key] = frozenset(f for f in normalized if not f.field.is_attribute)
    return paths


def _address_calendar_by_name(account: Account) -> None:
    """Give ``account`` its root and calendar folders addressed by distinguished name (the
    mailbox's default calendar, as every operation here uses it) instead of fetching them.

    exchangelib fetches both with GetFolder on first use (two round trips per mailbox and run:
    a third of a full read's requests, all of an unchanged incremental run's but one), and it
    does so under a lock shared by every account of the process (``threaded_cached_property``),
    so mailboxes read in parallel queued behind each other's GetFolders. The folders it would
    fetch are addressed as ``DistinguishedFolderId`` + mailbox in every later request anyway.
    """
    mailbox = EwsMailbox(email_address=account.primary_smtp_address)
    root = Root(
        account=account,
        _distinguished_id=DistinguishedFolderId(id=Root.DISTINGUISHED_FOLDER_ID, mailbox=mailbox),
    )
    calendar = Calendar(
        root=root,
        _distinguished_id=DistinguishedFolderId(
            id=Calendar.DISTINGUISHED_FOLDER_ID, mailbox=mailbox
        ),
    )
    # The cached properties' slots: set once here, never fetched.
    account.__dict__["root"] = root
    account.__dict__["calendar"] = calendar


def _changed_fields(before: SuiteEvent, event: EventWrite, wanted: dict[str, Any]) -> list[str]:
    """exchangelib field names whose wanted value differs from the item as read."""
    changed: list[str] = []
    if before.subject != event.subject:
        changed.append("subject")
    if before.body != event.body or before.body_type != event.body_type:
        changed.append("body")
    if before.location != (event.location or ""):
        changed.append("location")
    if before.sensitivity != (wanted["sensitivity"] or "Normal").lower():
        changed.append("sensitivity")
    if event.all_day != before.all_day:
        changed.append("is_all_day")
    if event.all_day:
        end_excl = event.end_date or (
            event.start_date + dt.timedelta(days=1) if event.start_date else None
        )
        if (before.start_date, before.end_date) != (event.start_date, end_excl):
            changed.extend(["start", "end"])
    elif (
        event.start
        and event.end
        and (
            before.start != event.start.astimezone(dt.UTC)
            or before.end != event.end.astimezone(dt.UTC)
        )
    ):
        changed.extend(["start", "end"])
    have = {(a.email, a.kind) for a in before.attendees}
    want = {(a.email.strip().lower(), a.kind) for a in event.attendees if a.email.strip()}
    for kind, name in (("required", "required_attendees"), ("optional", "optional_attendees"),
                       ("resource", "resources")):  # fmt: skip
        if {e for e, k in have if k == kind} != {e for e, k in want if k == kind}:
            changed.append(name)
    if event.key and before.calsync_key != event.key:
        changed.append("calsync_key")
    return list(dict.fromkeys(changed))
