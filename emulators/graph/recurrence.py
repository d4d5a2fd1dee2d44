"""Dates of a Graph ``patternedRecurrence``.

Pattern types: daily, weekly, absoluteMonthly, relativeMonthly, absoluteYearly,
relativeYearly. Range types: endDate (inclusive), numbered (counts every occurrence from
the start, cancelled ones included, as Exchange does), noEnd. Dates are local dates in the
recurrence time zone; the caller puts the series' wall-clock time on them.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterator
from typing import Any

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
INDEXES = {"first": 0, "second": 1, "third": 2, "fourth": 3, "last": -1}
PATTERNS = {
    "daily",
    "weekly",
    "absoluteMonthly",
    "relativeMonthly",
    "absoluteYearly",
    "relativeYearly",
}
RANGES = {"endDate", "numbered", "noEnd"}


class RecurrenceError(ValueError):
    pass


def _weekday(name: str) -> int:
    try:
        return WEEKDAYS.index(name.lower())
    except ValueError:
        raise RecurrenceError(f"unknown day of week {name!r}") from None


def _date(value: Any, field: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise RecurrenceError(f"recurrence {field} {value!r} is not a date") from None


def validate(recurrence: dict[str, Any], series_start: dt.date) -> None:
    """Raise RecurrenceError naming the first problem; fills range.startDate if absent."""
    pattern = recurrence.get("pattern") or {}
    rng = recurrence.get("range") or {}
    if pattern.get("type") not in PATTERNS:
        raise RecurrenceError(f"unsupported recurrence pattern type {pattern.get('type')!r}")
    if rng.get("type") not in RANGES:
        raise RecurrenceError(f"unsupported recurrence range type {rng.get('type')!r}")
    if int(pattern.get("interval") or 1) < 1:
        raise RecurrenceError("recurrence interval must be at least 1")
    for name in pattern.get("daysOfWeek") or []:
        _weekday(name)
    rng.setdefault("startDate", series_start.isoformat())
    start = _date(rng["startDate"], "range.startDate")
    if rng["type"] == "endDate" and _date(rng.get("endDate"), "range.endDate") < start:
        raise RecurrenceError("recurrence range.endDate is before range.startDate")
    if rng["type"] == "numbered" and int(rng.get("numberOfOccurrences") or 0) < 1:
        raise RecurrenceError("recurrence range.numberOfOccurrences must be at least 1")


def _add_months(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def _relative_day(year: int, month: int, weekdays: set[int], index: int) -> dt.date | None:
    """The index-th day in the month falling on one of ``weekdays`` (index -1: the last)."""
    days = calendar.monthrange(year, month)[1]
    matching = [
        dt.date(year, month, d)
        for d in range(1, days + 1)
        if dt.date(year, month, d).weekday() in weekdays
    ]
    if not matching:
        return None
    return matching[index] if index < len(matching) else None


def _candidates(pattern: dict[str, Any], start: dt.date) -> Iterator[dt.date]:
    """Every date the pattern produces on or after ``start``, in order (unbounded)."""
    kind = pattern["type"]
    interval = int(pattern.get("interval") or 1)
    weekdays = {_weekday(d) for d in pattern.get("daysOfWeek") or []} or {start.weekday()}
    day_of_month = int(pattern.get("dayOfMonth") or start.day)
    month_of_year = int(pattern.get("month") or start.month)
    index = INDEXES.get(str(pattern.get("index") or "first").lower(), 0)
    if kind == "daily":
        day = start
        while True:
            yield day
            day += dt.timedelta(days=interval)
    elif kind == "weekly":
        first = _weekday(pattern.get("firstDayOfWeek") or "sunday")
        offsets = sorted((w - first) % 7 for w in weekdays)
        week = start - dt.timedelta(days=(start.weekday() - first) % 7)
        while True:
            for offset in offsets:
                day = week + dt.timedelta(days=offset)
                if day >= start:
                    yield day
            week += dt.timedelta(weeks=interval)
    elif kind in ("absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly"):
        yearly = kind.endswith("Yearly")
        year, month = (start.year, month_of_year) if yearly else (start.year, start.month)
        step = 12 * interval if yearly else interval
        if yearly and dt.date(year, month, 1) < dt.date(start.year, start.month, 1):
            year += 1
        while True:
            if kind.startswith("absolute"):  # a missing 31st falls on the month's last day
                last = calendar.monthrange(year, month)[1]
                day: dt.date | None = dt.date(year, month, min(day_of_month, last))
            else:
                day = _relative_day(year, month, weekdays, index)
            if day is not None and day >= start:
                yield day
            year, month = _add_months(year, month, step)


def occurrence_dates(recurrence: dict[str, Any], until: dt.date) -> Iterator[dt.date]:
    """Local dates of the series' occurrences from its range start up to ``until`` inclusive."""
    pattern = recurrence["pattern"]
    rng = recurrence["range"]
    start = _date(rng["startDate"], "range.startDate")
    end = _date(rng["endDate"], "range.endDate") if rng["type"] == "endDate" else None
    count = int(rng["numberOfOccurrences"]) if rng["type"] == "numbered" else None
    for produced, day in enumerate(_candidates(pattern, start)):
        if (end is not None and day > end) or (count is not None and produced >= count):
            return
        if day > until:
            return
        yield day
