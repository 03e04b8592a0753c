"""The embedded default: one SQLite file, WAL journal, fsync on every commit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.sql import Insert

from tallybook import jsonutil
from tallybook.store.base import SqlStore
from tallybook.store.schema import events


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
