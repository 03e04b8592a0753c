"""Job bookkeeping: when each job runs next, the cursors jobs advance, and the lock that makes a job
run in one process at a time.

The lock: on PostgreSQL a session advisory lock (pg_try_advisory_lock) held on a dedicated
connection for as long as the job runs; the server drops it when the holder's connection ends, so
a killed worker never leaves it behind. On SQLite (one machine) a lease on the job's row, taken with
a conditional UPDATE under SQLite's write lock and released when the job finishes.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, Table, Text, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

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
)

job_cursors = Table(
    "job_cursors",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value_us", BigInteger, nullable=False),
)


@dataclass(frozen=True, slots=True)
class JobRunRow:
    name: str
    next_run_us: int | None
    last_started_us: int | None
    last_finished_us: int | None
    last_error: str | None


def advisory_key(name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, from the job name."""
    return int.from_bytes(hashlib.sha256(f"tallybook.job:{name}".encode()).digest()[:8], "big", signed=True)


def _insert_ignore(dialect: str, table: Table) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


class JobStore:
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
            with self._advisory(name) as held:
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

    @contextmanager
    def _advisory(self, name: str) -> Iterator[bool]:
        key = advisory_key(name)
        conn = self.store.engine.connect()
        try:
            held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
            conn.commit()
            try:
                yield held
            finally:
                if held:
                    try:
                        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                        conn.commit()
                    except Exception:
                        # Closing the session releases it anyway; never reuse a connection in doubt.
                        log.warning("could not release job lock; dropping the connection", extra={"job": name})
                        conn.invalidate()
        finally:
            conn.close()

    def is_due(self, name: str, now_us: int) -> bool:
        with self.store.read() as conn:
            row = conn.execute(select(job_runs.c.next_run_us).where(job_runs.c.name == name)).first()
        return row is None or row[0] is None or row[0] <= now_us

    def record_run(self, name: str, started_us: int, finished_us: int, next_run_us: int, error: str | None) -> None:
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
                )
                for r in rows
            ]

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
