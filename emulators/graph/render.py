"""Events as Graph puts them on the wire: time zone of ``Prefer: outlook.timezone``,
``$select``, ``$expand=singleValueExtendedProperties($filter=...)`` and the ``@odata.etag``."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from emulators.graph.store import Instance
from emulators.graph.timezones import format_local, format_midnight

_PREFER_ITEM = re.compile(r'\s*([A-Za-z][\w.\-]*)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,;\s]*))?')
_QUOTED_ID = re.compile(r"\bid\s+eq\s+'((?:[^']|'')*)'", re.IGNORECASE)


def parse_prefer(values: list[str]) -> dict[str, str]:
    """``Prefer`` header values as {lower-cased name: unquoted value}."""
    prefs: dict[str, str] = {}
    for value in values:
        for part in _split_commas(value):
            match = _PREFER_ITEM.match(part)
            if match:
                raw = match.group(2) or ""
                if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
                    raw = raw[1:-1].replace('\\"', '"')
                prefs[match.group(1).lower()] = raw
    return prefs


def _split_commas(text: str) -> list[str]:
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def expanded_property_ids(expand: str | None) -> list[str] | None:
    """The ids asked for by ``$expand=singleValueExtendedProperties($filter=id eq '...')``."""
    if not expand or "singlevalueextendedproperties" not in expand.lower():
        return None
    return [m.replace("''", "'").strip().lower() for m in _QUOTED_ID.findall(expand)]


def render_event(
    instance: Instance,
    zone: dt.tzinfo,
    zone_label: str,
    select: set[str] | None = None,
    property_ids: list[str] | None = None,
) -> dict[str, Any]:
    """One event for a response body (shares nested values with the store: serialise it,
    do not mutate it)."""
    data = instance.data
    timing = instance.timing
    out = {"@odata.etag": f'W/"{data.get("changeKey", "")}"', "id": data["id"]}
    for key, value in data.items():
        if key == "singleValueExtendedProperties" or (select is not None and key not in select):
            continue
        out[key] = value  # shared, read-only (see the store's convention)
    if select is not None:
        for key in select:
            out.setdefault(key, None)
    if select is None or "start" in select:
        out["start"] = {
            "dateTime": format_midnight(timing.start_date)
            if timing.all_day and timing.start_date
            else format_local(timing.start, zone),
            "timeZone": zone_label,
        }
    if select is None or "end" in select:
        out["end"] = {
            "dateTime": format_midnight(timing.end_date)
            if timing.all_day and timing.end_date
            else format_local(timing.end, zone),
            "timeZone": zone_label,
        }
    if property_ids is not None:
        props = [
            p
            for p in data.get("singleValueExtendedProperties") or []
            if not property_ids or p["id"].strip().lower() in property_ids
        ]
        if props:
            out["singleValueExtendedProperties"] = props
    return out


# calendarView delta: what a plain occurrence of a series carries (Graph sends no more; a client
# completes it from the series, e.g. GET .../events/{seriesMasterId}/instances).
THIN_OCCURRENCE = frozenset({"id", "seriesMasterId", "type", "start", "end"})


def render_delta_item(instance: Instance | str, zone: dt.tzinfo, zone_label: str) -> dict[str, Any]:
    """One entry of a delta page: a removed id as ``{"id", "@removed": {"reason":
    "deleted"}}``, a plain occurrence thin (id, seriesMasterId, type, start, end), anything else
    (single instances, exceptions) in full. ``$select`` and ``$expand`` do not apply to delta."""
    if isinstance(instance, str):
        return {
            "@odata.type": "#microsoft.graph.event",
            "id": instance,
            "@removed": {"reason": "deleted"},
        }
    thin = instance.data.get("type") == "occurrence"
    event = render_event(instance, zone, zone_label, select=set(THIN_OCCURRENCE) if thin else None)
    return {"@odata.type": "#microsoft.graph.event", **event}
