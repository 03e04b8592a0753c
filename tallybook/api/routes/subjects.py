"""GET /api/v1/subjects: the subjects seen in stored events, with the customer each belongs to."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook import jsonutil
from tallybook.api.ingesting import runtime_of
from tallybook.api.security import require
from tallybook.api.wire.customers import Subject
from tallybook.auth.model import ApiKeyRecord
from tallybook.customers import SeenSubject

router = APIRouter(prefix="/api/v1", tags=["subjects"])


def subject_json(subject: SeenSubject) -> dict[str, Any]:
    """OpenMeter's Subject reduced to what Tallybook knows: the key, and customerId when attributed.

    Tallybook does not store subjects as entities (OpenMeter deprecates that too), so there is no
    subject id, display name or timestamps.
    """
    body: dict[str, Any] = {"key": subject.key}
    if subject.customer_id is not None:
        body["customerId"] = subject.customer_id
    return body


@router.get("/subjects", response_model=list[Subject])
async def list_subjects(request: Request, _key: Annotated[ApiKeyRecord, Depends(require("read"))]) -> Response:
    """Every distinct subject of stored events, sorted by key. It scans the events table."""
    found = await run_in_threadpool(runtime_of(request).customers.seen_subjects)
    return Response(jsonutil.dumpb([subject_json(s) for s in found]), media_type="application/json")
