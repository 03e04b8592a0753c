"""Billing periods: cadences, anchors, anniversary clamping, time zones, DST and proration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from fractions import Fraction
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tallybook.billing.currency import round_money
from tallybook.billing.models import BillingCadence, Cadence, RoundingMode
from tallybook.billing.periods import (
    Alignment,
    InvalidPeriod,
    Period,
    Schedule,
    add_months,
    cadence_of,
    proration,
)
from tallybook.billing.rating import prorate

UTC_TZ = ZoneInfo("UTC")
MONTHLY = Cadence(BillingCadence.MONTHLY)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(tz: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def starts(schedule: Schedule, first: int, count: int) -> list[datetime]:
    return [schedule.boundary(k) for k in range(first, first + count)]


# -- anniversary months ---------------------------------------------------------------------------------
def test_jan_31_anchor_clamps_to_feb_28_then_returns_to_31() -> None:
    schedule = Schedule(MONTHLY, utc(2026, 1, 31, 9, 30), "UTC")
    assert starts(schedule, 0, 5) == [
        utc(2026, 1, 31, 9, 30),
        utc(2026, 2, 28, 9, 30),
        utc(2026, 3, 31, 9, 30),
        utc(2026, 4, 30, 9, 30),
        utc(2026, 5, 31, 9, 30),
    ]


def test_jan_31_anchor_in_a_leap_year_gives_feb_29() -> None:
    schedule = Schedule(MONTHLY, utc(2028, 1, 31), "UTC")
    assert schedule.boundary(1) == utc(2028, 2, 29)
    assert schedule.period(1) == Period(utc(2028, 2, 29), utc(2028, 3, 31))


def test_feb_29_yearly_anchor_uses_feb_28_in_common_years() -> None:
    schedule = Schedule(Cadence(BillingCadence.YEARLY), utc(2028, 2, 29), "UTC")
    assert starts(schedule, 0, 5) == [
        utc(2028, 2, 29),
        utc(2029, 2, 28),
        utc(2030, 2, 28),
        utc(2031, 2, 28),
        utc(2032, 2, 29),
    ]


def test_quarterly_from_the_30th_of_november() -> None:
    schedule = Schedule(Cadence(BillingCadence.QUARTERLY), utc(2025, 11, 30), "UTC")
    assert starts(schedule, 0, 4) == [utc(2025, 11, 30), utc(2026, 2, 28), utc(2026, 5, 30), utc(2026, 8, 30)]


def test_add_months_goes_backwards_too() -> None:
    assert add_months(datetime(2026, 3, 31), -1) == datetime(2026, 2, 28)
    assert add_months(datetime(2026, 1, 15), -13) == datetime(2024, 12, 15)


# -- calendar alignment ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "at", "expected"),
    [
        (BillingCadence.DAILY, utc(2026, 3, 5, 13), Period(utc(2026, 3, 5), utc(2026, 3, 6))),
        (BillingCadence.WEEKLY, utc(2026, 3, 5, 13), Period(utc(2026, 3, 2), utc(2026, 3, 9))),  # Monday
        (BillingCadence.MONTHLY, utc(2026, 3, 5, 13), Period(utc(2026, 3, 1), utc(2026, 4, 1))),
        (BillingCadence.QUARTERLY, utc(2026, 5, 5), Period(utc(2026, 4, 1), utc(2026, 7, 1))),
        (BillingCadence.YEARLY, utc(2026, 5, 5), Period(utc(2026, 1, 1), utc(2027, 1, 1))),
    ],
)
def test_calendar_periods(kind: BillingCadence, at: datetime, expected: Period) -> None:
    schedule = Schedule.aligned(Cadence(kind), Alignment.CALENDAR, "UTC")
    assert schedule.period_containing(at) == expected


def test_every_30_days_anniversary() -> None:
    schedule = Schedule.aligned(
        Cadence(BillingCadence.EVERY_N_DAYS, 30), Alignment.ANNIVERSARY, "UTC", utc(2026, 1, 10)
    )
    assert schedule.period_containing(utc(2026, 3, 1)) == Period(utc(2026, 2, 9), utc(2026, 3, 11))
    assert schedule.period_containing(utc(2025, 12, 31)) == Period(utc(2025, 12, 11), utc(2026, 1, 10))


def test_boundaries_are_inclusive_at_the_start() -> None:
    schedule = Schedule.aligned(MONTHLY, Alignment.CALENDAR, "UTC")
    assert schedule.period_containing(utc(2026, 4, 1)) == Period(utc(2026, 4, 1), utc(2026, 5, 1))
    just_before = utc(2026, 4, 1) - timedelta(microseconds=1)
    assert schedule.period_containing(just_before) == Period(utc(2026, 3, 1), utc(2026, 4, 1))


# -- time zones and DST ---------------------------------------------------------------------------------
def test_monthly_periods_follow_local_midnight() -> None:
    schedule = Schedule.aligned(MONTHLY, Alignment.CALENDAR, "Asia/Tokyo")
    # 2026-03-31T16:00Z is 1 April 01:00 in Tokyo: April's period.
    assert schedule.period_containing(utc(2026, 3, 31, 16)) == Period(utc(2026, 3, 31, 15), utc(2026, 4, 30, 15))


def test_daily_period_over_spring_forward_is_23_hours() -> None:
    schedule = Schedule.aligned(Cadence(BillingCadence.DAILY), Alignment.CALENDAR, "Europe/Budapest")
    period = schedule.period_containing(utc(2026, 3, 29, 12))
    assert period == Period(local("Europe/Budapest", 2026, 3, 29), local("Europe/Budapest", 2026, 3, 30))
    assert period.duration == timedelta(hours=23)


def test_daily_period_over_fall_back_is_25_hours() -> None:
    schedule = Schedule.aligned(Cadence(BillingCadence.DAILY), Alignment.CALENDAR, "America/New_York")
    period = schedule.period_containing(utc(2026, 11, 1, 12))
    assert period.duration == timedelta(hours=25)
    assert period.start == utc(2026, 11, 1, 4)


def test_march_in_new_york_is_one_hour_short() -> None:
    schedule = Schedule.aligned(MONTHLY, Alignment.CALENDAR, "America/New_York")
    march = schedule.period_containing(utc(2026, 3, 15))
    assert march == Period(utc(2026, 3, 1, 5), utc(2026, 4, 1, 4))
    assert march.duration == timedelta(days=31) - timedelta(hours=1)


def test_anniversary_keeps_local_time_across_dst() -> None:
    start = local("Europe/Paris", 2026, 1, 15, 9, 0)
    schedule = Schedule(MONTHLY, start, "Europe/Paris")
    for k in range(12):
        assert schedule.boundary(k).astimezone(ZoneInfo("Europe/Paris")).hour == 9


def test_anchor_in_a_skipped_local_hour_still_tiles() -> None:
    # 02:30 on 8 March 2026 does not exist in New York.
    tz = ZoneInfo("America/New_York")
    anchor = datetime(2026, 3, 7, 2, 30, tzinfo=tz).astimezone(UTC)
    schedule = Schedule(Cadence(BillingCadence.DAILY), anchor, tz)
    bounds = starts(schedule, 0, 4)
    assert all(a < b for a, b in pairwise(bounds))


def test_customer_time_zone_decides_the_month() -> None:
    at = utc(2026, 1, 31, 23, 30)  # still January in UTC, already February in Berlin
    berlin = Schedule.aligned(MONTHLY, Alignment.CALENDAR, "Europe/Berlin").period_containing(at)
    london = Schedule.aligned(MONTHLY, Alignment.CALENDAR, "Europe/London").period_containing(at)
    assert berlin.start == local("Europe/Berlin", 2026, 2, 1)
    assert london.start == utc(2026, 1, 1)


# -- validation ---------------------------------------------------------------------------------------
def test_cadence_validation() -> None:
    assert cadence_of("every_n_days", 30) == Cadence(BillingCadence.EVERY_N_DAYS, 30)
    with pytest.raises(InvalidPeriod):
        cadence_of("every_n_days")
    with pytest.raises(InvalidPeriod):
        cadence_of("monthly", 3)
    with pytest.raises(InvalidPeriod):
        Schedule(MONTHLY, datetime(2026, 1, 1), "UTC")
    with pytest.raises(InvalidPeriod):
        Schedule(MONTHLY, utc(2026, 1, 1), "Mars/Olympus")
    with pytest.raises(InvalidPeriod):
        Period(utc(2026, 1, 2), utc(2026, 1, 1))


# -- proration -------------------------------------------------------------------------------------------
def test_proration_of_half_of_april() -> None:
    april = Period(utc(2026, 4, 1), utc(2026, 5, 1))
    assert proration(Period(utc(2026, 4, 16), utc(2026, 5, 1)), april) == Fraction(1, 2)
    assert proration(Period(utc(2026, 3, 1), utc(2026, 6, 1)), april) == 1
    assert proration(Period(utc(2026, 5, 1), utc(2026, 6, 1)), april) == 0
    assert proration(None, april) == 0


def test_mid_february_start_costs_14_of_28_days() -> None:
    feb = Period(utc(2026, 2, 1), utc(2026, 3, 1))
    covered = Period(utc(2026, 2, 15), feb.end)
    seconds = lambda p: Decimal(int(p.duration.total_seconds()))  # noqa: E731
    amount = prorate(Decimal("49"), seconds(covered), seconds(feb))
    assert round_money(amount, "USD", RoundingMode.HALF_EVEN) == Decimal("24.50")


# -- properties ---------------------------------------------------------------------------------------------
ZONES = st.sampled_from(["UTC", "Europe/Budapest", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"])
CADENCES = st.one_of(
    st.sampled_from([Cadence(k) for k in BillingCadence if k is not BillingCadence.EVERY_N_DAYS]),
    st.integers(1, 400).map(lambda n: Cadence(BillingCadence.EVERY_N_DAYS, n)),
)
INSTANTS = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2098, 12, 31), timezones=st.just(UTC))


@settings(max_examples=300, deadline=None)
@given(cadence=CADENCES, tz=ZONES, anchor=INSTANTS, at=INSTANTS, calendar=st.booleans())
def test_period_containing_contains_and_neighbours_touch(
    cadence: Cadence, tz: str, anchor: datetime, at: datetime, calendar: bool
) -> None:
    alignment = Alignment.CALENDAR if calendar else Alignment.ANNIVERSARY
    schedule = Schedule.aligned(cadence, alignment, tz, anchor)
    k = schedule.index_of(at)
    period = schedule.period(k)
    assert period.contains(at)
    assert schedule.period(k - 1).end == period.start
    assert schedule.period(k + 1).start == period.end


@settings(max_examples=200, deadline=None)
@given(cadence=CADENCES, tz=ZONES, anchor=INSTANTS, start=INSTANTS, span=st.integers(1, 800))
def test_periods_tile_time_without_gaps_or_overlaps(
    cadence: Cadence, tz: str, anchor: datetime, start: datetime, span: int
) -> None:
    end = start + timedelta(days=span)
    periods = list(Schedule(cadence, anchor, tz).periods(start, end))
    assert periods[0].contains(start)
    assert periods[-1].start < end <= periods[-1].end
    for a, b in pairwise(periods):
        assert a.end == b.start
        assert a.start < a.end


@settings(max_examples=200, deadline=None)
@given(
    cadence=CADENCES,
    tz=ZONES,
    anchor=INSTANTS,
    at=INSTANTS,
    cuts=st.lists(st.floats(0, 1, allow_nan=False), max_size=6),
)
def test_proration_of_any_split_sums_to_the_full_fee(
    cadence: Cadence, tz: str, anchor: datetime, at: datetime, cuts: list[float]
) -> None:
    period = Schedule(cadence, anchor, tz).period_containing(at)
    micros = int(period.duration / timedelta(microseconds=1))
    points = sorted({period.start + timedelta(microseconds=int(c * micros)) for c in cuts} | {period.start, period.end})
    pieces = [Period(a, b) for a, b in pairwise(points) if a < b]
    assert sum(proration(p, period) for p in pieces) == 1
    fee = Decimal("49.00")
    total_seconds = Decimal(micros)
    raw = [prorate(fee, Decimal(int(p.duration / timedelta(microseconds=1))), total_seconds) for p in pieces]
    # Unrounded shares add back to the fee (to 60+ significant digits).
    with localcontext() as ctx:
        ctx.prec = 100
        assert abs(sum(raw, Decimal(0)) - fee) < Decimal("1e-40")
    # Rounded once per line, they stay within half a cent per line of it.
    rounded = sum((round_money(r, "USD", RoundingMode.HALF_EVEN) for r in raw), Decimal(0))
    assert abs(rounded - fee) <= Decimal("0.005") * len(pieces)
