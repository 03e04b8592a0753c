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
Failures are written when the run ends (`JobRun.flush`, called by `FailureLog.run`), in a
transaction of their own, so recording never waits on a transaction the job still holds.
"""

from __future__ import annotations

from tallybook.clock import Clock
from tallybook.jobs.runs import ItemFailureLog, ItemOutcome, JobRun, describe_error
from tallybook.jobs.sql import JobStore
from tallybook.observability.metrics import Metrics
from tallybook.store.base import SqlStore


class FailureLog(ItemFailureLog):
    """The failure log on the SQL store's `job_failures` table (the one every room's jobs share).

    The loops themselves (`JobRun`, `ItemFailureLog`) live in `runs.py` and never see SQL; this
    binds them to the store, so a room can build its log from the store it already holds.
    """

    def __init__(self, store: SqlStore, clock: Clock, metrics: Metrics | None = None) -> None:
        super().__init__(JobStore(store), clock, metrics)


__all__ = ["FailureLog", "ItemFailureLog", "ItemOutcome", "JobRun", "describe_error"]
