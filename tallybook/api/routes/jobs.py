"""Background jobs over HTTP: run everything due now (cron users, tests), see when jobs ran, and
see the items (customers, subjects, invoices, deliveries) jobs skipped because they failed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook import jsonutil
from tallybook.api.ingesting import runtime_of
from tallybook.api.security import require
from tallybook.api.wire.jobs import JobFailurePage, JobList, JobRunReport
from tallybook.auth.model import ApiKeyRecord
from tallybook.clock import format_rfc3339, from_micros
from tallybook.jobs.model import JobFailureRow
from tallybook.jobs.scheduler import run_status

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

Admin = Annotated[ApiKeyRecord, Depends(require("admin"))]


def _time(micros: int | None) -> str | None:
    return format_rfc3339(from_micros(micros)) if micros is not None else None


@router.post("/run", response_model=JobRunReport)
async def run_jobs(request: Request, _key: Admin) -> Response:
    """Run every job once now: close finished periods, send reports, deliver what is due.

    A job that another process is running right now is skipped (and reported as such).
    """
    scheduler = runtime_of(request).jobs
    results = await run_in_threadpool(scheduler.run_once)
    body = {"jobs": [r.as_dict() for r in results]}
    return Response(jsonutil.dumpb(body), media_type="application/json")


@router.get("", response_model=JobList)
async def list_jobs(request: Request, _key: Admin) -> Response:
    runtime = runtime_of(request)
    runs = {r.name: r for r in await run_in_threadpool(runtime.jobs.bookkeeping.list_runs)}
    items: list[dict[str, Any]] = []
    for job in runtime.jobs.jobs:
        run = runs.get(job.name)
        items.append(
            {
                "name": job.name,
                "intervalSeconds": job.interval.total_seconds(),
                "exclusive": job.exclusive,
                "lastStartedAt": _time(run.last_started_us) if run else None,
                "lastFinishedAt": _time(run.last_finished_us) if run else None,
                "nextRunAt": _time(run.next_run_us) if run else None,
                "lastError": run.last_error if run else None,
                # ok | partial (finished, some items skipped: see /api/v1/jobs/failures) | error
                "lastStatus": run_status(run.last_error, run.last_failed_items)
                if run and run.last_started_us
                else None,
                "lastFailedItems": (run.last_failed_items or 0) if run else 0,
            }
        )
    return Response(jsonutil.dumpb({"items": items}), media_type="application/json")


def failure_json(row: JobFailureRow) -> dict[str, Any]:
    return {
        "job": row.job,
        "itemKind": row.item_kind,
        "itemId": row.item_id,
        "error": row.error,
        "context": row.context,
        "firstSeenAt": _time(row.first_seen_us),
        "lastSeenAt": _time(row.last_seen_us),
        "count": row.count,
    }


@router.get("/failures", response_model=JobFailurePage)
async def list_job_failures(
    request: Request,
    _key: Admin,
    job: str | None = None,
    itemKind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Response:
    """Items a job skipped because processing them failed, most recently seen first.

    Each stays listed (with its latest error, when it first and last failed, and how often) until
    the job next processes that item successfully. Filter by `job` and `itemKind`.
    """
    failures = runtime_of(request).jobs.failures
    total, rows = await run_in_threadpool(failures.list, job, itemKind, limit, offset)
    body = {"totalCount": total, "limit": limit, "offset": offset, "items": [failure_json(r) for r in rows]}
    return Response(jsonutil.dumpb(body), media_type="application/json")
