"""The period-close and report jobs' SQL (ports.AggregationStorage): what each channel was sent per
period, and the late or voided events that call for corrections.

`aggregation_sent` keys what each channel was told about each (subject, period, period start), so
`aggregation.completed` goes out once per channel and a correction compares to what the channel
holds. The jobs' cursors (`job_cursors`, sql.py) and the outbox rows they write share the job's
transaction, so a period is marked closed exactly when its events are queued.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Connection, Table, Text, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB

# The module, not its names: the store package imports both table modules while one may be half loaded.
from tallybook.jobs import sql as job_tables
from tallybook.jobs.model import SentFigures
from tallybook.meters import materializer_sql
from tallybook.store.base import SqlStore
from tallybook.store.schema import events, metadata
from tallybook.voids.sql import voided_subjects

JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")

# What each channel was told about each (subject, period, period start): the key makes the
# aggregation.completed event exactly once per channel; the figures are what corrections compare to.
aggregation_sent = Table(
    "aggregation_sent",
    metadata,
    Column("subject", Text, primary_key=True),
    Column("period", Text, primary_key=True),
    Column("period_start_us", BigInteger, primary_key=True),
    Column("channel_id", Text, primary_key=True),
    Column("period_end_us", BigInteger, nullable=False),
    Column("figures", JSON_TYPE, nullable=False),  # {"events": {...}, "eventCount": n}
    Column("event_id", Text, nullable=False),  # the last event sent about it
    Column("updated_us", BigInteger, nullable=False),
)


def _insert(conn: Connection, table: Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


class SqlAggregationTransaction:
    """One transaction of a period-close or report job (ports.AggregationTransaction)."""

    def __init__(self, jobs: job_tables.JobStore, conn: Connection) -> None:
        self.jobs = jobs
        self.conn = conn

    @property
    def outbox(self) -> Connection:
        return self.conn

    def get_cursor(self, name: str) -> int | None:
        return self.jobs.get_cursor(self.conn, name)

    def set_cursor(self, name: str, value_us: int) -> None:
        self.jobs.set_cursor(self.conn, name, value_us)

    def settled_horizon(self) -> int:
        return materializer_sql.settled_horizon(self.conn)

    def sent_figures(self, subject: str, period: str, period_start_us: int) -> list[SentFigures]:
        s = aggregation_sent
        rows = self.conn.execute(
            select(s).where(s.c.subject == subject, s.c.period == period, s.c.period_start_us == period_start_us)
        )
        return [
            SentFigures(
                subject=r.subject,
                period=r.period,
                period_start_us=r.period_start_us,
                channel_id=r.channel_id,
                period_end_us=r.period_end_us,
                figures=r.figures,
                event_id=r.event_id,
            )
            for r in rows
        ]

    def record_sent(self, sent: SentFigures, now_us: int) -> bool:
        """Remember what a channel was sent; False when it was already sent (nothing changes)."""
        statement = (
            _insert(self.conn, aggregation_sent)
            .values(
                subject=sent.subject,
                period=sent.period,
                period_start_us=sent.period_start_us,
                channel_id=sent.channel_id,
                period_end_us=sent.period_end_us,
                figures=sent.figures,
                event_id=sent.event_id,
                updated_us=now_us,
            )
            .returning(aggregation_sent.c.subject)
        )
        return self.conn.execute(statement).first() is not None

    def update_sent(self, sent: SentFigures, previous_event_id: str, now_us: int) -> bool:
        """Replace the figures a channel holds, if nobody else replaced them first."""
        s = aggregation_sent
        result = self.conn.execute(
            update(s)
            .where(
                s.c.subject == sent.subject,
                s.c.period == sent.period,
                s.c.period_start_us == sent.period_start_us,
                s.c.channel_id == sent.channel_id,
                s.c.event_id == previous_event_id,
            )
            .values(figures=sent.figures, event_id=sent.event_id, updated_us=now_us)
        )
        return result.rowcount > 0

    def late_subjects(
        self, after_seq: int, through_seq: int, voided_after_us: int, voided_through_us: int
    ) -> list[tuple[str, int, int]]:
        """(subject, earliest, latest event time) of events stored with a seq in (after, through]
        or voided in (voided_after, voided_through].

        A void changes a period's figures just as a late event does, so both trigger corrections.
        """
        query = (
            select(events.c.subject, func.min(events.c.time_us), func.max(events.c.time_us))
            .where(events.c.seq > after_seq, events.c.seq <= through_seq)
            .group_by(events.c.subject)
        )
        spans: dict[str, tuple[int, int]] = {}
        rows = [(r[0], int(r[1]), int(r[2])) for r in self.conn.execute(query)] if through_seq > after_seq else []
        voided = (
            voided_subjects(self.conn, voided_after_us, voided_through_us)
            if voided_through_us > voided_after_us
            else []
        )
        for subject, earliest, latest in rows + voided:
            low, high = spans.get(subject, (earliest, latest))
            spans[subject] = (min(low, earliest), max(high, latest))
        return [(subject, low, high) for subject, (low, high) in sorted(spans.items())]

    def seq_ingested_through(self, ingested_through_us: int) -> int:
        """The highest seq of an event ingested at or before that instant (0 if none): where a
        corrections scan that followed ingest time continues by seq."""
        value = self.conn.execute(select(func.max(events.c.seq)).where(events.c.ingested_us <= ingested_through_us))
        return int(value.scalar_one() or 0)


class SqlAggregationStorage:
    """ports.AggregationStorage on the SQL store."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.jobs = job_tables.JobStore(store)

    @contextmanager
    def reading(self) -> Iterator[SqlAggregationTransaction]:
        with self.store.read() as conn:
            yield SqlAggregationTransaction(self.jobs, conn)

    @contextmanager
    def writing(self) -> Iterator[SqlAggregationTransaction]:
        with self.store.write() as conn:
            yield SqlAggregationTransaction(self.jobs, conn)
