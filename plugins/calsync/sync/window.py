"""The date window of a run: scheduled (today ± N, F8) or manual (a checked range, F10)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pendulum

from calsync.config import MANUAL_RANGE_DAYS
from calsync.errors import RangeError
from calsync.model import Window


def local_today(now: dt.datetime, timezone: str) -> dt.date:
    """Today in the integration's zone (F8/F10 both count days there, not in UTC)."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    return now.astimezone(pendulum.timezone(timezone)).date()


def scheduled_window(now: dt.datetime, timezone: str, days: int) -> Window:
    """today − N … today + N, e.g. 2023-09-22 with N=3 → 2023-09-19 … 2023-09-25."""
    today = local_today(now, timezone)
    return Window(today - dt.timedelta(days=days), today + dt.timedelta(days=days), timezone)


def _as_date(value: Any, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    try:
        return dt.date.fromisoformat(text[:10]) if len(text) >= 10 else dt.date.fromisoformat(text)
    except ValueError:
        raise RangeError(f"{name} is not a date (YYYY-MM-DD): {text!r}") from None


def manual_window(start: Any, end: Any, now: dt.datetime, timezone: str) -> Window:
    """A manual range, refused unless start ≤ end and both lie within today ± 15 days."""
    if start in (None, "") or end in (None, ""):
        raise RangeError("a manual range needs both 'start' and 'end'")
    first, last = _as_date(start, "start"), _as_date(end, "end")
    if first > last:
        raise RangeError(f"start {first} is after end {last}")
    today = local_today(now, timezone)
    lo = today - dt.timedelta(days=MANUAL_RANGE_DAYS)
    hi = today + dt.timedelta(days=MANUAL_RANGE_DAYS)
    for name, day in (("start", first), ("end", last)):
        if not lo <= day <= hi:
            raise RangeError(
                f"{name} {day} is outside today ± {MANUAL_RANGE_DAYS} days: it must lie between "
                f"{lo} and {hi} (today is {today} in {timezone})"
            )
    return Window(first, last, timezone)
