"""What the meters room needs from storage, and the records that cross it.

`MeterService` and the `Materializer` never see SQL or a connection: they work in a `reading()` or
`writing()` transaction of a `MeterStorage` (a unit of work), whose transaction offers three
roles: `MeterDefinitions` (meter rows and their projections, i.e. generations), `UsageReader`
(the aggregate queries over the projected usage) and `ProjectionWriter` (what the materializer
reads events with and appends usage rows with). `sql.SqlMeterStorage` is the adapter on the SQL
store; `memory.MemoryMeterDefinitions` holds the definitions role in memory.

Meter and projection rows cross the port as plain dicts of column values (the `meters` and
`meter_projections` columns of tables.py); `definitions.meter_from_row` and `definitions.serve` turn
them into `Meter`s. Times are integer microseconds since the epoch (`tallybook.clock.to_micros`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

from tallybook.filters.model import StringFilter
from tallybook.meters.models import Meter

# usage_key = meter key + generation * 2**32: generation 0 keeps the meter's own key (the rows
# stored before 0019 stay where they are) and no two projections of any meters share a key.
GENERATION_SHIFT = 32


def usage_key_of(meter_key: int, generation: int) -> int:
    return meter_key + (generation << GENERATION_SHIFT)


# The columns of a meter's definition that a projection is built with (meters and meter_projections).
DEFINITION_COLUMNS = ("event_type", "aggregation", "value_property", "group_by", "event_from_us")
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


# (slug, event type, aggregation, valueProperty, groupBy) of a live meter: what ingest checks.
MeterRead = tuple[str, str, str, str | None, Any]


class MeterDefinitions(Protocol):
    """Meter definitions and their projections (generations), in one transaction."""

    def meter_row(self, id_or_slug: str) -> dict[str, Any] | None:
        """The live meter with this id or slug."""
        ...

    def live_meter_rows(self) -> list[dict[str, Any]]:
        """Live meters, by key."""
        ...

    def all_meter_rows(self) -> list[dict[str, Any]]:
        """Live and deleted meters, by key (a slug can appear more than once: deleted meters free theirs)."""
        ...

    def insert_meter(self, row: dict[str, Any]) -> int:
        """Store a new meter; its key."""
        ...

    def update_meter(self, key: int, values: dict[str, Any]) -> None: ...

    def projection_rows(
        self, states: Sequence[str] = ("building", "ready"), meter_key: int | None = None
    ) -> list[dict[str, Any]]:
        """Projections in these states of live meters, with `meter_id` and `meter_slug`, by usage key."""
        ...

    def add_projection(self, meter_key: int, definition: dict[str, Any], now_us: int) -> int:
        """Start building a projection under `definition` (retiring a build still running); its usage key."""
        ...

    def retire_building(self, meter_key: int) -> None: ...

    def retire_projections(self, meter_key: int) -> None:
        """A deleted meter's projections: retired, and the meter no longer served."""
        ...

    def cursors(self, state: str = "ready") -> dict[int, int]:
        """{usage key: cursor} of live meters' projections in `state`."""
        ...

    def visible_max_seq(self) -> int:
        """The highest event seq this transaction sees (0: none)."""
        ...

    def lock_materializer(self) -> None:
        """Take turns with materializers (and definition changes) in other processes."""
        ...

    def set_cursor(self, usage_keys: Sequence[int], seq: int) -> None:
        """Move these projections' cursors forward to `seq` (never back)."""
        ...

    def swap_in(self, usage_keys: Sequence[int], now_us: int) -> None:
        """Make caught-up builds the projections queries read; their meters' previous ones retire."""
        ...

    def has_retired(self) -> bool: ...


class UsageReader(Protocol):
    """The queries over projected usage (`AggregateSpec` carries one usage query in store terms)."""

    def aggregate(self, spec: AggregateSpec) -> list[AggregateRow]:
        """One usage query, in one statement; values exact."""
        ...

    def time_extent(self, meter_key: int, start_us: int | None, end_us: int | None) -> tuple[int, int] | None:
        """(earliest, latest) event time of the projection's rows in [start, end), or None."""
        ...

    def customer_subject_map(self, customer_refs: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        """Customer ids or keys resolved to their subjects: ({subject: customer id}, unknown refs)."""
        ...

    def subjects_in(self, meter_keys: Sequence[int], start_us: int | None, end_us: int | None) -> list[str]:
        """Subjects with counted rows of these projections in [start, end), sorted."""
        ...

    def group_values_in(self, meter_key: int, group_key: str, start_us: int | None, end_us: int | None) -> list[str]:
        """Distinct values of one groupBy key in [start, end), in code point order; missing ones left out."""
        ...

    def distinct_events(
        self, meter_keys: Sequence[int], subject: str, start_us: int, end_us: int, as_of_us: int | None
    ) -> int:
        """How many distinct events these projections count for one subject in [start, end)."""
        ...

    def invalid_counts(self, meter_keys: Sequence[int]) -> dict[int, int]:
        """{usage key: events it could not count (not voided)}."""
        ...

    def validation_errors(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[tuple[str, str]]]:
        """{(source, id): [(meter slug, error)]} for these events that a served meter could not count."""
        ...


class ProjectionWriter(Protocol):
    """What the materializer reads events with and writes projections with."""

    def settled_horizon(self) -> int:
        """The highest seq at or below which every event is committed or never will be."""
        ...

    def events_after(
        self, after_seq: int, up_to_seq: int, types: Iterable[str], page: int = EVENT_PAGE
    ) -> Iterator[list[StoredEvent]]:
        """Events with after_seq < seq <= up_to_seq of these types, in seq order, page by page."""
        ...

    def insert_usage(self, records: Sequence[UsageRecord]) -> None: ...

    def chunk_end(self, after_seq: int, up_to_seq: int, types: Iterable[str], events: int) -> int:
        """The seq of the `events`-th event of these types after `after_seq`, or `up_to_seq` when
        fewer lie in the range: where a chunk of that many events ends."""
        ...

    def projects_in_store(self, meter: Meter) -> bool:
        """Whether the store computes this projection's common-case rows itself (`project_in_store`)."""
        ...

    def project_in_store(self, meter: Meter, after_seq: int, up_to_seq: int) -> tuple[int, list[StoredEvent]] | None:
        """Write the rows of `meter`'s projection (its `key` is the usage key) for events with
        after_seq < seq <= up_to_seq that the store computes exactly as `Projector.project` would;
        return (events of its type considered, the events left for the `Projector`), or None when
        the store could not (nothing written: the caller projects the range itself)."""
        ...

    def purge_retired(self, limit: int) -> int:
        """Delete up to about `limit` rows of one retired projection; how many went (0: none left)."""
        ...


class MeterTransaction(MeterDefinitions, UsageReader, ProjectionWriter, Protocol):
    """One transaction of the meters room's storage."""


class MeterDefinitionStorage(Protocol):
    """The definitions role alone (memory.MemoryMeterDefinitions and SqlMeterStorage both provide it)."""

    def reading(self) -> AbstractContextManager[MeterDefinitions]: ...

    def writing(self) -> AbstractContextManager[MeterDefinitions]: ...


class MeterStorage(Protocol):
    def reading(self) -> AbstractContextManager[MeterTransaction]: ...

    def writing(self) -> AbstractContextManager[MeterTransaction]:
        """A write transaction (on SQLite it takes the write lock up front)."""
        ...
