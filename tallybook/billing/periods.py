"""Billing periods: boundaries for a cadence, an anchor and a time zone. Pure functions, no I/O.

A subscription's periods are the half-open intervals between consecutive *boundaries*. Boundary
`k` is the anchor moved by `k` cadence steps in the customer's local calendar, then turned into a
UTC instant:

- month-based cadences (monthly, quarterly, yearly) add calendar months and keep the anchor's day
  of the month, clamped to the month's last day: an anchor on 31 January gives 28 (or 29) February,
  then 31 March again. Each boundary is computed from the anchor, never from the previous boundary,
  so the clamping does not drift;
- day-based cadences (daily, weekly, every N days) add local calendar days, so a period over a DST
  change is 23 or 25 hours long but always starts at the same local time of day.

A local time that does not exist (skipped by a DST change) resolves to the instant the clock
would show it at with the offset in force before the change, as `zoneinfo` does; boundaries stay
strictly increasing because every cadence step is at least one local day.

Calendar alignment uses a fixed anchor on a calendar start (local midnight on 1 January 2000, a
Saturday; weekly periods use Monday 3 January 2000), so monthly periods start on the 1st, weekly
ones on Monday and yearly ones on 1 January. Anniversary alignment uses the subscription's start.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from fractions import Fraction
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tallybook.billing.models import BillingCadence, Cadence

_MONTHS = {BillingCadence.MONTHLY: 1, BillingCadence.QUARTERLY: 3, BillingCadence.YEARLY: 12}
_DAYS = {BillingCadence.DAILY: 1, BillingCadence.WEEKLY: 7}
CALENDAR_ANCHOR = datetime(2000, 1, 1)
CALENDAR_WEEK_ANCHOR = datetime(2000, 1, 3)  # a Monday


class Alignment(StrEnum):
    CALENDAR = "calendar"  # periods start on the 1st of the month, on Monday, on 1 January ...
    ANNIVERSARY = "anniversary"  # periods start at the subscription's start (or its billing anchor)


class InvalidPeriod(ValueError):
    pass


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """A half-open interval [start, end) of aware UTC instants."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise InvalidPeriod("period bounds must be timezone-aware")
        if self.end <= self.start:
            raise InvalidPeriod(f"a period must end after it starts ({self.start} .. {self.end})")

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def contains(self, when: datetime) -> bool:
        return self.start <= when < self.end

    def overlap(self, start: datetime | None, end: datetime | None) -> Period | None:
        """The part of this period inside [start, end) (None bounds are open); None when empty."""
        lo = self.start if start is None else max(self.start, start)
        hi = self.end if end is None else min(self.end, end)
        return Period(lo, hi) if lo < hi else None


def cadence_of(kind: BillingCadence | str, days: int | None = None) -> Cadence:
    """A checked Cadence (every N days needs 1 <= N <= 3660; other kinds take no days)."""
    kind = BillingCadence(kind)
    if kind is BillingCadence.EVERY_N_DAYS:
        if days is None or not 1 <= days <= 3660:
            raise InvalidPeriod("every_n_days needs days between 1 and 3660")
        return Cadence(kind, days)
    if days is not None:
        raise InvalidPeriod(f"{kind.value} takes no days; use every_n_days for N-day periods")
    return Cadence(kind)


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidPeriod(f"{name!r} is not an IANA time zone name") from None


def _step_days(cadence: Cadence) -> int:
    if cadence.kind is BillingCadence.EVERY_N_DAYS:
        if not cadence.days or cadence.days < 1:
            raise InvalidPeriod("every_n_days needs a positive number of days")
        return cadence.days
    return _DAYS[cadence.kind]


def add_months(local: datetime, months: int) -> datetime:
    """`local` plus whole calendar months, the day clamped to the target month's last day."""
    index = local.year * 12 + (local.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(local.day, calendar.monthrange(year, month)[1])
    return local.replace(year=year, month=month, day=day)


def _to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    return local.replace(tzinfo=tz, fold=0).astimezone(UTC)


class Schedule:
    """The boundaries of one cadence from one anchor in one zone."""

    def __init__(self, cadence: Cadence, anchor: datetime, tz: ZoneInfo | str) -> None:
        self.cadence = cadence
        self.tz = tz if isinstance(tz, ZoneInfo) else zone(tz)
        if anchor.tzinfo is None:
            raise InvalidPeriod("the billing anchor must be timezone-aware")
        # Wall-clock anchor in the customer's zone; boundaries keep its local time of day.
        self.anchor_local = anchor.astimezone(self.tz).replace(tzinfo=None, fold=0)
        self._months = _MONTHS.get(cadence.kind)
        self._days = None if self._months else _step_days(cadence)

    @classmethod
    def aligned(
        cls, cadence: Cadence, alignment: Alignment | str, tz: ZoneInfo | str, anchor: datetime | None = None
    ) -> Schedule:
        """A calendar-aligned schedule, or an anniversary one anchored at `anchor`."""
        tz_info = tz if isinstance(tz, ZoneInfo) else zone(tz)
        if Alignment(alignment) is Alignment.CALENDAR:
            local = CALENDAR_WEEK_ANCHOR if cadence.kind is BillingCadence.WEEKLY else CALENDAR_ANCHOR
            return cls(cadence, _to_utc(local, tz_info), tz_info)
        if anchor is None:
            raise InvalidPeriod("anniversary alignment needs an anchor")
        return cls(cadence, anchor, tz_info)

    def boundary(self, k: int) -> datetime:
        if self._months is not None:
            local = add_months(self.anchor_local, k * self._months)
        else:
            assert self._days is not None
            moved = self.anchor_local.date() + timedelta(days=k * self._days)
            local = datetime.combine(moved, self.anchor_local.time())
        return _to_utc(local, self.tz)

    def _estimate(self, when: datetime) -> int:
        local = when.astimezone(self.tz).replace(tzinfo=None)
        if self._months is not None:
            months = (local.year - self.anchor_local.year) * 12 + local.month - self.anchor_local.month
            return months // self._months
        assert self._days is not None
        return (local.date() - self.anchor_local.date()).days // self._days

    def index_of(self, when: datetime) -> int:
        """k such that boundary(k) <= when < boundary(k + 1)."""
        if when.tzinfo is None:
            raise InvalidPeriod("instants must be timezone-aware")
        k = self._estimate(when)
        while self.boundary(k) > when:
            k -= 1
        while self.boundary(k + 1) <= when:
            k += 1
        return k

    def period(self, k: int) -> Period:
        return Period(self.boundary(k), self.boundary(k + 1))

    def period_containing(self, when: datetime) -> Period:
        return self.period(self.index_of(when))

    def periods(self, start: datetime, end: datetime) -> Iterator[Period]:
        """Every period that overlaps [start, end), in order (they tile time)."""
        if end <= start:
            return
        k = self.index_of(start)
        while True:
            current = self.period(k)
            if current.start >= end:
                return
            yield current
            k += 1


def proration(covered: Period | None, period: Period) -> Fraction:
    """The share of `period` that `covered` covers, by microseconds: exact, in [0, 1]."""
    if covered is None:
        return Fraction(0)
    part = period.overlap(covered.start, covered.end)
    if part is None:
        return Fraction(0)
    return Fraction(_micros(part.duration), _micros(period.duration))


def seconds(span: timedelta) -> Fraction:
    """A duration in seconds, exactly (microseconds kept)."""
    return Fraction(_micros(span), 1_000_000)


def _micros(span: timedelta) -> int:
    return (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds


def local_date(when: datetime, tz: ZoneInfo) -> date:
    return when.astimezone(tz).date()


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return _to_utc(datetime.combine(day, time()), tz)


__all__ = [
    "CALENDAR_ANCHOR",
    "Alignment",
    "InvalidPeriod",
    "Period",
    "Schedule",
    "add_months",
    "cadence_of",
    "local_date",
    "local_midnight",
    "proration",
    "seconds",
    "zone",
]
