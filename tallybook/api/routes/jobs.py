"""Background jobs over HTTP: run everything due now (cron users, tests), and see when jobs ran."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook import jsonutil
from tallybook.api.ingesting import runtime_of
from tallybook.api.security import require
from tallybook.api.wire.jobs import JobList, JobRunReport
from tallybook.clock import format_rfc3339, from_micros
from tallybook.store.base import ApiKeyRecord

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
    runs = {r.name: r for r in await run_in_threadpool(runtime.jobs.jobs_store.list_runs)}
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
            }
        )
    return Response(jsonutil.dumpb({"items": items}), media_type="application/json")
