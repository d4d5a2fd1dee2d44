"""In-memory Exchange mailboxes: folders, calendar items, series, meeting delivery, records.

Each mailbox has the folders EWS clients touch here: ``calendar``, ``inbox`` (meeting messages
received), ``sentitems`` (copies the organiser saved), ``deleteditems`` and
``recoverableitemsdeletions`` (the dumpster a SoftDelete goes to). A HardDelete leaves nothing.

Items keep their fields as Python values (instants in UTC, the zone as its Windows name). A
series master keeps its modified occurrences ("overrides", by original start in UTC) and the
occurrences deleted from it; CalendarView expands it. Occurrence ids are derived from the
master id and the original start, so they are stable.

Delivery, as Exchange does it inside one organisation, depends on the mode of the request:

- create (``SendMeetingInvitations``): ``SendToNone`` writes the organiser's item only;
  ``SendOnlyToAll`` sends an invitation to every attendee and puts a copy (same UID, own id,
  tentative; rooms accept) into each attendee mailbox this store has; ``SendToAllAndSaveCopy``
  also saves the request in the organiser's Sent Items.
- update (``SendMeetingInvitationsOrCancellations``): ``SendToNone`` changes the organiser's item
  only (copies keep the old content); ``SendOnlyToAll`` / ``SendToAllAndSaveCopy`` update every
  copy (added attendees are invited, removed ones get a cancellation); ``SendOnlyToChanged`` /
  ``SendToChangedAndSaveCopy`` message only added and removed attendees.
- delete (``SendMeetingCancellations``): ``SendToNone`` leaves the copies as they are (attendees
  still see the meeting); the other two cancel them ("Canceled: " subject, IsCancelled) and send
  cancellations (``…AndSaveCopy`` also saves one in Sent Items). ``DeleteType`` decides where the
  organiser's item goes.

Every message is appended to ``messages`` (and lands in the recipient's inbox when the recipient
is a mailbox here). Write requests are summarised in ``records`` by the service layer.

Sync: every mailbox has a change sequence; each item remembers the sequence of its creation and
last change, and a folder keeps tombstones of items that left it. A sync state names the
mailbox, folder and sequence, signed with a per-store secret (a reset or
``invalidate_sync_states`` makes old ones invalid → ErrorInvalidSyncStateData).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tzlocal.windows_tz import tz_win, win_tz

from emulators.ews import recurrence as rec
from emulators.ews.wire import UTC, fmt_datetime
from emulators.graph.timezones import UnknownTimeZone, resolve_zone

FOLDERS = ("root", "calendar", "inbox", "sentitems", "deleteditems", "recoverableitemsdeletions")
ID_PREFIX = "AAMkAGEw"
CANCELED_PREFIX = "Canceled: "
DEFAULT_ZONE = "China Standard Time"
SEND_NONE = "SendToNone"
SEND_MODES = (
    "SendToNone",
    "SendOnlyToAll",
    "SendOnlyToChanged",
    "SendToAllAndSaveCopy",
    "SendToChangedAndSaveCopy",
)
DELETE_TYPES = ("HardDelete", "SoftDelete", "MoveToDeletedItems")
RESPONSE_TYPES = ("Unknown", "Organizer", "Tentative", "Accept", "Decline", "NoResponseReceived")
KINDS = ("required", "optional", "resources")
# Fields an occurrence may override (what a modified occurrence can carry).
OCCURRENCE_FIELDS = frozenset(
    {
        "subject",
        "body",
        "body_type",
        "start",
        "end",
        "location",
        "busy",
        "cancelled",
        "sensitivity",
        "importance",
        "required",
        "optional",
        "resources",
    }
)
# Fields the organiser's changes carry to attendee copies.
SHARED_FIELDS = frozenset(
    {
        "subject",
        "body",
        "body_type",
        "start",
        "end",
        "all_day",
        "tz",
        "end_tz",
        "location",
        "required",
        "optional",
        "resources",
        "recurrence",
        "sensitivity",
        "importance",
        "cancelled",
    }
)


class EwsError(Exception):
    """An EWS ResponseCode (e.g. ErrorItemNotFound) for one item or folder of a request."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def item_not_found() -> EwsError:
    return EwsError("ErrorItemNotFound", "The specified object was not found in the store.")


def no_mailbox(address: str) -> EwsError:
    return EwsError(
        "ErrorNonExistentMailbox",
        f"The SMTP address {address!r} has no mailbox associated with it.",
    )


# --- ids, zones, small helpers --------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_item_id() -> str:
    return ID_PREFIX + _b64(b"\x00" + secrets.token_bytes(45))


def occurrence_id(master_id: str, original_start: dt.datetime) -> str:
    stamp = int(original_start.timestamp()).to_bytes(8, "big", signed=True)
    return ID_PREFIX + _b64(b"\x01" + stamp + master_id.encode())


def split_occurrence_id(item_id: str) -> tuple[str, dt.datetime] | None:
    if not item_id.startswith(ID_PREFIX):
        return None
    try:
        raw = _unb64(item_id[len(ID_PREFIX) :])
    except (ValueError, TypeError):
        return None
    if len(raw) < 10 or raw[0] != 1:
        return None
    stamp = int.from_bytes(raw[1:9], "big", signed=True)
    return raw[9:].decode(errors="replace"), dt.datetime.fromtimestamp(stamp, UTC)


def copy_item_id(organiser_item_id: str, address: str) -> str:
    digest = hashlib.sha256(f"{organiser_item_id}|{address}".encode()).digest()
    return ID_PREFIX + _b64(b"\x02" + digest + digest[:13])


def folder_id(mailbox: str, name: str) -> str:
    return "AQMkAD" + _b64(hashlib.sha256(f"{mailbox}|{name}".encode()).digest()[:24] + b"\x01")


def new_change_key() -> str:
    return "DwAAABYAAAA" + _b64(secrets.token_bytes(12))


def new_uid() -> str:
    """A UID shaped like Exchange's (the hex GlobalObjectId of a meeting)."""
    filetime = int((dt.datetime.now(UTC).timestamp() + 11644473600) * 10_000_000)
    return (
        "040000008200E00074C5B7101A82E008"
        + "00000000"
        + filetime.to_bytes(8, "little").hex().upper()
        + "0" * 16
        + "10000000"
        + secrets.token_hex(16).upper()
    )


def windows_zone(name: str | None) -> str:
    """The Windows name of a zone given by IANA id or Windows name (EwsError if unknown)."""
    if not name or name.strip().lower() in ("utc", "z", "etc/utc"):
        return "UTC"
    name = name.strip()
    if name in win_tz:
        return name
    if name in tz_win:
        return tz_win[name]
    raise EwsError("ErrorTimeZone", f"unknown time zone {name!r}")


def zone_of(windows_name: str | None) -> dt.tzinfo:
    try:
        return resolve_zone(windows_name or "UTC")
    except UnknownTimeZone:
        raise EwsError("ErrorTimeZone", f"unknown time zone {windows_name!r}") from None


def midnight(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=zone).astimezone(UTC)


def now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


def address_of(person: Any) -> tuple[str, str]:
    """(email lower-cased, name) of a seed attendee: an address or ``{"email", "name"}``."""
    if isinstance(person, str):
        return person.strip().lower(), ""
    email = str(person.get("email") or person.get("address") or "").strip().lower()
    return email, str(person.get("name") or "")


# --- the model ------------------------------------------------------------------------------


@dataclass
class Override:
    patch: dict[str, Any]
    change_key: str = field(default_factory=new_change_key)
    last_modified: dt.datetime = field(default_factory=now)


@dataclass
class Item:
    id: str
    mailbox: str
    folder: str
    f: dict[str, Any]
    kind: str = "CalendarItem"  # CalendarItem / MeetingRequest / MeetingCancellation
    change_key: str = field(default_factory=new_change_key)
    created: dt.datetime = field(default_factory=now)
    last_modified: dt.datetime = field(default_factory=now)
    seq: int = 0
    created_seq: int = 0
    overrides: dict[dt.datetime, Override] = field(default_factory=dict)
    removed: set[dt.datetime] = field(default_factory=set)
    origin: tuple[str, str] | None = None  # attendee copy: (organiser mailbox, organiser item id)
    copies: dict[str, str] = field(default_factory=dict)  # organiser: address → copy id

    @property
    def is_series(self) -> bool:
        return bool(self.f.get("recurrence"))

    @property
    def is_organizer(self) -> bool:
        return self.f.get("organizer", ("", ""))[0] == self.mailbox

    def recipients(self) -> list[str]:
        """Attendee addresses other than the organiser, in order, once each."""
        seen: dict[str, None] = {}
        for kind in KINDS:
            for person in self.f.get(kind) or []:
                if person["email"] and person["email"] != self.mailbox:
                    seen.setdefault(person["email"], None)
        return list(seen)


@dataclass
class Instance:
    """What a client sees: a single item, a master, or one occurrence/exception of a series."""

    item: Item
    id: str
    f: dict[str, Any]
    type: str  # Single / RecurringMaster / Occurrence / Exception
    original_start: dt.datetime | None = None
    change_key: str = ""
    last_modified: dt.datetime | None = None
    index: int | None = None

    @property
    def start(self) -> dt.datetime:
        return self.f["start"]

    @property
    def end(self) -> dt.datetime:
        return self.f["end"]

    def overlaps(self, lo: dt.datetime, hi: dt.datetime) -> bool:
        if self.start == self.end:
            return lo <= self.start < hi
        return self.start < hi and self.end > lo


@dataclass
class Mailbox:
    email: str
    name: str
    kind: str = "Mailbox"  # Mailbox / Room
    items: dict[str, Item] = field(default_factory=dict)
    seq: int = 0
    tombstones: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


@dataclass
class Message:
    """One meeting message sent: kind invitation / update / cancellation."""

    kind: str
    sender: str
    recipient: str
    subject: str
    uid: str
    item_id: str  # the organiser's item
    occurrence: str | None = None  # original start (UTC ISO) when about one occurrence
    delivered_to: str | None = None  # the inbox item id when the recipient is a mailbox here
    sent_at: dt.datetime = field(default_factory=now)


@dataclass
class Outcome:
    """What a write did, for the service layer's record."""

    item_id: str = ""
    uid: str = ""
    subject: str = ""
    messages: list[Message] = field(default_factory=list)
    saved_copy_ids: list[str] = field(default_factory=list)
    deleted_to: str | None = None  # gone / recoverableitemsdeletions / deleteditems
    moved_id: str | None = None
    attendee_copies: dict[str, str] = field(default_factory=dict)  # address → what happened
    changed_fields: list[str] = field(default_factory=list)


@dataclass
class Record:
    """One write request and what its modes did (``EwsEmulator.records``)."""

    seq: int
    operation: str
    login: str
    auth: str
    impersonating: str | None
    mailbox: str
    modes: dict[str, str]
    item_id: str = ""
    uid: str = ""
    subject: str = ""
    messages: list[tuple[str, str]] = field(default_factory=list)  # (kind, recipient)
    saved_copy_ids: list[str] = field(default_factory=list)
    deleted_to: str | None = None
    moved_id: str | None = None
    attendee_copies: dict[str, str] = field(default_factory=dict)
    changed_fields: list[str] = field(default_factory=list)
    error: str | None = None

    def recipients(self, kind: str | None = None) -> list[str]:
        return [r for k, r in self.messages if kind is None or k == kind]


# --- the store ------------------------------------------------------------------------------


class Store:
    """Mailboxes and items; every public method takes the store's lock."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._boxes: dict[str, Mailbox] = {}
        self._where: dict[str, str] = {}  # item id → mailbox
        self._secret = secrets.token_bytes(16)
        self._quiet = 0
        self._record_seq = 0
        self.messages: list[Message] = []
        self.records: list[Record] = []

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def clear(self) -> None:
        with self._lock:
            self._boxes.clear()
            self._where.clear()
            self.messages.clear()
            self.records.clear()
            self._secret = secrets.token_bytes(16)

    def invalidate_sync_states(self) -> None:
        """Every sync state handed out so far becomes invalid (ErrorInvalidSyncStateData)."""
        with self._lock:
            self._secret = secrets.token_bytes(16)

    # --- mailboxes ---

    def add_mailbox(
        self, email: str, display_name: str | None = None, kind: str = "Mailbox"
    ) -> Mailbox:
        key = email.strip().lower()
        with self._lock:
            box = self._boxes.get(key)
            if box is None:
                box = Mailbox(key, display_name or key.split("@")[0], kind)
                self._boxes[key] = box
            else:
                if display_name:
                    box.name = display_name
                if kind != "Mailbox":
                    box.kind = kind
            return box

    def mailboxes(self) -> list[str]:
        with self._lock:
            return sorted(self._boxes)

    def has_mailbox(self, email: str) -> bool:
        with self._lock:
            return email.strip().lower() in self._boxes

    def mailbox(self, email: str) -> Mailbox:
        with self._lock:
            box = self._boxes.get(email.strip().lower())
            if box is None:
                raise no_mailbox(email)
            return box

    def display_name(self, email: str) -> str:
        box = self._boxes.get(email)
        return box.name if box else ""

    def is_room(self, email: str) -> bool:
        box = self._boxes.get(email)
        return bool(box and box.kind == "Room")

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Deliver without logging messages (seeding)."""
        with self._lock:
            self._quiet += 1
        try:
            yield
        finally:
            with self._lock:
                self._quiet -= 1

    def next_record_seq(self) -> int:
        with self._lock:
            self._record_seq += 1
            return self._record_seq

    def add_record(self, record: Record) -> None:
        with self._lock:
            self.records.append(record)

    # --- low level ---

    def _touch(self, item: Item) -> None:
        box = self._boxes[item.mailbox]
        item.seq = box.next_seq()
        item.change_key = new_change_key()
        item.last_modified = now()

    def _put(self, item: Item) -> Item:
        box = self._boxes[item.mailbox]
        item.seq = item.created_seq = box.next_seq()
        box.items[item.id] = item
        self._where[item.id] = item.mailbox
        return item

    def _remove(self, item: Item) -> None:
        """Take the item out of its folder (tombstone) and the index."""
        box = self._boxes[item.mailbox]
        box.items.pop(item.id, None)
        self._where.pop(item.id, None)
        box.tombstones.setdefault(item.folder, {})[item.id] = (box.next_seq(), item.created_seq)

    def _item(self, item_id: str, mailbox: str | None = None) -> Item:
        owner = self._where.get(item_id)
        if owner is None or (mailbox is not None and owner != mailbox.strip().lower()):
            raise item_not_found()
        return self._boxes[owner].items[item_id]

    def owner_of(self, item_id: str) -> str | None:
        """The mailbox holding an item (an occurrence id: its master's)."""
        with self._lock:
            occurrence = split_occurrence_id(item_id)
            if occurrence is not None:
                item_id = occurrence[0]
            return self._where.get(item_id)

    # --- fields from seeds / the Python API ---

    def _seed_time(self, value: Any, zone: dt.tzinfo) -> tuple[dt.datetime, bool]:
        """(UTC instant, was a date) of a seed start/end: date, datetime or ISO text."""
        if isinstance(value, dt.datetime):
            aware = value if value.tzinfo else value.replace(tzinfo=zone)
            return aware.astimezone(UTC), False
        if isinstance(value, dt.date):
            return midnight(value, zone), True
        textual = str(value).strip()
        if len(textual) == 10:
            return midnight(dt.date.fromisoformat(textual), zone), True
        parsed = dt.datetime.fromisoformat(textual.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone)
        return parsed.astimezone(UTC), False

    def fields_from_seed(self, owner: str, event: dict[str, Any]) -> dict[str, Any]:
        """Seed/Python-API event dict → stored fields (see the package README for the keys)."""
        tz = windows_zone(event.get("timezone") or event.get("start_timezone") or DEFAULT_ZONE)
        zone = zone_of(tz)
        start, start_is_date = self._seed_time(event["start"], zone)
        end, _ = self._seed_time(event["end"], zone)
        all_day = bool(event.get("is_all_day", start_is_date))
        if all_day:
            start = midnight(start.astimezone(zone).date(), zone)
            end = midnight(end.astimezone(zone).date(), zone)
            if end <= start:
                end = midnight(start.astimezone(zone).date() + dt.timedelta(days=1), zone)
        if end < start:
            raise EwsError("ErrorCalendarEndDateIsEarlierThanStartDate", "end is before start")
        organizer = event.get("organizer") or owner
        org_email, org_name = address_of(organizer)
        f: dict[str, Any] = {
            "subject": str(event.get("subject") or ""),
            "body": str(event.get("body") or ""),
            "body_type": "HTML"
            if str(event.get("body_type", "HTML")).lower() == "html"
            else "Text",
            "start": start,
            "end": end,
            "all_day": all_day,
            "tz": tz,
            "end_tz": tz,
            "location": str(event.get("location") or ""),
            "organizer": (org_email, org_name or self.display_name(org_email)),
            "uid": str(event.get("uid") or new_uid()),
            "sensitivity": str(event.get("sensitivity") or "Normal"),
            "importance": str(event.get("importance") or "Normal"),
            "busy": str(event.get("legacy_free_busy_status") or "Busy"),
            "categories": list(event.get("categories") or []),
            "cancelled": bool(event.get("is_cancelled", False)),
            "ext": {},
            "recurrence": None,
            "reminder": bool(event.get("reminder_is_set", True)),
            "reminder_minutes": int(event.get("reminder_minutes_before_start", 15)),
            "response_requested": True,
            "sequence": 0,
        }
        for kind in KINDS:
            f[kind] = [
                {"email": e, "name": n or self.display_name(e), "response": "Unknown"}
                for e, n in (
                    address_of(p) for p in event.get(kind) or event.get(f"{kind}_attendees") or []
                )
                if e
            ]
        for prop in event.get("extended_properties") or []:
            uri = {k: str(v) for k, v in prop.items() if k != "value" and v is not None}
            f["ext"][ext_key(uri_from_snake(uri))] = {
                "uri": uri_from_snake(uri),
                "value": prop["value"],
            }
        if event.get("recurrence"):
            f["recurrence"] = rec.seed_pattern(event["recurrence"])
            rec.validate(f["recurrence"], start.astimezone(zone).date())
        f["response"] = "Organizer" if org_email == owner else "NoResponseReceived"
        return f

    # --- creating ---

    def add_event(
        self, mailbox: str, event: dict[str, Any], deliver: bool = True
    ) -> dict[str, Any]:
        """Create a calendar item from a seed-style dict (``deliver``: invitations and copies,
        as SendToAllAndSaveCopy would, without the Sent Items copy). Returns it as a dict; a
        series may carry ``modified_occurrences`` / ``deleted_occurrences``."""
        with self._lock:
            owner = self.add_mailbox(mailbox).email
            fields = self.fields_from_seed(owner, event)
            outcome = self.create_item(
                owner, fields, "SendOnlyToAll" if deliver else SEND_NONE, given_id=event.get("id")
            )
            for mod in event.get("modified_occurrences") or []:
                patch = {k: v for k, v in mod.items() if k != "original_start"}
                self.modify_occurrence(
                    owner, outcome.item_id, mod["original_start"], patch, deliver
                )
            for original in event.get("deleted_occurrences") or []:
                self.cancel_occurrence(owner, outcome.item_id, original, deliver)
            return self.to_dict(self._instance(self._item(outcome.item_id)))

    def create_item(
        self,
        mailbox: str,
        fields: dict[str, Any],
        send: str = SEND_NONE,
        folder: str = "calendar",
        given_id: str | None = None,
    ) -> Outcome:
        with self._lock:
            box = self.mailbox(mailbox)
            item_id = given_id if given_id and given_id not in self._where else new_item_id()
            fields.setdefault("organizer", (box.email, box.name))
            fields.setdefault("uid", new_uid())
            fields.setdefault("response", "Organizer")
            item = self._put(Item(item_id, box.email, folder, fields))
            outcome = Outcome(item.id, fields["uid"], fields.get("subject", ""))
            if item.is_organizer and send != SEND_NONE:
                recipients = item.recipients()
                if recipients:
                    item.f["meeting_request_was_sent"] = True
                for address in recipients:
                    self._make_copy(item, address)
                    outcome.attendee_copies[address] = (
                        "created" if address in item.copies else "external"
                    )
                self._send(item, "invitation", recipients, send, outcome)
            return outcome

    def _make_copy(self, item: Item, address: str) -> None:
        """Put the organiser's meeting into an attendee's calendar (if that mailbox is ours)."""
        box = self._boxes.get(address)
        if box is None or address in item.copies:
            return
        is_room = box.kind == "Room" or any(
            p["email"] == address for p in item.f.get("resources") or []
        )
        f = copy.deepcopy({k: v for k, v in item.f.items() if k not in ("ext", "categories")})
        f["categories"] = []
        f["ext"] = {}
        f["response"] = "Accept" if is_room else "NoResponseReceived"
        f["busy"] = item.f.get("busy", "Busy") if is_room else "Tentative"
        f["meeting_request_was_sent"] = False
        clone = Item(
            copy_item_id(item.id, address),
            address,
            "calendar",
            f,
            overrides={k: Override(copy.deepcopy(v.patch)) for k, v in item.overrides.items()},
            removed=set(item.removed),
            origin=(item.mailbox, item.id),
        )
        if clone.id in self._where:  # re-invited after a removal: a fresh id
            clone.id = new_item_id()
        self._put(clone)
        item.copies[address] = clone.id
        if is_room:  # a room mailbox accepts at once
            for kind in KINDS:
                for person in item.f.get(kind) or []:
                    if person["email"] == address:
                        person["response"] = "Accept"

    def _copies(self, item: Item) -> Iterator[Item]:
        for address, copy_id in list(item.copies.items()):
            box = self._boxes.get(address)
            clone = box.items.get(copy_id) if box else None
            if clone is None or clone.folder != "calendar":
                del item.copies[address]
                continue
            yield clone

    def _send(
        self,
        item: Item,
        kind: str,
        recipients: list[str],
        mode: str,
        outcome: Outcome,
        occurrence: dt.datetime | None = None,
        subject: str | None = None,
    ) -> None:
        """Log one message per recipient, drop it in their inbox; SaveCopy → Sent Items."""
        if not recipients or mode == SEND_NONE:
            return
        subject = subject if subject is not None else item.f.get("subject", "")
        if kind == "cancellation" and not subject.startswith(CANCELED_PREFIX):
            subject = CANCELED_PREFIX + subject
        message_kind = "MeetingCancellation" if kind == "cancellation" else "MeetingRequest"
        for address in recipients:
            message = Message(
                kind,
                item.mailbox,
                address,
                subject,
                item.f.get("uid", ""),
                item.id,
                fmt_datetime(occurrence) if occurrence else None,
            )
            box = self._boxes.get(address)
            if box is not None:
                inbox = self._put(
                    Item(
                        new_item_id(),
                        address,
                        "inbox",
                        {
                            "subject": subject,
                            "uid": item.f.get("uid", ""),
                            "organizer": item.f.get("organizer"),
                            "to": [address],
                            "associated": item.copies.get(address),
                            "message_kind": kind,
                        },
                        kind=message_kind,
                    )
                )
                message.delivered_to = inbox.id
            outcome.messages.append(message)
            if not self._quiet:
                self.messages.append(message)
        if mode.endswith("SaveCopy"):
            sent = self._put(
                Item(
                    new_item_id(),
                    item.mailbox,
                    "sentitems",
                    {
                        "subject": subject,
                        "uid": item.f.get("uid", ""),
                        "organizer": item.f.get("organizer"),
                        "to": list(recipients),
                        "associated": item.id,
                        "message_kind": kind,
                    },
                    kind=message_kind,
                )
            )
            outcome.saved_copy_ids.append(sent.id)

    # --- updating ---

    def update_event(
        self, mailbox: str, item_id: str, patch: dict[str, Any], deliver: bool = True
    ) -> dict[str, Any]:
        """Python API: change fields (seed-style keys) of an item or occurrence; ``deliver``
        updates the copies as SendOnlyToAll would."""
        with self._lock:
            owner = self.mailbox(mailbox).email
            mode = "SendOnlyToAll" if deliver else SEND_NONE
            occurrence = split_occurrence_id(item_id)
            if occurrence is not None:
                self.modify_occurrence(owner, occurrence[0], occurrence[1], patch, deliver)
                return self.to_dict(self.get_instance(owner, item_id))
            item = self._item(item_id, owner)
            fields = self.patch_from_seed(item, patch)
            self.update_item(owner, item_id, fields, mode)
            return self.to_dict(self._instance(item))

    def patch_from_seed(self, item: Item, patch: dict[str, Any]) -> dict[str, Any]:
        """Seed-style patch keys → stored field names (times parsed in the item's zone)."""
        zone = zone_of(item.f.get("tz"))
        out: dict[str, Any] = {}
        names = {
            "subject": "subject",
            "body": "body",
            "body_type": "body_type",
            "location": "location",
            "sensitivity": "sensitivity",
            "importance": "importance",
            "legacy_free_busy_status": "busy",
            "categories": "categories",
            "is_cancelled": "cancelled",
            "is_all_day": "all_day",
        }
        for key, value in patch.items():
            if key in names:
                out[names[key]] = value
            elif key in ("start", "end"):
                out[key] = self._seed_time(value, zone)[0]
            elif key in KINDS or key.endswith("_attendees"):
                kind = key.replace("_attendees", "")
                out[kind] = [
                    {"email": e, "name": n or self.display_name(e), "response": "Unknown"}
                    for e, n in (address_of(p) for p in value or [])
                    if e
                ]
            elif key == "timezone":
                out["tz"] = out["end_tz"] = windows_zone(value)
        if "start" in out and "end" not in out:  # a moved start keeps the duration
            out["end"] = out["start"] + (item.f["end"] - item.f["start"])
        return out

    def update_item(
        self,
        mailbox: str,
        item_id: str,
        patch: dict[str, Any],
        send: str = SEND_NONE,
        deleted: set[str] | None = None,
    ) -> Outcome:
        """Apply stored-field changes (``deleted``: fields cleared) to an item or occurrence."""
        with self._lock:
            occurrence = split_occurrence_id(item_id)
            if occurrence is not None:
                return self._update_occurrence(mailbox, occurrence[0], occurrence[1], patch, send)
            item = self._item(item_id, mailbox)
            old_recipients = set(item.recipients())
            for name in deleted or ():
                patch.setdefault(name, _empty(name))
            for key, value in patch.items():
                if key == "ext":
                    item.f["ext"] = {**item.f.get("ext", {}), **value}
                elif key == "ext_removed":
                    item.f["ext"] = {
                        k: v for k, v in item.f.get("ext", {}).items() if k not in value
                    }
                else:
                    item.f[key] = copy.deepcopy(value)
            self._normalize_times(item.f)
            if item.f.get("recurrence"):
                rec.validate(
                    item.f["recurrence"], item.f["start"].astimezone(zone_of(item.f["tz"])).date()
                )
            item.f["sequence"] = int(item.f.get("sequence", 0)) + 1
            self._touch(item)
            outcome = Outcome(item.id, item.f.get("uid", ""), item.f.get("subject", ""))
            outcome.changed_fields = sorted(patch)
            if item.is_organizer and send != SEND_NONE:
                self._propagate(item, set(patch) & SHARED_FIELDS, old_recipients, send, outcome)
            return outcome

    @staticmethod
    def _normalize_times(f: dict[str, Any]) -> None:
        if f.get("all_day"):
            zone = zone_of(f.get("tz"))
            start_day = f["start"].astimezone(zone).date()
            end_local = f["end"].astimezone(zone)
            end_day = end_local.date() + (
                dt.timedelta(days=1) if end_local.time() != dt.time() else dt.timedelta()
            )
            f["start"] = midnight(start_day, zone)
            f["end"] = midnight(max(end_day, start_day + dt.timedelta(days=1)), zone)
        if f["end"] < f["start"]:
            raise EwsError("ErrorCalendarEndDateIsEarlierThanStartDate", "end is before start")

    def _propagate(
        self, item: Item, fields: set[str], old: set[str], send: str, outcome: Outcome
    ) -> None:
        recipients = item.recipients()
        now_set = set(recipients)
        to_all = send in ("SendOnlyToAll", "SendToAllAndSaveCopy")
        removed = [a for a in old if a not in now_set]
        added = [a for a in recipients if a not in old]
        kept = [a for a in recipients if a in old]
        for clone in self._copies(item):
            if clone.mailbox in removed:
                self._cancel_copy(clone)
                clone.origin = None
                del item.copies[clone.mailbox]
                outcome.attendee_copies[clone.mailbox] = "cancelled"
            elif to_all:
                for key in fields | {"sequence"}:
                    clone.f[key] = copy.deepcopy(item.f.get(key))
                clone.overrides = {
                    k: Override(copy.deepcopy(v.patch)) for k, v in item.overrides.items()
                }
                clone.removed = set(item.removed)
                self._touch(clone)
                outcome.attendee_copies[clone.mailbox] = "updated"
        for address in added:
            self._make_copy(item, address)
            outcome.attendee_copies[address] = "created" if address in item.copies else "external"
        for address in kept:
            outcome.attendee_copies.setdefault(address, "unchanged" if not to_all else "external")
        self._send(item, "invitation", added, send, outcome)
        self._send(item, "cancellation", removed, send, outcome)
        if to_all:
            self._send(item, "update", kept, send, outcome)

    def _cancel_copy(self, clone: Item) -> None:
        clone.f["cancelled"] = True
        clone.f["busy"] = "Free"
        if not str(clone.f.get("subject", "")).startswith(CANCELED_PREFIX):
            clone.f["subject"] = CANCELED_PREFIX + str(clone.f.get("subject", ""))
        self._touch(clone)

    # --- occurrences ---

    def _series(self, mailbox: str, series_id: str) -> Item:
        item = self._item(series_id, mailbox)
        if not item.is_series:
            raise EwsError("ErrorCalendarOccurrenceIsDeletedFromRecurrence", "not a series")
        return item

    def _occurrence_key(self, item: Item, original: Any) -> dt.datetime:
        zone = zone_of(item.f.get("tz"))
        if isinstance(original, str):
            textual = original.strip()
            original = (
                dt.date.fromisoformat(textual)
                if len(textual) == 10
                else dt.datetime.fromisoformat(textual.replace("Z", "+00:00"))
            )
        day = original.date() if isinstance(original, dt.datetime) else original
        for key, _, _ in self._slots(item, day + dt.timedelta(days=2)):
            if isinstance(original, dt.datetime):
                wanted = original if original.tzinfo else original.replace(tzinfo=zone)
                if key == wanted.astimezone(UTC):
                    return key
            elif key.astimezone(zone).date() == original:
                return key
        raise EwsError("ErrorItemNotFound", f"the series has no occurrence at {original}")

    def _update_occurrence(
        self, mailbox: str, series_id: str, key: dt.datetime, patch: dict[str, Any], send: str
    ) -> Outcome:
        item = self._series(mailbox, series_id)
        if key in item.removed or self._slot(item, key) is None:
            raise EwsError(
                "ErrorCalendarOccurrenceIsDeletedFromRecurrence", "the occurrence was deleted"
            )
        clean = {k: copy.deepcopy(v) for k, v in patch.items() if k in OCCURRENCE_FIELDS}
        base = item.overrides[key].patch if key in item.overrides else {}
        merged = {**base, **clean}
        trial = {**item.f, **merged}
        if trial["end"] < trial["start"]:
            raise EwsError("ErrorCalendarEndDateIsEarlierThanStartDate", "end is before start")
        item.overrides[key] = Override(merged)
        self._touch(item)
        outcome = Outcome(
            occurrence_id(item.id, key), item.f.get("uid", ""), trial.get("subject", "")
        )
        outcome.changed_fields = sorted(clean)
        if item.is_organizer and send != SEND_NONE:
            shared = {k: v for k, v in clean.items() if k in SHARED_FIELDS}
            recipients = item.recipients()
            for clone in self._copies(item):
                if key in clone.removed:
                    continue
                old = clone.overrides[key].patch if key in clone.overrides else {}
                clone.overrides[key] = Override({**old, **copy.deepcopy(shared)})
                self._touch(clone)
                outcome.attendee_copies[clone.mailbox] = "updated"
            self._send(item, "update", recipients, send, outcome, occurrence=key)
        return outcome

    def modify_occurrence(
        self,
        mailbox: str,
        series_id: str,
        original_start: Any,
        patch: dict[str, Any],
        deliver: bool = True,
    ) -> dict[str, Any]:
        """Python API: make one occurrence an exception (seed-style patch keys)."""
        with self._lock:
            owner = self.mailbox(mailbox).email
            item = self._series(owner, series_id)
            key = self._occurrence_key(item, original_start)
            fields = self.patch_from_seed(item, patch)
            self._update_occurrence(
                owner, item.id, key, fields, "SendOnlyToAll" if deliver else SEND_NONE
            )
            return self.to_dict(self.get_instance(owner, occurrence_id(item.id, key)))

    def record_response(self, mailbox: str, item_id: str, attendee: str, response: str) -> None:
        """Python API: an attendee's reply reached the organiser's item (``response``: Accept,
        Tentative or Decline), e.g. a room's booking attendant declining; the item changes."""
        if response not in ("Accept", "Tentative", "Decline"):
            raise ValueError(f"not a response: {response!r}")
        with self._lock:
            item = self._item(item_id, self.mailbox(mailbox).email)
            people = [p for kind in KINDS for p in item.f.get(kind) or []]
            matched = [p for p in people if p["email"] == attendee.strip().lower()]
            if not matched:
                raise item_not_found()
            for person in matched:
                person["response"] = response
            self._touch(item)

    def cancel_occurrence(
        self, mailbox: str, series_id: str, original_start: Any, deliver: bool = True
    ) -> None:
        """Python API: delete one occurrence from a series (copies show it cancelled)."""
        with self._lock:
            owner = self.mailbox(mailbox).email
            item = self._series(owner, series_id)
            key = self._occurrence_key(item, original_start)
            self._delete_occurrence(item, key, "SendOnlyToAll" if deliver else SEND_NONE, Outcome())

    def _delete_occurrence(self, item: Item, key: dt.datetime, send: str, outcome: Outcome) -> None:
        if key in item.removed:
            raise item_not_found()
        instance = self._occurrence_instance(item, key)
        subject = str(instance.f.get("subject", "")) if instance else ""
        item.removed.add(key)
        item.overrides.pop(key, None)
        self._touch(item)
        outcome.item_id = occurrence_id(item.id, key)
        outcome.uid = item.f.get("uid", "")
        outcome.subject = subject
        outcome.deleted_to = "occurrence-deleted"
        if item.is_organizer and send != SEND_NONE:
            for clone in self._copies(item):
                if key in clone.removed:
                    continue
                patch = dict(clone.overrides[key].patch) if key in clone.overrides else {}
                patch.update(cancelled=True, subject=CANCELED_PREFIX + subject, busy="Free")
                clone.overrides[key] = Override(patch)
                self._touch(clone)
                outcome.attendee_copies[clone.mailbox] = "occurrence-cancelled"
            self._send(item, "cancellation", item.recipients(), send, outcome, key, subject)
        else:
            for clone in self._copies(item):
                outcome.attendee_copies[clone.mailbox] = "kept"

    # --- moving ---

    def move_item(self, mailbox: str, item_id: str, folder: str = "calendar") -> str:
        """MoveItem: the item goes to ``folder`` of its mailbox ("calendar", or e.g. "projects":
        a calendar folder calsync does not read) with a new ItemId, as EWS ids change on a
        move; UID, extended properties, copies and responses stay. The old folder keeps a
        tombstone (SyncFolderItems: a Delete there, a Create in the new one). Moving to the
        same folder re-issues the id. Returns the new id."""
        with self._lock:
            item = self._item(item_id, self.mailbox(mailbox).email)
            if split_occurrence_id(item_id) is not None or item.kind != "CalendarItem":
                raise ValueError("only calendar items (masters, single items) move")
            self._remove(item)
            item.id, item.folder = new_item_id(), folder
            self._put(item)
            if item.origin is not None:  # an attendee's copy: the organiser finds it anew
                organiser = self._boxes.get(item.origin[0])
                master = organiser.items.get(item.origin[1]) if organiser else None
                if master is not None and master.copies.get(item.mailbox) == item_id:
                    master.copies[item.mailbox] = item.id
            for clone in self._copies(item):
                clone.origin = (item.mailbox, item.id)
            return item.id

    # --- deleting ---

    def delete_event(
        self,
        mailbox: str,
        item_id: str,
        deliver: bool = True,
        delete_type: str = "MoveToDeletedItems",
    ) -> None:
        """Python API: delete an item (an occurrence id deletes that occurrence)."""
        self.delete_item(mailbox, item_id, delete_type, "SendOnlyToAll" if deliver else SEND_NONE)

    def delete_item(
        self, mailbox: str, item_id: str, delete_type: str, cancel: str = SEND_NONE
    ) -> Outcome:
        with self._lock:
            owner = self.mailbox(mailbox).email
            occurrence = split_occurrence_id(item_id)
            outcome = Outcome()
            if occurrence is not None:
                item = self._series(owner, occurrence[0])
                self._delete_occurrence(item, occurrence[1], cancel, outcome)
                return outcome
            item = self._item(item_id, owner)
            outcome.item_id, outcome.uid = item.id, item.f.get("uid", "")
            outcome.subject = item.f.get("subject", "")
            if item.origin is not None:  # an attendee deletes their copy
                organiser = self._boxes.get(item.origin[0])
                master = organiser.items.get(item.origin[1]) if organiser else None
                if master is not None and master.copies.get(item.mailbox) == item.id:
                    del master.copies[item.mailbox]
            if item.kind == "CalendarItem" and item.is_organizer and item.folder == "calendar":
                if cancel != SEND_NONE:
                    for clone in self._copies(item):
                        self._cancel_copy(clone)
                        clone.origin = None
                        outcome.attendee_copies[clone.mailbox] = "cancelled"
                    self._send(item, "cancellation", item.recipients(), cancel, outcome)
                else:
                    for clone in self._copies(item):
                        outcome.attendee_copies[clone.mailbox] = "kept"
                item.copies.clear()
            self._remove(item)
            if delete_type == "HardDelete" or item.folder == "recoverableitemsdeletions":
                outcome.deleted_to = "gone"
                return outcome
            target = "recoverableitemsdeletions" if delete_type == "SoftDelete" else "deleteditems"
            if item.folder == "deleteditems" and delete_type == "MoveToDeletedItems":
                target = "recoverableitemsdeletions"
            moved = Item(
                new_item_id(),
                item.mailbox,
                target,
                item.f,
                kind=item.kind,
                overrides=item.overrides,
                removed=item.removed,
            )
            self._put(moved)
            outcome.deleted_to = target
            outcome.moved_id = moved.id
            return outcome

    # --- reading ---

    def _slot(self, item: Item, key: dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
        for slot_key, start, end in self._slots(item, key.date() + dt.timedelta(days=2)):
            if slot_key == key:
                return start, end
        return None

    def _slots(
        self, item: Item, until: dt.date
    ) -> Iterator[tuple[dt.datetime, dt.datetime, dt.datetime]]:
        """(original start, start, end) in UTC of each occurrence up to the local date ``until``."""
        zone = zone_of(item.f.get("tz"))
        start, end = item.f["start"], item.f["end"]
        if item.f.get("all_day"):
            first = start.astimezone(zone).date()
            days = end.astimezone(zone).date() - first
            for day in rec.occurrence_dates(item.f["recurrence"], until):
                s = midnight(day, zone)
                yield s, s, midnight(day + days, zone)
            return
        wall = start.astimezone(zone).replace(tzinfo=None).time()
        duration = end - start
        for day in rec.occurrence_dates(item.f["recurrence"], until):
            s = dt.datetime.combine(day, wall, tzinfo=zone).astimezone(UTC)
            yield s, s, s + duration

    def _instance(self, item: Item) -> Instance:
        kind = "RecurringMaster" if item.is_series else "Single"
        return Instance(item, item.id, item.f, kind, None, item.change_key, item.last_modified)

    def _occurrence_instance(
        self, item: Item, key: dt.datetime, index: int | None = None
    ) -> Instance | None:
        slot = self._slot(item, key)
        if slot is None or key in item.removed:
            return None
        return self._occurrence_from_slot(item, key, slot[0], slot[1], index)

    def _occurrence_from_slot(
        self, item: Item, key: dt.datetime, start: dt.datetime, end: dt.datetime, index: int | None
    ) -> Instance:
        f = {k: v for k, v in item.f.items() if k != "recurrence"}
        f.update(start=start, end=end, recurrence=None)
        override = item.overrides.get(key)
        kind, change_key, modified = "Occurrence", item.change_key, item.last_modified
        if override is not None:
            f.update(copy.deepcopy(override.patch))
            kind, change_key, modified = "Exception", override.change_key, override.last_modified
            if f.get("all_day"):
                self._normalize_times(f)
        return Instance(
            item, occurrence_id(item.id, key), f, kind, key, change_key, modified, index
        )

    def _series_instances(self, item: Item, lo: dt.datetime, hi: dt.datetime) -> Iterator[Instance]:
        until = hi.date() + dt.timedelta(days=2)
        if item.overrides:
            until = max(until, max(item.overrides).date() + dt.timedelta(days=2))
        for index, (key, start, end) in enumerate(self._slots(item, until), start=1):
            if key in item.removed:
                continue
            instance = self._occurrence_from_slot(item, key, start, end, index)
            if instance.overlaps(lo, hi):
                yield instance

    def view(self, mailbox: str, lo: dt.datetime, hi: dt.datetime) -> list[Instance]:
        """Calendar instances overlapping [lo, hi), series expanded, by (start, id)."""
        with self._lock:
            box = self.mailbox(mailbox)
            found: list[Instance] = []
            for item in list(box.items.values()):
                if item.folder != "calendar" or item.kind != "CalendarItem":
                    continue
                if item.is_series:
                    found.extend(self._series_instances(item, lo, hi))
                else:
                    instance = self._instance(item)
                    if instance.overlaps(lo, hi):
                        found.append(instance)
            found.sort(key=lambda i: (i.start, i.id))
            return found

    def folder_instances(self, mailbox: str, folder: str) -> list[Instance]:
        """Items of a folder (masters unexpanded), by (created sequence)."""
        with self._lock:
            box = self.mailbox(mailbox)
            items = sorted(
                (i for i in box.items.values() if i.folder == folder), key=lambda i: i.created_seq
            )
            return [self._instance(i) for i in items]

    def get_instance(self, mailbox: str | None, item_id: str) -> Instance:
        """An item or one occurrence by id (``mailbox``: the owner it must be in)."""
        with self._lock:
            occurrence = split_occurrence_id(item_id)
            if occurrence is not None:
                item = self._item(occurrence[0], mailbox)
                found = self._occurrence_instance(item, occurrence[1]) if item.is_series else None
                if found is None:
                    raise item_not_found()
                return found
            return self._instance(self._item(item_id, mailbox))

    def occurrence_by_index(self, mailbox: str | None, master_id: str, index: int) -> Instance:
        with self._lock:
            item = self._item(master_id, mailbox)
            if not item.is_series or index < 1:
                raise item_not_found()
            far = item.f["start"].date() + dt.timedelta(days=366 * 30)
            for number, (key, start, end) in enumerate(self._slots(item, far), start=1):
                if number == index:
                    if key in item.removed:
                        raise EwsError(
                            "ErrorCalendarOccurrenceIsDeletedFromRecurrence",
                            "the occurrence was deleted",
                        )
                    return self._occurrence_from_slot(item, key, start, end, index)
            raise EwsError("ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange", "no such index")

    def master_of(self, mailbox: str | None, item_id: str) -> Instance:
        with self._lock:
            occurrence = split_occurrence_id(item_id)
            if occurrence is None:
                item = self._item(item_id, mailbox)
                if not item.is_series:
                    raise EwsError("ErrorItemNotFound", "the item is not an occurrence")
                return self._instance(item)
            return self._instance(self._item(occurrence[0], mailbox))

    def find_by_uid(self, mailbox: str, uid: str) -> list[dict[str, Any]]:
        with self._lock:
            box = self.mailbox(mailbox)
            return [
                self.to_dict(self._instance(i))
                for i in box.items.values()
                if i.folder == "calendar" and i.f.get("uid") == uid
            ]

    # --- sync ---

    def sync_state(self, mailbox: str, folder: str, seq: int) -> str:
        payload = _b64(json.dumps([mailbox, folder, seq]).encode())
        mac = hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()[:20]
        return f"H4sI{payload}.{mac}"

    def _parse_state(self, mailbox: str, folder: str, state: str) -> int:
        invalid = EwsError(
            "ErrorInvalidSyncStateData",
            "Synchronization state data is corrupt or otherwise invalid.",
        )
        if not state.startswith("H4sI") or "." not in state:
            raise invalid
        payload, mac = state[4:].rsplit(".", 1)
        good = hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()[:20]
        if not hmac.compare_digest(mac, good):
            raise invalid
        try:
            box, fld, seq = json.loads(_unb64(payload))
        except (ValueError, TypeError):
            raise invalid from None
        if box != mailbox or fld != folder:
            raise invalid
        return int(seq)

    def sync_changes(
        self, mailbox: str, folder: str, state: str | None, max_changes: int
    ) -> tuple[list[tuple[str, Any]], str, bool]:
        """(changes, new state, includes last): changes are ("Create"|"Update", Instance) or
        ("Delete", item id), oldest first."""
        with self._lock:
            box = self.mailbox(mailbox)
            since = self._parse_state(box.email, folder, state) if state else 0
            pending: list[tuple[int, str, Any]] = []
            for item in box.items.values():
                if item.folder == folder and item.seq > since:
                    kind = "Create" if item.created_seq > since else "Update"
                    pending.append((item.seq, kind, item))
            for item_id, (seq, created) in box.tombstones.get(folder, {}).items():
                if seq > since and created <= since and item_id not in box.items:
                    pending.append((seq, "Delete", item_id))
            pending.sort(key=lambda p: p[0])
            page = pending[:max_changes]
            last = len(page) == len(pending)
            new_seq = box.seq if last else page[-1][0]
            changes = [
                (kind, self._instance(obj) if kind != "Delete" else obj) for _, kind, obj in page
            ]
            return changes, self.sync_state(box.email, folder, new_seq), last

    # --- Python views ---

    def events(self, mailbox: str, folder: str = "calendar") -> list[dict[str, Any]]:
        """Stored items of a folder as dicts (a master with its modified/deleted occurrences)."""
        return [self.to_dict(i) for i in self.folder_instances(mailbox, folder)]

    def view_dicts(self, mailbox: str, lo: dt.datetime, hi: dt.datetime) -> list[dict[str, Any]]:
        return [self.to_dict(i) for i in self.view(mailbox, lo, hi)]

    def get(self, mailbox: str, item_id: str) -> dict[str, Any]:
        return self.to_dict(self.get_instance(mailbox, item_id))

    def to_dict(self, instance: Instance) -> dict[str, Any]:
        f = instance.f
        item = instance.item
        out: dict[str, Any] = {
            "id": instance.id,
            "changekey": instance.change_key,
            "mailbox": item.mailbox,
            "folder": item.folder,
            "kind": item.kind,
            "type": instance.type if item.kind == "CalendarItem" else None,
            "subject": f.get("subject", ""),
            "uid": f.get("uid", ""),
            "organizer": {
                "email": (f.get("organizer") or ("", ""))[0],
                "name": (f.get("organizer") or ("", ""))[1],
            },
        }
        if item.kind != "CalendarItem":
            out.update(to=list(f.get("to") or []), message_kind=f.get("message_kind"))
            out["associated_calendar_item"] = f.get("associated")
            return out
        zone = zone_of(f.get("tz"))
        out.update(
            start=fmt_datetime(f["start"]),
            end=fmt_datetime(f["end"]),
            is_all_day=bool(f.get("all_day")),
            timezone=f.get("tz"),
            body=f.get("body", ""),
            body_type=f.get("body_type", "HTML"),
            location=f.get("location", ""),
            required_attendees=copy.deepcopy(f.get("required") or []),
            optional_attendees=copy.deepcopy(f.get("optional") or []),
            resources=copy.deepcopy(f.get("resources") or []),
            is_cancelled=bool(f.get("cancelled")),
            sensitivity=f.get("sensitivity", "Normal"),
            importance=f.get("importance", "Normal"),
            legacy_free_busy_status=f.get("busy", "Busy"),
            categories=list(f.get("categories") or []),
            my_response_type=f.get("response", "Unknown"),
            is_organizer=(f.get("organizer") or ("", ""))[0] == item.mailbox,
            extended_properties=[
                {**prop["uri"], "value": copy.deepcopy(prop["value"])}
                for prop in (f.get("ext") or {}).values()
            ],
            last_modified=fmt_datetime(instance.last_modified or item.last_modified),
        )
        if f.get("all_day"):
            out["start_date"] = f["start"].astimezone(zone).date().isoformat()
            out["end_date"] = f["end"].astimezone(zone).date().isoformat()
        if instance.original_start is not None:
            out["original_start"] = fmt_datetime(instance.original_start)
            out["series_id"] = item.id
        if instance.type == "RecurringMaster":
            out["recurrence"] = copy.deepcopy(f.get("recurrence"))
            out["modified_occurrences"] = [
                {"original_start": fmt_datetime(k), **_plain_patch(o.patch)}
                for k, o in sorted(item.overrides.items())
            ]
            out["deleted_occurrences"] = [fmt_datetime(k) for k in sorted(item.removed)]
        return out

    # --- seeding ---

    def load_seed(self, seed: dict[str, Any]) -> dict[str, int]:
        """``{"mailboxes": {address: {"display_name"?, "kind"?: "Room", "events": [...]}}}``:
        mailboxes first, then events with delivery (not logged as messages)."""
        boxes = seed.get("mailboxes") or {}
        created = 0
        with self._lock, self.quiet():
            for address, spec in boxes.items():
                spec = spec or {}
                self.add_mailbox(address, spec.get("display_name"), spec.get("kind", "Mailbox"))
            for address, spec in boxes.items():
                for event in (spec or {}).get("events") or []:
                    self.add_event(address, event, deliver=event.get("deliver", True))
                    created += 1
        return {"mailboxes": len(boxes), "events": created}


def _plain_patch(patch: dict[str, Any]) -> dict[str, Any]:
    return {
        k: fmt_datetime(v) if isinstance(v, dt.datetime) else copy.deepcopy(v)
        for k, v in patch.items()
    }


def _empty(name: str) -> Any:
    if name in KINDS or name == "categories":
        return []
    if name in ("recurrence",):
        return None
    if name == "ext":
        return {}
    if name in ("all_day", "cancelled", "reminder"):
        return False
    return ""


# --- extended properties -------------------------------------------------------------------

URI_ATTRS = (
    "DistinguishedPropertySetId",
    "PropertySetId",
    "PropertyTag",
    "PropertyName",
    "PropertyId",
    "PropertyType",
)
_SNAKE = {
    "distinguished_property_set_id": "DistinguishedPropertySetId",
    "property_set_id": "PropertySetId",
    "property_tag": "PropertyTag",
    "property_name": "PropertyName",
    "property_id": "PropertyId",
    "property_type": "PropertyType",
}


def uri_from_snake(uri: dict[str, str]) -> dict[str, str]:
    return {_SNAKE.get(k, k): v for k, v in uri.items()}


def ext_key(uri: dict[str, str]) -> tuple[str, str, str, str]:
    """A case-insensitive key of an ExtendedFieldURI (set, name/id/tag; the type not included)."""
    set_id = (uri.get("PropertySetId") or uri.get("DistinguishedPropertySetId") or "").lower()
    name = uri.get("PropertyName") or ""
    prop_id = str(uri.get("PropertyId") or "")
    tag = (uri.get("PropertyTag") or "").lower()
    if tag:
        tag = hex(int(tag, 16)) if tag.startswith("0x") else hex(int(tag))
    return set_id, name, prop_id, tag
