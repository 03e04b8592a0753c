"""PostgreSQL, for when one machine is not enough: several Tallybook processes share it."""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from sqlalchemy import Connection, create_engine
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.sql import Insert

from tallybook import jsonutil
from tallybook.ingest.events import Event
from tallybook.store.base import EventKey, SqlStore
from tallybook.store.schema import events

# Rows per statement. Batches up to this size (every group commit with the default limits, and
# every `tallybook ingest` batch) are one statement, hence one round trip and one key order.
UNNEST_PAGE_SIZE = 50_000

# One statement for a whole page: the rows travel as one JSONB array of
# [source, id, type, subject, time_us, data, datacontenttype] (one orjson call in Python, one parse
# in PostgreSQL, instead of seven Python lists and a text per event's data), and
# jsonb_array_elements turns it back into rows. `data` is the element's JSONB, which is what casting
# jsonutil.dumps's text to jsonb gives. `seq` is drawn in batch order (the inner query; PostgreSQL
# knows WITH ORDINALITY output is already sorted, so that ORDER BY costs no sort), then the rows
# are inserted in key order. Transactions that share keys (several processes on one database, a
# client retrying on another process) thus take the unique index's entries in the same order and
# wait for each other instead of deadlocking. ON CONFLICT settles duplicates against history and
# against those transactions. "C" collation: byte order, the same in every database and cheap.
_INSERT_EVENTS = """
INSERT INTO events (seq, source, event_id, type, subject, time_us, ingested_us, data, datacontenttype)
SELECT r.seq, r.source, r.event_id, r.type, r.subject, r.time_us, %b, r.data, r.datacontenttype
FROM (
    SELECT nextval(%b::regclass) AS seq, u.e ->> 0 AS source, u.e ->> 1 AS event_id, u.e ->> 2 AS type,
           u.e ->> 3 AS subject, (u.e ->> 4)::bigint AS time_us, u.e -> 5 AS data,
           u.e ->> 6 AS datacontenttype
    FROM jsonb_array_elements(%b::jsonb) WITH ORDINALITY AS u(e, position)
    ORDER BY u.position
) AS r
ORDER BY r.source COLLATE "C", r.event_id COLLATE "C"
ON CONFLICT (source, event_id) DO NOTHING
RETURNING source, event_id
"""


# Whether stored events (by key) have the same content as the given ones, in one statement: the
# rows travel as one JSONB array as above; JSONB compares the data (1.50 equals 1.5, key order aside).
_COMPARE_STORED = """
SELECT k.position - 1,
       e.type = k.e ->> 2 AND e.subject = k.e ->> 3 AND e.time_us = (k.e ->> 4)::bigint AND e.data = k.e -> 5
       AND e.datacontenttype IS NOT DISTINCT FROM k.e ->> 6
FROM jsonb_array_elements(%b::jsonb) WITH ORDINALITY AS k(e, position)
JOIN events AS e ON e.source = k.e ->> 0 AND e.event_id = k.e ->> 1
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

    def insert_events(self, conn: Connection, batch: Sequence[Event], ingested_us: int) -> AbstractSet[EventKey]:
        """Same contract and column values as the generic path (`data` as JSONB, so JSON null for an
        event without data), in one statement per page instead of SQLAlchemy's multi-row VALUES
        with a bound parameter per cell."""
        if not batch:
            return set()
        driver = conn.connection.driver_connection  # the psycopg connection, in the caller's transaction
        assert driver is not None
        inserted: set[tuple[str, str]] = set()
        with driver.cursor() as cursor:
            if self._seq_sequence is None:
                cursor.execute("SELECT pg_get_serial_sequence('events', 'seq')")
                row = cursor.fetchone()
                assert row is not None and row[0], "events.seq has no sequence"
                self._seq_sequence = str(row[0])
            for start in range(0, len(batch), UNNEST_PAGE_SIZE):
                page = batch[start : start + UNNEST_PAGE_SIZE]
                cursor.execute(_INSERT_EVENTS, (ingested_us, self._seq_sequence, _rows_json(page)))
                inserted.update(cursor.fetchall())
        return inserted

    def compare_stored(self, conn: Connection, batch: Sequence[Event]) -> list[bool | None]:
        """One statement for the whole batch; only rows whose content differs are decoded (`_recheck`)."""
        if not batch:
            return []
        driver = conn.connection.driver_connection
        assert driver is not None
        answers: list[bool | None] = [None] * len(batch)
        with driver.cursor() as cursor:
            for start in range(0, len(batch), UNNEST_PAGE_SIZE):
                page = batch[start : start + UNNEST_PAGE_SIZE]
                cursor.execute(_COMPARE_STORED, (_rows_json(page),))
                for position, same in cursor.fetchall():
                    answers[start + int(position)] = bool(same)
        return self._recheck(conn, batch, answers)


def _rows_json(page: Sequence[Event]) -> str:
    """The page as one JSON array of [source, id, type, subject, time_us, data, datacontenttype]."""
    rows = [(e.source, e.id, e.type, e.subject, e.time_us, e.data, e.datacontenttype) for e in page]
    return jsonutil.dumpb(rows).decode()
