"""Meter definitions, usage queries and their answers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from tallybook.errors import DomainError
from tallybook.filters.model import StringFilter
from tallybook.meters.windows import WindowSize

SLUG_PATTERN = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
GROUP_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
RESERVED_GROUP_KEYS = frozenset(("subject", "customer_id"))


class Aggregation(StrEnum):
    SUM = "SUM"
    COUNT = "COUNT"
    AVG = "AVG"
    MIN = "MIN"
    MAX = "MAX"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    LATEST = "LATEST"
    FIRST = "FIRST"

    @property
    def needs_value(self) -> bool:
        return self is not Aggregation.COUNT

    @property
    def numeric(self) -> bool:
        """Whether the extracted value must be a number (UNIQUE_COUNT counts any scalar)."""
        return self not in (Aggregation.COUNT, Aggregation.UNIQUE_COUNT)


class MeterError(DomainError):
    """Base for meter errors; `code` is the problem code the API answers with."""

    status = 400
    code = "invalid-meter"


class InvalidMeter(MeterError):
    status = 400
    code = "invalid-meter"


class InvalidQuery(MeterError):
    status = 400
    code = "invalid-query"


class MeterNotFound(MeterError):
    status = 404
    code = "meter-not-found"


class MeterConflict(MeterError):
    status = 409
    code = "meter-conflict"


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """What a user defines (API body or tallybook.yaml entry), validated by `MeterService`."""

    slug: str
    event_type: str
    aggregation: Aggregation
    name: str | None = None
    description: str | None = None
    value_property: str | None = None
    group_by: dict[str, str] = field(default_factory=dict)
    event_from: datetime | None = None
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Meter:
    id: str  # ULID
    key: int  # internal number; the projection refers to it
    slug: str
    name: str
    description: str | None
    event_type: str
    aggregation: Aggregation
    value_property: str | None
    group_by: dict[str, str]
    event_from: datetime | None
    metadata: dict[str, str] | None
    managed_by: str  # "api" or "config"
    created_at: datetime
    updated_at: datetime
    locked_at: datetime | None  # set once an invoice billed this meter; see MeterService.lock
    invalid_events: int = 0  # events of this type whose value could not be used
    deleted_at: datetime | None = None  # deleted meters are listed only when asked for


# listMeters' orderBy values, in OpenMeter's names ("key" is the slug).
METER_ORDERS = ("key", "name", "aggregation", "createdAt", "updatedAt")


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """One usage question. Without `from_` it starts at the meter's first event; without `to` it
    includes every event after `from_`, future-dated ones too (OpenMeter's semantics). Billing and
    period close always give both, so their figures are fixed by the period, not by the data."""

    meter: str  # id or slug
    from_: datetime | None = None  # inclusive
    to: datetime | None = None  # exclusive
    window_size: WindowSize | None = None
    window_time_zone: str = "UTC"
    subjects: tuple[str, ...] = ()
    customer_ids: tuple[str, ...] = ()
    # groupBy key → value (or values, any of which matches), or an OpenMeter filter object
    # (advancedMeterGroupByFilters; tallybook/filters)
    filter_group_by: dict[str, str | tuple[str, ...] | StringFilter] = field(default_factory=dict)
    group_by: tuple[str, ...] = ()
    as_of: datetime | None = None  # only events ingested at or before this instant
    # Only events stored with a seq at or below this (an ingest commit watermark, as invoices record
    # it): with `as_of`, a cutoff that in-flight transactions cannot move (tallybook/billing/cutoff.py).
    through_seq: int | None = None


@dataclass(frozen=True, slots=True)
class UsageRow:
    value: Decimal
    window_start: datetime
    window_end: datetime
    subject: str | None
    customer_id: str | None
    group_by: dict[str, str | None]


@dataclass(frozen=True, slots=True)
class UsageResult:
    """A query's rows, with from/to/windowSize as asked (None when the caller left them out, as
    OpenMeter echoes only what was sent)."""

    from_: datetime | None
    to: datetime | None
    window_size: WindowSize | None
    rows: list[UsageRow]
    meter_slug: str = ""


@dataclass(frozen=True, slots=True)
class PeriodUsage:
    """One subject's usage in a period, codehooks style.

    `events` maps a key to the meter's value: the meter's eventType when it is the only meter on
    that event type, else the meter's slug. `event_counts` counts the events behind each value
    (events with an unusable value are not counted); `event_count` counts each event once.
    """

    subject: str
    start: datetime
    end: datetime
    events: dict[str, Decimal]
    event_counts: dict[str, int]
    event_count: int
