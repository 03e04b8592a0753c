"""Listing stored events with OpenMeter's filters and a cursor (GET /api/v2/events).

Order: newest event time first, and among events with the same time the later-stored first
(`events.seq`). That order is total and never changes for stored events, so a cursor naming the
last item seen, (time, seq), resumes exactly after it: every event is listed once, in order, however
many arrive meanwhile. An event stored after the walk passed its place (a newer time, or an older
time the walk has already passed) is not listed by that walk; one stored further along is.

The cursor is opaque to clients: URL-safe base64 of "<RFC 3339 time>,<seq>", like OpenMeter's
"<RFC 3339 time>,<row id>" (OpenMeter's has second precision; this one is exact to the microsecond).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tallybook.clock import from_micros, to_micros
from tallybook.errors import DomainError
from tallybook.filters.model import InvalidFilter, StringFilter, TimeFilter, parse_string_filter, parse_time_filter
from tallybook.ingest.events import Event, parse_time

DEFAULT_LIMIT = 100
MAX_LIMIT = 100  # OpenMeter's CursorPagination.limit maximum
FILTER_DEPTH = 1  # OpenMeter lets an events filter hold one level of $and / $or
MAX_CUSTOMER_IDS = 100
STRING_FIELDS = ("id", "source", "subject", "type")
TIME_FIELDS = ("time", "ingestedAt")
FILTER_FIELDS = ("id", "source", "subject", "customerId", "type", "time", "ingestedAt")
_MAX_SEQ = 2**63 - 1


class InvalidCursor(DomainError):
    status = 400
    code = "invalid-cursor"


class UnknownCustomers(InvalidFilter):
    """filter.customerId names customers that do not exist (OpenMeter answers 400 too)."""


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """The position of one listed event in the list's order: (event time, seq)."""

    time_us: int
    seq: int

    def encode(self) -> str:
        when = from_micros(self.time_us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return base64.urlsafe_b64encode(f"{when},{self.seq}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """A cursor this API handed out (standard or URL-safe base64, padded or not)."""
        usage = "pass the nextCursor of the previous page as it was given"
        try:
            padded = text.strip().replace("+", "-").replace("/", "_")
            padded += "=" * (-len(padded) % 4)
            decoded = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
        except (ValueError, binascii.Error, UnicodeError):
            raise InvalidCursor(f"cursor: not a cursor of this list; {usage}") from None
        when, _, seq = decoded.partition(",")
        try:
            time_us = to_micros(parse_time(when))
        except ValueError:
            raise InvalidCursor(f"cursor: not a cursor of this list (no time in it); {usage}") from None
        if not seq.isascii() or not seq.isdigit() or not 0 < int(seq) <= _MAX_SEQ:
            raise InvalidCursor(f"cursor: not a cursor of this list (no position in it); {usage}") from None
        return cls(time_us, int(seq))


@dataclass(frozen=True, slots=True)
class EventFilters:
    """OpenMeter's listEventsV2 `filter`: string filters on the keys, time filters on the event time
    and the ingest time, and the customers whose subjects' events to list (ids or keys)."""

    id: StringFilter | None = None
    source: StringFilter | None = None
    subject: StringFilter | None = None
    type: StringFilter | None = None
    time: TimeFilter | None = None
    ingested_at: TimeFilter | None = None
    customer_ids: tuple[str, ...] | None = None
    customers_parameter: str = "filter.customerId.$in"  # what an error about customer_ids names


@dataclass(frozen=True, slots=True)
class EventListQuery:
    filters: EventFilters = field(default_factory=EventFilters)
    after: Cursor | None = None  # list the events that come after this position
    limit: int = DEFAULT_LIMIT
    include_voided: bool = False  # voided events are left out unless asked for (as in v1)


@dataclass(frozen=True, slots=True)
class ListedEvent:
    event: Event
    seq: int
    customer_id: str | None = None  # the customer the subject is attributed to
    voided_us: int | None = None
    void_id: str | None = None
    validation_error: str | None = None  # why a meter cannot count the event

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.event.time_us, self.seq)


@dataclass(frozen=True, slots=True)
class EventPage:
    items: tuple[ListedEvent, ...]
    next_cursor: Cursor | None  # set when the page is full: there may be more


def parse_event_filter(raw: Any) -> EventFilters:
    """The decoded JSON of the `filter` parameter as EventFilters; InvalidFilter names what to fix."""
    if not isinstance(raw, Mapping):
        raise InvalidFilter('filter: must be a JSON object such as {"subject": {"$eq": "customer-1"}}')
    unknown = [name for name in raw if name not in FILTER_FIELDS]
    if unknown:
        raise InvalidFilter(f"filter: unknown field {unknown[0]!r}; filter by {', '.join(FILTER_FIELDS)}")
    strings = {n: parse_string_filter(raw[n], f"filter.{n}", FILTER_DEPTH) for n in STRING_FIELDS if n in raw}
    times = {n: parse_time_filter(raw[n], f"filter.{n}", FILTER_DEPTH) for n in TIME_FIELDS if n in raw}
    customers = _customer_ids(raw["customerId"]) if "customerId" in raw else None
    return EventFilters(
        id=strings.get("id"),
        source=strings.get("source"),
        subject=strings.get("subject"),
        type=strings.get("type"),
        time=times.get("time"),
        ingested_at=times.get("ingestedAt"),
        customer_ids=customers,
    )


def _customer_ids(raw: Any) -> tuple[str, ...]:
    example = '{"$in": ["01G65Z755AFWAKHE12NY0CQ9FH"]}'
    if not isinstance(raw, Mapping) or set(raw) != {"$in"}:
        raise InvalidFilter(f"filter.customerId: must be {example} (customer ids; keys work too)")
    return customer_refs(raw["$in"], "filter.customerId.$in", f"a non-empty array of customer ids, e.g. {example}")


def customer_refs(values: Any, name: str, shape: str) -> tuple[str, ...]:
    """Customer ids (or keys) to list the events of, once each; `name` and `shape` say in an error
    which parameter is wrong and what it should hold."""
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise InvalidFilter(f"{name}: must be {shape}")
    if len(values) > MAX_CUSTOMER_IDS:
        raise InvalidFilter(f"{name}: at most {MAX_CUSTOMER_IDS} customers")
    if any("\x00" in v for v in values):
        raise InvalidFilter(f"{name}: a customer id holds U+0000")
    return tuple(dict.fromkeys(values))


def exact_filters(
    *,
    id: str | None = None,
    source: str | None = None,
    subject: str | None = None,
    type: str | None = None,
    time_from_us: int | None = None,
    time_to_us: int | None = None,
    ingested_from_us: int | None = None,
    ingested_to_us: int | None = None,
    customer_ids: tuple[str, ...] | None = None,
) -> EventFilters:
    """The v1 list's parameters as filters: each string field equal to the value given, and the
    time bounds inclusive at both ends (OpenMeter's listEvents)."""

    def equal(value: str | None) -> StringFilter | None:
        return None if value is None else StringFilter("$eq", value)

    def within(low_us: int | None, high_us: int | None) -> TimeFilter | None:
        bounds = [TimeFilter(op, at) for op, at in (("$gte", low_us), ("$lte", high_us)) if at is not None]
        if len(bounds) < 2:
            return bounds[0] if bounds else None
        return TimeFilter("$and", children=tuple(bounds))

    return EventFilters(
        id=equal(id),
        source=equal(source),
        subject=equal(subject),
        type=equal(type),
        time=within(time_from_us, time_to_us),
        ingested_at=within(ingested_from_us, ingested_to_us),
        customer_ids=customer_ids,
        customers_parameter="customerId",
    )


__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "Cursor",
    "EventFilters",
    "EventListQuery",
    "EventPage",
    "InvalidCursor",
    "ListedEvent",
    "UnknownCustomers",
    "customer_refs",
    "exact_filters",
    "parse_event_filter",
]
