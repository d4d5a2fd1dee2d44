"""In-memory mailboxes, calendars and events of the Alibaba Mail emulator.

Every mailbox has a default calendar ("我的日历", ``isDefault``) and a second folder
("项目日历"); more can be added. Events are kept as received (unknown fields included) plus
the fields the server assigns (id, calendarId, iCalUId, organizer, timestamps, changeKey).
A simple Graph-like ``recurrence`` (daily or weekly, until a date, a count or no end) is
expanded by the calendar view into occurrences with stable ids.

Notifications: a write with the send-notification switch on sends one message per attendee
(the mailbox owner excluded) — invitations on create, updates on update (cancellations to
attendees dropped), cancellations on delete — counted in ``stats``. Nothing is delivered to
other mailboxes.

Thread-safe (one re-entrant lock); what the Python API returns is deep-copied.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import secrets
import threading
import zoneinfo
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from calsync.connectors import alimail_wire as wire

UTC = dt.UTC
DEFAULT_CALENDAR = "我的日历"
OTHER_CALENDAR = "项目日历"
DEFAULT_ZONE = "Asia/Shanghai"
MAX_OCCURRENCES = 2000
CHANGE_KEY = wire.EV_CHANGE_KEY[0]  # a new random value on every modification
LAST_MODIFIED = wire.EV_LAST_MODIFIED[0]
READ_ONLY = frozenset({"id", "calendarId", "createdDateTime", LAST_MODIFIED, CHANGE_KEY, "type"})
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class AlimailError(Exception):
    """An error the API answers with ``{"code", "message", "requestId"}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def user_not_found(user: str) -> AlimailError:
    return AlimailError(404, wire.CODE_USER_NOT_FOUND, f"user {user} does not exist")


def event_not_found(event_id: str) -> AlimailError:
    return AlimailError(404, wire.CODE_EVENT_NOT_FOUND, f"event {event_id} not found")


def bad_request(message: str) -> AlimailError:
    return AlimailError(400, wire.CODE_INVALID_PARAMETER, message)


class NotificationSink(Protocol):
    def notify(self, kind: str, recipient: str) -> None: ...


# --- time -------------------------------------------------------------------------------------


def resolve_zone(name: str | None) -> zoneinfo.ZoneInfo:
    name = (name or DEFAULT_ZONE).strip()
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    try:  # Windows names, as the real suites accept them
        from tzlocal.windows_tz import win_tz

        return zoneinfo.ZoneInfo(win_tz[name])
    except (ImportError, KeyError, zoneinfo.ZoneInfoNotFoundError):
        raise bad_request(f"unknown time zone {name!r}") from None


def parse_instant(text: str) -> dt.datetime:
    """An ISO 8601 instant with an offset or ``Z`` (a naive one is taken as UTC)."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise bad_request(f"not an ISO 8601 time: {text!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def format_utc(value: dt.datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> str:
    return dt.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _touch(data: dict[str, Any]) -> None:
    """A modification: a new change key and modification time."""
    data[LAST_MODIFIED] = _now()
    data[CHANGE_KEY] = secrets.token_hex(8)


@dataclass(frozen=True)
class Timing:
    """Instants in UTC; all-day events also carry their dates (floating, end exclusive)."""

    start: dt.datetime
    end: dt.datetime
    zone: str
    all_day: bool = False
    start_date: dt.date | None = None
    end_date: dt.date | None = None

    def overlaps(self, lo: dt.datetime, hi: dt.datetime) -> bool:
        if self.start == self.end:
            return lo <= self.start < hi
        return self.start < hi and self.end > lo


def _time_node(data: dict[str, Any], names: tuple[str, ...], what: str) -> Any:
    node = wire.first(data, names)
    if node is None:
        raise bad_request(f"event {what} is required")
    return node


def _local(node: Any, zone_name: str) -> tuple[dt.datetime | None, dt.date | None, str]:
    """(aware datetime or None, date or None, zone name) of a wire time value."""
    if isinstance(node, dict):
        zone_name = str(wire.first(node, wire.TIME_ZONE) or zone_name)
        raw = wire.first(node, wire.TIME_DATETIME)
        if raw is None:
            day = wire.first(node, wire.TIME_DATE)
            if day is None:
                raise bad_request("a time needs dateTime or date")
            try:
                return None, dt.date.fromisoformat(str(day)), zone_name
            except ValueError:
                raise bad_request(f"not a date: {day!r}") from None
        node = raw
    text = str(node).strip()
    if len(text) == 10:
        try:
            return None, dt.date.fromisoformat(text), zone_name
        except ValueError:
            raise bad_request(f"not a date: {text!r}") from None
    zone = resolve_zone(zone_name)
    if text.endswith("Z") or "+" in text[10:] or text[10:].count("-") > 0:
        instant = parse_instant(text)
        return instant.astimezone(zone), None, zone_name
    try:
        wall = dt.datetime.fromisoformat(text.split(".")[0])
    except ValueError:
        raise bad_request(f"not a date-time: {text!r}") from None
    return wall.replace(tzinfo=zone), None, zone_name


def compute_timing(data: dict[str, Any]) -> Timing:
    zone_name = str(wire.first(data, wire.EV_ZONE) or DEFAULT_ZONE)
    start, start_day, zone_name = _local(_time_node(data, wire.EV_START, "start"), zone_name)
    end, end_day, _ = _local(_time_node(data, wire.EV_END, "end"), zone_name)
    zone = resolve_zone(zone_name)
    all_day = bool(wire.first(data, wire.EV_ALL_DAY, False)) or start is None
    if all_day:
        first = start_day or (start.date() if start else None)
        last = end_day or (end.date() if end else None)
        if start is not None and start.time() != dt.time(0):
            raise bad_request("an all-day event starts at midnight")
        assert first is not None and last is not None
        if last <= first:
            raise bad_request("an all-day event lasts at least one day")
        lo = dt.datetime.combine(first, dt.time(), tzinfo=zone).astimezone(UTC)
        hi = dt.datetime.combine(last, dt.time(), tzinfo=zone).astimezone(UTC)
        return Timing(lo, hi, zone_name, True, first, last)
    if start is None or end is None:
        raise bad_request("start and end must both be date-times")
    if end < start:
        raise bad_request("the event's end is before its start")
    return Timing(start.astimezone(UTC), end.astimezone(UTC), zone_name)


# --- recurrence ---------------------------------------------------------------------------------


def occurrence_starts(data: dict[str, Any], timing: Timing, until: dt.date) -> Iterator[dt.date]:
    """Local dates of a series' occurrences (up to ``until``), from its ``recurrence``."""
    rec = wire.first(data, wire.EV_RECURRENCE) or {}
    pattern = rec.get("pattern") or {}
    rng = rec.get("range") or {}
    kind = str(pattern.get("type") or "daily").lower()
    interval = max(1, int(pattern.get("interval") or 1))
    zone = resolve_zone(timing.zone)
    first = timing.start_date or timing.start.astimezone(zone).date()
    end_date = dt.date.fromisoformat(rng["endDate"]) if rng.get("endDate") else None
    count = int(rng["numberOfOccurrences"]) if rng.get("numberOfOccurrences") else None
    days = {
        WEEKDAYS.index(d.lower()) for d in pattern.get("daysOfWeek") or [] if d.lower() in WEEKDAYS
    }
    if kind == "weekly" and not days:
        days = {first.weekday()}
    made = 0
    day = first
    while made < MAX_OCCURRENCES:
        if end_date is not None and day > end_date:
            return
        if day > until:
            return
        if kind == "daily":
            hit = (day - first).days % interval == 0
        elif kind == "weekly":
            week = ((day - first).days + first.weekday()) // 7
            hit = day.weekday() in days and week % interval == 0
        else:
            raise bad_request(f"recurrence pattern {kind!r} is not supported by the emulator")
        if hit:
            yield day
            made += 1
            if count is not None and made >= count:
                return
        day += dt.timedelta(days=1)


# --- mailboxes ---------------------------------------------------------------------------------


@dataclass
class Calendar:
    id: str
    name: str
    is_default: bool = False

    def render(self) -> dict[str, Any]:
        return {
            wire.CALENDAR_ID[0]: self.id,
            wire.CALENDAR_NAME[0]: self.name,
            wire.CALENDAR_DEFAULT_FLAGS[0]: self.is_default,
        }


@dataclass
class Item:
    data: dict[str, Any]
    cancelled: set[dt.date] = field(default_factory=set)  # occurrences deleted from a series
    # One occurrence changed on its own (an exception), by its local date: the fields it
    # overrides (subject, start/end, attendees, ...), as Graph keeps exceptions.
    overrides: dict[dt.date, dict[str, Any]] = field(default_factory=dict)
    _timing: Timing | None = None

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def timing(self) -> Timing:
        if self._timing is None:
            self._timing = compute_timing(self.data)
        return self._timing

    @property
    def is_series(self) -> bool:
        return bool(wire.first(self.data, wire.EV_RECURRENCE))


@dataclass
class Instance:
    """What the view shows: a single event or one occurrence of a series."""

    data: dict[str, Any]
    timing: Timing

    @property
    def sort_key(self) -> tuple[dt.datetime, str]:
        return self.timing.start, str(self.data["id"])


@dataclass
class Mailbox:
    email: str
    display_name: str
    calendars: dict[str, Calendar] = field(default_factory=dict)
    items: dict[str, Item] = field(default_factory=dict)  # event id -> item


def _short_id(*parts: str) -> str:
    digest = hashlib.sha256("|".join(parts).encode()).digest()[:12]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _wire_copy(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored event as the wire carries it (JSON values only): the view is
    answered outside the store's lock. A fifth of ``copy.deepcopy``'s cost, which was most of
    a view's."""
    return orjson.loads(orjson.dumps(data))  # type: ignore[no-any-return]


def _occurrence_id(master_id: str, day: dt.date) -> str:
    return f"{master_id}_{day:%Y%m%d}"


def _split_occurrence(event_id: str) -> tuple[str, dt.date] | None:
    head, sep, tail = event_id.rpartition("_")
    if not sep or len(tail) != 8 or not tail.isdigit():
        return None
    try:
        return head, dt.datetime.strptime(tail, "%Y%m%d").date()
    except ValueError:
        return None


def _attendee_emails(data: dict[str, Any]) -> list[str]:
    out = []
    for node in wire.first(data, wire.EV_ATTENDEES) or []:
        email = wire.first(node, wire.ADDR_EMAIL, "") if isinstance(node, dict) else node
        if isinstance(email, dict):
            email = wire.first(email, wire.ADDR_EMAIL, "")
        email = str(email or "").strip().lower()
        if email and email not in out:
            out.append(email)
    return out


class Store:
    """All mailboxes. Every public method holds one re-entrant lock."""

    def __init__(self, stats: NotificationSink | None = None) -> None:
        self._lock = threading.RLock()
        self._boxes: dict[str, Mailbox] = {}
        self._stats = stats

    # --- mailboxes and calendars ---

    def clear(self) -> None:
        with self._lock:
            self._boxes.clear()

    def add_mailbox(
        self,
        email: str,
        display_name: str | None = None,
        calendars: Iterable[str] = (OTHER_CALENDAR,),
    ) -> Mailbox:
        """A mailbox with its default calendar and the given extra folders (idempotent)."""
        key = email.strip().lower()
        with self._lock:
            box = self._boxes.get(key)
            if box is None:
                box = Mailbox(key, display_name or key.split("@")[0])
                self._boxes[key] = box
                default = Calendar(_short_id(key, "default"), DEFAULT_CALENDAR, True)
                box.calendars[default.id] = default
            elif display_name:
                box.display_name = display_name
            for name in calendars:
                self.add_calendar(key, name)
            return box

    def add_calendar(self, mailbox: str, name: str) -> str:
        """A calendar folder by name (existing one reused); returns its id."""
        with self._lock:
            box = self.mailbox(mailbox)
            for calendar in box.calendars.values():
                if calendar.name == name:
                    return calendar.id
            calendar = Calendar(_short_id(box.email, "folder", name), name)
            box.calendars[calendar.id] = calendar
            return calendar.id

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
                raise user_not_found(email)
            return box

    def calendars(self, mailbox: str) -> list[dict[str, Any]]:
        with self._lock:
            return [c.render() for c in self.mailbox(mailbox).calendars.values()]

    def calendar_id(self, mailbox: str, calendar: str | None = None) -> str:
        """The id of a calendar given by id or name; None: the default calendar."""
        with self._lock:
            box = self.mailbox(mailbox)
            for cal in box.calendars.values():
                if calendar is None and cal.is_default:
                    return cal.id
                if calendar is not None and calendar in (cal.id, cal.name):
                    return cal.id
            raise AlimailError(404, wire.CODE_CALENDAR_NOT_FOUND, f"calendar {calendar} not found")

    def _calendar(self, box: Mailbox, calendar_id: str) -> Calendar:
        calendar = box.calendars.get(calendar_id)
        if calendar is None:
            raise AlimailError(
                404, wire.CODE_CALENDAR_NOT_FOUND, f"calendar {calendar_id} not found"
            )
        return calendar

    # --- notifications ---

    def _notify(self, kind: str, recipients: Iterable[str]) -> None:
        if self._stats is None:
            return
        for recipient in recipients:
            self._stats.notify(kind, recipient)

    # --- events ---

    def add_event(
        self,
        mailbox: str,
        event: dict[str, Any],
        calendar: str | None = None,
        notify: bool = False,
    ) -> dict[str, Any]:
        """Create an event (wire JSON) in a calendar (id or name; None: the default)."""
        with self._lock:
            calendar_id = self.calendar_id(mailbox, calendar)
            return self.create(mailbox, calendar_id, event, notify)

    def create(
        self,
        mailbox: str,
        calendar_id: str,
        event: dict[str, Any],
        notify: bool,
        given_id: str | None = None,
    ) -> dict[str, Any]:
        """``given_id`` (seeds only): the event's id, unless the mailbox already has it."""
        with self._lock:
            box = self.mailbox(mailbox)
            self._calendar(box, calendar_id)
            if not isinstance(event, dict):
                raise bad_request("the event must be a JSON object")
            data = {k: copy.deepcopy(v) for k, v in event.items() if k not in READ_ONLY}
            event_id = given_id if given_id and given_id not in box.items else None
            event_id = event_id or "ev_" + secrets.token_urlsafe(18).replace("_", "x")
            stamp = _now()
            data.update(
                {
                    "id": event_id,
                    "calendarId": calendar_id,
                    "createdDateTime": stamp,
                    LAST_MODIFIED: stamp,
                    CHANGE_KEY: secrets.token_hex(8),
                    "type": "seriesMaster"
                    if wire.first(data, wire.EV_RECURRENCE)
                    else "singleInstance",
                }
            )
            data.setdefault(wire.EV_UID[0], f"{event_id}@alimail.emulator")
            data.setdefault(
                wire.EV_ORGANIZER[0],
                {wire.ADDR_EMAIL[0]: box.email, wire.ADDR_NAME[0]: box.display_name},
            )
            item = Item(data)
            item.timing  # noqa: B018 - validates start/end before anything is stored
            if item.is_series:
                occurrence_starts(data, item.timing, item.timing.start.date())  # validates
            box.items[event_id] = item
            if notify:
                self._notify("invitations_sent", self._recipients(box, data))
            return copy.deepcopy(data)

    def _recipients(self, box: Mailbox, data: dict[str, Any]) -> list[str]:
        return [e for e in _attendee_emails(data) if e != box.email]

    def _item(self, box: Mailbox, calendar_id: str | None, event_id: str) -> Item:
        item = box.items.get(event_id)
        if item is None or (calendar_id is not None and item.data["calendarId"] != calendar_id):
            raise event_not_found(event_id)
        return item

    def update(
        self,
        mailbox: str,
        calendar_id: str | None,
        event_id: str,
        patch: dict[str, Any],
        notify: bool = False,
    ) -> dict[str, Any]:
        with self._lock:
            box = self.mailbox(mailbox)
            if calendar_id is not None:
                self._calendar(box, calendar_id)
            if not isinstance(patch, dict):
                raise bad_request("the patch must be a JSON object")
            occurrence = _split_occurrence(event_id)
            if occurrence and event_id not in box.items:
                return self._update_occurrence(box, calendar_id, occurrence, patch, notify)
            item = self._item(box, calendar_id, event_id)
            before = self._recipients(box, item.data)
            data = copy.deepcopy(item.data)
            data.update({k: copy.deepcopy(v) for k, v in patch.items() if k not in READ_ONLY})
            _touch(data)
            candidate = Item(data, item.cancelled, item.overrides)
            candidate.timing  # noqa: B018 - validate before storing
            box.items[event_id] = candidate
            if notify:
                after = self._recipients(box, data)
                self._notify("updates_sent", after)
                self._notify("cancellations_sent", [r for r in before if r not in after])
            return copy.deepcopy(data)

    def _update_occurrence(
        self,
        box: Mailbox,
        calendar_id: str | None,
        occurrence: tuple[str, dt.date],
        patch: dict[str, Any],
        notify: bool,
    ) -> dict[str, Any]:
        """One occurrence changed on its own: it becomes an exception of its series (the
        series' version changes, as for a deleted occurrence)."""
        master_id, day = occurrence
        master = self._item(box, calendar_id, master_id)
        if not master.is_series or day in master.cancelled:
            raise event_not_found(f"{master_id}_{day:%Y%m%d}")
        clean = {k: copy.deepcopy(v) for k, v in patch.items() if k not in READ_ONLY}
        clean.pop(wire.EV_RECURRENCE[0], None)
        previous = master.overrides.get(day)
        master.overrides[day] = {**(previous or {}), **clean}
        try:
            instances = list(self._occurrences(master, day, day))  # validates the times too
            if not instances:
                raise event_not_found(f"{master_id}_{day:%Y%m%d}")
        except AlimailError:
            if previous is None:
                del master.overrides[day]
            else:
                master.overrides[day] = previous
            raise
        _touch(master.data)
        if notify:
            self._notify("updates_sent", self._recipients(box, instances[0].data))
        return copy.deepcopy(instances[0].data)

    def update_event(
        self, mailbox: str, event_id: str, patch: dict[str, Any], notify: bool = False
    ) -> dict[str, Any]:
        """Python API: change fields of an event (any calendar)."""
        return self.update(mailbox, None, event_id, patch, notify)

    def delete(
        self, mailbox: str, calendar_id: str | None, event_id: str, notify: bool = False
    ) -> None:
        with self._lock:
            box = self.mailbox(mailbox)
            if calendar_id is not None:
                self._calendar(box, calendar_id)
            occurrence = _split_occurrence(event_id)
            if occurrence and event_id not in box.items:
                master = self._item(box, calendar_id, occurrence[0])
                if occurrence[1] in master.cancelled:
                    raise event_not_found(event_id)
                master.cancelled.add(occurrence[1])
                _touch(master.data)  # the series changed
                if notify:
                    self._notify("cancellations_sent", self._recipients(box, master.data))
                return
            item = self._item(box, calendar_id, event_id)
            del box.items[event_id]
            if notify:
                self._notify("cancellations_sent", self._recipients(box, item.data))

    def move_event(self, mailbox: str, event_id: str, calendar: str | None = None) -> str:
        """Move an event to a calendar (id or name; None: the default) of its mailbox with a
        new id (event ids are not promised to survive a move), UID, body (calsync's marker)
        and everything else kept; the same calendar just re-issues the id. Returns the id."""
        with self._lock:
            box = self.mailbox(mailbox)
            calendar_id = self.calendar_id(mailbox, calendar)
            item = self._item(box, None, event_id)
            new_id = "ev_" + secrets.token_urlsafe(18).replace("_", "x")
            del box.items[event_id]
            item.data["id"], item.data["calendarId"] = new_id, calendar_id
            box.items[new_id] = item
            return new_id

    def delete_event(self, mailbox: str, event_id: str, notify: bool = False) -> None:
        """Python API: delete an event (any calendar)."""
        self.delete(mailbox, None, event_id, notify)

    def events(self, mailbox: str, calendar: str | None = None) -> list[dict[str, Any]]:
        """Stored events (series as masters) of a mailbox; of one calendar (id or name) if
        given."""
        with self._lock:
            box = self.mailbox(mailbox)
            wanted = self.calendar_id(mailbox, calendar) if calendar is not None else None
            return [
                copy.deepcopy(i.data)
                for i in box.items.values()
                if wanted is None or i.data["calendarId"] == wanted
            ]

    def get(self, mailbox: str, calendar_id: str | None, event_id: str) -> dict[str, Any]:
        with self._lock:
            box = self.mailbox(mailbox)
            if calendar_id is not None:
                self._calendar(box, calendar_id)
            occurrence = _split_occurrence(event_id)
            if occurrence and event_id not in box.items:
                master = self._item(box, calendar_id, occurrence[0])
                if not master.is_series or occurrence[1] in master.cancelled:
                    raise event_not_found(event_id)
                for instance in self._occurrences(master, occurrence[1], occurrence[1]):
                    return copy.deepcopy(instance.data)
                raise event_not_found(event_id)
            return copy.deepcopy(self._item(box, calendar_id, event_id).data)

    # --- the calendar view ---

    def _occurrences(self, item: Item, first: dt.date, last: dt.date) -> Iterator[Instance]:
        timing = item.timing
        zone = resolve_zone(timing.zone)
        for day in occurrence_starts(item.data, timing, last):
            if day < first or day in item.cancelled:
                continue
            if timing.all_day:
                assert timing.start_date is not None and timing.end_date is not None
                length = timing.end_date - timing.start_date
                lo = dt.datetime.combine(day, dt.time(), tzinfo=zone).astimezone(UTC)
                hi = dt.datetime.combine(day + length, dt.time(), tzinfo=zone).astimezone(UTC)
                occ = Timing(lo, hi, timing.zone, True, day, day + length)
                start_node: dict[str, Any] = {
                    wire.TIME_DATETIME[0]: f"{day}T00:00:00",
                    wire.TIME_ZONE[0]: timing.zone,
                }
                end_node: dict[str, Any] = {
                    wire.TIME_DATETIME[0]: f"{day + length}T00:00:00",
                    wire.TIME_ZONE[0]: timing.zone,
                }
            else:
                wall = timing.start.astimezone(zone)
                local_start = dt.datetime.combine(day, wall.time(), tzinfo=zone)
                local_end = local_start + (timing.end - timing.start)
                occ = Timing(local_start.astimezone(UTC), local_end.astimezone(UTC), timing.zone)
                fmt = wire.WALL_TIME_FORMAT
                start_node = {
                    wire.TIME_DATETIME[0]: local_start.strftime(fmt),
                    wire.TIME_ZONE[0]: timing.zone,
                }
                end_node = {
                    wire.TIME_DATETIME[0]: local_end.astimezone(zone).strftime(fmt),
                    wire.TIME_ZONE[0]: timing.zone,
                }
            data = {k: v for k, v in item.data.items() if k not in wire.EV_RECURRENCE}
            data.update(
                {
                    "id": _occurrence_id(item.id, day),
                    wire.EV_START[0]: start_node,
                    wire.EV_END[0]: end_node,
                    "type": "occurrence",
                    wire.EV_SERIES_ID[0]: item.id,
                    wire.EV_ORIGINAL_START[0]: format_utc(occ.start),
                }
            )
            if day in item.overrides:  # an exception: its own fields, its own times
                data.update(copy.deepcopy(item.overrides[day]))
                data["type"] = "exception"
                occ = compute_timing(data)
            yield Instance(data, occ)

    def view(
        self, mailbox: str, calendar_id: str, lo: dt.datetime, hi: dt.datetime
    ) -> list[Instance]:
        """Instances of one calendar overlapping [lo, hi), series expanded, sorted by
        (start, id)."""
        with self._lock:
            box = self.mailbox(mailbox)
            self._calendar(box, calendar_id)
            found: list[Instance] = []
            for item in box.items.values():
                if item.data["calendarId"] != calendar_id:
                    continue
                if item.is_series:
                    first = (lo - dt.timedelta(days=40)).date()
                    last = (hi + dt.timedelta(days=2)).date()
                    found.extend(
                        i for i in self._occurrences(item, first, last) if i.timing.overlaps(lo, hi)
                    )
                elif item.timing.overlaps(lo, hi):
                    found.append(Instance(_wire_copy(item.data), item.timing))
            found.sort(key=lambda i: i.sort_key)
            return found

    # --- seeding ---

    def load_seed(self, seed: dict[str, Any]) -> dict[str, int]:
        """``{"mailboxes": {address: {"displayName"?, "calendars"?: [names], "events": [
        {..., "calendar"?: name}]}}}``; events go to the default calendar unless named, and
        keep an ``id`` they carry (so a re-seed gives the same ids). Sends no notifications.
        Returns counts."""
        boxes = seed.get("mailboxes") or {}
        created = 0
        with self._lock:
            for address, spec in boxes.items():
                spec = spec or {}
                self.add_mailbox(
                    address, spec.get("displayName"), spec.get("calendars") or (OTHER_CALENDAR,)
                )
            for address, spec in boxes.items():
                for event in (spec or {}).get("events") or []:
                    body = {k: v for k, v in event.items() if k != "calendar"}
                    calendar_id = self.calendar_id(address, event.get("calendar"))
                    self.create(address, calendar_id, body, False, given_id=event.get("id"))
                    created += 1
        return {"mailboxes": len(boxes), "events": created}
