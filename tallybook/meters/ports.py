"""What the meters room exchanges with its storage."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from tallybook.filters.model import StringFilter

# Events the materializer reads per page (the driver's cursor; see materializer_sql.events_after).
EVENT_PAGE = 5_000


class UsageRecord(NamedTuple):
    """One projected row, as the materializer produces it. A named tuple, not a dataclass: the
    materializer builds one per (meter, event), and a tuple is several times cheaper to build."""

    meter_key: int
    event_seq: int
    subject: str
    time_us: int
    ingested_us: int
    num: Decimal | None
    ukey: str | None
    groups: dict[str, str] | None
    error: str | None
    voided_us: int | None = None


class StoredEvent(NamedTuple):
    """An event as the materializer reads it (a named tuple for the same reason)."""

    seq: int
    type: str
    subject: str
    time_us: int
    ingested_us: int
    data: Any
    voided_us: int | None = None


@dataclass(frozen=True, slots=True)
class AggregateSpec:
    """What to compute for one usage query, already resolved to store terms."""

    meter_key: int
    aggregation: str
    start_us: int | None
    end_us: int | None
    step_us: int | None  # fixed-length windows
    bounds_us: tuple[int, ...]  # calendar windows (one more than windows)
    subjects: tuple[str, ...] | None  # None: all subjects
    as_of_us: int | None
    group_filters: dict[str, str | tuple[str, ...] | StringFilter]
    group_keys: tuple[str, ...]  # meter groupBy keys to group by
    by_subject: bool
    by_customer: bool
    through_seq: int | None = None  # only events stored with a seq at or below this
    # Also report each group's first and last counted event time (a total without from or to
    # reports the span of its data, as OpenMeter does).
    span: bool = False


@dataclass(frozen=True, slots=True)
class AggregateRow:
    window: int
    subject: str | None
    customer_id: str | None
    groups: tuple[str | None, ...]
    value: Decimal | None
    count: int
    first_us: int | None = None  # set when AggregateSpec.span
    last_us: int | None = None


@dataclass(frozen=True, slots=True)
class UnreadableData:
    """Stands in for event data that cannot be decoded, so one such row fails only itself."""

    reason: str
