"""The embedded default: one SQLite file, WAL journal, fsync on every commit."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import Connection, create_engine, event
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.sql import Insert

from tallybook import jsonutil
from tallybook.ingest.events import Event
from tallybook.store.base import BatchKeys, EventKey, SqlStore
from tallybook.store.schema import events

_EVENT_COLUMNS = ("source", "event_id", "type", "subject", "time_us", "ingested_us", "data", "datacontenttype")
_INSERT_EVENTS = (
    f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(_EVENT_COLUMNS))}) "
    "ON CONFLICT (source, event_id) DO NOTHING"
)
# The same insert for a whole batch in one statement: the rows travel as one JSON array of
# [source, id, type, subject, time_us, data, datacontenttype] (data embedded as JSON). One call into
# SQLite, which runs it without holding Python's GIL, instead of one bound row per step (see
# insert_events). `value -> 5` is the data's JSON text as SQLite renders it, which is the text
# jsonutil.dumps writes: both write compact JSON and SQLite copies numbers and strings verbatim.
# "WHERE true" tells SQLite's parser that ON CONFLICT belongs to the INSERT, not to a join.
_INSERT_EVENTS_JSON = (
    f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) "
    "SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, ?, value -> 5, value ->> 6 "
    "FROM json_each(?) WHERE true ON CONFLICT (source, event_id) DO NOTHING"
)
# The -> and ->> operators came with SQLite 3.38; older libraries take the executemany path.
_HAS_JSON_ARROWS = sqlite3.sqlite_version_info >= (3, 38, 0)
_SAVEPOINT = "tallybook_insert_events"
# Whether the first and the last key of a batch are both stored: then it is most likely a retried
# batch (see insert_new_events).
_BOTH_STORED = (
    "SELECT EXISTS (SELECT 1 FROM events WHERE source = ? AND event_id = ?) "
    "AND EXISTS (SELECT 1 FROM events WHERE source = ? AND event_id = ?)"
)
# The rows the last insert added, newest first (see insert_events).
_LATEST_KEYS = "SELECT source, event_id FROM events ORDER BY seq DESC LIMIT ?"
# Each element of the JSON array is [source, id, type, subject, time_us, data, datacontenttype], data
# embedded as JSON (as _INSERT_EVENTS_JSON reads it); `key` is its position. A stored event has the
# same content when the same element rebuilt from its columns is the same JSON text: one rendering
# per row instead of reading each field out of the element. Equal text means equal content; text
# that differs (a string SQLite escapes otherwise than orjson) is settled by `_recheck`.
# Only the exceptions come back: a row per element whose stored event differs (0) or is missing
# (NULL); every element not named is a retry with the same content. A retried batch is therefore
# one step of the statement, not one per event: the sqlite3 module lets go of the GIL around every
# step and must take it back each time, which under load waits behind the event loop's thread.
_COMPARE_STORED = """
SELECT position, same FROM (
  SELECT k.key AS position,
         CASE WHEN e.source IS NULL THEN NULL ELSE
           json_array(e.source, e.event_id, e.type, e.subject, e.time_us, json(e.data), e.datacontenttype) = k.value
         END AS same
  FROM json_each(?) AS k
  LEFT JOIN events AS e ON e.source = k.value ->> 0 AND e.event_id = k.value ->> 1
) WHERE same IS NOT 1
"""
# The same before SQLite 3.38 (no arrow operators): data travels as its JSON text.
_COMPARE_STORED_TEXT = """
SELECT position, same FROM (
  SELECT k.key AS position,
         CASE WHEN e.source IS NULL THEN NULL ELSE
           e.type = json_extract(k.value, '$[2]') AND e.subject = json_extract(k.value, '$[3]')
           AND e.time_us = json_extract(k.value, '$[4]') AND e.data = json_extract(k.value, '$[5]')
           AND e.datacontenttype IS json_extract(k.value, '$[6]')
         END AS same
  FROM json_each(?) AS k
  LEFT JOIN events AS e
    ON e.source = json_extract(k.value, '$[0]') AND e.event_id = json_extract(k.value, '$[1]')
) WHERE same IS NOT 1
"""


class WriteTurns:
    """The writers of this process waiting for SQLite's write lock, so that the ingest writer lets
    them take it first.

    The ingest writer starts its next transaction as soon as the last one commits. A writer
    waiting for the lock meanwhile (a meter's build, a query's catch-up, an API call) is asleep in
    SQLite's busy handler, which retries after 1, 2, 5, 10, ... up to 100 ms, and almost always
    finds the lock taken again: under full ingest a new meter stayed "rebuilding" for seconds. Now
    the ingest writer waits before its BEGIN while anyone here is waiting, until they have the lock
    (at most `LIMIT`, so a writer stuck elsewhere cannot stop ingest). Writers in other processes
    still rely on the busy handler alone.
    """

    LIMIT = 0.1  # seconds; the busy handler's longest sleep

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting = 0

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around a BEGIN IMMEDIATE of any writer but the ingest writer."""
        with self._changed:
            self._waiting += 1
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._waiting -= 1
                self._changed.notify_all()

    def let_waiting_go_first(self) -> None:
        """Before the ingest writer's BEGIN IMMEDIATE."""
        if self._waiting:  # read without the lock: the common answer, no one, costs nothing
            with self._changed:
                self._changed.wait_for(lambda: self._waiting == 0, timeout=self.LIMIT)


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

        self.write_turns = WriteTurns()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Writers take the lock when they start: a deferred transaction that later upgrades
            # to a writer can fail with SQLITE_BUSY without waiting.
            # Straight to the sqlite3 connection: this runs for every transaction (every group
            # commit), and SQLAlchemy's statement machinery costs more than the BEGIN itself.
            options = conn.get_execution_options()
            driver = conn.connection.driver_connection
            assert driver is not None
            if not options.get("tallybook_write", False):
                driver.execute("BEGIN")
            elif options.get("tallybook_yields", False):
                self.write_turns.let_waiting_go_first()
                driver.execute("BEGIN IMMEDIATE")
            else:
                with self.write_turns.waiting():
                    driver.execute("BEGIN IMMEDIATE")

        super().__init__(engine)

    def _insert_ignoring_duplicates(self) -> Insert:
        return insert(events).on_conflict_do_nothing(index_elements=["source", "event_id"])

    def insert_events(self, conn: Connection, batch: Sequence[Event], ingested_us: int) -> AbstractSet[EventKey]:
        """One statement on the sqlite3 connection, new keys and known keys alike.

        ON CONFLICT DO NOTHING skips known keys and `rowcount` counts the rows inserted. When that
        equals the batch size every event was inserted. Otherwise (a retry) the rows this
        statement inserted are the `rowcount` highest seqs: the writer holds the write lock
        (BEGIN IMMEDIATE) and SQLite gives each new row max(seq) + 1 (in batch order), so one
        indexed read names them; no second insert. A savepoint undoes a failing statement so the
        caller's transaction stays usable. Column values are the ones the generic path writes,
        `data` included: the JSON text from jsonutil.dumps, 'null' for an event without data.

        The statement is _INSERT_EVENTS_JSON: the batch encoded by orjson in one call, then one
        sqlite3 call that holds no GIL while it inserts, so the event loop's thread parses the next
        requests meanwhile. A batch orjson cannot encode, or SQLite's JSON reader cannot read (data
        nested past its depth limit), goes through executemany, one bound row at a time.
        """
        if not batch:
            return set()
        payload = _rows_json(batch) if _HAS_JSON_ARROWS else None
        driver = conn.connection.driver_connection  # the sqlite3.Connection, in the caller's transaction
        assert driver is not None
        cursor = driver.cursor()
        inserted: AbstractSet[EventKey] | None
        try:
            cursor.execute(f"SAVEPOINT {_SAVEPOINT}")
            try:
                count = self._insert_rows(cursor, batch, ingested_us, payload)
                if count == len(batch):
                    inserted = BatchKeys(batch)
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

    @staticmethod
    def _insert_rows(cursor: sqlite3.Cursor, batch: Sequence[Event], ingested_us: int, payload: str | None) -> int:
        """Insert the batch (inside the caller's savepoint); the number of rows inserted."""
        if payload is not None:
            try:
                cursor.execute(_INSERT_EVENTS_JSON, (ingested_us, payload))
                return cursor.rowcount
            except sqlite3.OperationalError as exc:
                if "JSON" not in str(exc):
                    raise
                # Nothing was inserted (a statement is atomic); the rows go one by one below.
        dumps = jsonutil.dumps
        rows = [
            (e.source, e.id, e.type, e.subject, e.time_us, ingested_us, dumps(e.data), e.datacontenttype) for e in batch
        ]
        cursor.executemany(_INSERT_EVENTS, rows)
        return cursor.rowcount

    def compare_stored(self, conn: Connection, batch: Sequence[Event]) -> list[bool | None]:
        """One statement for the whole batch: the keys travel as one JSON array, joined to the
        (source, event_id) index, and the content is compared in SQL as stored text (what
        jsonutil.dumps wrote). Only rows whose text differs are decoded (`_recheck`)."""
        if not batch:
            return []
        if _HAS_JSON_ARROWS:
            keys, statement = _rows_json(batch), _COMPARE_STORED
        else:
            keys, statement = _rows_json(batch, data_as_text=True), _COMPARE_STORED_TEXT
        if keys is None:
            return super().compare_stored(conn, batch)
        answers = _compare(conn, statement, keys, len(batch))
        if answers is None:
            return super().compare_stored(conn, batch)
        return self._recheck(conn, batch, answers)

    def insert_new_events(
        self, conn: Connection, batch: Sequence[Event], ingested_us: int
    ) -> tuple[AbstractSet[EventKey], list[bool | None] | None]:
        """A batch whose first and last keys are both stored is most likely a retry: compare it
        first, in one statement, then insert only the events with no stored key. That spares a
        retried batch the insert statement, which costs about as much for keys it skips as for new
        ones (each row's JSON element is read for every column, whether it is inserted or not).

        Any other batch is inserted as usual (the probe is two index lookups). The verdicts are
        valid after the insert: the writer holds SQLite's write lock (BEGIN IMMEDIATE), so no
        stored row changes under it, and an event whose key this insert skipped anyway keeps
        None (not visible to this transaction: counted as a retry)."""
        if not _HAS_JSON_ARROWS or len(batch) < 2 or not _both_stored(conn, batch[0], batch[-1]):
            return super().insert_new_events(conn, batch, ingested_us)
        payload = _rows_json(batch)
        answers = None if payload is None else _compare(conn, _COMPARE_STORED, payload, len(batch))
        if answers is None:
            return super().insert_new_events(conn, batch, ingested_us)
        missing = [event for event, same in zip(batch, answers, strict=True) if same is None]
        inserted = self.insert_events(conn, missing, ingested_us) if missing else set()
        answers = self._recheck(conn, batch, answers)
        verdicts = [same for e, same in zip(batch, answers, strict=True) if (e.source, e.id) not in inserted]
        return inserted, verdicts


def _both_stored(conn: Connection, first: Event, last: Event) -> bool:
    driver = conn.connection.driver_connection
    assert driver is not None
    row = driver.execute(_BOTH_STORED, (first.source, first.id, last.source, last.id)).fetchone()
    return bool(row and row[0])


def _compare(conn: Connection, statement: str, keys: str, size: int) -> list[bool | None] | None:
    """Run a _COMPARE_STORED statement on `keys` (a JSON array of `size` elements): each element's
    answer before `_recheck`; None when SQLite's JSON reader cannot read the array."""
    driver = conn.connection.driver_connection
    assert driver is not None
    cursor = driver.cursor()
    try:
        try:
            cursor.execute(statement, (keys,))
        except sqlite3.OperationalError as exc:
            if "JSON" not in str(exc):
                raise
            return None
        answers: list[bool | None] = [True] * size
        for position, same in cursor.fetchall():
            answers[int(position)] = None if same is None else bool(same)
    finally:
        cursor.close()
    return answers


def _rows_json(batch: Sequence[Event], data_as_text: bool = False) -> str | None:
    """The batch as one JSON array of [source, id, type, subject, time_us, data, datacontenttype],
    or None when it cannot be written as JSON (text no UTF-8 can hold)."""
    try:
        if data_as_text:
            dumps = jsonutil.dumps
            texts = [(e.source, e.id, e.type, e.subject, e.time_us, dumps(e.data), e.datacontenttype) for e in batch]
            return orjson.dumps(texts).decode()
        rows = [(e.source, e.id, e.type, e.subject, e.time_us, e.data, e.datacontenttype) for e in batch]
        return jsonutil.dumpb(rows).decode()
    except (TypeError, orjson.JSONEncodeError):
        return None
