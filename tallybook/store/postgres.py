"""PostgreSQL, for when one machine is not enough: several Tallybook processes share it."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, create_engine
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.sql import Insert

from tallybook import jsonutil
from tallybook.ingest.events import Event
from tallybook.store.base import SqlStore
from tallybook.store.schema import events

# Rows per statement. Batches up to this size (every group commit with the default limits, and
# every `tallybook ingest` batch) are one statement, hence one round trip and one key order.
UNNEST_PAGE_SIZE = 50_000

# One statement for a whole page: each column travels as one binary array parameter (%b), and
# unnest zips the arrays back into rows. `seq` is drawn in batch order (the inner query; PostgreSQL
# knows WITH ORDINALITY output is already sorted, so that ORDER BY costs no sort), then the rows
# are inserted in key order. Transactions that share keys (several processes on one database, a
# client retrying on another process) thus take the unique index's entries in the same order and
# wait for each other instead of deadlocking. ON CONFLICT settles duplicates against history and
# against those transactions. "C" collation: byte order, the same in every database and cheap.
_INSERT_EVENTS = """
INSERT INTO events (seq, source, event_id, type, subject, time_us, ingested_us, data, datacontenttype)
SELECT r.seq, r.source, r.event_id, r.type, r.subject, r.time_us, %b, r.data::jsonb, r.datacontenttype
FROM (
    SELECT nextval(%b::regclass) AS seq, u.*
    FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[])
        WITH ORDINALITY AS u(source, event_id, type, subject, time_us, data, datacontenttype, position)
    ORDER BY u.position
) AS r
ORDER BY r.source COLLATE "C", r.event_id COLLATE "C"
ON CONFLICT (source, event_id) DO NOTHING
RETURNING source, event_id
"""


# Whether stored events (by key) have the same content as the given ones, in one statement: the
# keys and content travel as arrays, JSONB compares the data (1.50 equals 1.5, key order aside).
_COMPARE_STORED = """
SELECT k.position - 1,
       e.type = k.type AND e.subject = k.subject AND e.time_us = k.time_us AND e.data = k.data::jsonb
       AND e.datacontenttype IS NOT DISTINCT FROM k.datacontenttype
FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[])
    WITH ORDINALITY AS k(source, event_id, type, subject, time_us, data, datacontenttype, position)
JOIN events AS e ON e.source = k.source AND e.event_id = k.event_id
"""


class PostgresStore(SqlStore):
    dialect_name = "postgresql"

    def __init__(self, url: str) -> None:
        engine = create_engine(
            url,
            json_serializer=jsonutil.dumps,
            json_deserializer=jsonutil.loads,
            pool_size=8,
            max_overflow=8,
            pool_pre_ping=True,
        )
        super().__init__(engine)
        self._seq_sequence: str | None = None  # the sequence behind events.seq, looked up once

    def _insert_ignoring_duplicates(self) -> Insert:
        return insert(events).on_conflict_do_nothing(index_elements=["source", "event_id"])

    def insert_events(self, conn: Connection, batch: Sequence[Event], ingested_us: int) -> set[tuple[str, str]]:
        """Same contract and column values as the generic path (`data` is jsonutil.dumps text cast
        to JSONB, so 'null' for an event without data), in one statement per page instead of
        SQLAlchemy's multi-row VALUES with a bound parameter per cell."""
        if not batch:
            return set()
        driver = conn.connection.driver_connection  # the psycopg connection, in the caller's transaction
        assert driver is not None
        dumps = jsonutil.dumps
        inserted: set[tuple[str, str]] = set()
        with driver.cursor() as cursor:
            if self._seq_sequence is None:
                cursor.execute("SELECT pg_get_serial_sequence('events', 'seq')")
                row = cursor.fetchone()
                assert row is not None and row[0], "events.seq has no sequence"
                self._seq_sequence = str(row[0])
            for start in range(0, len(batch), UNNEST_PAGE_SIZE):
                page = batch[start : start + UNNEST_PAGE_SIZE]
                cursor.execute(
                    _INSERT_EVENTS,
                    (
                        ingested_us,
                        self._seq_sequence,
                        [e.source for e in page],
                        [e.id for e in page],
                        [e.type for e in page],
                        [e.subject for e in page],
                        [e.time_us for e in page],
                        [dumps(e.data) for e in page],
                        [e.datacontenttype for e in page],
                    ),
                )
                inserted.update(cursor.fetchall())
        return inserted

    def compare_stored(self, conn: Connection, batch: Sequence[Event]) -> list[bool | None]:
        """One statement for the whole batch; only rows whose content differs are decoded (`_recheck`)."""
        if not batch:
            return []
        driver = conn.connection.driver_connection
        assert driver is not None
        dumps = jsonutil.dumps
        answers: list[bool | None] = [None] * len(batch)
        with driver.cursor() as cursor:
            for start in range(0, len(batch), UNNEST_PAGE_SIZE):
                page = batch[start : start + UNNEST_PAGE_SIZE]
                cursor.execute(
                    _COMPARE_STORED,
                    (
                        [e.source for e in page],
                        [e.id for e in page],
                        [e.type for e in page],
                        [e.subject for e in page],
                        [e.time_us for e in page],
                        [dumps(e.data) for e in page],
                        [e.datacontenttype for e in page],
                    ),
                )
                for position, same in cursor.fetchall():
                    answers[start + int(position)] = bool(same)
        return self._recheck(conn, batch, answers)
