"""In-memory mailboxes and calendar items with Exchange-like meeting delivery.

Each mailbox holds items: single events and series masters, in Graph JSON form as created
(start/end in the zone they were given in). A series master keeps its modified occurrences
("overrides", keyed by original start in UTC) and the occurrences removed from this calendar.

Delivery, as Exchange does it inside one organisation: an item whose organiser is the
mailbox owner sends invitations; every attendee that is a mailbox of this store gets a copy
(same iCalUId, own id, ``isOrganizer`` false, ``showAs`` tentative — rooms accept at once).
Organiser updates reach the copies; an organiser delete leaves the copies in place with
``isCancelled`` true and the subject prefixed "Canceled: "; cancelling one occurrence does the
same to that occurrence in the copies (the organiser's own calendar simply loses it).
Notification counts (one per recipient, external ones included) go to ``stats``.

calendarView delta (``delta_start`` / ``delta_follow`` / ``delta_page``): a deltatoken stands
for a baseline, the view of its window at the end of its round as {instance id: fingerprint of
what a client sees}; following it diffs the current view against that baseline. Tokens stay
valid after newer rounds (a client that lost its latest state may resume from an older one)
until ``expire_delta_tokens`` or ``clear`` forgets them all (then 410 SyncStateNotFound).

Convention that keeps reads cheap: a stored value is replaced, never mutated in place, so the
instances handed out (shallow copies taken under the lock) can be rendered without the lock
and without deep copies. What the Python API returns to callers is deep-copied.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import html
import pickle
import re
import secrets
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from emulators.graph import recurrence as rec
from emulators.graph.timezones import (
    UTC,
    UnknownTimeZone,
    format_local,
    format_utc_z,
    now_utc,
    parse_local,
    resolve_zone,
)

ID_PREFIX = "AAMkAGI2"
EXCHANGE_UID_PREFIX = "040000008200E00074C5B7101A82E008"
NEVER = "0001-01-01T00:00:00Z"
CANCELED_PREFIX = "Canceled: "

# Fields the organiser's changes carry to attendee copies (the rest is per mailbox).
SHARED_FIELDS = frozenset(
    {
        "subject",
        "body",
        "bodyPreview",
        "start",
        "end",
        "isAllDay",
        "location",
        "locations",
        "attendees",
        "recurrence",
        "sensitivity",
        "importance",
        "isOnlineMeeting",
        "onlineMeeting",
        "onlineMeetingProvider",
        "originalStartTimeZone",
        "originalEndTimeZone",
        "isCancelled",
    }
)
# Fields a client cannot set (ignored on create and update).
READ_ONLY = frozenset(
    {
        "@odata.etag",
        "@odata.context",
        "changeKey",
        "createdDateTime",
        "lastModifiedDateTime",
        "webLink",
        "type",
        "seriesMasterId",
        "originalStart",
        "isOrganizer",
        "bodyPreview",
        "exceptionOccurrences",
        "cancelledOccurrences",
    }
)


def _clone(value: Any) -> Any:
    """A deep copy of stored data (JSON-shaped: dicts, lists, strings, numbers, datetimes).
    A pickle round trip runs in C: ~3× faster than a recursive copy in Python and ~10× than
    ``copy.deepcopy`` (delivering a meeting copies the event once per attendee, and every
    read copies what it renders: that copy was most of the emulator's CPU)."""
    if value is None or isinstance(value, _IMMUTABLE):
        return value
    # The bytes are made on this line from our own data, never read from outside.
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))  # noqa: S301


_IMMUTABLE = (str, int, float, bool, dt.datetime, dt.date)


def _pickled_copy_data(item: Item) -> bytes:
    """What an attendee's copy starts from: the organiser's fields but its private ones."""
    data = {k: v for k, v in item.data.items() if k != "singleValueExtendedProperties"}
    return pickle.dumps(data, pickle.HIGHEST_PROTOCOL)


class GraphError(Exception):
    """An error Graph would answer with ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def item_not_found() -> GraphError:
    return GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")


def invalid_user(user: str) -> GraphError:
    return GraphError(404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")


def bad_request(message: str, code: str = "ErrorInvalidRequest") -> GraphError:
    return GraphError(400, code, message)


class NotificationSink(Protocol):
    def notify(self, kind: str, mailbox: str, count: int) -> None: ...


# --- ids, keys, timestamps -------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def new_item_id() -> str:
    return ID_PREFIX + _b64(b"\x00" + secrets.token_bytes(50))


def copy_item_id(organizer_item_id: str, address: str) -> str:
    """Deterministic id of an attendee's copy, so a re-seeded emulator keeps its ids."""
    digest = hashlib.sha256(f"{organizer_item_id}|{address}".encode()).digest()
    return ID_PREFIX + _b64(b"\x02" + digest + digest[:18])


def occurrence_id(master_id: str, original_start: dt.datetime) -> str:
    """Deterministic id of an occurrence: the master's id and the original start, encoded."""
    stamp = int(original_start.timestamp()).to_bytes(8, "big", signed=True)
    return ID_PREFIX + _b64(b"\x01" + stamp + master_id.encode())


def split_occurrence_id(event_id: str) -> tuple[str, dt.datetime] | None:
    if not event_id.startswith(ID_PREFIX):
        return None
    try:
        raw = base64.urlsafe_b64decode(event_id[len(ID_PREFIX) :])
    except (ValueError, TypeError):
        return None
    if len(raw) < 10 or raw[0] != 1:
        return None
    stamp = int.from_bytes(raw[1:9], "big", signed=True)
    return raw[9:].decode(errors="replace"), dt.datetime.fromtimestamp(stamp, UTC)


def new_uid() -> str:
    """An iCalUId shaped like Exchange's GlobalObjectId (date bytes zero on the master)."""
    filetime = int((now_utc().timestamp() + 11644473600) * 10_000_000)
    return (
        EXCHANGE_UID_PREFIX
        + "00000000"
        + filetime.to_bytes(8, "little").hex().upper()
        + "0" * 16
        + "10000000"
        + secrets.token_hex(16).upper()
    )


def occurrence_uid(series_uid: str, local_date: dt.date) -> str:
    """Exchange writes the occurrence's date into bytes 16-19 of the GlobalObjectId."""
    if series_uid.upper().startswith(EXCHANGE_UID_PREFIX) and len(series_uid) >= 40:
        stamp = f"{local_date.year:04X}{local_date.month:02X}{local_date.day:02X}"
        return series_uid[:32] + stamp + series_uid[40:]
    return f"{series_uid}_{local_date:%Y%m%d}"


def web_link(event_id: str) -> str:
    return f"https://outlook.office365.com/owa/?itemid={event_id}&exvsurl=1&path=/calendar/item"


def new_change_key() -> str:
    return base64.b64encode(secrets.token_bytes(16)).decode()


def _stamp() -> str:
    return format_utc_z(now_utc(), fraction=True)


_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]+>", re.IGNORECASE | re.DOTALL)


def html_to_text(content: str) -> str:
    """Markup stripped (scripts and styles with their content), entities decoded."""
    text = html.unescape(_TAG.sub(" ", content))
    return "\n".join(" ".join(line.split()) for line in text.splitlines()).strip()


def body_preview(body: dict[str, Any]) -> str:
    text = body.get("content") or ""
    if (body.get("contentType") or "").lower() == "html":
        text = html_to_text(text)
    return " ".join(text.split())[:255]


# --- timing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """When an instance happens: instants in UTC; all-day ones also as floating dates."""

    start: dt.datetime
    end: dt.datetime
    all_day: bool = False
    start_date: dt.date | None = None
    end_date: dt.date | None = None

    def overlaps(self, lo: dt.datetime, hi: dt.datetime) -> bool:
        if self.start == self.end:
            return lo <= self.start < hi
        return self.start < hi and self.end > lo


def _time_value(data: dict[str, Any], key: str) -> tuple[str, str]:
    node = data.get(key)
    if not isinstance(node, dict) or not node.get("dateTime"):
        raise bad_request(f"The event's {key}.dateTime is required.")
    return str(node["dateTime"]), str(node.get("timeZone") or "UTC")


def compute_timing(data: dict[str, Any]) -> Timing:
    """Timing of an event in stored form; raises GraphError(400) when it makes no sense."""
    (start_text, start_zone), (end_text, end_zone) = (
        _time_value(data, "start"),
        _time_value(data, "end"),
    )
    try:
        start = parse_local(start_text, start_zone)
        end = parse_local(end_text, end_zone)
    except UnknownTimeZone as exc:
        raise bad_request(str(exc), "ErrorTimeZoneNotFound") from None
    except ValueError:
        raise bad_request(f"Cannot parse start/end {start_text!r}/{end_text!r}.") from None
    if data.get("isAllDay"):
        if start.time() != dt.time(0) or end.time() != dt.time(0):
            raise bad_request(
                "An all-day event's start and end must be at midnight.",
                "ErrorPropertyValidationFailure",
            )
        start_date, end_date = start.date(), end.date()
        if end_date <= start_date:
            raise bad_request("An all-day event must last at least one day.")
        zone = resolve_zone(start_zone)
        return Timing(
            _midnight(start_date, zone),
            _midnight(end_date, zone),
            all_day=True,
            start_date=start_date,
            end_date=end_date,
        )
    if end < start:
        raise bad_request("The event's end is before its start.")
    return Timing(start.astimezone(UTC), end.astimezone(UTC))


def _midnight(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=zone).astimezone(UTC)


# --- items --------------------------------------------------------------------------------------


@dataclass
class Override:
    """A modified (or, in an attendee copy, cancelled) occurrence of a series."""

    patch: dict[str, Any]
    change_key: str = field(default_factory=new_change_key)
    last_modified: str = field(default_factory=_stamp)


@dataclass
class Item:
    id: str
    mailbox: str
    data: dict[str, Any]
    overrides: dict[dt.datetime, Override] = field(default_factory=dict)
    removed: set[dt.datetime] = field(default_factory=set)  # occurrences gone from this calendar
    copies: dict[str, str] = field(default_factory=dict)  # attendee mailbox -> copy id
    origin: tuple[str, str] | None = None  # (organiser mailbox, organiser item id) of a copy
    _timing: Timing | None = None

    @property
    def timing(self) -> Timing:
        if self._timing is None:
            self._timing = compute_timing(self.data)
        return self._timing

    @property
    def is_series(self) -> bool:
        return bool(self.data.get("recurrence"))

    def touch(self) -> None:
        self.data["changeKey"] = new_change_key()
        self.data["lastModifiedDateTime"] = _stamp()
        self._timing = None


@dataclass
class Instance:
    """What a calendar view shows: a single event, an occurrence, an exception or a master."""

    data: dict[str, Any]
    timing: Timing
    item: Item

    @property
    def sort_key(self) -> tuple[dt.datetime, str]:
        return self.timing.start, self.data["id"]


@dataclass(frozen=True)
class DeltaBaseline:
    """What a deltatoken stands for: a mailbox's calendar view of [lo, hi) at the end of a
    delta round, as {instance id: fingerprint of everything a client could see of it}."""

    mailbox: str
    lo: dt.datetime
    hi: dt.datetime
    versions: dict[str, str]


@dataclass(frozen=True)
class DeltaRound:
    """The changes one delta request found, served page by page: an Instance is an upsert, a
    string the id of a removed event; ``token`` is the deltatoken the last page carries."""

    mailbox: str
    entries: list[Instance | str]
    token: str


def delta_sync_state_gone() -> GraphError:
    return GraphError(
        410,
        "SyncStateNotFound",
        "The sync state generation is not found or has expired: restart the synchronization "
        "(a new delta round without a token).",
    )


def _fingerprint(instance: Instance) -> str:
    # orjson with sorted keys: the same canonical text as json.dumps(sort_keys=True), about
    # ten times faster (a delta round fingerprints every instance of the view; with json it
    # was most of the emulator's CPU on an unchanged re-sync)
    timing = instance.timing
    text = orjson.dumps(
        [instance.data, timing.start, timing.end, timing.start_date, timing.end_date],
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
        default=str,
    )
    return hashlib.sha256(text).hexdigest()[:32]


@dataclass
class Mailbox:
    email: str
    display_name: str
    user_id: str
    items: dict[str, Item] = field(default_factory=dict)
    transactions: dict[str, str] = field(default_factory=dict)  # transactionId -> item id
    # Items moved to another of the mailbox's calendars: out of every view and delta of the
    # default calendar (all the emulator serves) until moved back.
    elsewhere: dict[str, tuple[str, Item]] = field(default_factory=dict)  # id -> (calendar, item)


def _norm_attendee(node: Any) -> dict[str, Any]:
    node = dict(node or {})
    email = dict(node.get("emailAddress") or {})
    address = str(email.get("address") or "").strip()
    email["address"] = address
    email.setdefault("name", address)
    node["emailAddress"] = email
    node["type"] = (
        node.get("type") if node.get("type") in ("required", "optional", "resource") else "required"
    )
    node["status"] = dict(node.get("status") or {"response": "none", "time": NEVER})
    return node


def _norm_location(node: Any) -> dict[str, Any]:
    node = dict(node or {})
    node.setdefault("displayName", "")
    node.setdefault(
        "locationType", "conferenceRoom" if node.get("locationEmailAddress") else "default"
    )
    if node["displayName"]:
        node.setdefault("uniqueId", node["displayName"])
        node.setdefault("uniqueIdType", "private")
    else:
        node.setdefault("uniqueIdType", "unknown")
    node.setdefault("address", {})
    node.setdefault("coordinates", {})
    return node


def _address(node: Any) -> str:
    return str(((node or {}).get("emailAddress") or {}).get("address") or "").strip().lower()


class Store:
    """All mailboxes. Thread-safe: every public method holds one re-entrant lock."""

    def __init__(self, stats: NotificationSink | None = None) -> None:
        self._lock = threading.RLock()
        self._boxes: dict[str, Mailbox] = {}
        self._by_user_id: dict[str, str] = {}
        self._stats = stats
        self._quiet = 0
        # calendarView delta: deltatoken -> baseline, round id -> pages being served
        self._delta_baselines: OrderedDict[str, DeltaBaseline] = OrderedDict()
        self._delta_rounds: OrderedDict[str, DeltaRound] = OrderedDict()

    # --- mailboxes ---

    def clear(self) -> None:
        with self._lock:
            self._boxes.clear()
            self._by_user_id.clear()
            self._delta_baselines.clear()
            self._delta_rounds.clear()

    def add_mailbox(self, email: str, display_name: str | None = None) -> Mailbox:
        key = email.strip().lower()
        with self._lock:
            box = self._boxes.get(key)
            if box is None:
                user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{key}"))
                box = Mailbox(key, display_name or key.split("@")[0], user_id)
                self._boxes[key] = box
                self._by_user_id[user_id] = key
            elif display_name:
                box.display_name = display_name
            return box

    def mailboxes(self) -> list[str]:
        with self._lock:
            return sorted(self._boxes)

    def has_mailbox(self, user: str) -> bool:
        with self._lock:
            return self._find_box(user) is not None

    def mailbox(self, user: str) -> Mailbox:
        """A mailbox by address (case-insensitive) or user id; GraphError 404 if unknown."""
        with self._lock:
            box = self._find_box(user)
            if box is None:
                raise invalid_user(user)
            return box

    def _find_box(self, user: str) -> Mailbox | None:
        key = user.strip().lower()
        return self._boxes.get(key) or self._boxes.get(self._by_user_id.get(key, ""))

    # --- notifications ---

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Deliver without counting notifications (seeding)."""
        with self._lock:
            self._quiet += 1
        try:
            yield
        finally:
            with self._lock:
                self._quiet -= 1

    def _notify(self, kind: str, mailbox: str, count: int) -> None:
        if count and self._stats is not None and not self._quiet:
            self._stats.notify(kind, mailbox, count)

    # --- creating ---

    def add_event(
        self, mailbox: str, event: dict[str, Any], deliver: bool = True
    ) -> dict[str, Any]:
        """Create an event (Graph JSON); returns it in stored form with its assigned fields."""
        return self.create_event(mailbox, event, deliver)[0]

    def create_event(
        self, mailbox: str, event: dict[str, Any], deliver: bool = True, shared: bool = False
    ) -> tuple[dict[str, Any], bool]:
        """``add_event`` that also says whether ``transactionId`` matched an existing event.
        ``shared``: the stored fields themselves, not a copy: read them, never change them."""
        with self._lock:
            item, replayed = self._create(mailbox, event, deliver)
            return (item.data if shared else self._raw(item)), replayed

    def _create(self, mailbox: str, event: dict[str, Any], deliver: bool) -> tuple[Item, bool]:
        box = self.add_mailbox(mailbox)
        tx = event.get("transactionId")
        if tx and box.transactions.get(tx) in box.items:
            return box.items[box.transactions[tx]], True
        data = self._new_data(box, event)
        item = Item(data["id"], box.email, data)
        box.items[item.id] = item
        if tx:
            box.transactions[tx] = item.id
        if deliver and data["isOrganizer"]:
            recipients = self._recipients(item)
            shared = _pickled_copy_data(item)  # serialised once for every attendee's copy
            for address in recipients:
                self._make_copy(item, address, shared)
            self._notify("invitations_sent", box.email, len(recipients))
        return item, False

    def _new_data(self, box: Mailbox, event: dict[str, Any]) -> dict[str, Any]:
        # One copy of the whole body, not one per field: a create was ~40 copies.
        data = _clone({k: v for k, v in event.items() if k not in READ_ONLY})
        given_id = data.pop("id", None)
        data["id"] = (
            given_id
            if isinstance(given_id, str) and given_id and given_id not in box.items
            else new_item_id()
        )
        organizer = data.get("organizer") or {
            "emailAddress": {"name": box.display_name, "address": box.email}
        }
        data["organizer"] = {"emailAddress": dict(organizer.get("emailAddress") or {})}
        data["isOrganizer"] = _address(data["organizer"]) == box.email
        data.setdefault(
            "responseStatus",
            {"response": "organizer" if data["isOrganizer"] else "notResponded", "time": NEVER},
        )
        data["iCalUId"] = data.get("iCalUId") or new_uid()
        stamp = _stamp()
        data["createdDateTime"] = stamp
        data["lastModifiedDateTime"] = stamp
        data["changeKey"] = new_change_key()
        data["webLink"] = web_link(data["id"])
        for key, default in (
            ("subject", ""),
            ("isAllDay", False),
            ("isCancelled", False),
            ("sensitivity", "normal"),
            ("showAs", "busy"),
            ("importance", "normal"),
            ("categories", []),
            ("isReminderOn", True),
            ("reminderMinutesBeforeStart", 15),
            ("hasAttachments", False),
            ("isDraft", False),
            ("isOnlineMeeting", False),
            ("onlineMeetingProvider", "unknown"),
            ("onlineMeeting", None),
            ("allowNewTimeProposals", True),
            ("responseRequested", True),
            ("seriesMasterId", None),
            ("recurrence", None),
            ("transactionId", None),
        ):
            if key not in data:
                data[key] = [] if isinstance(default, list) else default
        self._normalize(data)
        return data

    def _normalize(self, data: dict[str, Any]) -> None:
        """Fill derived fields and check what Graph would refuse (GraphError 400)."""
        for key in ("start", "end"):
            node = data.get(key)
            if isinstance(node, dict):
                node.setdefault("timeZone", "UTC")
        data.setdefault("originalStartTimeZone", (data.get("start") or {}).get("timeZone") or "UTC")
        data.setdefault("originalEndTimeZone", (data.get("end") or {}).get("timeZone") or "UTC")
        body = dict(data.get("body") or {})
        body["contentType"] = (
            "html" if str(body.get("contentType", "html")).lower() == "html" else "text"
        )
        body["content"] = str(body.get("content") or "")
        data["body"] = body
        data["bodyPreview"] = body_preview(body)
        data["attendees"] = [_norm_attendee(a) for a in data.get("attendees") or []]
        data["location"] = _norm_location(data.get("location"))
        if "locations" not in data or data["locations"] is None:
            data["locations"] = [dict(data["location"])] if data["location"]["displayName"] else []
        else:
            data["locations"] = [_norm_location(loc) for loc in data["locations"]]
        props = data.get("singleValueExtendedProperties")
        if props is not None:
            data["singleValueExtendedProperties"] = [
                {"id": str(p["id"]), "value": str(p.get("value", ""))} for p in props
            ]
        timing = compute_timing(data)
        recurrence = data.get("recurrence")
        if recurrence:
            rng = recurrence.setdefault("range", {})
            rng.setdefault("recurrenceTimeZone", data["start"]["timeZone"])
            try:
                zone = resolve_zone(rng["recurrenceTimeZone"])
                first = (
                    timing.start_date if timing.all_day else timing.start.astimezone(zone).date()
                )
                rec.validate(recurrence, first)  # type: ignore[arg-type]
            except (rec.RecurrenceError, UnknownTimeZone) as exc:
                raise bad_request(str(exc)) from None
            data["type"] = "seriesMaster"
        else:
            data["recurrence"] = None
            data["type"] = "singleInstance"

    def _recipients(self, item: Item) -> list[str]:
        """Attendee addresses other than the organiser's own mailbox, in order, once each."""
        seen: dict[str, None] = {}
        for attendee in item.data.get("attendees") or []:
            address = _address(attendee)
            if address and address != item.mailbox:
                seen.setdefault(address, None)
        return list(seen)

    def _make_copy(self, item: Item, address: str, shared: bytes | None = None) -> None:
        """Put the organiser's item into an attendee's calendar (if that mailbox is ours).
        ``shared``: ``_pickled_copy_data(item)``, when the caller makes several copies."""
        box = self._boxes.get(address)
        if box is None or address in item.copies:
            return
        is_room = any(
            _address(a) == address and a.get("type") == "resource" for a in item.data["attendees"]
        )
        # The bytes were made from our own stored item, never read from outside.
        data = pickle.loads(shared or _pickled_copy_data(item))  # noqa: S301
        data["id"] = copy_item_id(item.id, address)
        data["isOrganizer"] = False
        data["responseStatus"] = {
            "response": "accepted" if is_room else "notResponded",
            "time": NEVER,
        }
        data["showAs"] = item.data.get("showAs", "busy") if is_room else "tentative"
        data["categories"] = []
        data["transactionId"] = None
        stamp = _stamp()
        data["createdDateTime"] = data["lastModifiedDateTime"] = stamp
        data["changeKey"] = new_change_key()
        data["webLink"] = web_link(data["id"])
        clone = Item(
            data["id"],
            address,
            data,
            overrides={k: Override(_clone(v.patch)) for k, v in item.overrides.items()},
            removed=set(item.removed),
            origin=(item.mailbox, item.id),
        )
        box.items[clone.id] = clone
        item.copies[address] = clone.id

    def _copies(self, item: Item) -> Iterator[Item]:
        for address, copy_id in list(item.copies.items()):
            box = self._boxes.get(address)
            clone = box.items.get(copy_id) if box else None
            if clone is None:
                del item.copies[address]
                continue
            yield clone

    # --- changing ---

    def _item(self, mailbox: str, event_id: str) -> Item:
        item = self.mailbox(mailbox).items.get(event_id)
        if item is None:
            raise item_not_found()
        return item

    def update_event(
        self, mailbox: str, event_id: str, patch: dict[str, Any], deliver: bool = True
    ) -> dict[str, Any]:
        """Partial update (top-level fields replaced); a new changeKey; organiser changes reach
        the copies. An occurrence id updates that occurrence (it becomes an exception)."""
        with self._lock:
            occurrence = split_occurrence_id(event_id)
            if occurrence is not None:
                self.modify_occurrence(mailbox, occurrence[0], occurrence[1], patch, deliver)
                return self._render_raw(self.get_instance(mailbox, event_id))
            item = self._item(mailbox, event_id)
            old_recipients = set(self._recipients(item))
            backup = _clone(item.data)
            self._apply_patch(item.data, patch)
            try:
                self._normalize(item.data)
            except GraphError:
                item.data = backup
                raise
            item.touch()
            changed = {k for k in patch if k not in READ_ONLY} | {"bodyPreview"}
            if deliver and item.data["isOrganizer"]:
                self._propagate(item, changed & SHARED_FIELDS, old_recipients)
            return self._raw(item)

    @staticmethod
    def _apply_patch(data: dict[str, Any], patch: dict[str, Any]) -> None:
        for key, value in patch.items():
            if key in READ_ONLY or key in ("id", "iCalUId", "organizer"):
                continue
            if key == "singleValueExtendedProperties":  # merged by id, as Graph does
                props = {p["id"].lower(): p for p in data.get(key) or []}
                for prop in value or []:
                    props[str(prop["id"]).lower()] = {
                        "id": str(prop["id"]),
                        "value": str(prop.get("value", "")),
                    }
                data[key] = list(props.values())
            else:
                data[key] = _clone(value)

    def _propagate(self, item: Item, fields: set[str], old_recipients: set[str]) -> None:
        recipients = self._recipients(item)
        for clone in self._copies(item):
            if clone.mailbox not in recipients:  # removed from the meeting
                self._cancel_copy(clone)
                clone.origin = None
                del item.copies[clone.mailbox]
                continue
            for key in fields:
                clone.data[key] = _clone(item.data.get(key))
            clone.touch()
        added = [a for a in recipients if a not in old_recipients]
        for address in added:
            self._make_copy(item, address)
        self._notify("invitations_sent", item.mailbox, len(added))
        self._notify("cancellations_sent", item.mailbox, len(old_recipients - set(recipients)))
        self._notify("updates_sent", item.mailbox, len(set(recipients) & old_recipients))

    @staticmethod
    def _cancel_copy(clone: Item) -> None:
        clone.data["isCancelled"] = True
        if not str(clone.data.get("subject", "")).startswith(CANCELED_PREFIX):
            clone.data["subject"] = CANCELED_PREFIX + str(clone.data.get("subject", ""))
        clone.touch()

    def delete_event(self, mailbox: str, event_id: str, deliver: bool = True) -> None:
        """Delete an item (an occurrence id cancels that occurrence). An organiser's delete
        leaves attendee copies cancelled; an attendee's delete just removes their copy."""
        with self._lock:
            occurrence = split_occurrence_id(event_id)
            if occurrence is not None:
                self.cancel_occurrence(mailbox, occurrence[0], occurrence[1], deliver)
                return
            item = self._item(mailbox, event_id)
            del self._boxes[item.mailbox].items[item.id]
            if item.origin is not None:
                organiser = self._boxes.get(item.origin[0])
                master = organiser.items.get(item.origin[1]) if organiser else None
                if master is not None and master.copies.get(item.mailbox) == item.id:
                    del master.copies[item.mailbox]
            if deliver and item.data["isOrganizer"]:
                for clone in self._copies(item):
                    self._cancel_copy(clone)
                    clone.origin = None
                self._notify("cancellations_sent", item.mailbox, len(self._recipients(item)))

    def move_to_calendar(self, mailbox: str, event_id: str, calendar: str) -> str:
        """Move an item to another calendar of its mailbox (``calendar`` a name) or back to the
        default one (``"default"``). Immutable ids survive moves within a mailbox, so the id,
        iCalUId and extended properties stay; returns the id. Out of the default calendar the
        item is in no view or delta (calsync reads only that one)."""
        with self._lock:
            box = self.mailbox(mailbox)
            if calendar == "default":
                if event_id not in box.elsewhere:
                    raise item_not_found()
                _, item = box.elsewhere.pop(event_id)
                box.items[event_id] = item
            else:
                item = (
                    box.items.pop(event_id, None) or (box.elsewhere.pop(event_id, (None, None))[1])
                )
                if item is None:
                    raise item_not_found()
                box.elsewhere[event_id] = (calendar, item)
            return event_id

    def move_event(self, mailbox: str, event_id: str) -> str:
        """Give an item a new id (as a move out of the calendar and back does); returns it."""
        with self._lock:
            item = self._item(mailbox, event_id)
            box = self._boxes[item.mailbox]
            new_id = new_item_id()
            del box.items[item.id]
            for tx, target in box.transactions.items():
                if target == item.id:
                    box.transactions[tx] = new_id
            item.id = item.data["id"] = new_id
            item.data["webLink"] = web_link(new_id)
            box.items[new_id] = item
            if item.origin is not None:
                organiser = self._boxes.get(item.origin[0])
                master = organiser.items.get(item.origin[1]) if organiser else None
                if master is not None:
                    master.copies[item.mailbox] = new_id
            for clone in self._copies(item):
                clone.origin = (item.mailbox, new_id)
            return new_id

    # --- occurrences ---

    def _series(self, mailbox: str, series_id: str) -> Item:
        item = self._item(mailbox, series_id)
        if not item.is_series:
            raise bad_request("The event is not a series master.")
        return item

    def _occurrence_key(self, item: Item, original_start: Any) -> dt.datetime:
        """The original start (UTC) of the occurrence meant by ``original_start``: an aware
        datetime, a naive one (wall time in the series' zone), a date, or ISO text of either."""
        if isinstance(original_start, str):
            text = original_start.strip()
            original_start = (
                dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(text)
            )
        for key, _ in self._occurrence_slots(item, self._until_for(item, original_start)):
            if isinstance(original_start, dt.datetime):
                zone = self._series_zone(item)
                wanted = (
                    original_start if original_start.tzinfo else original_start.replace(tzinfo=zone)
                )
                if key == wanted.astimezone(UTC):
                    return key
            elif key.astimezone(self._series_zone(item)).date() == original_start or (
                item.timing.all_day and self._local_date(item, key) == original_start
            ):
                return key
        raise GraphError(
            404, "ErrorItemNotFound", f"The series has no occurrence at {original_start}."
        )

    @staticmethod
    def _until_for(item: Item, when: Any) -> dt.date:
        day = when.date() if isinstance(when, dt.datetime) else when
        return day + dt.timedelta(days=2)

    def cancel_occurrence(
        self, mailbox: str, series_id: str, original_start: Any, deliver: bool = True
    ) -> None:
        """Remove one occurrence from the organiser's calendar; copies show it cancelled."""
        with self._lock:
            item = self._series(mailbox, series_id)
            key = self._occurrence_key(item, original_start)
            item.removed.add(key)
            item.overrides.pop(key, None)
            item.touch()
            if deliver and item.data["isOrganizer"]:
                for clone in self._copies(item):
                    if key in clone.removed:
                        continue
                    current = self._occurrence_instance(clone, key)
                    subject = str(current.data.get("subject", "")) if current else ""
                    patch = dict(clone.overrides[key].patch) if key in clone.overrides else {}
                    patch.update(isCancelled=True, subject=CANCELED_PREFIX + subject)
                    clone.overrides[key] = Override(patch)
                    clone.touch()
                self._notify("cancellations_sent", item.mailbox, len(self._recipients(item)))

    def modify_occurrence(
        self,
        mailbox: str,
        series_id: str,
        original_start: Any,
        patch: dict[str, Any],
        deliver: bool = True,
    ) -> dict[str, Any]:
        """Make one occurrence an exception (``patch``: Graph fields, e.g. a moved start/end)."""
        with self._lock:
            item = self._series(mailbox, series_id)
            key = self._occurrence_key(item, original_start)
            clean = {
                k: _clone(v) for k, v in patch.items() if k not in READ_ONLY and k != "recurrence"
            }
            merged = {**(item.overrides[key].patch if key in item.overrides else {}), **clean}
            self._check_override(item, key, merged)
            item.overrides[key] = Override(merged)
            item.touch()
            if deliver and item.data["isOrganizer"]:
                shared = {k: v for k, v in clean.items() if k in SHARED_FIELDS}
                for clone in self._copies(item):
                    if key in clone.removed:
                        continue
                    base = clone.overrides[key].patch if key in clone.overrides else {}
                    clone.overrides[key] = Override({**base, **_clone(shared)})
                    clone.touch()
                self._notify("updates_sent", item.mailbox, len(self._recipients(item)))
            instance = self._occurrence_instance(item, key)
            assert instance is not None
            return self._render_raw(instance)

    def _check_override(self, item: Item, key: dt.datetime, patch: dict[str, Any]) -> None:
        """GraphError(400) if the patched occurrence's times make no sense."""
        if not {"start", "end", "isAllDay"} & patch.keys():
            return
        timing = self._slot(item, key)
        assert timing is not None  # key came from _occurrence_key
        zone_name = item.data["start"].get("timeZone") or "UTC"
        compute_timing(
            {
                "isAllDay": item.data.get("isAllDay"),
                "start": self._stored_time(timing.start, timing.start_date, zone_name),
                "end": self._stored_time(timing.end, timing.end_date, zone_name),
                **patch,
            }
        )

    # --- reading ---

    def _series_zone(self, item: Item) -> dt.tzinfo:
        rng = (item.data.get("recurrence") or {}).get("range") or {}
        return resolve_zone(rng.get("recurrenceTimeZone") or item.data["start"].get("timeZone"))

    def _local_date(self, item: Item, key: dt.datetime) -> dt.date:
        return key.astimezone(resolve_zone(item.data["start"].get("timeZone"))).date()

    def _occurrence_slots(self, item: Item, until: dt.date) -> Iterator[tuple[dt.datetime, Timing]]:
        """(original start UTC, timing) of each occurrence the pattern yields up to ``until``
        (a local date), removed ones included."""
        master = item.timing
        if master.all_day:
            assert master.start_date is not None and master.end_date is not None
            days = master.end_date - master.start_date
            zone = resolve_zone(item.data["start"].get("timeZone"))
            for day in rec.occurrence_dates(item.data["recurrence"], until):
                start = _midnight(day, zone)
                yield start, Timing(start, _midnight(day + days, zone), True, day, day + days)
            return
        zone = self._series_zone(item)
        wall = master.start.astimezone(zone).replace(tzinfo=None).time()
        duration = master.end - master.start
        for day in rec.occurrence_dates(item.data["recurrence"], until):
            start = dt.datetime.combine(day, wall, tzinfo=zone).astimezone(UTC)
            yield start, Timing(start, start + duration)

    def _occurrence_from_slot(self, item: Item, key: dt.datetime, timing: Timing) -> Instance:
        data = {k: v for k, v in item.data.items() if k not in ("recurrence",)}
        zone_name = item.data["start"].get("timeZone") or "UTC"
        local_day = key.astimezone(self._series_zone(item)).date()
        data.update(
            id=occurrence_id(item.id, key),
            type="occurrence",
            seriesMasterId=item.id,
            originalStart=format_utc_z(key),
            recurrence=None,
            iCalUId=occurrence_uid(str(item.data["iCalUId"]), local_day),
            start=self._stored_time(timing.start, timing.start_date, zone_name),
            end=self._stored_time(timing.end, timing.end_date, zone_name),
        )
        override = item.overrides.get(key)
        if override is not None:
            data.update(_clone(override.patch))
            data.update(
                type="exception",
                changeKey=override.change_key,
                lastModifiedDateTime=override.last_modified,
            )
            if {"start", "end", "isAllDay"} & override.patch.keys():
                timing = compute_timing(data)
            data["bodyPreview"] = body_preview(data.get("body") or {})
        return Instance(data, timing, item)

    @staticmethod
    def _stored_time(instant: dt.datetime, day: dt.date | None, zone_name: str) -> dict[str, str]:
        if day is not None:
            return {"dateTime": f"{day.isoformat()}T00:00:00.0000000", "timeZone": zone_name}
        return {"dateTime": format_local(instant, resolve_zone(zone_name)), "timeZone": zone_name}

    def _slot(self, item: Item, key: dt.datetime) -> Timing | None:
        """The pattern's timing of the occurrence originally at ``key`` (None: no such one)."""
        for slot_key, timing in self._occurrence_slots(item, key.date() + dt.timedelta(days=2)):
            if slot_key == key:
                return timing
        return None

    def _occurrence_instance(self, item: Item, key: dt.datetime) -> Instance | None:
        timing = self._slot(item, key)
        if timing is None or key in item.removed:
            return None
        return self._occurrence_from_slot(item, key, timing)

    def _series_instances(self, item: Item, lo: dt.datetime, hi: dt.datetime) -> Iterator[Instance]:
        until = hi.date() + dt.timedelta(days=2)
        if item.overrides:  # an exception moved into the window from a later slot
            until = max(until, max(item.overrides).date() + dt.timedelta(days=2))
        for key, timing in self._occurrence_slots(item, until):
            if key in item.removed:
                continue
            if key not in item.overrides and not timing.overlaps(lo, hi):
                continue
            instance = self._occurrence_from_slot(item, key, timing)
            if instance.timing.overlaps(lo, hi):
                yield instance

    def calendar_view(self, mailbox: str, lo: dt.datetime, hi: dt.datetime) -> list[Instance]:
        """Instances overlapping [lo, hi), series expanded, sorted by (start, id)."""
        with self._lock:
            box = self.mailbox(mailbox)
            found: list[Instance] = []
            for item in box.items.values():
                if item.is_series:
                    found.extend(self._series_instances(item, lo, hi))
                elif item.timing.overlaps(lo, hi):
                    found.append(Instance(item.data, item.timing, item))
            found.sort(key=lambda i: i.sort_key)
            return [Instance(dict(i.data), i.timing, i.item) for i in found]

    def series_instances(
        self, mailbox: str, series_id: str, lo: dt.datetime, hi: dt.datetime
    ) -> list[Instance]:
        with self._lock:
            item = self._series(mailbox, series_id)
            found = sorted(self._series_instances(item, lo, hi), key=lambda i: i.sort_key)
            return [Instance(dict(i.data), i.timing, i.item) for i in found]

    def get_instance(self, mailbox: str, event_id: str) -> Instance:
        """An item, or one occurrence/exception by its id; GraphError 404 if absent."""
        with self._lock:
            occurrence = split_occurrence_id(event_id)
            if occurrence is not None:
                item = self._item(mailbox, occurrence[0])
                instance = (
                    self._occurrence_instance(item, occurrence[1]) if item.is_series else None
                )
                if instance is None:
                    raise item_not_found()
                return Instance(dict(instance.data), instance.timing, item)
            item = self._item(mailbox, event_id)
            return Instance(dict(item.data), item.timing, item)

    def items(self, mailbox: str) -> list[Instance]:
        """Single events and series masters (what ``/events`` lists), sorted by (start, id)."""
        with self._lock:
            box = self.mailbox(mailbox)
            found = [Instance(dict(i.data), i.timing, i) for i in box.items.values()]
            return sorted(found, key=lambda i: i.sort_key)

    def events(self, mailbox: str) -> list[dict[str, Any]]:
        """Raw stored items (masters included, with their exceptions and cancellations)."""
        with self._lock:
            return [self._raw(item) for item in self.mailbox(mailbox).items.values()]

    def _raw(self, item: Item) -> dict[str, Any]:
        data = _clone(item.data)
        if item.is_series:
            data["exceptionOccurrences"] = [
                {"originalStart": format_utc_z(k), **_clone(o.patch)}
                for k, o in sorted(item.overrides.items())
            ]
            data["cancelledOccurrences"] = [format_utc_z(k) for k in sorted(item.removed)]
        return data

    @staticmethod
    def _render_raw(instance: Instance) -> dict[str, Any]:
        return _clone(instance.data)

    # --- seeding ---

    def load_seed(self, seed: dict[str, Any]) -> dict[str, int]:
        """Load ``{"mailboxes": {address: {"displayName"?, "events": [...]}}}``: mailboxes
        first, then events with delivery (not counted as notifications). A series master may
        carry ``cancelledOccurrences`` (original starts) and ``exceptionOccurrences``
        (``{"originalStart": ..., <fields>}``). Returns counts."""
        boxes = seed.get("mailboxes") or {}
        with self._lock, self.quiet():
            for address, spec in boxes.items():
                self.add_mailbox(address, (spec or {}).get("displayName"))
            created = 0
            for address, spec in boxes.items():
                for event in (spec or {}).get("events") or []:
                    body = {
                        k: v
                        for k, v in event.items()
                        if k not in ("cancelledOccurrences", "exceptionOccurrences", "deliver")
                    }
                    made, _ = self._create(address, body, deliver=event.get("deliver", True))
                    for exception in event.get("exceptionOccurrences") or []:
                        patch = {k: v for k, v in exception.items() if k != "originalStart"}
                        self.modify_occurrence(address, made.id, exception["originalStart"], patch)
                    for original in event.get("cancelledOccurrences") or []:
                        self.cancel_occurrence(address, made.id, original)
                    created += 1
            return {"mailboxes": len(boxes), "events": created}

    def find_by_property(self, mailbox: str, prop_id: str, value: str) -> list[Instance]:
        wanted = prop_id.strip().lower()
        return [
            i
            for i in self.items(mailbox)
            if any(
                p["id"].strip().lower() == wanted and p["value"] == value
                for p in i.data.get("singleValueExtendedProperties") or []
            )
        ]

    def find_by_uid(self, mailbox: str, uid: str) -> list[Instance]:
        return [i for i in self.items(mailbox) if i.data.get("iCalUId") == uid]

    # --- calendarView delta -------------------------------------------------------------------

    MAX_DELTA_TOKENS = 20_000  # oldest tokens are forgotten first (then they answer 410)
    MAX_DELTA_ROUNDS = 2_000

    def delta_start(self, mailbox: str, lo: dt.datetime, hi: dt.datetime) -> str:
        """A new delta round for [lo, hi): every instance of the view is an upsert. Returns the
        round id whose pages ``delta_page`` serves (the last one carries the deltatoken)."""
        with self._lock:
            email = self.mailbox(mailbox).email
            view = self.calendar_view(email, lo, hi)
            return self._delta_round(email, lo, hi, list(view), view)

    def delta_follow(self, mailbox: str, token: str) -> str:
        """What changed in the token's window since the token was issued: created or updated
        instances (upserts) and ids that left the view (deleted, cancelled, moved out or given
        a new id). GraphError 410 SyncStateNotFound for an unknown, expired or foreign token."""
        with self._lock:
            email = self.mailbox(mailbox).email
            baseline = self._delta_baselines.get(token)
            if baseline is None or baseline.mailbox != email:
                raise delta_sync_state_gone()
            view = self.calendar_view(email, baseline.lo, baseline.hi)
            versions = {i.data["id"]: _fingerprint(i) for i in view}
            entries: list[Instance | str] = [
                i for i in view if baseline.versions.get(i.data["id"]) != versions[i.data["id"]]
            ]
            entries.extend(sorted(set(baseline.versions) - set(versions)))
            return self._delta_round(email, baseline.lo, baseline.hi, entries, view, versions)

    def _delta_round(
        self,
        email: str,
        lo: dt.datetime,
        hi: dt.datetime,
        entries: list[Instance | str],
        view: list[Instance],
        versions: dict[str, str] | None = None,
    ) -> str:
        token = secrets.token_urlsafe(18)
        if versions is None:
            versions = {i.data["id"]: _fingerprint(i) for i in view}
        self._delta_baselines[token] = DeltaBaseline(email, lo, hi, versions)
        while len(self._delta_baselines) > self.MAX_DELTA_TOKENS:
            self._delta_baselines.popitem(last=False)
        round_id = secrets.token_urlsafe(12)
        self._delta_rounds[round_id] = DeltaRound(email, entries, token)
        while len(self._delta_rounds) > self.MAX_DELTA_ROUNDS:
            self._delta_rounds.popitem(last=False)
        return round_id

    def delta_page(
        self, mailbox: str, round_id: str, offset: int, size: int
    ) -> tuple[list[Instance | str], int | None, str]:
        """(entries of the page, offset of the next page or None, the round's deltatoken)."""
        with self._lock:
            email = self.mailbox(mailbox).email
            found = self._delta_rounds.get(round_id)
            if found is None or found.mailbox != email or offset < 0:
                raise delta_sync_state_gone()
            page = found.entries[offset : offset + size]
            following = offset + size if offset + size < len(found.entries) else None
            return page, following, found.token

    def delta_window(self, token: str) -> tuple[dt.datetime, dt.datetime] | None:
        """The [lo, hi) a deltatoken is bound to (None: unknown token)."""
        with self._lock:
            baseline = self._delta_baselines.get(token)
            return (baseline.lo, baseline.hi) if baseline else None

    def expire_delta_tokens(self) -> int:
        """Forget every delta and skip token: following one answers 410 SyncStateNotFound (as
        Graph does for an expired sync state). Returns how many deltatokens were dropped."""
        with self._lock:
            count = len(self._delta_baselines)
            self._delta_baselines.clear()
            self._delta_rounds.clear()
            return count
