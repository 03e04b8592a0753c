"""The ingest writer's storage on the SQL store: a kept connection per writer thread (a pool
checkout per group commit costs more than the commit's own statements on SQLite) and the store's
event-log statements in its transactions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection

from tallybook.ingest.events import Event
from tallybook.ingest.ports import Insertion, MeterReadRow
from tallybook.meters import materializer_sql
from tallybook.store.base import SqlStore


class SqlEventWriteTransaction:
    def __init__(self, store: SqlStore, conn: Connection) -> None:
        self.store = store
        self.conn = conn

    @property
    def connection(self) -> Connection:
        return self.conn

    def insert_events(self, batch: Sequence[Event], ingested_us: int) -> Insertion:
        return Insertion(*self.store.insert_new_events(self.conn, batch, ingested_us))

    def compare_stored(self, batch: Sequence[Event]) -> list[bool | None]:
        return self.store.compare_stored(self.conn, batch)

    def live_meters_fingerprint(self) -> list[tuple[Any, ...]]:
        return materializer_sql.live_meters_fingerprint(self.conn)

    def live_meter_reads(self) -> list[MeterReadRow]:
        return materializer_sql.live_meter_reads(self.conn)


class SqlEventWriter:
    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.conn = store.writer_connection()

    @contextmanager
    def transaction(self) -> Iterator[SqlEventWriteTransaction]:
        with self.conn.begin():
            yield SqlEventWriteTransaction(self.store, self.conn)

    def close(self) -> None:
        self.conn.close()

    @property
    def closed(self) -> bool:
        return self.conn.closed


class SqlEventLog:
    """ports.EventLog on the SQL store."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def writer(self) -> SqlEventWriter:
        return SqlEventWriter(self.store)


__all__ = ["SqlEventLog"]
