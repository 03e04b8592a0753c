"""Meter definitions, usage queries and their answers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from tallybook.clock import format_rfc3339
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


class MeterRebuilding(MeterError):
    """The meter's projection for what was asked is still being built (a new meter, or a groupBy
    key only the changed definition has). `extra` carries the progress and `retryAfterSeconds`."""

    status = 503
    code = "meter-rebuilding"


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """Where a meter's projection stands (GET /api/v1/meters/{idOrSlug}/projection).

    `state` is "ready" (queries answer from the current definition) or "rebuilding" (a new or
    changed definition is being built in the background); `answers_from` says what queries answer
    meanwhile: "current", "previous" (the definition before the change) or "none" (a new meter:
    queries answer 503 until its first build is done). Progress counts stored events: the build
    reads the event log from its start, so `events_processed` is its position in it (every event
    with a lower or equal sequence number is done) and `events_total` the log's end now.
    """

    state: str
    answers_from: str
    generation: int
    events_processed: int
    events_total: int
    started_at: datetime
    ready_at: datetime | None
    eta_seconds: int | None  # at the rate since the build started; None before it has a rate

    @property
    def percent(self) -> float:
        if self.events_total <= 0:
            return 100.0
        return round(min(100.0, 100.0 * self.events_processed / self.events_total), 1)

    def to_json(self) -> dict[str, Any]:
        """The API's shape (GET .../projection, and the `projection` member of a 503 problem)."""
        return {
            "state": self.state,
            "answersFrom": self.answers_from,
            "generation": self.generation,
            "eventsProcessed": self.events_processed,
            "eventsTotal": self.events_total,
            "percent": self.percent,
            "startedAt": format_rfc3339(self.started_at),
            "readyAt": format_rfc3339(self.ready_at) if self.ready_at else None,
            "etaSeconds": self.eta_seconds,
        }


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
    projection: ProjectionStatus | None = None  # set by MeterService.get, list and listing


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
