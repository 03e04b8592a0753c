"""What the ingest writer needs from storage: a long-lived connection per writer thread, and in each
of its transactions the event log's insert and duplicate check plus what the live meters read
(`sql.SqlEventLog` on SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol

from tallybook.ingest.events import Event

# (slug, event type, aggregation, valueProperty, groupBy) of a live meter: what ingest checks values for.
MeterReadRow = tuple[str, str, str, str | None, Any]


class Insertion(NamedTuple):
    inserted: AbstractSet[tuple[str, str]]  # the keys inserted
    # For each event not inserted, in batch order, what `compare_stored` would answer, when the
    # store compared them on the way (a retried batch, on SQLite); else None: ask compare_stored.
    verdicts: list[bool | None] | None


class EventWriteTransaction(Protocol):
    @property
    def connection(self) -> Any:
        """The open transaction itself, for the ingest-time projection (meters/inline_sql.py)."""
        ...

    def insert_events(self, batch: Sequence[Event], ingested_us: int) -> Insertion:
        """Insert the events whose (source, id) is new (the batch repeats no key)."""
        ...

    def compare_stored(self, batch: Sequence[Event]) -> list[bool | None]:
        """For each event: whether the stored event with its key has the same content (None: no
        stored event is visible to this transaction)."""
        ...

    def live_meters_fingerprint(self) -> list[tuple[Any, ...]]:
        """A cheap read that changes whenever a live meter's definition does."""
        ...

    def live_meter_reads(self) -> list[MeterReadRow]: ...


class EventWriter(Protocol):
    """One writer thread's connection: its transactions, one after another."""

    def transaction(self) -> AbstractContextManager[EventWriteTransaction]: ...

    def close(self) -> None: ...

    @property
    def closed(self) -> bool: ...


class EventLog(Protocol):
    def writer(self) -> EventWriter: ...


__all__ = ["EventLog", "EventWriteTransaction", "EventWriter", "Insertion", "MeterReadRow"]
