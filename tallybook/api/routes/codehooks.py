"""The codehooks.io metering template's usage API, mapped onto the same event model.

POST /usage/{eventType} {customerId, value, metadata?} and POST /usagebatch [{eventType, customerId,
value, metadata?}] become events with subject = customerId and data = {value, ...metadata}, source
"codehooks". Clients that retry should send an `id` per record (kept as the idempotency key).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook import jsonutil
from tallybook.api.body import read_limited_body
from tallybook.api.ingesting import commit, decode_events, reject, runtime_of
from tallybook.api.openapi import json_body, responses
from tallybook.api.params import Instant, instant_micros
from tallybook.api.security import require
from tallybook.api.wire.events import UsageBatchCaptured, UsageBatchRecord, UsageCaptured, UsageEvent, UsageRecord
from tallybook.auth.model import ApiKeyRecord
from tallybook.clock import format_rfc3339, from_micros, to_micros
from tallybook.ingest.events import (
    BatchTooLarge,
    FieldError,
    InvalidEvents,
    check_batch,
    codehooks_event,
)
from tallybook.store.base import EventFilter

router = APIRouter(tags=["codehooks"])


def _accepted(body: dict[str, Any]) -> Response:
    return Response(jsonutil.dumpb(body), status_code=202, media_type="application/json")


@router.post(
    "/usage/{eventType}",
    status_code=202,
    responses=responses(UsageCaptured, 413, 503, status=202),
    openapi_extra=json_body(("application/json", UsageRecord)),
)
async def capture_usage(
    eventType: str, request: Request, _key: Annotated[ApiKeyRecord, Depends(require("ingest"))]
) -> Response:
    runtime = runtime_of(request)
    body = await read_limited_body(request, runtime.settings.ingest.max_batch_bytes)
    payload = decode_events(runtime, body, "metadata")
    errors: list[FieldError] = []
    event = codehooks_event(eventType, payload, None, to_micros(runtime.clock.now()), errors)
    if event is None:
        raise reject(runtime, InvalidEvents(errors), 1)
    await commit(runtime, [event], indexed=False)
    return _accepted({"message": "Event captured", "eventType": eventType, "customerId": event.subject, "id": event.id})


@router.post(
    "/usagebatch",
    status_code=202,
    responses=responses(UsageBatchCaptured, 413, 503, status=202),
    openapi_extra=json_body(("application/json", list[UsageBatchRecord])),
)
async def capture_usage_batch(request: Request, _key: Annotated[ApiKeyRecord, Depends(require("ingest"))]) -> Response:
    runtime = runtime_of(request)
    limits = runtime.settings.ingest
    body = await read_limited_body(request, limits.max_batch_bytes)
    payload = decode_events(runtime, body, "metadata")
    try:
        if not isinstance(payload, list):
            raise InvalidEvents([FieldError(None, "(body)", "send a JSON array of {eventType, customerId, value}")])
        check_batch(payload, limits.max_batch_events)
        errors: list[FieldError] = []
        now_us = to_micros(runtime.clock.now())
        events = [
            codehooks_event(raw.get("eventType") if isinstance(raw, dict) else None, raw, i, now_us, errors)
            for i, raw in enumerate(payload)
        ]
        if errors:
            raise InvalidEvents(errors)
    except (InvalidEvents, BatchTooLarge) as exc:
        raise reject(runtime, exc, len(payload) if isinstance(payload, list) else 1) from None
    stored = [e for e in events if e is not None]
    result = await commit(runtime, stored)
    return _accepted(
        {
            "message": "Events captured",
            "count": len(stored),
            "accepted": result.accepted,
            "duplicates": result.duplicates + result.conflicts,
        }
    )


@router.get("/events", response_model=list[UsageEvent])
async def list_usage_events(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    customerId: str | None = None,
    eventType: str | None = None,
    from_: Annotated[Instant | None, Query(alias="from")] = None,
    to: Instant | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """The template's event list: filtered on receive time (ingested_at), newest first."""
    runtime = runtime_of(request)
    flt = EventFilter(
        subject=customerId,
        type=eventType,
        ingested_from_us=instant_micros(from_, "from"),
        ingested_to_us=instant_micros(to, "to"),
        limit=limit,
        order_by_ingested=True,
    )
    found = await run_in_threadpool(runtime.store.list_events, flt)
    rows = [
        {
            "id": e.id,
            "source": e.source,
            "eventType": e.type,
            "customerId": e.subject,
            "value": (e.data or {}).get("value"),
            "metadata": {k: v for k, v in (e.data or {}).items() if k != "value"},
            "time": format_rfc3339(from_micros(e.time_us)),
            "receivedAt": format_rfc3339(from_micros(e.ingested_us)),
        }
        for e in found
    ]
    return Response(jsonutil.dumpb(rows), media_type="application/json")
