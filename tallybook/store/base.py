"""The store interface and its SQLAlchemy Core implementation shared by both engines."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, func, select, tuple_
from sqlalchemy.sql import Insert

from tallybook.ingest.events import Event
from tallybook.store import schema
from tallybook.store.schema import events

# Rows per INSERT statement. Bounded by SQLite's 32,766 bound-parameter limit (9 columns a row).
INSERT_PAGE_SIZE = 2000
LOOKUP_PAGE_SIZE = 500


# What ingest's value check depends on (tallybook.ingest.metered): the live meters' definitions, in
# one plain statement on the driver, as comparable tuples (group_by as its JSON text on both engines).
@dataclass(frozen=True, slots=True)
class EventFilter:
    subject: str | None = None
    type: str | None = None
    id: str | None = None
    source: str | None = None
    time_from_us: int | None = None  # inclusive
    time_to_us: int | None = None  # inclusive, as OpenMeter's events list
    ingested_from_us: int | None = None  # inclusive
    ingested_to_us: int | None = None  # inclusive
    limit: int = 100
    order_by_ingested: bool = False  # codehooks lists by receive time; OpenMeter by event time
    include_voided: bool = False  # voided events (tallybook/voids) are left out unless asked for


EventKey = tuple[str, str]  # (source, id)
_Item = TypeVar("_Item")


class BatchKeys(AbstractSet[EventKey]):
    """Every key of a batch whose events were all inserted (so no key repeats), as a set that is
    only built when looked into. The ingest writer asks only for its size when nothing was a retry,
    and it runs on the critical path of batch ingest: no tuple per event for nothing."""

    __slots__ = ("_batch", "_keys")

    def __init__(self, batch: Sequence[Event]) -> None:
        self._batch = batch
        self._keys: frozenset[EventKey] | None = None

    def _set(self) -> frozenset[EventKey]:
        if self._keys is None:
            self._keys = frozenset((e.source, e.id) for e in self._batch)
        return self._keys

    def __len__(self) -> int:
        return len(self._batch)

    def __contains__(self, key: object) -> bool:
        return key in self._set()

    def __iter__(self) -> Iterator[EventKey]:
        return iter(self._set())

    @classmethod
    def _from_iterable(cls, items: Iterable[_Item]) -> AbstractSet[_Item]:
        """What set operations (|, &, -) build: a plain frozenset."""
        return frozenset(items)


class SqlStore(ABC):
    """Store over one SQLAlchemy engine. Subclasses bring the engine-specific parts."""

    dialect_name: str = ""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- engine-specific hooks ------------------------------------------------------------------
    @abstractmethod
    def _insert_ignoring_duplicates(self) -> Insert:
        """INSERT INTO events ... ON CONFLICT (source, event_id) DO NOTHING, in the engine's dialect."""

    def migrate(self) -> None:
        from tallybook.store.migrate import upgrade

        upgrade(self.engine)

    # -- transactions -------------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (on SQLite it takes the write lock up front: BEGIN IMMEDIATE)."""
        with self.engine.connect().execution_options(tallybook_write=True) as conn, conn.begin():
            yield conn

    def writer_connection(self) -> Connection:
        """A connection for one long-lived writer (the ingest writer thread) to run its write
        transactions on, `with conn.begin():` each, as `write` would. Keeping it saves a pool
        checkout and checkin per transaction; the writer closes it when it stops or a
        transaction on it fails. Its transactions come back to back, so on SQLite it lets the
        process's other writers take the write lock first (`tallybook_yields`; see SqliteStore)."""
        return self.engine.connect().execution_options(tallybook_write=True, tallybook_yields=True)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def ping(self) -> None:
        with self.read() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        self.engine.dispose()

    # -- events -------------------------------------------------------------------------------------
    def insert_events(self, conn: Connection, batch: Sequence[Event], ingested_us: int) -> AbstractSet[EventKey]:
        """Insert events whose (source, id) is new, stamped `ingested_us`; return the inserted keys.

        The batch must not repeat a key (the caller dedups in memory first). Runs inside the
        caller's transaction, so the caller decides when it becomes durable.
        """
        if not batch:
            return set()
        statement = self._insert_ignoring_duplicates().returning(events.c.source, events.c.event_id)
        inserted: set[tuple[str, str]] = set()
        for start in range(0, len(batch), INSERT_PAGE_SIZE):
            rows = [
                {
                    "source": e.source,
                    "event_id": e.id,
                    "type": e.type,
                    "subject": e.subject,
                    "time_us": e.time_us,
                    "ingested_us": ingested_us,
                    "data": e.data,
                    "datacontenttype": e.datacontenttype,
                }
                for e in batch[start : start + INSERT_PAGE_SIZE]
            ]
            result = conn.execute(statement, rows)
            inserted.update((row[0], row[1]) for row in result)
        return inserted

    def events_by_key(self, conn: Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Event]:
        found: dict[tuple[str, str], Event] = {}
        for start in range(0, len(keys), LOOKUP_PAGE_SIZE):
            page = keys[start : start + LOOKUP_PAGE_SIZE]
            rows = conn.execute(select(events).where(tuple_(events.c.source, events.c.event_id).in_(page)))
            for row in rows:
                event = _event_from_row(row._mapping)
                found[event.key] = event
        return found

    def insert_new_events(
        self, conn: Connection, batch: Sequence[Event], ingested_us: int
    ) -> tuple[AbstractSet[EventKey], list[bool | None] | None]:
        """`insert_events`, and the engine's `compare_stored` verdicts for the events it did not
        insert (in batch order) when it compared them on the way; None when it did not (the caller
        compares them itself). See SqliteStore's for why an engine would."""
        return self.insert_events(conn, batch, ingested_us), None

    def compare_stored(self, conn: Connection, batch: Sequence[Event]) -> list[bool | None]:
        """For each event of `batch`, in order: None when no event with its (source, id) is
        stored, else whether the stored one has the same content (`Event.same_content`: a retry)
        or not (a conflict). Keys may repeat in `batch`. Runs in the caller's transaction.

        This generic form reads and decodes the stored events; the engines answer in one
        statement and read back only the rows whose content differs (see `_recheck`).
        """
        known = self.events_by_key(conn, list(dict.fromkeys(e.key for e in batch)))
        return [None if (kept := known.get(e.key)) is None else e.same_content(kept) for e in batch]

    def _recheck(self, conn: Connection, batch: Sequence[Event], answers: list[bool | None]) -> list[bool | None]:
        """Settle the events an engine's statement found different (False) the way the generic
        path does, by `Event.same_content` on the decoded stored event: the statement compares
        JSON text or JSONB, which a retry that reorders keys (or sends 1 for true) does not match."""
        doubtful = [i for i, same in enumerate(answers) if same is False]
        if doubtful:
            known = self.events_by_key(conn, list(dict.fromkeys(batch[i].key for i in doubtful)))
            for i in doubtful:
                kept = known.get(batch[i].key)
                answers[i] = batch[i].same_content(kept) if kept is not None else False
        return answers

    def list_events(self, flt: EventFilter) -> list[Event]:
        query = select(events)
        conditions: list[Any] = []
        if flt.subject is not None:
            conditions.append(events.c.subject == flt.subject)
        if flt.type is not None:
            conditions.append(events.c.type == flt.type)
        if flt.id is not None:
            conditions.append(events.c.event_id == flt.id)
        if flt.source is not None:
            conditions.append(events.c.source == flt.source)
        if flt.time_from_us is not None:
            conditions.append(events.c.time_us >= flt.time_from_us)
        if flt.time_to_us is not None:
            conditions.append(events.c.time_us <= flt.time_to_us)
        if flt.ingested_from_us is not None:
            conditions.append(events.c.ingested_us >= flt.ingested_from_us)
        if flt.ingested_to_us is not None:
            conditions.append(events.c.ingested_us <= flt.ingested_to_us)
        if not flt.include_voided:
            conditions.append(events.c.voided_us.is_(None))
        if conditions:
            query = query.where(*conditions)
        if flt.order_by_ingested:
            query = query.order_by(events.c.ingested_us.desc(), events.c.seq.desc())
        else:
            query = query.order_by(events.c.time_us.desc(), events.c.seq.desc())
        query = query.limit(flt.limit)
        with self.read() as conn:
            return [_event_from_row(row._mapping) for row in conn.execute(query)]

    def count_events(self) -> int:
        with self.read() as conn:
            return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


def _event_from_row(row: Any) -> Event:
    return Event(
        source=row["source"],
        id=row["event_id"],
        type=row["type"],
        subject=row["subject"],
        time_us=row["time_us"],
        data=row["data"],
        datacontenttype=row["datacontenttype"],
        ingested_us=row["ingested_us"],
    )


__all__ = ["EventFilter", "SqlStore", "schema"]
