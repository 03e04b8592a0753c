"""Window and period boundaries, including DST changes (pure functions, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallybook.clock import to_micros
from tallybook.meters.windows import (
    TooManyWindows,
    WindowSize,
    is_aligned,
    next_window_start,
    period_bounds,
    window_start,
    windows_between,
    zone,
)

BUDAPEST = zone("Europe/Budapest")
NEW_YORK = zone("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_budapest_spring_forward_day_is_23_hours():
    # 2026-03-29: clocks go from 02:00 to 03:00 local (CET → CEST).
    start, end = period_bounds("daily", utc(2026, 3, 29, 12), BUDAPEST)
    assert start == utc(2026, 3, 28, 23)  # local midnight, +01:00
    assert end == utc(2026, 3, 29, 22)  # next local midnight, +02:00
    assert end - start == timedelta(hours=23)


def test_budapest_fall_back_day_is_25_hours():
    start, end = period_bounds("daily", utc(2026, 10, 25, 12), BUDAPEST)
    assert (start, end) == (utc(2026, 10, 24, 22), utc(2026, 10, 25, 23))
    assert end - start == timedelta(hours=25)


def test_new_york_dst_days():
    spring = period_bounds("daily", utc(2026, 3, 8, 17), NEW_YORK)
    fall = period_bounds("daily", utc(2026, 11, 1, 17), NEW_YORK)
    assert spring == (utc(2026, 3, 8, 5), utc(2026, 3, 9, 4))
    assert fall == (utc(2026, 11, 1, 4), utc(2026, 11, 2, 5))


def test_repeated_local_hour_is_two_hour_windows():
    # 2026-11-01 01:00-02:00 happens twice in New York; each is its own one-hour window.
    first = window_start(WindowSize.HOUR, utc(2026, 11, 1, 5, 30), NEW_YORK)
    second = window_start(WindowSize.HOUR, utc(2026, 11, 1, 6, 30), NEW_YORK)
    assert first == utc(2026, 11, 1, 5)
    assert second == utc(2026, 11, 1, 6)
    assert first.astimezone(NEW_YORK).hour == second.astimezone(NEW_YORK).hour == 1


def test_weekly_is_iso_monday_to_sunday():
    start, end = period_bounds("weekly", utc(2026, 1, 7, 10), zone("UTC"))  # a Wednesday
    assert start == utc(2026, 1, 5)  # Monday
    assert end == utc(2026, 1, 12)
    # A Sunday late evening belongs to the week that started the Monday before.
    assert period_bounds("weekly", utc(2026, 1, 11, 23, 59), zone("UTC"))[0] == utc(2026, 1, 5)


def test_monthly_and_yearly_in_a_zone():
    assert period_bounds("monthly", utc(2026, 3, 31, 23, 30), BUDAPEST) == (utc(2026, 3, 31, 22), utc(2026, 4, 30, 22))
    assert period_bounds("yearly", utc(2026, 6, 1), BUDAPEST) == (utc(2025, 12, 31, 23), utc(2026, 12, 31, 23))
    assert period_bounds("hourly", utc(2026, 6, 1, 7, 59, 59), BUDAPEST) == (utc(2026, 6, 1, 7), utc(2026, 6, 1, 8))


def test_unknown_period_and_zone_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="hourly, daily, weekly, monthly, yearly"):
        period_bounds("fortnightly", utc(2026, 1, 1), BUDAPEST)
    with pytest.raises(ValueError, match="IANA"):
        zone("Mars/Olympus_Mons")


def test_alignment():
    assert is_aligned(WindowSize.DAY, utc(2026, 3, 28, 23), BUDAPEST)
    assert not is_aligned(WindowSize.DAY, utc(2026, 3, 29), BUDAPEST)
    assert is_aligned(WindowSize.MONTH, utc(2026, 1, 1), zone("UTC"))
    assert not is_aligned(WindowSize.MINUTE, utc(2026, 1, 1, 0, 0, 1), zone("UTC"))
    # India is UTC+05:30: its hours start at :30 UTC.
    assert is_aligned(WindowSize.HOUR, utc(2026, 1, 1, 0, 30), zone("Asia/Kolkata"))
    assert not is_aligned(WindowSize.HOUR, utc(2026, 1, 1, 0, 0), zone("Asia/Kolkata"))


def test_windows_between_day_windows_across_dst():
    windows = windows_between(WindowSize.DAY, utc(2026, 3, 27, 23), utc(2026, 3, 30, 22), BUDAPEST)
    lengths = [(windows.window(i)[1] - windows.window(i)[0]) // 3_600_000_000 for i in range(windows.count)]
    assert lengths == [24, 23, 24]
    assert windows.index_of(to_micros(utc(2026, 3, 29, 21, 59))) == 1
    assert windows.index_of(to_micros(utc(2026, 3, 29, 22))) == 2


def test_hour_windows_use_fixed_steps_only_while_offsets_keep_their_minutes():
    assert windows_between(WindowSize.HOUR, utc(2026, 1, 1), utc(2026, 2, 1), BUDAPEST).step_us == 3_600_000_000
    # India is always +05:30: local hours start at :30 UTC, one real hour apart.
    kolkata = zone("Asia/Kolkata")
    start = window_start(WindowSize.HOUR, utc(2020, 1, 1), kolkata)
    assert start == utc(2019, 12, 31, 23, 30)
    assert windows_between(WindowSize.HOUR, start, start + timedelta(days=3650), kolkata).step_us == 3_600_000_000
    # Lord Howe Island moves its clocks by 30 minutes: explicit boundaries are needed.
    lord_howe = zone("Australia/Lord_Howe")
    start = window_start(WindowSize.HOUR, utc(2026, 3, 1), lord_howe)
    assert windows_between(WindowSize.HOUR, start, start + timedelta(days=60), lord_howe).step_us is None


ZONES = ["UTC", "Europe/Budapest", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "America/Santiago"]


@given(
    moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)),
    size=st.sampled_from(list(WindowSize)),
    tz_name=st.sampled_from(ZONES),
)
def test_window_contains_instant_and_is_aligned(moment, size, tz_name):
    tz = zone(tz_name)
    start = window_start(size, moment, tz)
    end = next_window_start(size, start, tz)
    assert start <= moment < end
    assert is_aligned(size, start, tz)
    assert is_aligned(size, end, tz)
    assert window_start(size, end, tz) == end
    local = start.astimezone(tz)
    if size not in (WindowSize.MINUTE, WindowSize.HOUR):
        # Calendar windows begin on the right local day (midnight, or the first instant after a
        # change that skips midnight).
        assert local.hour in (0, 1) and local.minute in (0, 30)
        if size is WindowSize.WEEK:
            assert local.weekday() == 0
        if size in (WindowSize.MONTH, WindowSize.YEAR):
            assert local.day == 1


def test_fixed_length_windows_have_no_limit_and_too_many_calendar_windows_are_refused():
    # MINUTE windows are bucketed by arithmetic in SQL (only windows with events come back): no list,
    # so ten years of minutes cost nothing.
    ten_years = windows_between(WindowSize.MINUTE, utc(2000, 1, 1), utc(2010, 1, 1), zone("UTC"))
    assert ten_years.step_us == 60_000_000 and ten_years.bounds_us == () and ten_years.count == 5_260_320
    # Calendar windows are listed; a range that must hold more than a million is refused at once.
    with pytest.raises(TooManyWindows, match="more than 1000000 DAY windows in UTC"):
        windows_between(WindowSize.DAY, utc(1, 1, 1), utc(9999, 1, 1), zone("UTC"))
    assert len(windows_between(WindowSize.DAY, utc(2000, 1, 1), utc(2010, 1, 1), zone("UTC")).bounds_us) == 3654
