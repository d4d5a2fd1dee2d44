"""Filter and map one suite event into the OA schedule content it stands for (pure).

Participants (DESIGN "unknown attendees"): an attendee whose address is a mapped room becomes
the schedule's room (F18); one whose address is an in-scope OA user's binding value becomes a
user participant; anyone else is kept as an external participant (email + name), so nobody is
dropped silently. The creator is the organiser when the organiser is an in-scope user,
otherwise the mailbox's own user; the organiser's mailbox owns the meeting's content. A
cancelled event is always skipped, with or without the ``skip_cancelled`` filter (E13).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from calsync.model import Attendee, OAUser, Participant, ScheduleData, SuiteEvent
from calsync.sync.mapping_memo import Mapped, MappingMemo
from calsync.sync.plan import Prepared

UNTITLED = "(无标题 / No title)"
# A cancelled meeting or occurrence (an attendee's copy the organiser cancelled) is gone from
# the calendar whatever the filters say (E13): skipped, so its link is dropped like a deleted
# event's, and its schedule goes once no copy holds it. ``skip_cancelled`` only names it.
CANCELLED = "cancelled in the suite"


@dataclass(slots=True)
class PrepareContext:
    """What mapping one event needs besides the event; built once per task."""

    integration_id: str
    timezone: str
    color: str
    mapping: Any  # calsync.mapping.FieldMapping
    filters: Any  # calsync.mapping.FilterSet
    users_by_mailbox: dict[str, OAUser]
    rooms_by_mailbox: dict[str, int]
    room_names: dict[int, str] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
    memo: MappingMemo | None = None  # made on first use

    def mapped(self, record: dict[str, Any]) -> Mapped:
        if self.memo is None:
            self.memo = MappingMemo(self.mapping, self.filters)
        return self.memo.map(record, self.variables)


def _participants(
    event: SuiteEvent, ctx: PrepareContext
) -> tuple[list[Participant], int | None, list[dict[str, str]]]:
    people: list[Attendee] = []
    if event.organizer is not None:
        people.append(event.organizer)
    people.extend(event.attendees)
    seen: set[str] = set()
    participants: list[Participant] = []
    room_id: int | None = None
    externals: list[dict[str, str]] = []
    for person in people:
        email = person.email.lower()
        if not email or email in seen:
            continue
        seen.add(email)
        if email in ctx.rooms_by_mailbox:
            rid = ctx.rooms_by_mailbox[email]
            if person.response != "declined":  # E16: a room that declined is not booked
                room_id = room_id if room_id is not None else rid
            participants.append(
                Participant("room", email, person.name, room_id=rid, response=person.response)
            )
        elif email in ctx.users_by_mailbox:
            user = ctx.users_by_mailbox[email]
            participants.append(
                Participant("user", email, user.name, user_id=user.id, response=person.response)
            )
        else:
            participants.append(
                Participant("external", email, person.name, response=person.response)
            )
            if person.kind != "resource":
                externals.append({"email": email, "name": person.name})
    return participants, room_id, externals


def prepare_event(event: SuiteEvent, mailbox_user: OAUser, ctx: PrepareContext) -> Prepared:
    """Filter, map and attach participants; never raises for a bad event (it fails alone)."""
    from calsync.mapping.records import forward_record

    if "unreadable" in event.extra:
        return Prepared(event, error=f"unreadable event: {event.extra['unreadable']}")
    participants, room_id, externals = _participants(event, ctx)
    record = forward_record(
        event, timezone=ctx.timezone, color=ctx.color, external_attendees=externals
    )
    mapped = ctx.mapped(record)
    if mapped.filter_error is not None:
        return Prepared(event, error=mapped.filter_error)
    reason = mapped.skip or (CANCELLED if event.is_cancelled else None)
    if reason is not None:
        return Prepared(event, skip=reason)
    if mapped.fields is None:
        return Prepared(event, error=mapped.map_error or "the mapping gave no fields")
    fields = mapped.fields
    organizer = event.organizer.email.lower() if event.organizer else ""
    creator = ctx.users_by_mailbox.get(organizer, mailbox_user)
    location = fields.get("location", event.location)
    if not location and room_id is not None:
        location = ctx.room_names.get(room_id, "")
    declined = [p for p in participants if p.kind == "room" and p.response == "declined"]
    data = ScheduleData(
        title=(fields.get("title", event.subject) or UNTITLED).strip() or UNTITLED,
        start=event.start,
        end=event.end,
        all_day=event.all_day,
        start_date=event.start_date,
        end_date=event.end_date,
        timezone=event.timezone,
        location=location,
        details=fields.get("details", ""),
        color=fields.get("color") or ctx.color,
        room_id=room_id,
        creator_id=creator.id,
        participants=participants,
    )
    notes = [
        f"room {ctx.room_names.get(p.room_id or 0, p.email)} ({p.email}) declined the meeting"
        for p in declined
    ]
    return Prepared(event, data=data, owner_mailbox=creator.mailbox, notes=notes)
