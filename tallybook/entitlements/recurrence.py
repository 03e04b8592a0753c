"""Recurring periods (usage periods, grant recurrences) and grant expirations, in a time zone.

A recurrence is an interval (HOUR, DAY, WEEK, MONTH, YEAR, or a multiple of one) and an anchor
instant; its boundaries are anchor + k * interval for every integer k. DAY, WEEK, MONTH and YEAR
step the anchor's wall-clock time in the customer's time zone, so a monthly period that starts at
local midnight on the 1st stays on local midnight across DST changes. A month step keeps the
anchor's day of month, clamped to the month's length (an anchor on the 31st gives Feb 28 or 29,
then Mar 31 again: each boundary is computed from the anchor, never from the previous boundary).
HOUR steps are real hours.

Everything the credit engine keys on is at one-minute resolution, as OpenMeter's: anchors, grant
effective times and resets are truncated (or ceiled) to the minute by the service.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

UNITS = ("HOUR", "DAY", "WEEK", "MONTH", "YEAR")
APPROX_SECONDS = {"HOUR": 3600, "DAY": 86400, "WEEK": 604800, "MONTH": 2629746, "YEAR": 31556952}
_ISO_UNITS = {"Y": "YEAR", "M": "MONTH", "W": "WEEK", "D": "DAY"}
_ISO_PATTERN = re.compile(r"^P(?:(\d+)([YMWD])|T(\d+)H)$")
MAX_COUNT = 1000
ONE_MINUTE = timedelta(minutes=1)


class InvalidInterval(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Interval:
    unit: str  # one of UNITS
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Interval:
        """`DAY`, `WEEK`, `MONTH`, `YEAR` (OpenMeter's enum) or an ISO 8601 duration of one unit:
        `P1D`, `P2W`, `P3M`, `P1Y`, `PT6H`."""
        if text in ("DAY", "WEEK", "MONTH", "YEAR"):
            return cls(text, 1)
        match = _ISO_PATTERN.match(text)
        if match is None:
            raise InvalidInterval(
                f"interval {text!r} must be DAY, WEEK, MONTH, YEAR or an ISO 8601 duration of one unit "
                "such as P1D, P2W, P3M, P1Y or PT6H"
            )
        if match.group(3) is not None:
            unit, count = "HOUR", int(match.group(3))
        else:
            unit, count = _ISO_UNITS[match.group(2)], int(match.group(1))
        if not 1 <= count <= MAX_COUNT:
            raise InvalidInterval(f"interval {text!r}: the count must be between 1 and {MAX_COUNT}")
        return cls(unit, count)

    @property
    def name(self) -> str:
        """OpenMeter's `interval`: the enum value for one unit, else the ISO duration."""
        if self.count == 1 and self.unit != "HOUR":
            return self.unit
        return self.iso

    @property
    def iso(self) -> str:
        if self.unit == "HOUR":
            return f"PT{self.count}H"
        return f"P{self.count}{self.unit[0]}"


def _add_months(local: datetime, months: int) -> datetime:
    index = local.year * 12 + (local.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    if not 1 <= year <= 9999:
        raise OverflowError("date out of range")
    day = min(local.day, calendar.monthrange(year, month)[1])
    return local.replace(year=year, month=month, day=day)


def shift(at: datetime, unit: str, steps: int, tz: ZoneInfo) -> datetime:
    """`at` moved by `steps` units: real hours for HOUR, the local wall clock for the others."""
    if unit == "HOUR":
        return at + timedelta(hours=steps)
    local = at.astimezone(tz).replace(tzinfo=None)
    if unit == "DAY":
        moved = local + timedelta(days=steps)
    elif unit == "WEEK":
        moved = local + timedelta(days=7 * steps)
    elif unit == "MONTH":
        moved = _add_months(local, steps)
    else:
        moved = _add_months(local, 12 * steps)
    # fold=0: a local time skipped by a spring-forward change maps to the instant of the change.
    return moved.replace(tzinfo=tz, fold=0).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Recurrence:
    interval: Interval
    anchor: datetime  # aware

    def boundary(self, k: int, tz: ZoneInfo) -> datetime:
        return shift(self.anchor, self.interval.unit, k * self.interval.count, tz)

    def _index_at_or_before(self, t: datetime, tz: ZoneInfo) -> int:
        """The largest k with boundary(k) <= t."""
        approx = APPROX_SECONDS[self.interval.unit] * self.interval.count
        k = int((t - self.anchor).total_seconds() // approx)
        while self.boundary(k, tz) > t:
            k -= 1
        while self.boundary(k + 1, tz) <= t:
            k += 1
        return k

    def period_at(self, t: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """[start, end) of the recurrence period containing `t`."""
        k = self._index_at_or_before(t, tz)
        return self.boundary(k, tz), self.boundary(k + 1, tz)

    def next_after(self, t: datetime, tz: ZoneInfo) -> datetime:
        """The first boundary strictly after `t`."""
        return self.boundary(self._index_at_or_before(t, tz) + 1, tz)

    def between(self, after: datetime, through: datetime, tz: ZoneInfo, limit: int = 100_000) -> list[datetime]:
        """Boundaries in (after, through]."""
        found: list[datetime] = []
        if through <= after:
            return found
        k = self._index_at_or_before(after, tz) + 1
        while len(found) < limit:
            at = self.boundary(k, tz)
            if at > through:
                break
            found.append(at)
            k += 1
        return found


def expiry(effective_at: datetime, duration: str, count: int, tz: ZoneInfo) -> datetime:
    """When a grant effective at `effective_at` with `expiration: {duration, count}` expires."""
    return shift(effective_at, duration, count, tz)


def floor_minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def ceil_minute(at: datetime) -> datetime:
    floor = floor_minute(at)
    return floor if floor == at else floor + ONE_MINUTE
