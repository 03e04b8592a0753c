"""Job bookkeeping tables and their SQL (ports.JobBookkeeping, ports.FailureRecords): when each job
runs next, the cursors jobs advance, the items jobs skipped, and the lock that makes a job run in
one process at a time.

The lock: on PostgreSQL a session advisory lock (pg_try_advisory_lock) held on a dedicated
connection for as long as the job runs; the server drops it when the holder's connection ends, so
a killed worker never leaves it behind. On SQLite (one machine) a lease on the job's row, taken with
a conditional UPDATE under SQLite's write lock and released when the job finishes.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Table, Text, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from tallybook.clock import Clock
from tallybook.jobs.model import ItemFailure, JobFailureRow, JobRunRow
from tallybook.jobs.runs import ItemFailureLog
from tallybook.jobs.scheduler import JobScheduler
from tallybook.observability.metrics import Metrics
from tallybook.store import locks
from tallybook.store.base import SqlStore
from tallybook.store.schema import metadata

log = logging.getLogger(__name__)

job_runs = Table(
    "job_runs",
    metadata,
    Column("name", Text, primary_key=True),
    Column("next_run_us", BigInteger, nullable=True),
    Column("locked_by", Text, nullable=True),  # SQLite lease holder
    Column("locked_until_us", BigInteger, nullable=True),
    Column("last_started_us", BigInteger, nullable=True),
    Column("last_finished_us", BigInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_failed_items", BigInteger, nullable=True),  # items the last run skipped
)

job_cursors = Table(
    "job_cursors",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value_us", BigInteger, nullable=False),
)


# An item (customer, subject, invoice, delivery, ...) a job skipped because processing it raised:
# kept until the item next succeeds, so operators see what is stuck and why.
job_failures = Table(
    "job_failures",
    metadata,
    Column("job", Text, primary_key=True),
    Column("item_kind", Text, primary_key=True),
    Column("item_id", Text, primary_key=True),
    Column("error", Text, nullable=False),
    Column("context", JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")),
    Column("first_seen_us", BigInteger, nullable=False),
    Column("last_seen_us", BigInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
)
Index("ix_job_failures_last_seen", job_failures.c.last_seen_us)


def _failure_filter(job: str | None, item_kind: str | None) -> list[Any]:
    conditions: list[Any] = []
    if job:
        conditions.append(job_failures.c.job == job)
    if item_kind:
        conditions.append(job_failures.c.item_kind == item_kind)
    return conditions


def advisory_key(name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, from the job name."""
    return locks.advisory_key(f"tallybook.job:{name}")


def _insert_ignore(dialect: str, table: Table) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


class JobStore:
    """The scheduler's rows, the failed items and the job cursors, on the SQL store."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    @property
    def _dialect(self) -> str:
        return str(self.store.engine.dialect.name)

    def _ensure_row(self, conn: Any, name: str) -> None:
        conn.execute(_insert_ignore(self._dialect, job_runs).values(name=name))

    @contextmanager
    def exclusive(self, name: str, now_us: int, lease_us: int) -> Iterator[bool]:
        """Yield True if this process now holds the job's lock (and hold it until the block ends)."""
        if self._dialect == "postgresql":
            with locks.try_advisory_lock(self.store.engine, f"tallybook.job:{name}") as held:
                yield held
            return
        token = secrets.token_hex(8)
        with self.store.write() as conn:
            self._ensure_row(conn, name)
            taken = conn.execute(
                update(job_runs)
                .where(
                    job_runs.c.name == name,
                    or_(job_runs.c.locked_until_us.is_(None), job_runs.c.locked_until_us <= now_us),
                )
                .values(locked_by=token, locked_until_us=now_us + lease_us)
            ).rowcount
        if not taken:
            yield False
            return
        try:
            yield True
        finally:
            with self.store.write() as conn:
                conn.execute(
                    update(job_runs)
                    .where(job_runs.c.name == name, job_runs.c.locked_by == token)
                    .values(locked_by=None, locked_until_us=None)
                )

    def is_due(self, name: str, now_us: int) -> bool:
        with self.store.read() as conn:
            row = conn.execute(select(job_runs.c.next_run_us).where(job_runs.c.name == name)).first()
        return row is None or row[0] is None or row[0] <= now_us

    def record_run(
        self,
        name: str,
        started_us: int,
        finished_us: int,
        next_run_us: int,
        error: str | None,
        failed_items: int = 0,
    ) -> None:
        with self.store.write() as conn:
            self._ensure_row(conn, name)
            conn.execute(
                update(job_runs)
                .where(job_runs.c.name == name)
                .values(
                    next_run_us=next_run_us,
                    last_started_us=started_us,
                    last_finished_us=finished_us,
                    last_error=error,
                    last_failed_items=failed_items,
                )
            )

    def list_runs(self) -> list[JobRunRow]:
        with self.store.read() as conn:
            rows = conn.execute(select(job_runs).order_by(job_runs.c.name))
            return [
                JobRunRow(
                    name=r.name,
                    next_run_us=r.next_run_us,
                    last_started_us=r.last_started_us,
                    last_finished_us=r.last_finished_us,
                    last_error=r.last_error,
                    last_failed_items=r.last_failed_items,
                )
                for r in rows
            ]

    # -- failed items ------------------------------------------------------------------------------
    def record_failures(self, failures: list[ItemFailure], cleared: list[tuple[str, str, str]]) -> None:
        """Upsert these failures (count + 1, latest error) and delete the `cleared` (job, kind, id)s,
        in one transaction of its own: the items' own work was rolled back already."""
        if not failures and not cleared:
            return
        f = job_failures.c
        with self.store.write() as conn:
            for start in range(0, len(cleared), 200):
                page = cleared[start : start + 200]
                conn.execute(delete(job_failures).where(tuple_(f.job, f.item_kind, f.item_id).in_(page)))
            for failure in failures:
                values = {
                    "job": failure.job,
                    "item_kind": failure.item_kind,
                    "item_id": failure.item_id,
                    "error": failure.error,
                    "context": failure.context or None,
                    "first_seen_us": failure.seen_us,
                    "last_seen_us": failure.seen_us,
                    "count": 1,
                }
                if self._dialect == "postgresql":
                    statement: Any = postgresql.insert(job_failures).values(**values)
                else:
                    statement = sqlite.insert(job_failures).values(**values)
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["job", "item_kind", "item_id"],
                        set_={
                            "error": statement.excluded.error,
                            "context": statement.excluded.context,
                            "last_seen_us": statement.excluded.last_seen_us,
                            "count": job_failures.c.count + 1,
                        },
                    )
                )

    def failing_items(self, job: str) -> list[JobFailureRow]:
        """This job's items that failed and have not succeeded since (usually none)."""
        return self.list_failures(job=job, limit=None)

    def list_failures(
        self, job: str | None = None, item_kind: str | None = None, limit: int | None = 100, offset: int = 0
    ) -> list[JobFailureRow]:
        f = job_failures.c
        query = (
            select(job_failures)
            .where(*_failure_filter(job, item_kind))
            .order_by(f.last_seen_us.desc(), f.job, f.item_kind, f.item_id)
        )
        if limit is not None:
            query = query.limit(limit).offset(offset)
        with self.store.read() as conn:
            return [
                JobFailureRow(
                    job=r.job,
                    item_kind=r.item_kind,
                    item_id=r.item_id,
                    error=r.error,
                    context=dict(r.context or {}),
                    first_seen_us=r.first_seen_us,
                    last_seen_us=r.last_seen_us,
                    count=int(r._mapping["count"]),
                )
                for r in conn.execute(query)
            ]

    def count_failures(self, job: str | None = None, item_kind: str | None = None) -> int:
        query = select(func.count()).select_from(job_failures).where(*_failure_filter(job, item_kind))
        with self.store.read() as conn:
            return int(conn.execute(query).scalar_one())

    # -- cursors (read and written inside the caller's transaction) --------------------------------
    def get_cursor(self, conn: Any, name: str) -> int | None:
        row = conn.execute(select(job_cursors.c.value_us).where(job_cursors.c.name == name)).first()
        return int(row[0]) if row else None

    def set_cursor(self, conn: Any, name: str, value_us: int) -> None:
        if self._dialect == "postgresql":
            statement: Any = postgresql.insert(job_cursors).values(name=name, value_us=value_us)
        else:
            statement = sqlite.insert(job_cursors).values(name=name, value_us=value_us)
        conn.execute(
            statement.on_conflict_do_update(index_elements=["name"], set_={"value_us": statement.excluded.value_us})
        )


def sql_scheduler(
    store: SqlStore, clock: Clock, poll_interval: timedelta = timedelta(seconds=1), metrics: Metrics | None = None
) -> JobScheduler:
    """The scheduler on the store's job tables: its bookkeeping and the failure log every room's
    jobs share (`job_failures`)."""
    job_store = JobStore(store)
    return JobScheduler(job_store, ItemFailureLog(job_store, clock, metrics), clock, poll_interval)
