"""EWS ``<t:Recurrence>`` to and from the pattern dict the store keeps.

The store keeps a recurrence as the Graph emulator's ``patternedRecurrence`` dict (pattern type
daily / weekly / absoluteMonthly / relativeMonthly / absoluteYearly / relativeYearly; range
noEnd / endDate / numbered), so the date arithmetic is shared:
``emulators.graph.recurrence.occurrence_dates``. Seeds may use that dict directly.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from emulators.ews.wire import BadRequest, Element, T, child, el, local, parse_date, text, tsub
from emulators.graph import recurrence as rec

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DAY_GROUPS = {
    "day": [d.lower() for d in DAY_NAMES],
    "weekday": [d.lower() for d in DAY_NAMES[:5]],
    "weekendday": ["saturday", "sunday"],
}
INDEXES = ("First", "Second", "Third", "Fourth", "Last")
PATTERN_TAGS = {
    "DailyRecurrence": "daily",
    "WeeklyRecurrence": "weekly",
    "AbsoluteMonthlyRecurrence": "absoluteMonthly",
    "RelativeMonthlyRecurrence": "relativeMonthly",
    "AbsoluteYearlyRecurrence": "absoluteYearly",
    "RelativeYearlyRecurrence": "relativeYearly",
}
RANGE_TAGS = {
    "NoEndRecurrence": "noEnd",
    "EndDateRecurrence": "endDate",
    "NumberedRecurrence": "numbered",
}


def _days(value: str | None) -> list[str]:
    out: list[str] = []
    for name in (value or "").split():
        key = name.lower()
        if key in DAY_GROUPS:
            out.extend(DAY_GROUPS[key])
        elif key.capitalize() in DAY_NAMES:
            out.append(key)
        else:
            raise BadRequest(f"unknown day of week {name!r}")
    return out


def parse(elem: Element) -> dict[str, Any]:
    """A ``<t:Recurrence>`` element as a pattern dict; BadRequest if it makes no sense."""
    pattern: dict[str, Any] | None = None
    range_: dict[str, Any] | None = None
    for node in elem:
        tag = local(node.tag)
        if tag in PATTERN_TAGS:
            kind = PATTERN_TAGS[tag]
            pattern = {"type": kind, "interval": int(text(node, "Interval") or 1)}
            if kind.endswith("Yearly"):
                pattern["interval"] = 1
            if child(node, "DaysOfWeek") is not None:
                pattern["daysOfWeek"] = _days(text(node, "DaysOfWeek"))
            if child(node, "FirstDayOfWeek") is not None:
                pattern["firstDayOfWeek"] = (text(node, "FirstDayOfWeek") or "Sunday").lower()
            if child(node, "DayOfMonth") is not None:
                pattern["dayOfMonth"] = int(text(node, "DayOfMonth") or 1)
            if child(node, "DayOfWeekIndex") is not None:
                pattern["index"] = (text(node, "DayOfWeekIndex") or "First").lower()
            if child(node, "Month") is not None:
                month = text(node, "Month") or "January"
                if month not in MONTHS:
                    raise BadRequest(f"unknown month {month!r}")
                pattern["month"] = MONTHS.index(month) + 1
        elif tag in RANGE_TAGS:
            kind = RANGE_TAGS[tag]
            range_ = {
                "type": kind,
                "startDate": parse_date(text(node, "StartDate") or "").isoformat(),
            }
            if kind == "endDate":
                range_["endDate"] = parse_date(text(node, "EndDate") or "").isoformat()
            if kind == "numbered":
                range_["numberOfOccurrences"] = int(text(node, "NumberOfOccurrences") or 0)
    if pattern is None or range_ is None:
        raise BadRequest("a Recurrence needs a pattern and a range")
    return {"pattern": pattern, "range": range_}


def validate(recurrence: dict[str, Any], first: dt.date) -> None:
    try:
        rec.validate(recurrence, first)
    except rec.RecurrenceError as exc:
        raise BadRequest(str(exc)) from None


def occurrence_dates(recurrence: dict[str, Any], until: dt.date):  # type: ignore[no-untyped-def]
    return rec.occurrence_dates(recurrence, until)


def render(recurrence: dict[str, Any]) -> Element:
    """The pattern dict as ``<t:Recurrence>``."""
    out = el(T, "Recurrence")
    pattern = recurrence["pattern"]
    kind = pattern["type"]
    tag = {v: k for k, v in PATTERN_TAGS.items()}[kind]
    node = tsub(out, tag)
    if kind.startswith("relative"):
        tsub(node, "DaysOfWeek", " ".join(d.capitalize() for d in pattern.get("daysOfWeek") or []))
        tsub(node, "DayOfWeekIndex", str(pattern.get("index") or "first").capitalize())
    if kind in ("daily", "weekly", "absoluteMonthly", "relativeMonthly"):
        node.insert(
            0, el(node.tag.split("}")[0][1:], "Interval", str(pattern.get("interval") or 1))
        )
    if kind == "weekly":
        tsub(node, "DaysOfWeek", " ".join(d.capitalize() for d in pattern.get("daysOfWeek") or []))
        tsub(node, "FirstDayOfWeek", str(pattern.get("firstDayOfWeek") or "sunday").capitalize())
    if kind.startswith("absolute"):
        tsub(node, "DayOfMonth", str(pattern.get("dayOfMonth") or 1))
    if kind.endswith("Yearly"):
        tsub(node, "Month", MONTHS[int(pattern.get("month") or 1) - 1])
    range_ = recurrence["range"]
    rtag = {v: k for k, v in RANGE_TAGS.items()}[range_["type"]]
    rnode = tsub(out, rtag)
    tsub(rnode, "StartDate", str(range_["startDate"]))
    if range_["type"] == "endDate":
        tsub(rnode, "EndDate", str(range_["endDate"]))
    if range_["type"] == "numbered":
        tsub(rnode, "NumberOfOccurrences", str(range_["numberOfOccurrences"]))
    return out


def seed_pattern(value: dict[str, Any]) -> dict[str, Any]:
    """A seed's recurrence (the pattern dict, with lenient case) normalised."""
    pattern = dict(value.get("pattern") or {})
    range_ = dict(value.get("range") or {})
    if "daysOfWeek" in pattern:
        pattern["daysOfWeek"] = [str(d).lower() for d in pattern["daysOfWeek"]]
    if "index" in pattern:
        pattern["index"] = str(pattern["index"]).lower()
    if isinstance(pattern.get("month"), str) and pattern["month"] in MONTHS:
        pattern["month"] = MONTHS.index(pattern["month"]) + 1
    return {"pattern": pattern, "range": range_}
