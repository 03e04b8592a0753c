"""The embedded default: one SQLite file, WAL journal, fsync on every commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
        """The common case, where every key is new, as one executemany on the sqlite3 connection.

        sqlite3 cannot return rows from executemany, but it sums the rows each execution changed
        into `rowcount`: when that equals the batch size, every event was inserted. Otherwise some
        key was already stored (a retry); the savepoint undoes this attempt and the generic
        INSERT ... RETURNING path names the inserted keys. Retries are rare, so that path's cost
        is paid rarely. Column values are the ones the generic path writes, `data` included: the
        JSON text from jsonutil.dumps, 'null' for an event without data.
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
        try:
            cursor.execute(f"SAVEPOINT {_SAVEPOINT}")
            try:
                cursor.executemany(_INSERT_EVENTS, rows)
                all_new = cursor.rowcount == len(rows)
            except BaseException:
                cursor.execute(f"ROLLBACK TO {_SAVEPOINT}")
                cursor.execute(f"RELEASE {_SAVEPOINT}")
                raise
            if not all_new:
                cursor.execute(f"ROLLBACK TO {_SAVEPOINT}")
            cursor.execute(f"RELEASE {_SAVEPOINT}")
        finally:
            cursor.close()
        if all_new:
            return {(e.source, e.id) for e in batch}
        return super().insert_events(conn, batch, ingested_us)
