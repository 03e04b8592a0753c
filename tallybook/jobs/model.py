"""Jobs: what the scheduler keeps about each job, the items a job skipped, and what the period-close
job told each channel. Plain rows; the storage ports (`ports.py`) read and write them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class JobRunRow:
    name: str
    next_run_us: int | None
    last_started_us: int | None
    last_finished_us: int | None
    last_error: str | None
    last_failed_items: int | None = None


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """One failure of one item in one run, as recorded."""

    job: str
    item_kind: str
    item_id: str
    error: str
    context: dict[str, Any]
    seen_us: int


@dataclass(frozen=True, slots=True)
class JobFailureRow:
    job: str
    item_kind: str
    item_id: str
    error: str
    context: dict[str, Any]
    first_seen_us: int
    last_seen_us: int
    count: int


@dataclass(frozen=True, slots=True)
class SentFigures:
    """What one channel was sent about one (subject, period, period start): corrections compare to it."""

    subject: str
    period: str
    period_start_us: int
    channel_id: str
    period_end_us: int
    figures: dict[str, Any]
    event_id: str
