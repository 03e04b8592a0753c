"""What the void service needs from storage: transactions that read and stamp events.

A void must be all or nothing and must not race the materializer, so the service runs each void
in one `writing()` transaction (a unit of work) whose first step takes the materializer's lock.
`sql.SqlVoidStorage` is the adapter on the event store; it inserts a corrected event through the
ingest path's own insert, so an amend stores it exactly as ingest would.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager
from typing import Any, Protocol

from tallybook.ingest.events import Event
from tallybook.voids.model import EventKey, Target, VoidFilter


class VoidTransaction(Protocol):
    # -- reads ----------------------------------------------------------------------------------------
    def targets_by_keys(self, keys: Sequence[EventKey]) -> dict[EventKey, Target]: ...

    def targets_by_filter(self, flt: VoidFilter, limit: int | None = None) -> list[Target]:
        """Unvoided events the filter selects, in storage order."""
        ...

    def count_by_filter(self, flt: VoidFilter) -> int: ...

    def record_row(self, void_id: str) -> dict[str, Any] | None: ...

    def record_rows(self, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]: ...

    def voided_keys(self, void_id: str, limit: int) -> list[EventKey]: ...

    # -- writes (only in a `writing()` transaction) -----------------------------------------------------
    def lock_materializer(self) -> None:
        """Make the materializer wait until this transaction ends (on every engine)."""
        ...

    def live_meter_reads(self) -> list[tuple[str, str, str, str | None, Any]]:
        """(slug, event type, aggregation, valueProperty, groupBy) of every live meter."""
        ...

    def stamp_events(self, seqs: Sequence[int], void_id: str, voided_us: int) -> int:
        """Stamp the unvoided events among `seqs`; how many were stamped."""
        ...

    def mark_usage_voided(self, voided: Sequence[tuple[int, str, str, int]], voided_us: int) -> None:
        """Stamp the projected meter usage rows of (seq, type, subject, time_us)."""
        ...

    def insert_record(self, row: dict[str, Any]) -> None: ...

    def insert_events(self, batch: Sequence[Event], ingested_us: int) -> AbstractSet[tuple[str, str]]:
        """Store events as ingest does; the keys that were new."""
        ...


class VoidStorage(Protocol):
    def reading(self) -> AbstractContextManager[VoidTransaction]: ...

    def writing(self) -> AbstractContextManager[VoidTransaction]: ...


__all__ = ["VoidStorage", "VoidTransaction"]
