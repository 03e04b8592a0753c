"""The ingest-time projection (SQLite): the ingest writer projects its own new events into the
caught-up ready meters in the transaction that stores them.

SQLite has one writer, which holds the only write lock while it commits a group, so it can write the
usage rows and move those projections' cursors with the events, atomically: a meter query sees an
event as soon as its request is acknowledged, and the materializer (materializer.py) does not read
those events again. Projections that are behind, and every build, stay the materializer's. The
projecting itself is the materializer's `Projector`; this module is the SQL around it, straight on
the driver because it runs once per group commit.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from tallybook import jsonutil
from tallybook.ingest.events import Event
from tallybook.meters import materializer_sql
from tallybook.meters.materializer import Projector
from tallybook.meters.models import Meter
from tallybook.meters.ports import MeterTransaction, StoredEvent, UsageRecord
from tallybook.meters.sql import SqlMeterTransaction
from tallybook.meters.tables import to_store_value

log = logging.getLogger(__name__)

# The ready projections of live meters, with their own event type and cursor (what `cursors` reads,
# straight on the driver: this runs once per group commit).
_READY_PROJECTIONS = (
    "SELECT p.usage_key, p.projected_seq, p.event_type FROM meter_projections AS p "
    "JOIN meters AS m ON m.key = p.meter_key WHERE p.state = 'ready' AND m.deleted_us IS NULL"
)
_MAX_SEQ = "SELECT coalesce(max(seq), 0) FROM events"
_SAVEPOINT = "tallybook_project_inline"
# The projected rows in one statement: one JSON array of rows (ingest's events travel the same way,
# tallybook/store/sqlite.py), so SQLite inserts them without the GIL and without binding each row.
# `->>` gives what `materializer_sql.insert_usage` binds: `num` as an INTEGER or its decimal text
# (`to_store_value`; integers stay below 2**62, so JSON reads them back exactly), `groups` as text.
_USAGE_COLUMNS = "meter_key, subject, time_us, event_seq, ingested_us, num, ukey, groups, error, voided_us"
_INSERT_USAGE_JSON = (
    f"INSERT INTO meter_usage ({_USAGE_COLUMNS}) "
    "SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, "
    "value ->> 7, value ->> 8, value ->> 9 FROM json_each(?)"
)
_HAS_JSON_ARROWS = sqlite3.sqlite_version_info >= (3, 38, 0)


class InlinePlan(NamedTuple):
    """What `InlineProjection.prepare` found: the seq before the insert and the projectors of the
    caught-up ready projections, by event type."""

    before_seq: int
    projectors: dict[str, list[Projector]]


class InlineProjection:
    """Projects a group commit's new events into the ready projections in the ingest writer's own
    transaction (SQLite, where the writer holds the only write lock), so a meter query sees an
    event as soon as its request is acknowledged and the materializer does not read it again.

    Only projections whose cursor is at the last stored event take part (the others, and every
    build, are the materializer's, which starts from their cursors as before). Their rows and
    cursors commit with the events or not at all, as a materializer chunk would. A failure here
    never fails ingest: the savepoint is undone, and the materializer projects those events later.
    """

    def __init__(self, load_projections: Callable[[MeterTransaction, str], Sequence[Meter]]) -> None:
        self.load_projections = load_projections
        self._projectors: dict[int, Projector] = {}  # by usage key: a projection's definition never changes

    def prepare(self, conn: Any, types: Iterable[str]) -> InlinePlan | None:
        """Before the insert: the plan, or None when no caught-up ready projection reads `types`."""
        try:
            driver = conn.connection.driver_connection
            ready = driver.execute(_READY_PROJECTIONS).fetchall()
            if not ready:
                return None
            present = set(types)
            wanted = [(int(key), int(seq), event_type) for key, seq, event_type in ready if event_type in present]
            if not wanted:
                return None
            before = int(driver.execute(_MAX_SEQ).fetchone()[0])
            keys = [key for key, seq, _ in wanted if seq == before]
            if not keys:
                return None
            if any(key not in self._projectors for key in keys):
                for meter in self.load_projections(SqlMeterTransaction(conn), "ready"):
                    self._projectors.setdefault(meter.key, Projector(meter))
            projectors: dict[str, list[Projector]] = {}
            for key in keys:
                projector = self._projectors.get(key)
                if projector is not None:
                    projectors.setdefault(projector.meter.event_type, []).append(projector)
            return InlinePlan(before, projectors) if projectors else None
        except Exception:
            log.warning("could not prepare the ingest-time projection; the materializer does it", exc_info=True)
            return None

    def apply(self, conn: Any, plan: InlinePlan, events: Iterable[Event], ingested_us: int) -> int:
        """After the insert, in the same transaction: project the new events of `plan`'s types
        (`events`: the group's events, in any order, repeats and known keys included) and move those
        projections' cursors to the last stored event. Returns the rows written."""
        driver = conn.connection.driver_connection
        types = sorted(plan.projectors)
        by_key: dict[tuple[str, str], Event] = {}
        for event in events:
            if event.type in plan.projectors:
                by_key.setdefault((event.source, event.id), event)  # the first occurrence is stored
        cursor = driver.cursor()
        try:
            cursor.execute(f"SAVEPOINT {_SAVEPOINT}")
            try:
                marks = ", ".join("?" * len(types))
                cursor.execute(
                    f"SELECT seq, source, event_id FROM events WHERE seq > ? AND type IN ({marks}) ORDER BY seq",
                    (plan.before_seq, *types),
                )
                records: list[UsageRecord] = []
                for seq, source, event_id in cursor.fetchall():
                    event = by_key[(source, event_id)]
                    stored = StoredEvent(seq, event.type, event.subject, event.time_us, ingested_us, event.data, None)
                    for projector in plan.projectors[event.type]:
                        record = projector.project_safely(stored)
                        if record is not None:
                            records.append(record)
                top = int(cursor.execute(_MAX_SEQ).fetchone()[0])
                _insert_usage(conn, records)
                keys = [p.meter.key for projectors in plan.projectors.values() for p in projectors]
                materializer_sql.set_cursor(conn, keys, top)
            except Exception:
                cursor.execute(f"ROLLBACK TO {_SAVEPOINT}")
                cursor.execute(f"RELEASE {_SAVEPOINT}")
                log.warning("the ingest-time projection failed; the materializer does it", exc_info=True)
                return 0
            cursor.execute(f"RELEASE {_SAVEPOINT}")
        finally:
            cursor.close()
        return len(records)


def _insert_usage(conn: Any, records: Sequence[UsageRecord]) -> None:
    """`materializer_sql.insert_usage` on SQLite, the same rows in primary-key order, in one statement."""
    if not records:
        return
    if not _HAS_JSON_ARROWS:
        materializer_sql.insert_usage(conn, records)
        return
    value = to_store_value
    dumps = jsonutil.dumps
    rows = [
        (
            r.meter_key,
            r.subject,
            r.time_us,
            r.event_seq,
            r.ingested_us,
            value("sqlite", r.num),
            r.ukey,
            None if r.groups is None else dumps(r.groups),
            r.error,
            r.voided_us,
        )
        for r in records
    ]
    rows.sort(key=_primary_key)
    try:
        payload = jsonutil.dumpb(rows).decode()
    except TypeError:
        materializer_sql.insert_usage(conn, records)
        return
    conn.connection.driver_connection.execute(_INSERT_USAGE_JSON, (payload,))


def _primary_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row[:4]


__all__ = ["InlinePlan", "InlineProjection"]
