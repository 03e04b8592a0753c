"""Void and amend events, and their audit trail: /api/v1/events/void, /amend, /voids (admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from tallybook.api.body import read_limited_body
from tallybook.api.ingesting import decode_events, runtime_of
from tallybook.api.openapi import json_body, responses
from tallybook.api.problems import Problem
from tallybook.api.render import json_response
from tallybook.api.routes.events import SINGLE, parse_cloudevents
from tallybook.api.security import require
from tallybook.api.wire.voids import AmendBody, VoidBody, VoidPage, VoidPreview, VoidRecord
from tallybook.auth.model import ApiKeyRecord
from tallybook.clock import format_rfc3339, to_micros
from tallybook.ingest.events import BatchTooLarge, InvalidEvents, parse_time
from tallybook.voids import model

router = APIRouter(prefix="/api/v1/events", tags=["events"])


def actor_of(key: ApiKeyRecord) -> model.Actor:
    return model.Actor("apiKey", key.id, key.name)


def _instant(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError) as exc:
        raise Problem(400, "invalid-void", f"filter.{name}: {exc}") from None


def record_json(record: model.VoidRecord, with_events: bool = True) -> dict[str, Any]:
    body = {
        "id": record.id,
        "kind": record.kind,
        "createdAt": format_rfc3339(record.created_at),
        "reason": record.reason,
        "actor": record.actor.as_dict(),
        "selection": record.selection,
        "eventCount": record.event_count,
        "replacement": None if record.replacement is None else record.replacement.as_dict(),
    }
    if with_events:
        body["events"] = [k.as_dict() for k in record.events]
    return body


def preview_json(preview: model.VoidPreview) -> dict[str, Any]:
    return {"dryRun": True, "eventCount": preview.event_count, "events": [k.as_dict() for k in preview.events]}


@router.post(
    "/void",
    status_code=201,
    response_class=Response,
    responses={
        **responses(VoidRecord, 404, 409, status=201, description="voided: the audit record"),
        200: {"model": VoidPreview, "description": "dryRun: what would be voided, nothing changed"},
    },
)
async def void_events(
    request: Request, body: VoidBody, key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Void events so they stop counting (201, the audit record), or count them first (`dryRun`: 200)."""
    runtime = runtime_of(request)
    flt = None
    if body.filter is not None:
        f = body.filter
        flt = model.VoidFilter(f.subject, f.type, f.source, _instant(f.from_, "from"), _instant(f.to, "to"))
    void = model.VoidRequest(
        reason=body.reason,
        actor=actor_of(key),
        events=tuple(model.EventKey(k.source, k.id) for k in body.events or ()),
        filter=flt,
        dry_run=body.dryRun,
    )
    if void.dry_run:
        return json_response(preview_json(await run_in_threadpool(runtime.voids.preview, void)))
    return json_response(record_json(await run_in_threadpool(runtime.voids.void, void)), 201)


@router.post(
    "/amend",
    status_code=201,
    response_class=Response,
    responses=responses(VoidRecord, 404, 409, 413, status=201, description="amended: the audit record"),
    openapi_extra=json_body(("application/json", AmendBody)),
)
async def amend_event(request: Request, key: Annotated[ApiKeyRecord, Depends(require("admin"))]) -> Response:
    """Void one event and store its corrected version (validated like any ingested event), atomically."""
    runtime = runtime_of(request)
    raw = await read_limited_body(request, runtime.settings.ingest.max_batch_bytes)
    # Decoded as an ingest body is (exact numbers, the value domain, nesting, U+0000): the corrected
    # event must be one ingest would accept.
    payload = decode_events(runtime, raw, "event")
    try:
        body = AmendBody.model_validate(payload)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]} for err in exc.errors()
        ]
        raise Problem(
            400, "invalid-parameters", "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        ) from None
    try:
        [event] = parse_cloudevents(body.event, SINGLE, to_micros(runtime.clock.now()), 1)
    except (InvalidEvents, BatchTooLarge) as exc:
        problems = exc.errors if isinstance(exc, InvalidEvents) else []
        errors = [{"field": f"event.{e.field}", "message": e.message} for e in problems]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or str(exc)
        raise Problem(
            400, "invalid-events", f"the corrected event is invalid; nothing changed. {detail}", errors=errors
        ) from None
    amend = model.AmendRequest(model.EventKey(body.source, body.id), event, body.reason, actor_of(key))
    return json_response(record_json(await run_in_threadpool(runtime.voids.amend, amend)), 201)


@router.get("/voids", response_class=Response, responses=responses(VoidPage))
async def list_voids(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("admin"))],
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    pageSize: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """The audit trail of voids and amends, newest first (each record's events: GET /voids/{id})."""
    runtime = runtime_of(request)
    total, records = await run_in_threadpool(runtime.voids.list, page, pageSize)
    return json_response(
        {
            "totalCount": total,
            "page": page,
            "pageSize": pageSize,
            "items": [record_json(r, with_events=False) for r in records],
        }
    )


@router.get("/voids/{void_id}", response_class=Response, responses=responses(VoidRecord, 404))
async def get_void(
    request: Request, void_id: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """One void or amend with the keys of the events it voided (the first 1,000)."""
    runtime = runtime_of(request)
    return json_response(record_json(await run_in_threadpool(runtime.voids.get, void_id)))
