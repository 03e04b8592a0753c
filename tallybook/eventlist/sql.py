"""The events list over the `events` table (SQLite and PostgreSQL).

A page is one indexed read: `ORDER BY time_us DESC, seq DESC LIMIT n`, resumed with the row-value
comparison `(time_us, seq) < (cursor time, cursor seq)` plus the redundant `time_us <= cursor time`
that lets both planners start the backward scan of `ix_events_time` at the cursor. On SQLite that
index holds the rowid (= seq) too, so the order is the index's own; PostgreSQL sorts the rare
events sharing one time. A filter on subject narrows rows read along the time index; there is
deliberately no index on subject (see tallybook/customers/sql.py `seen_subjects`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, or_, select, tuple_

from tallybook.customers.sql import customer_subjects, customers
from tallybook.eventlist.model import EventListQuery, ListedEvent
from tallybook.filters.sql import string_condition, time_condition
from tallybook.ingest.events import Event
from tallybook.meters.tables import meter_usage, meters
from tallybook.store.base import SqlStore
from tallybook.store.schema import events

_LOOKUP_PAGE = 500


class SqlEventList:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def resolve_customers(self, refs: Sequence[str]) -> tuple[list[str], list[str]]:
        ids: dict[str, None] = {}
        known: set[str] = set()
        with self.store.read() as conn:
            for start in range(0, len(refs), _LOOKUP_PAGE):
                page = list(refs[start : start + _LOOKUP_PAGE])
                rows = conn.execute(
                    select(customers.c.id, customers.c.key).where(
                        customers.c.deleted_us.is_(None), or_(customers.c.id.in_(page), customers.c.key.in_(page))
                    )
                )
                for customer_id, key in rows:
                    ids[customer_id] = None
                    known.update((customer_id, key))
        return list(ids), [ref for ref in refs if ref not in known]

    def page(self, query: EventListQuery, customer_ids: Sequence[str] | None) -> list[ListedEvent]:
        dialect = self.store.dialect_name
        e = events
        flt = query.filters
        conditions: list[Any] = []
        for column, string_filter in (
            (e.c.event_id, flt.id),
            (e.c.source, flt.source),
            (e.c.subject, flt.subject),
            (e.c.type, flt.type),
        ):
            if string_filter is not None:
                conditions.append(string_condition(column, string_filter, dialect))
        if flt.time is not None:
            conditions.append(time_condition(e.c.time_us, flt.time))
        if flt.ingested_at is not None:
            conditions.append(time_condition(e.c.ingested_us, flt.ingested_at))
        if customer_ids is not None:
            owned = select(customer_subjects.c.subject).where(customer_subjects.c.customer_id.in_(list(customer_ids)))
            conditions.append(e.c.subject.in_(owned))
        if not query.include_voided:
            conditions.append(e.c.voided_us.is_(None))
        after = query.after
        if after is not None:
            conditions.append(e.c.time_us <= after.time_us)
            conditions.append(tuple_(e.c.time_us, e.c.seq) < tuple_(after.time_us, after.seq))
        statement = (
            select(e, customer_subjects.c.customer_id.label("owner"))
            .select_from(e.outerjoin(customer_subjects, customer_subjects.c.subject == e.c.subject))
            .where(*conditions)
            .order_by(e.c.time_us.desc(), e.c.seq.desc())
            .limit(query.limit)
        )
        with self.store.read() as conn:
            found = [_listed(row._mapping) for row in conn.execute(statement)]
            errors = _validation_errors(conn, [item.seq for item in found])
        return [replace(item, validation_error=errors.get(item.seq)) for item in found]


def _validation_errors(conn: Connection, seqs: list[int]) -> dict[int, str]:
    """Why live meters could not count these events, by seq: "meter <slug>: <reason>; ...". The
    partial index on meter_usage.event_seq (rows with an error) answers it without a scan."""
    if not seqs:
        return {}
    rows = conn.execute(
        select(meter_usage.c.event_seq, meters.c.slug, meter_usage.c.error)
        .select_from(meter_usage.join(meters, meters.c.usage_key == meter_usage.c.meter_key))
        .where(meter_usage.c.event_seq.in_(seqs), meter_usage.c.error.isnot(None), meters.c.deleted_us.is_(None))
        .order_by(meter_usage.c.event_seq, meters.c.slug)
    )
    found: dict[int, list[str]] = {}
    for seq, slug, error in rows:
        found.setdefault(int(seq), []).append(f"meter {slug}: {error}")
    return {seq: "; ".join(reasons) for seq, reasons in found.items()}


def _listed(row: Any) -> ListedEvent:
    event = Event(
        source=row["source"],
        id=row["event_id"],
        type=row["type"],
        subject=row["subject"],
        time_us=row["time_us"],
        data=row["data"],
        datacontenttype=row["datacontenttype"],
        ingested_us=row["ingested_us"],
    )
    return ListedEvent(
        event=event,
        seq=int(row["seq"]),
        customer_id=row["owner"],
        voided_us=row["voided_us"],
        void_id=row["void_id"],
    )


__all__ = ["SqlEventList"]
