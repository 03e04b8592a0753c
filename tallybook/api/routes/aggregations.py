"""The codehooks metering template's aggregation API: GET /aggregations.

One document per customer (event subject) and period, computed from the meters at query time:

    {"customerId": "cust_1", "period": "daily", "periodStart": "2026-01-05T00:00:00.000Z",
     "periodEnd": "2026-01-05T23:59:59.999Z", "periodKey": "2026-01-05",
     "events": {"api.calls": 42}, "eventCounts": {"api.calls": 42}}

`periodEnd` is inclusive (the last millisecond), as the template shows. `events` keys are event
types, or meter slugs where several meters read the same event type.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook import jsonutil
from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import query_parameters
from tallybook.api.problems import Problem
from tallybook.api.security import require
from tallybook.api.wire.events import AGGREGATION_PARAMETERS, AggregationDocument
from tallybook.auth.model import ApiKeyRecord
from tallybook.ingest.events import parse_time
from tallybook.meters.models import MeterError
from tallybook.meters.windows import PERIODS, UnknownTimeZone, period_bounds, zone

router = APIRouter(tags=["codehooks"])


def _millis(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _instant(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    if " " in value and "+" not in value:
        value = value.replace(" ", "+")
    try:
        return parse_time(value)
    except ValueError as exc:
        raise Problem(400, "invalid-parameters", f"{name}: {exc}") from None


@router.get(
    "/aggregations",
    response_model=list[AggregationDocument],
    openapi_extra=query_parameters(AGGREGATION_PARAMETERS),
)
async def aggregations(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    customerId: str | None = None,
    period: str | None = None,
    timeZone: str = "UTC",
) -> Response:
    """Usage per customer and period. `from`/`to` select the periods that overlap [from, to];
    without them, the current period. `asOf` reproduces the figures as they were at that instant."""
    runtime = runtime_of(request)
    configured = runtime.settings.meters.codehooks_periods
    chosen = period or (configured[0] if configured else "daily")
    if chosen not in PERIODS:
        raise Problem(400, "invalid-parameters", f"period must be one of {', '.join(PERIODS)}, got {chosen!r}")
    try:
        tz = zone(timeZone)
    except UnknownTimeZone as exc:
        raise Problem(400, "invalid-parameters", f"timeZone: {exc}") from None
    now = runtime.clock.now()
    params = request.query_params
    start = _instant(params.get("from"), "from")
    end = _instant(params.get("to"), "to")
    as_of = _instant(params.get("asOf"), "asOf")
    if start is None:
        start = period_bounds(chosen, now if end is None else end, tz)[0]
    if end is None:
        end = max(now, start) + timedelta(microseconds=1)
    elif end <= start:
        raise Problem(400, "invalid-parameters", "to must be after from")
    else:
        end = end + timedelta(microseconds=1)  # `to` is inclusive here, as in the template
    try:
        documents = await run_in_threadpool(
            runtime.meters.period_documents, chosen, start, end, customerId, timeZone, as_of
        )
    except MeterError as exc:
        raise Problem(exc.status, exc.code, exc.detail, **exc.extra) from None
    body: list[dict[str, Any]] = []
    for doc in documents:
        body.append(
            {
                **doc,
                "periodStart": _millis(doc["periodStart"]),
                "periodEnd": _millis(doc["periodEnd"] - timedelta(milliseconds=1)),
            }
        )
    return Response(jsonutil.dumpb(body), media_type="application/json")
