"""The job scheduler: runs registered jobs when they are due, in `serve`, `worker` or `jobs run`.

Exclusive jobs (period close, reports) run under the store's job lock, so with several processes
on one database each due run happens in one of them: the process that takes the lock re-reads the
job's next run time and skips the run if another process already did it. Non-exclusive jobs (the
delivery worker) are safe to run everywhere at once because they claim their rows individually.

A job that loops over rows isolates its items (tallybook/jobs/runs.py): an item that fails is
recorded and skipped, and the run finishes with `failedItems` in its result; it is recorded as
partial (`last_failed_items`), which is not the same as a crashed run (`last_error`).

`run_once` runs every job now, whatever its interval (cron users and tests); the background loop
runs each job when its interval has passed. Time comes from a Clock, so tests drive it without
sleeping; only the background loop waits, between polls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tallybook.clock import Clock, to_micros
from tallybook.jobs.ports import JobBookkeeping
from tallybook.jobs.runs import ItemFailureLog

log = logging.getLogger(__name__)


def run_status(error: str | None, failed_items: int | None) -> str:
    """How a run ended: `ok`, `partial` (it finished but skipped failed items) or `error` (it crashed)."""
    if error:
        return "error"
    return "partial" if failed_items else "ok"


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[datetime], dict[str, Any]]
    interval: timedelta
    exclusive: bool = True
    # How long the SQLite lease lasts; a crashed holder's lease runs out after this.
    lease: timedelta = timedelta(minutes=10)


@dataclass
class JobResult:
    name: str
    ran: bool
    skipped_reason: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def failed_items(self) -> int:
        """Items the run skipped because they failed (0 for a crashed run: see `error`)."""
        return int(self.result.get("failedItems", 0) or 0)

    @property
    def status(self) -> str:
        return run_status(self.error, self.failed_items)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "ran": self.ran}
        if self.ran:
            body["status"] = self.status
        if self.skipped_reason:
            body["skipped"] = self.skipped_reason
        if self.result:
            body["result"] = self.result
        if self.error:
            body["error"] = self.error
        return body


class JobScheduler:
    def __init__(
        self,
        bookkeeping: JobBookkeeping,
        failures: ItemFailureLog,
        clock: Clock,
        poll_interval: timedelta = timedelta(seconds=1),
    ) -> None:
        """`bookkeeping`: each job's lock, next run and last outcome (jobs/sql.py's `JobStore`; build
        both with `jobs.sql.sql_scheduler`). `failures`: where every job's loop records the items
        it skipped (GET /api/v1/jobs/failures)."""
        self.bookkeeping = bookkeeping
        self.clock = clock
        self.failures = failures
        self.poll_interval = poll_interval
        self._jobs: dict[str, Job] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._on_stop: list[Callable[[], None]] = []

    # -- registry ---------------------------------------------------------------------------------
    def register(self, job: Job) -> None:
        if job.name in self._jobs:
            raise ValueError(f"job {job.name!r} is registered already")
        self._jobs[job.name] = job

    def on_stop(self, callback: Callable[[], None]) -> None:
        self._on_stop.append(callback)

    @property
    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    # -- running ----------------------------------------------------------------------------------
    def run_job(self, job: Job, force: bool) -> JobResult:
        now = self.clock.now()
        now_us = to_micros(now)
        if not job.exclusive:
            return self._execute(job, now, record=False)
        lease_us = int(job.lease.total_seconds() * 1_000_000)
        with self.bookkeeping.exclusive(job.name, now_us, lease_us) as held:
            if not held:
                return JobResult(job.name, ran=False, skipped_reason="running in another process")
            # Under the lock: another process may have just done this run.
            if not force and not self.bookkeeping.is_due(job.name, now_us):
                return JobResult(job.name, ran=False, skipped_reason="not due")
            return self._execute(job, now, record=True)

    def _execute(self, job: Job, now: datetime, record: bool) -> JobResult:
        started_us = to_micros(now)
        error: str | None = None
        result: dict[str, Any] = {}
        try:
            result = job.run(now)
        except Exception as exc:
            log.exception("job failed", extra={"job": job.name})
            error = f"{type(exc).__name__}: {exc}"
        outcome = JobResult(job.name, ran=True, result=result, error=error)
        if outcome.failed_items:
            log.warning(
                "job finished with failed items skipped",
                extra={"job": job.name, "failed_items": outcome.failed_items},
            )
        if record:
            finished = self.clock.now()
            self.bookkeeping.record_run(
                job.name,
                started_us,
                to_micros(finished),
                to_micros(now + job.interval),
                error,
                outcome.failed_items,
            )
        return outcome

    def run_once(self) -> list[JobResult]:
        """Run every job now, in registration order (work first, then delivery)."""
        with self._lock:
            return [self.run_job(job, force=True) for job in self._jobs.values()]

    def run_due(self) -> list[JobResult]:
        """Run the jobs whose interval has passed (one tick of the background loop)."""
        results = []
        with self._lock:
            for job in self._jobs.values():
                if job.exclusive and not self.bookkeeping.is_due(job.name, to_micros(self.clock.now())):
                    continue
                results.append(self.run_job(job, force=False))
        return results

    # -- background loop --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tallybook-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
        for callback in self._on_stop:
            callback()
        self._on_stop.clear()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        # The first tick comes one poll interval after start, once the process is up.
        wait = self.poll_interval.total_seconds()
        while not self._stop.wait(max(wait, 0.05)):
            started = time.monotonic()
            try:
                self.run_due()
            except Exception:
                log.exception("job scheduler tick failed; retrying on the next tick")
            wait = self.poll_interval.total_seconds() - (time.monotonic() - started)

    def request_stop(self) -> None:
        """Ask the loop to end after the current tick (safe from a signal handler)."""
        self._stop.set()

    def serve_forever(self) -> None:
        """Run the loop in the calling thread until `stop` is called from another (the worker)."""
        self._stop.clear()
        self._loop()
