"""Fault isolation for job loops: an item that fails is recorded and skipped, the rest goes on.

Every job that loops over rows (customers, subjects, meters, invoices, deliveries) processes each
item inside `run.item(kind, id, **ids)`. An exception there is caught, logged with the ids, counted
in `tallybook_job_item_failures_total{job,kind}` and kept in the `job_failures` table (listed at
GET /api/v1/jobs/failures and on the dashboard) until the same item next succeeds. The job goes on
with the next item and finishes; its run is marked as having skipped items (`failedItems` in its
result), not as crashed.

The item's own database work must be in a transaction or savepoint of its own, opened *inside*
the `item` block: on PostgreSQL a failed statement aborts the whole transaction, so catching the
exception without rolling back to a point before the item would make every later item fail too.
Failures are written when the run ends (`JobRun.flush`, called by `ItemFailureLog.run`), in a
transaction of their own, so recording never waits on a transaction the job still holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tallybook.clock import Clock, to_micros
from tallybook.jobs.model import ItemFailure, JobFailureRow
from tallybook.jobs.ports import FailureRecords
from tallybook.observability.metrics import Metrics

# Logged under tallybook.jobs.failures, where operators (and their log filters) have always found it.
log = logging.getLogger("tallybook.jobs.failures")

ERROR_LIMIT = 2000  # characters of an error message kept


def describe_error(exc: BaseException) -> str:
    """`Type: message`, bounded, with NUL bytes spelled out (PostgreSQL text cannot hold them)."""
    text = f"{type(exc).__name__}: {exc}".replace("\x00", "\\x00")
    return text if len(text) <= ERROR_LIMIT else text[: ERROR_LIMIT - 1] + "…"


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")[:ERROR_LIMIT]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _clean(str(value))


@dataclass
class ItemOutcome:
    """What became of one item: `failed` is True when its block raised (the error was recorded)."""

    failed: bool = False
    error: str | None = None


@dataclass
class JobRun:
    """The failures and successes of one run of one job, written at its end by `flush`."""

    job: str
    owner: ItemFailureLog
    failures: list[ItemFailure] = field(default_factory=list)
    written: int = 0  # failures already flushed
    succeeded: set[tuple[str, str]] = field(default_factory=set)
    known: set[tuple[str, str]] = field(default_factory=set)  # (kind, id) failing before this run

    @property
    def failed(self) -> int:
        return len(self.failures)

    def outcome(self, result: dict[str, Any]) -> dict[str, Any]:
        """The job's result, with `failedItems` when items were skipped."""
        if self.failures:
            result["failedItems"] = len(self.failures)
        return result

    @contextmanager
    def item(
        self, kind: str, item_id: str, /, passthrough: tuple[type[BaseException], ...] = (), **ids: Any
    ) -> Iterator[ItemOutcome]:
        """Run the block for one item; an exception is recorded (not raised) and the job goes on.

        Exceptions of the `passthrough` types are not about the item (e.g. "stop sending for this
        run"): they propagate, and the item counts as neither failed nor succeeded.
        """
        outcome = ItemOutcome()
        try:
            yield outcome
        except passthrough:
            raise
        except Exception as exc:
            outcome.failed = True
            outcome.error = describe_error(exc)
            self.fail(kind, item_id, exc, **ids)
        else:
            self.ok(kind, item_id)

    def fail(self, kind: str, item_id: str, exc: BaseException, /, **ids: Any) -> None:
        error = describe_error(exc)
        context = {k: _clean(v) for k, v in ids.items() if v is not None}
        log.error(
            "job item failed; skipped, the job goes on",
            exc_info=exc,
            extra={"job": self.job, "item_kind": kind, "item_id": item_id, "error": error, **context},
        )
        self.failures.append(
            ItemFailure(self.job, kind, _clean(item_id), error, context, to_micros(self.owner.clock.now()))
        )
        if self.owner.metrics is not None:
            self.owner.metrics.job_item_failures.labels(self.job, kind).inc()

    def ok(self, kind: str, item_id: str) -> None:
        if (kind, item_id) in self.known:
            self.succeeded.add((kind, item_id))

    def flush(self) -> None:
        failed_now = {(f.item_kind, f.item_id) for f in self.failures}
        cleared = [(self.job, kind, item_id) for kind, item_id in self.succeeded if (kind, item_id) not in failed_now]
        try:
            self.owner.records.record_failures(self.failures[self.written :], cleared)
        except Exception:
            # The log lines and the metric are out already; the table catches up on the next failure.
            log.exception("could not record failed job items", extra={"job": self.job})
        self.written = len(self.failures)
        self.known -= {(kind, item_id) for _, kind, item_id in cleared}
        self.succeeded.clear()


class ItemFailureLog:
    """Failed job items: recorded per run (see `run`), listed for the API and dashboard."""

    def __init__(self, records: FailureRecords, clock: Clock, metrics: Metrics | None = None) -> None:
        self.records = records
        self.clock = clock
        self.metrics = metrics

    @contextmanager
    def run(self, job: str) -> Iterator[JobRun]:
        """One run of `job`: items that fail inside it are written when the block ends (also when
        the job itself raises)."""
        known = {(row.item_kind, row.item_id) for row in self.records.failing_items(job)}
        run = JobRun(job, self, known=known)
        try:
            yield run
        finally:
            run.flush()

    def failing(self, job: str, item_kind: str | None = None) -> list[JobFailureRow]:
        """The job's items that failed and have not succeeded since (a job retries these)."""
        rows = self.records.failing_items(job)
        return [r for r in rows if item_kind is None or r.item_kind == item_kind]

    def list(
        self, job: str | None = None, item_kind: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[int, list[JobFailureRow]]:
        return self.records.count_failures(job, item_kind), self.records.list_failures(job, item_kind, limit, offset)
