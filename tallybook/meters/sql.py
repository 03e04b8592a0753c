"""The meters room's storage on the SQL store (ports.MeterStorage): one SQL transaction is one
`MeterTransaction`. The SQL itself is split by job: definitions_sql.py (meters and projections),
usage_sql.py (queries), materializer_sql.py (the projection's hot loop); tables.py declares the tables."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection

from tallybook.meters import definitions_sql, materializer_sql, projection_sql, usage_sql
from tallybook.meters.models import Meter
from tallybook.meters.ports import EVENT_PAGE, AggregateRow, AggregateSpec, StoredEvent, UsageRecord
from tallybook.store.base import SqlStore


class SqlMeterTransaction:
    """The meters room's unit of work on one SQL transaction (see ports.MeterTransaction)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # -- definitions and projections ---------------------------------------------------------------------
    def meter_row(self, id_or_slug: str) -> dict[str, Any] | None:
        return definitions_sql.meter_row(self.conn, id_or_slug)

    def live_meter_rows(self) -> list[dict[str, Any]]:
        return definitions_sql.live_meter_rows(self.conn)

    def all_meter_rows(self) -> list[dict[str, Any]]:
        return definitions_sql.all_meter_rows(self.conn)

    def insert_meter(self, row: dict[str, Any]) -> int:
        return definitions_sql.insert_meter(self.conn, row)

    def update_meter(self, key: int, values: dict[str, Any]) -> None:
        definitions_sql.update_meter(self.conn, key, values)

    def projection_rows(
        self, states: Sequence[str] = ("building", "ready"), meter_key: int | None = None
    ) -> list[dict[str, Any]]:
        return definitions_sql.projection_rows(self.conn, states, meter_key)

    def add_projection(self, meter_key: int, definition: dict[str, Any], now_us: int) -> int:
        return definitions_sql.add_projection(self.conn, meter_key, definition, now_us)

    def retire_building(self, meter_key: int) -> None:
        definitions_sql.retire_building(self.conn, meter_key)

    def retire_projections(self, meter_key: int) -> None:
        definitions_sql.retire_projections(self.conn, meter_key)

    def cursors(self, state: str = "ready") -> dict[int, int]:
        return definitions_sql.cursors(self.conn, state)

    def visible_max_seq(self) -> int:
        return definitions_sql.visible_max_seq(self.conn)

    def lock_materializer(self) -> None:
        materializer_sql.lock_materializer(self.conn)

    # -- usage queries -----------------------------------------------------------------------------------
    def aggregate(self, spec: AggregateSpec) -> list[AggregateRow]:
        return usage_sql.aggregate(self.conn, spec)

    def time_extent(self, meter_key: int, start_us: int | None, end_us: int | None) -> tuple[int, int] | None:
        return usage_sql.time_extent(self.conn, meter_key, start_us, end_us)

    def customer_subject_map(self, customer_refs: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        return usage_sql.customer_subject_map(self.conn, customer_refs)

    def subjects_in(self, meter_keys: Sequence[int], start_us: int | None, end_us: int | None) -> list[str]:
        return usage_sql.subjects_in(self.conn, meter_keys, start_us, end_us)

    def group_values_in(self, meter_key: int, group_key: str, start_us: int | None, end_us: int | None) -> list[str]:
        return usage_sql.group_values_in(self.conn, meter_key, group_key, start_us, end_us)

    def distinct_events(
        self, meter_keys: Sequence[int], subject: str, start_us: int, end_us: int, as_of_us: int | None
    ) -> int:
        return usage_sql.distinct_events(self.conn, meter_keys, subject, start_us, end_us, as_of_us)

    def invalid_counts(self, meter_keys: Sequence[int]) -> dict[int, int]:
        return definitions_sql.invalid_counts(self.conn, meter_keys)

    def validation_errors(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[tuple[str, str]]]:
        return usage_sql.validation_errors(self.conn, keys)

    # -- the materializer ------------------------------------------------------------------------------
    def settled_horizon(self) -> int:
        return materializer_sql.settled_horizon(self.conn)

    def events_after(
        self, after_seq: int, up_to_seq: int, types: Iterable[str], page: int = EVENT_PAGE
    ) -> Iterator[list[StoredEvent]]:
        return materializer_sql.events_after(self.conn, after_seq, up_to_seq, types, page)

    def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        materializer_sql.insert_usage(self.conn, records)

    def chunk_end(self, after_seq: int, up_to_seq: int, types: Iterable[str], events: int) -> int:
        return materializer_sql.chunk_end(self.conn, after_seq, up_to_seq, types, events)

    def projects_in_store(self, meter: Meter) -> bool:
        return projection_sql.can_project(self.conn, meter)

    def project_in_store(self, meter: Meter, after_seq: int, up_to_seq: int) -> tuple[int, list[StoredEvent]] | None:
        return projection_sql.project(self.conn, meter, after_seq, up_to_seq)

    def set_cursor(self, usage_keys: Sequence[int], seq: int) -> None:
        materializer_sql.set_cursor(self.conn, usage_keys, seq)

    def swap_in(self, usage_keys: Sequence[int], now_us: int) -> None:
        definitions_sql.swap_in(self.conn, usage_keys, now_us)

    def has_retired(self) -> bool:
        return definitions_sql.has_retired(self.conn)

    def purge_retired(self, limit: int) -> int:
        return definitions_sql.purge_retired(self.conn, limit)


class SqlMeterStorage:
    """The meters room's storage on the SQL store (ports.MeterStorage)."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    @contextmanager
    def reading(self) -> Iterator[SqlMeterTransaction]:
        with self.store.read() as conn:
            yield SqlMeterTransaction(conn)

    @contextmanager
    def writing(self) -> Iterator[SqlMeterTransaction]:
        with self.store.write() as conn:
            yield SqlMeterTransaction(conn)


__all__ = ["SqlMeterStorage", "SqlMeterTransaction"]
