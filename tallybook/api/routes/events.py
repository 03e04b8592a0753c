"""OpenMeter-compatible event ingestion and listing: /api/v1/events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook import jsonutil
from tallybook.api.body import media_type, read_limited_body
from tallybook.api.ingesting import commit, decode_events, reject, runtime_of
from tallybook.api.openapi import json_body, responses
from tallybook.api.params import Instant, instant_micros
from tallybook.api.problems import Problem
from tallybook.api.security import require
from tallybook.api.wire.events import CloudEvent, IngestedEvent
from tallybook.auth.model import ApiKeyRecord
from tallybook.clock import format_rfc3339, from_micros, to_micros
from tallybook.eventlist.model import EventListQuery, ListedEvent, customer_refs, exact_filters
from tallybook.ingest.events import (
    BatchTooLarge,
    Event,
    FieldError,
    InvalidEvents,
    check_batch,
    cloudevent_from_json,
)

router = APIRouter(prefix="/api/v1", tags=["events"])

SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
PLAIN = "application/json"
_INGEST_BODY = json_body(
    (SINGLE, CloudEvent),
    (BATCH, list[CloudEvent]),
    (PLAIN, CloudEvent | list[CloudEvent]),
    description="One event, or a batch (a JSON array). All events of a request are stored, or none.",
)


def parse_cloudevents(payload: Any, kind: str, now_us: int, max_events: int) -> list[Event]:
    if kind == SINGLE and not isinstance(payload, dict):
        raise InvalidEvents([FieldError(None, "(body)", f"{SINGLE} carries one event object; send arrays as {BATCH}")])
    if kind == BATCH and not isinstance(payload, list):
        raise InvalidEvents([FieldError(None, "(body)", f"{BATCH} carries a JSON array of events")])
    if not isinstance(payload, dict | list):
        raise InvalidEvents([FieldError(None, "(body)", "send one event object or an array of events")])
    raw_events = payload if isinstance(payload, list) else [payload]
    check_batch(raw_events, max_events)
    errors: list[FieldError] = []
    single = isinstance(payload, dict)
    events = [cloudevent_from_json(raw, None if single else i, now_us, errors) for i, raw in enumerate(raw_events)]
    if errors:
        raise InvalidEvents(errors)
    return [e for e in events if e is not None]


@router.post(
    "/events",
    status_code=204,
    response_class=Response,
    responses=responses(None, 413, 415, 503),
    openapi_extra=_INGEST_BODY,
)
async def ingest_events(request: Request, _key: Annotated[ApiKeyRecord, Depends(require("ingest"))]) -> Response:
    """Ingest one CloudEvent or a batch. 204 means every event is committed to the store."""
    runtime = runtime_of(request)
    kind = media_type(request)
    if kind not in (SINGLE, BATCH, PLAIN):
        runtime.metrics.events_rejected.labels(reason="content_type").inc()
        raise Problem(
            415,
            "unsupported-media-type",
            f"Content-Type must be {SINGLE}, {BATCH} or {PLAIN}, got {kind or 'none'!r}",
        )
    limits = runtime.settings.ingest
    body = await read_limited_body(request, limits.max_batch_bytes)
    payload = decode_events(runtime, body, "data")
    try:
        events = parse_cloudevents(payload, kind, to_micros(runtime.clock.now()), limits.max_batch_events)
    except (InvalidEvents, BatchTooLarge) as exc:
        raise reject(runtime, exc, len(payload) if isinstance(payload, list) else 1) from None
    await commit(runtime, events, indexed=isinstance(payload, list))
    return Response(status_code=204)


def event_json(event: Event) -> dict[str, Any]:
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "subject": event.subject,
        "time": format_rfc3339(from_micros(event.time_us)),
    }
    if event.datacontenttype is not None:
        body["datacontenttype"] = event.datacontenttype
    if event.data is not None:
        body["data"] = event.data
    return body


def ingested_event_json(event: Event) -> dict[str, Any]:
    ingested = format_rfc3339(from_micros(event.ingested_us))
    # Tallybook stores an event in the request that ingests it, so both instants are the same.
    return {"event": event_json(event), "ingestedAt": ingested, "storedAt": ingested}


@router.get("/events", response_model=list[IngestedEvent])
async def list_events(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    subject: str | None = None,
    type: str | None = None,
    id: str | None = None,
    source: str | None = None,
    from_: Annotated[Instant | None, Query(alias="from")] = None,
    to: Instant | None = None,
    ingestedAtFrom: Instant | None = None,
    ingestedAtTo: Instant | None = None,
    customerId: Annotated[
        list[str] | None,
        Query(description="only the events of these customers' subjects (ids or keys; repeat the parameter)"),
    ] = None,
    clientId: Annotated[str | None, Query(min_length=1, max_length=36, description="accepted, not used")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    includeVoided: bool = False,
) -> Response:
    """Stored events, newest event time first. `from`/`to` and the ingested-at bounds are inclusive.

    Voided events are left out unless `includeVoided=true`; then they carry `voidedAt` and `voidId`."""
    filters = exact_filters(
        subject=subject,
        type=type,
        id=id,
        source=source,
        time_from_us=instant_micros(from_, "from"),
        time_to_us=instant_micros(to, "to"),
        ingested_from_us=instant_micros(ingestedAtFrom, "ingestedAtFrom"),
        ingested_to_us=instant_micros(ingestedAtTo, "ingestedAtTo"),
        customer_ids=None if customerId is None else customer_refs(customerId, "customerId", "customer ids"),
    )
    query = EventListQuery(filters=filters, limit=limit, include_voided=includeVoided)
    page = await run_in_threadpool(runtime_of(request).event_list.list, query)
    items = [listed_event_json(listed, includeVoided) for listed in page.items]
    return Response(jsonutil.dumpb(items), media_type="application/json")


def listed_event_json(listed: ListedEvent, include_voided: bool) -> dict[str, Any]:
    """One listed event as OpenMeter's IngestedEvent, with its customer and why a meter cannot
    count it; `voidedAt` and `voidId` when voided events were asked for."""
    item = ingested_event_json(listed.event)
    if listed.customer_id is not None:
        item["customerId"] = listed.customer_id
    if listed.validation_error is not None:
        item["validationError"] = listed.validation_error
    if include_voided and listed.voided_us is not None:
        item["voidedAt"] = format_rfc3339(from_micros(listed.voided_us))
        item["voidId"] = listed.void_id
    return item
