"""Time zones and DST (E14) on every suite.

Windows zone names (EWS, Graph, and Alibaba, which accepts them too) map to IANA through
tzlocal's ``windows_tz`` table, generated from CLDR's windowsZones.xml
(``calsync.config.resolve_timezone``; the reverse direction, IANA → Windows for Graph writes,
is the same table's ``tz_win``). Checked here against exchangelib's own CLDR-derived table.

Scenarios, for Europe/Berlin and America/New_York as the integration's zone, with the suite
events in the Windows names ("W. Europe Standard Time", "Eastern Standard Time"): events on
the spring-forward and fall-back days, events spanning each transition, an event starting in
the hour that does not exist, one in the hour that happens twice, a weekly series across the
spring transition (09:00 wall time before and after), and all-day events on both days. The
OA must hold the right UTC instants, the right local times in the configured zone, the IANA
zone, and dates (never shifted midnights) for all-day events; a second run changes nothing.
Reverse: OA schedules on the transition days reach each suite at the right instant, in the
schedule's zone, and all-day schedules stay dates, whatever the zones. A Hypothesis property
covers timed and all-day events near the transitions of five zones through each connector.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calsync.config import resolve_timezone
from calsync.connectors.base import connector_for
from calsync.model import Window
from calsync.oa import schema as t
from tests.integration.conftest import ForwardRunner
from tests.integration.reverse_helpers import ReverseRunner, oa_create, oa_update
from tests.integration.safety_suites import ORGANISER, Ev, Suite, utc

DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Zone:
    iana: str
    windows: str
    spring: dt.date  # the day clocks go forward (02:00 → 03:00)
    fall: dt.date  # the day clocks go back
    repeated: dt.time  # a wall time that happens twice on ``fall``


ZONES = {
    "Europe/Berlin": Zone(
        "Europe/Berlin", "W. Europe Standard Time", dt.date(2027, 3, 28), dt.date(2026, 10, 25),
        dt.time(2, 30),
    ),
    "America/New_York": Zone(
        "America/New_York", "Eastern Standard Time", dt.date(2027, 3, 14), dt.date(2026, 11, 1),
        dt.time(1, 30),
    ),
}  # fmt: skip


def wall(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute))


def instant(value: dt.datetime, zone: str, fold: int = 0) -> dt.datetime:
    """A wall time in ``zone`` as UTC (fold=0: a missing time counts with the offset before
    the transition, which is also where the suites put it: 02:30 → 03:30 summer time)."""
    return value.replace(tzinfo=zoneinfo.ZoneInfo(zone), fold=fold).astimezone(dt.UTC)


# --- the CLDR table ------------------------------------------------------------------------


def test_windows_names_map_through_the_cldr_table() -> None:
    from exchangelib.winzone import MS_TIMEZONE_TO_IANA_MAP
    from tzlocal.windows_tz import win_tz

    assert resolve_timezone("W. Europe Standard Time") == "Europe/Berlin"
    assert resolve_timezone("GMT Standard Time") == "Europe/London"
    assert resolve_timezone("Eastern Standard Time") == "America/New_York"
    assert resolve_timezone("China Standard Time") == "Asia/Shanghai"
    assert resolve_timezone("Europe/London") == "Europe/London"  # IANA names pass through
    with pytest.raises(ValueError, match="unknown time zone 'Mars Standard Time'"):
        resolve_timezone("Mars Standard Time")
    # every Windows name of the table resolves to a zone this machine knows, and agrees
    # with exchangelib's CLDR-derived table (same region "001" territory) wherever both
    # name it
    assert len(win_tz) > 130
    differ = {}
    for name in win_tz:
        iana = resolve_timezone(name)
        zoneinfo.ZoneInfo(iana)
        theirs = MS_TIMEZONE_TO_IANA_MAP.get(name)
        if theirs is not None and theirs != iana:
            differ[name] = (iana, theirs)
    assert differ == {}


# --- forward: suite → OA ---------------------------------------------------------------------


def seed_transitions(side: Suite, zone: Zone) -> None:
    s, f, w = zone.spring, zone.fall, zone.windows
    add = side.add
    add(ORGANISER, Ev("spring day", wall(s, 9), wall(s, 10), w), deliver=False)
    add(ORGANISER, Ev("spans spring", wall(s, 0, 30), wall(s, 4, 30), w), deliver=False)
    add(ORGANISER, Ev("missing hour", wall(s, 2, 30), wall(s, 4, 30), w), deliver=False)
    add(ORGANISER, Ev("fall day", wall(f, 9), wall(f, 10), w), deliver=False)
    add(ORGANISER, Ev("spans fall", wall(f, 0, 30), wall(f, 3, 30), w), deliver=False)
    again = dt.datetime.combine(f, zone.repeated)
    add(ORGANISER, Ev("repeated hour", again, again + dt.timedelta(hours=1), w), deliver=False)
    first = wall(s - 14 * DAY, 9)
    weekly = Ev("weekly across spring", first, first + dt.timedelta(hours=1), w, weekly=4)
    add(ORGANISER, weekly, deliver=False)
    add(ORGANISER, Ev("spring day off", zone=w, all_day=(s, s + DAY)), deliver=False)
    add(ORGANISER, Ev("fall day off", zone=w, all_day=(f, f + DAY)), deliver=False)


def oa_schedules(engine: sa.Engine) -> dict[str, list[Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.schedules).order_by(t.schedules.c.start_utc)).all()
    out: dict[str, list[Any]] = {}
    for row in rows:
        out.setdefault(row.title, []).append(row)
    return out


@pytest.mark.parametrize("zone_name", list(ZONES))
def test_dst_transitions_reach_the_oa_right(
    suite: Suite,  # noqa: F811 - the fixture
    oa: sa.Engine,  # noqa: F811 - the fixture
    zone_name: str,
) -> None:
    zone = ZONES[zone_name]
    tz = zoneinfo.ZoneInfo(zone.iana)
    seed_transitions(suite, zone)
    run = ForwardRunner(oa, suite.config(zone=zone.iana))
    spring = Window(zone.spring - 15 * DAY, zone.spring + 8 * DAY, zone.iana)
    fall = Window(zone.fall - 2 * DAY, zone.fall + 2 * DAY, zone.iana)
    for window in (spring, fall):
        result = run(window)
        assert not any(r.error for r in result["results"].values())
    got = oa_schedules(oa)
    s, f = zone.spring, zone.fall

    def one(title: str) -> Any:
        [row] = got[title]
        assert row.timezone == zone.iana, title  # the Windows name, mapped through CLDR
        return row

    def check(title: str, start: dt.datetime, end: dt.datetime, hours: float) -> None:
        row = one(title)
        assert (utc(row.start_utc), utc(row.end_utc)) == (start, end), title
        assert end - start == dt.timedelta(hours=hours), title

    check("spring day", instant(wall(s, 9), zone.iana), instant(wall(s, 10), zone.iana), 1)
    check("spans spring", instant(wall(s, 0, 30), zone.iana), instant(wall(s, 4, 30), zone.iana), 3)
    check("missing hour", instant(wall(s, 2, 30), zone.iana), instant(wall(s, 4, 30), zone.iana), 1)
    # 02:30 does not exist that day: the schedule starts at 03:30 summer time, local
    assert utc(one("missing hour").start_utc).astimezone(tz).time() == dt.time(3, 30)  # type: ignore[union-attr]
    check("fall day", instant(wall(f, 9), zone.iana), instant(wall(f, 10), zone.iana), 1)
    check("spans fall", instant(wall(f, 0, 30), zone.iana), instant(wall(f, 3, 30), zone.iana), 4)
    # the repeated hour: either of its two instants (suites differ), read back as that wall time
    again = dt.datetime.combine(f, zone.repeated)
    repeated = utc(one("repeated hour").start_utc)
    assert repeated in {instant(again, zone.iana, 0), instant(again, zone.iana, 1)}
    assert repeated.astimezone(tz).time() == zone.repeated  # type: ignore[union-attr]
    # the weekly series keeps 09:00 local across the transition, so its UTC hour moves
    weekly = got["weekly across spring"]
    assert [utc(r.start_utc).astimezone(tz).replace(tzinfo=None) for r in weekly] == [  # type: ignore[union-attr]
        wall(s + k * 7 * DAY, 9) for k in (-2, -1, 0, 1)
    ]
    assert len({utc(r.start_utc).hour for r in weekly}) == 2  # type: ignore[union-attr]
    assert all(r.timezone == zone.iana for r in weekly)
    # all-day events are dates, whatever the zones
    for title, day in (("spring day off", s), ("fall day off", f)):
        row = one(title)
        assert row.all_day and (row.start_date, row.end_date) == (day, day + DAY), title
        assert (row.start_utc, row.end_utc) == (None, None), title

    # a second run over each window changes nothing (no DST drift between reads)
    for window in (spring, fall):
        again_result = run(window)
        assert set(again_result["totals"]) <= {"unchanged", "skipped"}, again_result["totals"]
    assert oa_schedules(oa) == got


# --- reverse: OA → suite ---------------------------------------------------------------------


@pytest.mark.parametrize("zone_name", list(ZONES))
def test_dst_days_reach_the_suite_right(
    suite: Suite,  # noqa: F811 - the fixture
    oa: sa.Engine,  # noqa: F811 - the fixture
    zone_name: str,
) -> None:
    zone = ZONES[zone_name]
    s, f = zone.spring, zone.fall
    config = suite.config(zone=zone.iana, direction="reverse")
    made = {
        "OA spring day": (instant(wall(s, 9), zone.iana), 1.0),
        "OA after the gap": (instant(wall(s, 3, 30), zone.iana), 1.0),
        "OA spans fall": (instant(wall(f, 0, 30), zone.iana), 4.0),
    }
    for title, (start, hours) in made.items():
        sid = oa_create(oa, "zhangwei", title, start, hours)
        oa_update(oa, sid, timezone=zone.iana)
    for title, day in (("OA spring day off", s), ("OA fall day off", f)):
        sid = oa_create(oa, "zhangwei", title, all_day=day)
        oa_update(oa, sid, timezone=zone.iana)
    drain = ReverseRunner(oa, [config])
    assert drain.counts(drain()) == {"created": 5}
    for title, (start, hours) in made.items():
        stored = suite.times(ORGANISER, title)
        assert (stored.start, stored.end) == (start, start + dt.timedelta(hours=hours)), title
        assert resolve_timezone(stored.zone) == zone.iana, (title, stored.zone)
    for title, day in (("OA spring day off", s), ("OA fall day off", f)):
        assert suite.times(ORGANISER, title).dates == (day, day + DAY), title


ALL_DAY_ZONES = [("Pacific/Kiritimati", "America/Los_Angeles"), ("Pacific/Pago_Pago", "Asia/Tokyo")]


@pytest.mark.parametrize(("schedule_zone", "integration_zone"), ALL_DAY_ZONES)
def test_all_day_stays_dates_both_ways_whatever_the_zones(
    suite: Suite,  # noqa: F811 - the fixture
    oa: sa.Engine,  # noqa: F811 - the fixture
    schedule_zone: str,
    integration_zone: str,
) -> None:
    """+14 against −8, −11 against +9: a midnight conversion anywhere would shift a day."""
    day = dt.date(2026, 12, 5)
    # forward: a suite all-day event made in one far zone, an integration in the other
    suite.add(ORGANISER, Ev("suite day off", zone=schedule_zone, all_day=(day, day + 2 * DAY)))
    forward = ForwardRunner(oa, suite.config(zone=integration_zone))
    forward(Window(day - 2 * DAY, day + 3 * DAY, integration_zone))
    [row] = oa_schedules(oa)["suite day off"]
    assert row.all_day and (row.start_date, row.end_date) == (day, day + 2 * DAY)
    # reverse: an OA all-day schedule in one far zone, the integration in the other
    sid = oa_create(oa, "zhangwei", "OA day off", all_day=day)
    oa_update(oa, sid, timezone=schedule_zone)
    drain = ReverseRunner(oa, [suite.config(zone=integration_zone, direction="reverse")])
    assert drain.counts(drain()) == {"created": 1}
    assert suite.times(ORGANISER, "OA day off").dates == (day, day + DAY)
    assert suite.times(ORGANISER, "suite day off").dates == (day, day + 2 * DAY)  # untouched


# --- property: each connector's reads near transitions -------------------------------------

PROPERTY_ZONES = {  # Windows name → (IANA, a spring-forward day, a fall-back day)
    "W. Europe Standard Time": ("Europe/Berlin", dt.date(2027, 3, 28), dt.date(2026, 10, 25)),
    "GMT Standard Time": ("Europe/London", dt.date(2027, 3, 28), dt.date(2026, 10, 25)),
    "Eastern Standard Time": ("America/New_York", dt.date(2027, 3, 14), dt.date(2026, 11, 1)),
    "AUS Eastern Standard Time": ("Australia/Sydney", dt.date(2026, 10, 4), dt.date(2027, 4, 4)),
    "China Standard Time": ("Asia/Shanghai", dt.date(2027, 3, 14), dt.date(2026, 11, 1)),
}


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    windows=st.sampled_from(sorted(PROPERTY_ZONES)),
    spring=st.booleans(),
    offset_days=st.integers(-1, 1),
    minute=st.integers(0, 47).map(lambda q: q * 30),
    length=st.sampled_from([30, 60, 150, 24 * 60]),
    all_day=st.booleans(),
    reader_zone=st.sampled_from(["Asia/Shanghai", "America/Los_Angeles", "Pacific/Auckland"]),
)
def test_reads_near_transitions_match_the_zone_rules(
    suite: Suite,  # noqa: F811 - the fixture
    windows: str,
    spring: bool,
    offset_days: int,
    minute: int,
    length: int,
    all_day: bool,
    reader_zone: str,
) -> None:
    """An event made in a Windows-named zone near a DST change (a missing or repeated wall
    time included) reads back, through each connector, at the instants the zone's rules give
    (fold 0), in the IANA zone; an all-day one as its dates, whatever the reader's zone."""
    iana, spring_day, fall_day = PROPERTY_ZONES[windows]
    day = (spring_day if spring else fall_day) + offset_days * DAY
    side = type(suite)(suite.server)  # emptied for each example
    start = dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=minute)
    end = start + dt.timedelta(minutes=length)
    if all_day:
        side.add(ORGANISER, Ev("p", zone=windows, all_day=(day, day + DAY)), deliver=False)
    else:
        side.add(ORGANISER, Ev("p", start, end, windows), deliver=False)
    config = side.config(zone=reader_zone)

    async def read() -> list[Any]:
        async with connector_for(config) as connector:
            window = Window(day - 2 * DAY, day + 2 * DAY, reader_zone)
            return await connector.list_events(ORGANISER, window)

    [event] = asyncio.run(read())
    assert event.timezone == iana
    if all_day:
        assert (event.start_date, event.end_date, event.start) == (day, day + DAY, None)
    else:
        assert event.start == instant(start, iana)
        assert event.end == instant(end, iana)


# fixtures: the suites over their emulators (EWS and Alibaba started once per session)
from tests.integration.safety_suites import oa, suite  # noqa: E402,F401
