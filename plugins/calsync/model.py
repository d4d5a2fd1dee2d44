"""Normalized, suite-neutral data types shared by connectors, the planner and the OA store.

Times: a timed event carries aware UTC datetimes in ``start``/``end``; an all-day event carries
dates in ``start_date``/``end_date`` (end exclusive, as every suite sends it) and its datetimes
are left ``None`` so nothing can shift it through a time-zone conversion (E3/E14).
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from typing import Any, Literal

AttendeeKind = Literal["required", "optional", "resource"]


@dataclass(frozen=True, slots=True)
class Window:
    """The dates a run covers, inclusive on both ends, in the integration's time zone."""

    start: dt.date
    end: dt.date
    timezone: str

    def bounds_utc(self) -> tuple[dt.datetime, dt.datetime]:
        """[start 00:00, end+1 00:00) in the window's zone, as UTC datetimes."""
        return _bounds_utc(self.start, self.end, self.timezone)

    def overlaps(
        self,
        start: dt.datetime | None,
        end: dt.datetime | None,
        start_date: dt.date | None = None,
        end_date: dt.date | None = None,
    ) -> bool:
        """Whether an event (timed or all-day) overlaps the window."""
        if start_date is not None:
            last = (end_date or start_date + dt.timedelta(days=1)) - dt.timedelta(days=1)
            return start_date <= self.end and max(last, start_date) >= self.start
        lo, hi = self.bounds_utc()
        assert start is not None
        end = end or start
        return start < hi and (end > lo or (end == start and start >= lo))


@functools.lru_cache(maxsize=64)
def _bounds_utc(start: dt.date, end: dt.date, timezone: str) -> tuple[dt.datetime, dt.datetime]:
    """Cached: ``overlaps`` asks for the bounds once per event read, and loading the zone
    (pendulum) costs more than the rest of the check."""
    import pendulum

    tz = pendulum.timezone(timezone)
    lo = dt.datetime.combine(start, dt.time(), tzinfo=tz)
    hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return lo.astimezone(dt.UTC), hi.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class Attendee:
    email: str
    name: str = ""
    kind: AttendeeKind = "required"
    response: str = "none"  # none / accepted / tentativelyAccepted / declined / organizer


@dataclass(slots=True)
class SuiteEvent:
    """One event (or one occurrence of a series) as read from a suite mailbox."""

    suite_id: str
    ical_uid: str
    subject: str
    start: dt.datetime | None
    end: dt.datetime | None
    all_day: bool = False
    start_date: dt.date | None = None
    end_date: dt.date | None = None
    timezone: str = "UTC"  # IANA zone the organiser created it in
    location: str = ""
    body: str = ""
    body_type: Literal["text", "html"] = "text"
    organizer: Attendee | None = None
    attendees: list[Attendee] = field(default_factory=list)
    series_id: str | None = None  # the series master's id, for occurrences/exceptions
    original_start: dt.datetime | None = None  # occurrence key within a series (E13)
    event_type: str = "singleInstance"  # singleInstance / occurrence / exception
    is_cancelled: bool = False
    sensitivity: str = "normal"
    show_as: str = "busy"
    importance: str = "normal"
    categories: list[str] = field(default_factory=list)
    change_key: str = ""
    last_modified: dt.datetime | None = None
    calsync_key: str | None = None  # calsync's marker, on events calsync created (E11)
    extra: dict[str, Any] = field(default_factory=dict)  # suite-specific fields for formulas

    @property
    def identity_key(self) -> str:
        """The meeting's identity across mailboxes: one meeting = one OA schedule (DESIGN)."""
        if self.original_start is not None:
            return f"{self.ical_uid}|{self.original_start.astimezone(dt.UTC).isoformat()}"
        return self.ical_uid


@dataclass(frozen=True, slots=True)
class OAUser:
    id: int
    mailbox: str  # the binding-field value, lower-cased
    name: str = ""
    department_id: int | None = None
    login: str = ""


@dataclass(slots=True)
class Participant:
    """A participant of an OA schedule: an OA user, a room, or an external address."""

    kind: Literal["user", "external", "room"]
    email: str
    name: str = ""
    user_id: int | None = None
    room_id: int | None = None
    response: str = "none"


@dataclass(slots=True)
class ScheduleData:
    """The OA-side content calsync writes for one schedule (the mapped form of an event)."""

    title: str
    start: dt.datetime | None
    end: dt.datetime | None
    all_day: bool
    start_date: dt.date | None
    end_date: dt.date | None
    timezone: str
    location: str
    details: str
    color: str
    room_id: int | None
    creator_id: int
    participants: list[Participant] = field(default_factory=list)

    def content_hash(self) -> str:
        """A hash of what would be written; equal hashes mean no write is needed (E12)."""
        import hashlib

        import orjson

        parts = [
            self.title,
            self.start.astimezone(dt.UTC).isoformat() if self.start else None,
            self.end.astimezone(dt.UTC).isoformat() if self.end else None,
            self.all_day,
            self.start_date.isoformat() if self.start_date else None,
            self.end_date.isoformat() if self.end_date else None,
            self.timezone,
            self.location,
            self.details,
            self.color,
            self.room_id,
            self.creator_id,
            sorted(
                (p.kind, p.email.lower(), p.name, p.user_id or 0, p.room_id or 0, p.response)
                for p in self.participants
            ),
        ]
        return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:32]
