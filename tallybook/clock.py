"""Time sources. Everything that asks "what time is it" takes a Clock so tests never sleep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to (tests, replays)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, when: datetime) -> None:
        self._now = when.astimezone(UTC)


def to_micros(when: datetime) -> int:
    """Microseconds since the Unix epoch; the store's representation of an instant."""
    return (when - EPOCH) // _ONE_MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def format_rfc3339(when: datetime) -> str:
    """UTC, 'Z' suffix, microseconds only when present (what OpenMeter's API returns)."""
    text = when.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")
