"""The failure log every room's jobs use, bound to the SQL store's `job_failures` table.

How a job isolates a failing item (and why its database work must be in a transaction of its own
inside the `item` block) is explained in `runs.py`, where that logic lives without SQL.
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
