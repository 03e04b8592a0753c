"""What the scheduler, the failure log and the period-close and report jobs need from storage.

`sql.JobStore` keeps the scheduler's rows (next run, lock, last outcome) and the failed items;
`aggregation_sql.SqlAggregationStorage` gives the period-close and report jobs their transactions.
A job's transaction also carries `outbox`: the open transaction itself, handed to the webhook
service so the events a job writes commit together with its cursor and bookkeeping.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from tallybook.jobs.model import ItemFailure, JobFailureRow, JobRunRow, SentFigures


class JobBookkeeping(Protocol):
    def exclusive(self, name: str, now_us: int, lease_us: int) -> AbstractContextManager[bool]:
        """True inside the block if this process holds the job's lock (held until the block ends)."""
        ...

    def is_due(self, name: str, now_us: int) -> bool: ...

    def record_run(
        self,
        name: str,
        started_us: int,
        finished_us: int,
        next_run_us: int,
        error: str | None,
        failed_items: int = 0,
    ) -> None: ...

    def list_runs(self) -> list[JobRunRow]: ...


class FailureRecords(Protocol):
    def record_failures(self, failures: list[ItemFailure], cleared: list[tuple[str, str, str]]) -> None:
        """Upsert these failures and delete the `cleared` (job, kind, id)s, in a transaction of
        its own."""
        ...

    def failing_items(self, job: str) -> list[JobFailureRow]: ...

    def list_failures(
        self, job: str | None = None, item_kind: str | None = None, limit: int | None = 100, offset: int = 0
    ) -> list[JobFailureRow]: ...

    def count_failures(self, job: str | None = None, item_kind: str | None = None) -> int: ...


class JobTransaction(Protocol):
    @property
    def outbox(self) -> object:
        """This transaction, for `WebhookService.destinations` and `enqueue`."""
        ...

    def get_cursor(self, name: str) -> int | None: ...

    def set_cursor(self, name: str, value_us: int) -> None: ...


class AggregationTransaction(JobTransaction, Protocol):
    def settled_horizon(self) -> int:
        """The events.seq below which every insert has committed (the materializer's watermark)."""
        ...

    def sent_figures(self, subject: str, period: str, period_start_us: int) -> list[SentFigures]: ...

    def record_sent(self, sent: SentFigures, now_us: int) -> bool:
        """Remember what a channel was sent; False when it was already sent (nothing changes)."""
        ...

    def update_sent(self, sent: SentFigures, previous_event_id: str, now_us: int) -> bool:
        """Replace the figures a channel holds, if nobody else replaced them first."""
        ...

    def late_subjects(
        self, after_seq: int, through_seq: int, voided_after_us: int, voided_through_us: int
    ) -> list[tuple[str, int, int]]:
        """(subject, earliest, latest event time) of events stored with a seq in (after, through]
        or voided in (voided_after, voided_through]."""
        ...

    def seq_ingested_through(self, ingested_through_us: int) -> int:
        """The highest seq of an event ingested at or before that instant (0 if none)."""
        ...


class AggregationStorage(Protocol):
    def reading(self) -> AbstractContextManager[AggregationTransaction]: ...

    def writing(self) -> AbstractContextManager[AggregationTransaction]: ...


__all__ = [
    "AggregationStorage",
    "AggregationTransaction",
    "FailureRecords",
    "JobBookkeeping",
    "JobTransaction",
]
