"""GET /api/v1/meters/{meterIdOrSlug}/group-by/{groupByKey}/values: OpenMeter's listMeterGroupByValues."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook import jsonutil
from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import responses
from tallybook.api.params import Instant
from tallybook.api.security import require
from tallybook.auth.model import ApiKeyRecord

router = APIRouter(prefix="/api/v1", tags=["meters"])


@router.get("/meters/{meterIdOrSlug}/group-by/{groupByKey}/values", responses=responses(list[str], 404))
async def group_by_values(
    meterIdOrSlug: str,
    groupByKey: str,
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    from_: Annotated[Instant | None, Query(alias="from", description="event time from (inclusive)")] = None,
    to: Annotated[Instant | None, Query(description="event time to (exclusive)")] = None,
) -> Response:
    """The values a groupBy key took in the meter's events, sorted. Without `from` and `to`: the
    last 24 hours (OpenMeter's default)."""
    service = runtime_of(request).meters
    found = await run_in_threadpool(service.group_by_values, meterIdOrSlug, groupByKey, from_, to)
    return Response(jsonutil.dumpb(found), media_type="application/json")
