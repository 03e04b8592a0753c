"""Query-parameter conversions shared by routes."""

from __future__ import annotations

from datetime import datetime

from tallybook.api.problems import Problem
from tallybook.clock import to_micros


def instant_micros(value: datetime | None, name: str) -> int | None:
    """An aware query date-time as epoch microseconds; naive ones are refused (ambiguous zone)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise Problem(
            400, "invalid-parameters", f"{name}: date-times need a time zone offset, e.g. 2026-01-05T10:00:00Z"
        )
    return to_micros(value)
