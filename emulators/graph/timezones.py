"""Time zones and date-time text as Graph writes them.

Graph names zones either by IANA id ("Asia/Shanghai") or by Windows name ("China Standard
Time"); both resolve here (Windows names through tzlocal's CLDR table). Graph renders a
``dateTime`` without offset and with seven fractional digits: ``2026-12-01T09:00:00.0000000``.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tzlocal.windows_tz import win_tz

UTC = dt.UTC
_UTC_ALIASES = {"utc", "z", "tzone://microsoft/utc", "coordinated universal time", "etc/utc"}


class UnknownTimeZone(ValueError):
    pass


@lru_cache(maxsize=512)
def resolve_zone(name: str | None) -> dt.tzinfo:
    """The zone for an IANA id or a Windows zone name; empty means UTC."""
    if not name or name.strip().lower() in _UTC_ALIASES:
        return UTC
    name = name.strip()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    iana = win_tz.get(name)
    if iana:
        return ZoneInfo(iana)
    raise UnknownTimeZone(f"unknown time zone {name!r}")


def parse_local(value: str, zone_name: str | None) -> dt.datetime:
    """A Graph ``{dateTime, timeZone}`` pair as an aware datetime (an offset in the text wins)."""
    parsed = dt.datetime.fromisoformat(value.strip())
    if parsed.tzinfo is not None:
        return parsed
    return parsed.replace(tzinfo=resolve_zone(zone_name))


def parse_instant(value: str) -> dt.datetime:
    """A query-string instant (``startDateTime``): offset or Z honoured, none means UTC."""
    text = value.strip()
    if " " in text and "T" in text:  # an unencoded "+08:00" arrives as " 08:00"
        text = text.replace(" ", "+")
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_local(value: dt.datetime, zone: dt.tzinfo) -> str:
    """``value`` as Graph's offset-less ``dateTime`` text in ``zone``."""
    local = value.astimezone(zone)
    return f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond:06d}0"


def format_midnight(day: dt.date) -> str:
    return f"{day.isoformat()}T00:00:00.0000000"


def format_utc_z(value: dt.datetime, fraction: bool = False) -> str:
    """UTC with a Z: ``2026-12-01T01:00:00Z`` (``fraction`` adds Graph's seven digits)."""
    utc = value.astimezone(UTC)
    if fraction:
        return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond:06d}0Z"
    return f"{utc:%Y-%m-%dT%H:%M:%S}Z"


def now_utc() -> dt.datetime:
    return dt.datetime.now(UTC)
