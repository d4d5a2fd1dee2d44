"""The source records that mappings and filters read: one plain dict per event (forward) or
per OA schedule (reverse). Their keys are the valid ``source:`` names of a mapping and the
``src.<name>`` fields of formulas and filter conditions; keep them stable.

Forward record (``forward_record``), from a suite event:

==================  ==========================================================================
subject             the event's subject, as sent
body                the body, as sent (HTML or text, see body_type)
body_type           "html" or "text"
body_text           the body as plain text: HTML stripped (script/style content dropped),
                    entities decoded, whitespace tidied
location            the location's display text
organizer_email     lower-cased ("" when unknown)
organizer_name
attendees           list of {email, name, kind, response}; kind: required/optional/resource
external_attendees  list of {email, name}: attendees the OA cannot match to a user or room
start_local         aware datetime in the integration's zone (None for all-day events)
end_local           idem
start_date          date of an all-day event (None for timed events)
end_date            idem, exclusive, as every suite sends it
all_day             bool
timezone            the integration's IANA zone
is_cancelled        bool
sensitivity         normal / personal / private / confidential
show_as             free / tentative / busy / oof / workingElsewhere / unknown
importance          low / normal / high
categories          list of category names
event_type          singleInstance / occurrence / exception / seriesMaster
color               the integration's display colour (F5), e.g. "#2F80ED"
extra               suite-specific fields (dict), for formulas that need them
==================  ==========================================================================

Reverse record (``reverse_record``), from an OA schedule dict (an ``oa_schedules`` row plus
joined values; every key is optional):

==================  ==========================================================================
schedule_id         the OA schedule id (``id``)
title               the schedule's title
details             the details as stored (may be HTML from the OA's editor)
details_text        details as plain text
location            the location text
room_name           the OA meeting room's name ("" when none)
room_email          the room's suite mailbox from the room mapping (F18), "" when none
start_local         aware datetime in the schedule's zone (None for all-day)
end_local           idem
start_date          all-day start date (None for timed schedules)
end_date            all-day end date, exclusive
all_day             bool
timezone            the schedule's IANA zone
creator_email       the creator's mailbox (binding value), lower-cased
creator_name
participants        list of {email, name, kind, response}; kind: user / external / room
color               the schedule's colour
is_private          bool (``is_private`` of the schedule dict, False when absent)
==================  ==========================================================================
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any
from zoneinfo import ZoneInfo

from calsync.mapping.text import looks_like_html, strip_html, tidy_text
from calsync.model import Attendee, SuiteEvent


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _local(value: dt.datetime | None, zone: str) -> dt.datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:  # stored naive values are UTC (OA schema)
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(_zone(zone))


def _attendee(person: Attendee) -> dict[str, str]:
    return {
        "email": person.email.lower(),
        "name": person.name,
        "kind": person.kind,
        "response": person.response,
    }


def plain_text(body: str, body_type: str) -> str:
    """The body as plain text: HTML stripped for HTML bodies, whitespace tidied for both."""
    return strip_html(body) if body_type == "html" else tidy_text(body)


def forward_record(
    event: SuiteEvent, *, timezone: str, color: str, external_attendees: list[dict[str, Any]]
) -> dict[str, Any]:
    """The forward source record of one suite event (fields in the module docstring)."""
    all_day = bool(event.all_day)
    organizer = event.organizer
    return {
        "subject": event.subject or "",
        "body": event.body or "",
        "body_type": event.body_type,
        "body_text": plain_text(event.body or "", event.body_type),
        "location": event.location or "",
        "organizer_email": organizer.email.lower() if organizer else "",
        "organizer_name": organizer.name if organizer else "",
        "attendees": [_attendee(a) for a in event.attendees],
        "external_attendees": [
            {"email": str(p.get("email", "")), "name": str(p.get("name", ""))}
            for p in external_attendees
        ],
        "start_local": None if all_day else _local(event.start, timezone),
        "end_local": None if all_day else _local(event.end, timezone),
        "start_date": event.start_date if all_day else None,
        "end_date": event.end_date if all_day else None,
        "all_day": all_day,
        "timezone": timezone,
        "is_cancelled": bool(event.is_cancelled),
        "sensitivity": event.sensitivity,
        "show_as": event.show_as,
        "importance": event.importance,
        "categories": list(event.categories),
        "event_type": event.event_type,
        "color": color,
        "extra": dict(event.extra),
    }


def _get(item: Any, key: str, default: Any = "") -> Any:
    value = item.get(key, default) if isinstance(item, dict) else getattr(item, key, default)
    return default if value is None else value


def reverse_record(schedule: dict[str, Any]) -> dict[str, Any]:
    """The reverse source record of one OA schedule (fields in the module docstring).

    Times may be given as ``start_utc``/``end_utc`` (naive = UTC, as stored) or
    ``start``/``end``; participants as dicts or :class:`calsync.model.Participant`."""
    zone = str(schedule.get("timezone") or "UTC")
    all_day = bool(schedule.get("all_day", False))
    start = schedule.get("start_utc", schedule.get("start"))
    end = schedule.get("end_utc", schedule.get("end"))
    details = str(schedule.get("details") or "")
    looks_html = looks_like_html(details)
    return {
        "schedule_id": schedule.get("id"),
        "title": str(schedule.get("title") or ""),
        "details": details,
        "details_text": plain_text(details, "html" if looks_html else "text"),
        "location": str(schedule.get("location") or ""),
        "room_name": str(schedule.get("room_name") or ""),
        "room_email": str(schedule.get("room_email") or "").lower(),
        "start_local": None if all_day else _local(start, zone),
        "end_local": None if all_day else _local(end, zone),
        "start_date": schedule.get("start_date") if all_day else None,
        "end_date": schedule.get("end_date") if all_day else None,
        "all_day": all_day,
        "timezone": zone,
        "creator_email": str(schedule.get("creator_email") or "").lower(),
        "creator_name": str(schedule.get("creator_name") or ""),
        "participants": [
            {
                "email": str(_get(p, "email")).lower(),
                "name": str(_get(p, "name")),
                "kind": str(_get(p, "kind", "user")),
                "response": str(_get(p, "response", "none")),
            }
            for p in schedule.get("participants") or []
        ],
        "color": str(schedule.get("color") or ""),
        "is_private": bool(schedule.get("is_private", False)),
    }


_SAMPLE_EVENT = SuiteEvent(suite_id="", ical_uid="", subject="", start=None, end=None)

# The valid source field names, derived from the records themselves.
FORWARD_SOURCE_FIELDS: frozenset[str] = frozenset(
    forward_record(_SAMPLE_EVENT, timezone="UTC", color="", external_attendees=[])
)
REVERSE_SOURCE_FIELDS: frozenset[str] = frozenset(reverse_record({}))
