"""The embedded default: one SQLite file, WAL journal, fsync on every commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, create_engine, event
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.sql import Insert

from tallybook import jsonutil
from tallybook.ingest.events import Event
from tallybook.store.base import SqlStore
from tallybook.store.schema import events

_EVENT_COLUMNS = ("source", "event_id", "type", "subject", "time_us", "ingested_us", "data", "datacontenttype")
_INSERT_EVENTS = (
    f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(_EVENT_COLUMNS))}) "
    "ON CONFLICT (source, event_id) DO NOTHING"
)
_SAVEPOINT = "tallybook_insert_events"
# The rows the last insert added, newest first (see insert_events).
_LATEST_KEYS = "SELECT source, event_id FROM events ORDER BY seq DESC LIMIT ?"
# Each element of the JSON array is [source, id, type, subject, time_us, data text, datacontenttype];
# `key` is its position. Stored keys answer whether the content is the same, as text.
_COMPARE_STORED = """
SELECT k.key,
       e.type = json_extract(k.value, '$[2]') AND e.subject = json_extract(k.value, '$[3]')
       AND e.time_us = json_extract(k.value, '$[4]') AND e.data = json_extract(k.value, '$[5]')
       AND e.datacontenttype IS json_extract(k.value, '$[6]')
FROM json_each(?) AS k
JOIN events AS e ON e.source = json_extract(k.value, '$[0]') AND e.event_id = json_extract(k.value, '$[1]')
"""


class SqliteStore(SqlStore):
    dialect_name = "sqlite"

    def __init__(self, url: str) -> None:
        engine = create_engine(
            url,
            json_serializer=jsonutil.dumps,
            json_deserializer=jsonutil.loads,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=8,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is fsynced before it returns, so a 2xx survives power loss, not only
            # a process crash. Group commit keeps the cost to one fsync per batch of requests.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Writers take the lock when they start: a deferred transaction that later upgrades
            # to a writer can fail with SQLITE_BUSY without waiting.
            write = conn.get_execution_options().get("tallybook_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        super().__init__(engine)

    def _insert_ignoring_duplicates(self) -> Insert:
        return insert(events).on_conflict_do_nothing(index_elements=["source", "event_id"])

    def insert_events(self, conn: Connection, batch: Sequence[Event], ingested_us: int) -> set[tuple[str, str]]:
        """One executemany on the sqlite3 connection, new keys and known keys alike.

        ON CONFLICT DO NOTHING skips known keys; sqlite3 sums the rows each execution changed into
        `rowcount`. When that equals the batch size every event was inserted. Otherwise (a retry)
        the rows this statement inserted are the `rowcount` highest seqs: the writer holds the
        write lock (BEGIN IMMEDIATE) and SQLite gives each new row max(seq) + 1, so one indexed
        read names them; no second insert. A savepoint undoes a failing executemany so the
        caller's transaction stays usable. Column values are the ones the generic path writes,
        `data` included: the JSON text from jsonutil.dumps, 'null' for an event without data.
        """
        if not batch:
            return set()
        dumps = jsonutil.dumps
        rows = [
            (e.source, e.id, e.type, e.subject, e.time_us, ingested_us, dumps(e.data), e.datacontenttype) for e in batch
        ]
        driver = conn.connection.driver_connection  # the sqlite3.Connection, in the caller's transaction
        assert driver is not None
        cursor = driver.cursor()
        inserted: set[tuple[str, str]] | None
        try:
            cursor.execute(f"SAVEPOINT {_SAVEPOINT}")
            try:
                cursor.executemany(_INSERT_EVENTS, rows)
                count = cursor.rowcount
                if count == len(rows):
                    inserted = {(e.source, e.id) for e in batch}
                elif count == 0:
                    inserted = set()
                else:
                    cursor.execute(_LATEST_KEYS, (count,))
                    inserted = {(row[0], row[1]) for row in cursor.fetchall()}
                    wanted = {(e.source, e.id) for e in batch}
                    if len(inserted) != count or not inserted <= wanted:
                        inserted = None  # not this statement's rows after all: take the generic path
            except BaseException:
                cursor.execute(f"ROLLBACK TO {_SAVEPOINT}")
                cursor.execute(f"RELEASE {_SAVEPOINT}")
                raise
            if inserted is None:
                cursor.execute(f"ROLLBACK TO {_SAVEPOINT}")
            cursor.execute(f"RELEASE {_SAVEPOINT}")
        finally:
            cursor.close()
        if inserted is None:
            return super().insert_events(conn, batch, ingested_us)
        return inserted

    def compare_stored(self, conn: Connection, batch: Sequence[Event]) -> list[bool | None]:
        """One statement for the whole batch: the keys travel as one JSON array, joined to the
        (source, event_id) index, and the content is compared in SQL as stored text (what
        jsonutil.dumps wrote). Only rows whose text differs are decoded (`_recheck`)."""
        if not batch:
            return []
        dumps = jsonutil.dumps
        try:
            keys = orjson.dumps(
                [[e.source, e.id, e.type, e.subject, e.time_us, dumps(e.data), e.datacontenttype] for e in batch]
            ).decode()
        except (TypeError, orjson.JSONEncodeError):
            return super().compare_stored(conn, batch)
        driver = conn.connection.driver_connection
        assert driver is not None
        cursor = driver.cursor()
        try:
            cursor.execute(_COMPARE_STORED, (keys,))
            answers: list[bool | None] = [None] * len(batch)
            for position, same in cursor.fetchall():
                answers[int(position)] = bool(same)
        finally:
            cursor.close()
        return self._recheck(conn, batch, answers)
