import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calsync.errors import RangeError
from calsync.model import Window
from calsync.sync.window import local_today, manual_window, scheduled_window

NOW = dt.datetime(2023, 9, 22, 3, 0, tzinfo=dt.UTC)  # 11:00 in Shanghai


def test_scheduled_window_matches_the_product_page_example():
    window = scheduled_window(NOW, "Asia/Shanghai", 3)
    assert (window.start, window.end) == (dt.date(2023, 9, 19), dt.date(2023, 9, 25))


def test_today_is_counted_in_the_integration_zone_not_utc():
    late_utc = dt.datetime(2023, 9, 21, 17, 30, tzinfo=dt.UTC)  # already the 22nd in Shanghai
    assert local_today(late_utc, "Asia/Shanghai") == dt.date(2023, 9, 22)
    assert local_today(late_utc, "America/New_York") == dt.date(2023, 9, 21)


def test_manual_window_accepts_the_bounds_inclusive():
    window = manual_window("2023-09-07", "2023-10-07", NOW, "Asia/Shanghai")
    assert (window.start, window.end) == (dt.date(2023, 9, 7), dt.date(2023, 10, 7))


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2023-09-25", "2023-09-20", "start 2023-09-25 is after end 2023-09-20"),
        ("2023-09-06", "2023-09-20", "start 2023-09-06 is outside today ± 15 days"),
        ("2023-09-20", "2023-10-08", "end 2023-10-08 is outside today ± 15 days"),
        ("yesterday", "2023-09-20", "start is not a date"),
        ("2023-09-20", None, "needs both"),
    ],
)
def test_manual_window_refusals_name_the_bound(start, end, message):
    with pytest.raises(RangeError, match=message.replace("±", "±")) as info:
        manual_window(start, end, NOW, "Asia/Shanghai")
    if "outside" in message:
        assert "between 2023-09-07 and 2023-10-07" in str(info.value)


def test_window_bounds_follow_the_zone_across_dst():
    window = Window(dt.date(2026, 3, 8), dt.date(2026, 3, 8), "America/New_York")
    lo, hi = window.bounds_utc()
    assert lo == dt.datetime(2026, 3, 8, 5, tzinfo=dt.UTC)  # EST midnight
    assert hi == dt.datetime(2026, 3, 9, 4, tzinfo=dt.UTC)  # EDT midnight: a 23-hour day


@given(
    start=st.dates(min_value=dt.date(2020, 1, 1), max_value=dt.date(2030, 1, 1)),
    length=st.integers(min_value=1, max_value=5),
    offset=st.integers(min_value=-10, max_value=10),
)
def test_all_day_overlap_is_pure_date_arithmetic(start, length, offset):
    window = Window(start, start + dt.timedelta(days=2), "Pacific/Kiritimati")
    ev_start = start + dt.timedelta(days=offset)
    ev_end = ev_start + dt.timedelta(days=length)  # exclusive
    expected = ev_start <= window.end and ev_end - dt.timedelta(days=1) >= window.start
    assert window.overlaps(None, None, ev_start, ev_end) is expected
