"""Window and period boundaries in a time zone.

Boundaries are calendar arithmetic in local time (zoneinfo), converted to aware UTC datetimes, so a
DAY window follows local midnight across DST changes (23 or 25 hours long). MINUTE and HOUR windows
are computed on the UTC instant shifted by the local offset, so an hour repeated at a fall-back
change is two separate windows, each one real hour long.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tallybook.clock import to_micros


class WindowSize(StrEnum):
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    YEAR = "YEAR"


# codehooks period names → window sizes.
PERIODS: dict[str, WindowSize] = {
    "hourly": WindowSize.HOUR,
    "daily": WindowSize.DAY,
    "weekly": WindowSize.WEEK,
    "monthly": WindowSize.MONTH,
    "yearly": WindowSize.YEAR,
}

_ALIGNMENT_RULES = {
    WindowSize.MINUTE: "a whole minute (seconds and fractions zero)",
    WindowSize.HOUR: "a whole local hour (minutes, seconds and fractions zero)",
    WindowSize.DAY: "local midnight",
    WindowSize.WEEK: "local midnight on a Monday (ISO weeks)",
    WindowSize.MONTH: "local midnight on the first day of a month",
    WindowSize.YEAR: "local midnight on January 1st",
}

# Calendar windows are enumerated (their boundaries go to SQL), so their number is bounded; the
# service only enumerates the windows between the first and the last event in range. Fixed-length
# windows are bucketed by arithmetic in SQL and answer only the windows that have events: no limit.
MAX_WINDOWS = 1_000_000
# The longest a window of each size can be (DST adds an hour to a day), to refuse a range holding
# too many windows before enumerating any.
_LONGEST = {
    WindowSize.MINUTE: timedelta(minutes=1),
    WindowSize.HOUR: timedelta(hours=1),
    WindowSize.DAY: timedelta(hours=25),
    WindowSize.WEEK: timedelta(days=7, hours=1),
    WindowSize.MONTH: timedelta(days=31, hours=1),
    WindowSize.YEAR: timedelta(days=366, hours=1),
}
# How long a window of each size usually is (to estimate a count without enumerating).
TYPICAL_LENGTH = {
    WindowSize.MINUTE: timedelta(minutes=1),
    WindowSize.HOUR: timedelta(hours=1),
    WindowSize.DAY: timedelta(days=1),
    WindowSize.WEEK: timedelta(days=7),
    WindowSize.MONTH: timedelta(days=30),
    WindowSize.YEAR: timedelta(days=365),
}


class UnknownTimeZone(ValueError):
    pass


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`, or UnknownTimeZone with a message saying what is accepted."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UnknownTimeZone(
            f"{name!r} is not an IANA time zone name; use e.g. UTC, Europe/Budapest, America/New_York"
        ) from None


def alignment_rule(size: WindowSize) -> str:
    return _ALIGNMENT_RULES[size]


def _to_utc(local_naive: datetime, tz: ZoneInfo) -> datetime:
    # fold=0: a local time skipped by a spring-forward change maps to the instant of the change,
    # which is where that local day (or month) really begins.
    return local_naive.replace(tzinfo=tz).astimezone(UTC)


def window_start(size: WindowSize, at: datetime, tz: ZoneInfo) -> datetime:
    """Start (aware UTC) of the `size` window containing the instant `at`."""
    if at.tzinfo is None:
        raise ValueError("window_start needs an aware datetime")
    at = at.astimezone(UTC)
    local = at.astimezone(tz)
    if size in (WindowSize.MINUTE, WindowSize.HOUR):
        into = timedelta(seconds=local.second, microseconds=local.microsecond)
        if size is WindowSize.HOUR:
            into += timedelta(minutes=local.minute)
        return at - into
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None, fold=0)
    if size is WindowSize.DAY:
        start = midnight
    elif size is WindowSize.WEEK:
        start = midnight - timedelta(days=midnight.weekday())
    elif size is WindowSize.MONTH:
        start = midnight.replace(day=1)
    else:
        start = midnight.replace(month=1, day=1)
    return _to_utc(start, tz)


def next_window_start(size: WindowSize, start: datetime, tz: ZoneInfo) -> datetime:
    """The start of the window after the one beginning at `start` (which must be aligned)."""
    start = start.astimezone(UTC)
    if size is WindowSize.MINUTE:
        return start + timedelta(minutes=1)
    if size is WindowSize.HOUR:
        candidate = window_start(size, start + timedelta(hours=1), tz)
        return candidate if candidate > start else start + timedelta(hours=1)
    local = start.astimezone(tz).replace(tzinfo=None)
    local_date = local.date()
    if size is WindowSize.DAY:
        following = local_date + timedelta(days=1)
    elif size is WindowSize.WEEK:
        following = local_date + timedelta(days=7 - local_date.weekday())
    elif size is WindowSize.MONTH:
        following = (local_date.replace(day=1) + timedelta(days=32)).replace(day=1)
    else:
        following = local_date.replace(year=local_date.year + 1, month=1, day=1)
    return _to_utc(datetime(following.year, following.month, following.day), tz)


def is_aligned(size: WindowSize, at: datetime, tz: ZoneInfo) -> bool:
    return window_start(size, at, tz) == at.astimezone(UTC)


def window_end(size: WindowSize, at: datetime, tz: ZoneInfo) -> datetime:
    """End (exclusive) of the window containing `at`."""
    return next_window_start(size, window_start(size, at, tz), tz)


def period_bounds(period: str, at: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of the codehooks period ("hourly", "daily", "weekly", "monthly", "yearly")
    containing the instant `at`, as aware UTC datetimes. Weeks are ISO weeks (Monday to Sunday)."""
    try:
        size = PERIODS[period]
    except KeyError:
        raise ValueError(f"unknown period {period!r}; use one of {', '.join(PERIODS)}") from None
    start = window_start(size, at, tz)
    return start, next_window_start(size, start, tz)


class TooManyWindows(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Windows:
    """The windows covering [start, end): either fixed-length steps or explicit boundaries.

    `bounds_us` has one more entry than there are windows: window i is [bounds[i], bounds[i+1]).
    Fixed-step windows (MINUTE, or a query without a window size) keep only start/step so a year
    of minutes costs nothing; SQL buckets them with integer arithmetic.
    """

    start_us: int
    end_us: int
    step_us: int | None  # set for fixed-length windows
    bounds_us: tuple[int, ...]  # set for calendar windows

    @property
    def count(self) -> int:
        if self.step_us is not None:
            return -(-(self.end_us - self.start_us) // self.step_us)
        return len(self.bounds_us) - 1

    def window(self, index: int) -> tuple[int, int]:
        if self.step_us is not None:
            begin = self.start_us + index * self.step_us
            return begin, min(begin + self.step_us, self.end_us)
        return self.bounds_us[index], self.bounds_us[index + 1]

    def index_of(self, time_us: int) -> int:
        """Window index of an instant inside [start, end) (used by SQLite and reference code)."""
        if self.step_us is not None:
            return (time_us - self.start_us) // self.step_us
        return bisect_right(self.bounds_us, time_us) - 1


def windows_between(size: WindowSize | None, start: datetime, end: datetime, tz: ZoneInfo) -> Windows:
    """Windows of `size` from `start` (aligned) to `end`; without a size, one window [start, end).

    Fixed-length windows (MINUTE; HOUR while the zone's offset stays the same minutes past the hour)
    cost nothing however many there are. Calendar windows are listed; more than MAX_WINDOWS of them
    is TooManyWindows.
    """
    start_us, end_us = to_micros(start), to_micros(end)
    if size is None:
        return Windows(start_us, end_us, max(end_us - start_us, 1), ())
    if size is WindowSize.MINUTE:
        return Windows(start_us, end_us, 60_000_000, ())
    if size is WindowSize.HOUR and _steady_hour_offsets(tz, start, end):
        return Windows(start_us, end_us, 3_600_000_000, ())
    if (end - start) / _LONGEST[size] > MAX_WINDOWS:
        raise TooManyWindows(
            f"the events span more than {MAX_WINDOWS} {size.value} windows in {tz.key}; "
            "narrow from/to or use a larger windowSize"
        )
    bounds: list[int] = [start_us]
    current = start
    while bounds[-1] < end_us:
        if len(bounds) > MAX_WINDOWS:
            raise TooManyWindows(
                f"the events span more than {MAX_WINDOWS} {size.value} windows in {tz.key}; "
                "narrow from/to or use a larger windowSize"
            )
        current = next_window_start(size, current, tz)
        bounds.append(min(to_micros(current), end_us))
    return Windows(start_us, end_us, None, tuple(bounds))


def _steady_hour_offsets(tz: ZoneInfo, start: datetime, end: datetime) -> bool:
    """True when every UTC offset the zone uses in [start, end] is the same number of minutes past a
    whole hour (whole hours, or e.g. always +05:30): local hours are then fixed one-hour steps."""
    if tz.key == "UTC":
        return True
    probe = start.astimezone(UTC)
    end = end.astimezone(UTC)
    past_the_hour = None
    # Offsets change at most a few times a year; sampling daily finds every offset in use.
    while True:
        offset = (probe.astimezone(tz).utcoffset() or timedelta(0)) % timedelta(hours=1)
        if past_the_hour is None:
            past_the_hour = offset
        elif offset != past_the_hour:
            return False
        if probe >= end:
            return True
        probe = min(probe + timedelta(days=1), end)
