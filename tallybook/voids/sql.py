"""The audit trail table and the SQL behind voids (both engines).

`event_voids` keeps one row per void or amend. The voided events themselves carry the void's id
and instant (`events.void_id`, `events.voided_us`), and so do their meter usage rows
(`meter_usage.voided_us`), so neither ingest nor usage queries join this table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    Table,
    Text,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from tallybook.clock import to_micros
from tallybook.ingest.events import Event
from tallybook.meters import materializer_sql
from tallybook.store.schema import events, metadata
from tallybook.voids.model import EventKey, Target, VoidFilter

if TYPE_CHECKING:
    from tallybook.store.base import SqlStore

JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")
PAGE = 500

event_voids = Table(
    "event_voids",
    metadata,
    Column("id", Text, primary_key=True),  # ULID
    Column("kind", Text, nullable=False),  # void | amend
    Column("created_us", BigInteger, nullable=False),  # also the voided events' voided_us
    Column("reason", Text, nullable=False),
    Column("actor_type", Text, nullable=False),  # apiKey | cli
    Column("actor_id", Text, nullable=True),
    Column("actor_name", Text, nullable=True),
    Column("selection", JSON_TYPE, nullable=False),  # {"events": [...]} or {"filter": {...}}
    Column("event_count", Integer, nullable=False),
    Column("replacement_source", Text, nullable=True),  # amend: the corrected event's key
    Column("replacement_id", Text, nullable=True),
)
Index("ix_event_voids_created", event_voids.c.created_us)


_TARGET_COLUMNS = (
    events.c.seq,
    events.c.source,
    events.c.event_id,
    events.c.type,
    events.c.subject,
    events.c.time_us,
    events.c.voided_us,
    events.c.void_id,
)


def _target(row: Any) -> Target:
    return Target(int(row[0]), row[1], row[2], row[3], row[4], int(row[5]), row[6], row[7])


def targets_by_keys(conn: Connection, keys: Sequence[EventKey]) -> dict[EventKey, Target]:
    found: dict[EventKey, Target] = {}
    wanted = [(k.source, k.id) for k in dict.fromkeys(keys)]
    for start in range(0, len(wanted), PAGE):
        page = wanted[start : start + PAGE]
        for row in conn.execute(select(*_TARGET_COLUMNS).where(tuple_(events.c.source, events.c.event_id).in_(page))):
            target = _target(row)
            found[target.key] = target
    return found


def _filter_conditions(flt: VoidFilter) -> list[Any]:
    conditions: list[Any] = [events.c.voided_us.is_(None)]
    if flt.subject is not None:
        conditions.append(events.c.subject == flt.subject)
    if flt.type is not None:
        conditions.append(events.c.type == flt.type)
    if flt.source is not None:
        conditions.append(events.c.source == flt.source)
    if flt.time_from is not None:
        conditions.append(events.c.time_us >= to_micros(flt.time_from))
    if flt.time_to is not None:
        conditions.append(events.c.time_us < to_micros(flt.time_to))
    return conditions


def targets_by_filter(conn: Connection, flt: VoidFilter, limit: int | None = None) -> list[Target]:
    """Unvoided events the filter selects, in ingest order."""
    query = select(*_TARGET_COLUMNS).where(*_filter_conditions(flt)).order_by(events.c.seq)
    if limit is not None:
        query = query.limit(limit)
    return [_target(row) for row in conn.execute(query)]


def count_by_filter(conn: Connection, flt: VoidFilter) -> int:
    return int(conn.execute(select(func.count()).select_from(events).where(*_filter_conditions(flt))).scalar_one())


def stamp_events(conn: Connection, seqs: Sequence[int], void_id: str, voided_us: int) -> int:
    """Mark unvoided events as voided; return how many were (fewer: someone voided some first)."""
    stamped = 0
    for start in range(0, len(seqs), PAGE):
        result = conn.execute(
            update(events)
            .where(events.c.seq.in_(list(seqs[start : start + PAGE])), events.c.voided_us.is_(None))
            .values(voided_us=voided_us, void_id=void_id)
        )
        stamped += result.rowcount
    return stamped


def insert_record(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(insert(event_voids).values(**row))


def record_row(conn: Connection, void_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(event_voids).where(event_voids.c.id == void_id)).first()
    return dict(row._mapping) if row else None


def record_rows(conn: Connection, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """The audit trail, newest first."""
    total = int(conn.execute(select(func.count()).select_from(event_voids)).scalar_one())
    rows = conn.execute(
        select(event_voids)
        .order_by(event_voids.c.created_us.desc(), event_voids.c.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return total, [dict(r._mapping) for r in rows]


def voided_keys(conn: Connection, void_id: str, limit: int) -> list[EventKey]:
    rows = conn.execute(
        select(events.c.source, events.c.event_id)
        .where(events.c.void_id == void_id)
        .order_by(events.c.seq)
        .limit(limit)
    )
    return [EventKey(r[0], r[1]) for r in rows]


def voided_subjects(conn: Connection, after_us: int, through_us: int) -> list[tuple[str, int, int]]:
    """(subject, earliest, latest event time) of events voided in (after, through]."""
    query = (
        select(events.c.subject, func.min(events.c.time_us), func.max(events.c.time_us))
        .select_from(event_voids.join(events, events.c.void_id == event_voids.c.id))
        .where(
            event_voids.c.created_us > after_us,
            event_voids.c.created_us <= through_us,
            events.c.void_id.isnot(None),
        )
        .group_by(events.c.subject)
    )
    return [(row[0], int(row[1]), int(row[2])) for row in conn.execute(query)]


def latest_void_us(conn: Connection) -> int | None:
    value = conn.execute(select(func.max(event_voids.c.created_us))).scalar_one()
    return None if value is None else int(value)


class SqlVoidTransaction:
    """One transaction of the void service (ports.VoidTransaction) on a SQLAlchemy connection."""

    def __init__(self, store: SqlStore, conn: Connection) -> None:
        self.store = store
        self.conn = conn

    def lock_materializer(self) -> None:
        materializer_sql.lock_materializer(self.conn)

    def live_meter_reads(self) -> list[tuple[str, str, str, str | None, Any]]:
        return materializer_sql.live_meter_reads(self.conn)

    def targets_by_keys(self, keys: Sequence[EventKey]) -> dict[EventKey, Target]:
        return targets_by_keys(self.conn, keys)

    def targets_by_filter(self, flt: VoidFilter, limit: int | None = None) -> list[Target]:
        return targets_by_filter(self.conn, flt, limit)

    def count_by_filter(self, flt: VoidFilter) -> int:
        return count_by_filter(self.conn, flt)

    def stamp_events(self, seqs: Sequence[int], void_id: str, voided_us: int) -> int:
        return stamp_events(self.conn, seqs, void_id, voided_us)

    def mark_usage_voided(self, voided: Sequence[tuple[int, str, str, int]], voided_us: int) -> None:
        materializer_sql.mark_usage_voided(self.conn, voided, voided_us)

    def insert_record(self, row: dict[str, Any]) -> None:
        insert_record(self.conn, row)

    def insert_events(self, batch: Sequence[Event], ingested_us: int) -> AbstractSet[tuple[str, str]]:
        # The ingest path's own insert, so a corrected event is stored exactly as ingest stores one.
        return self.store.insert_events(self.conn, batch, ingested_us)

    def record_row(self, void_id: str) -> dict[str, Any] | None:
        return record_row(self.conn, void_id)

    def record_rows(self, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        return record_rows(self.conn, offset, limit)

    def voided_keys(self, void_id: str, limit: int) -> list[EventKey]:
        return voided_keys(self.conn, void_id, limit)


class SqlVoidStorage:
    """The void service's storage (ports.VoidStorage): the event store's transactions."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    @contextmanager
    def reading(self) -> Iterator[SqlVoidTransaction]:
        with self.store.read() as conn:
            yield SqlVoidTransaction(self.store, conn)

    @contextmanager
    def writing(self) -> Iterator[SqlVoidTransaction]:
        with self.store.write() as conn:
            yield SqlVoidTransaction(self.store, conn)
