"""Void and amend events, and their audit trail: /api/v1/events/void, /amend, /voids (admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from tallybook import jsonutil
from tallybook.api.body import decode_json, read_limited_body
from tallybook.api.ingesting import runtime_of
from tallybook.api.problems import Problem
from tallybook.api.routes.events import SINGLE, parse_cloudevents
from tallybook.api.security import require
from tallybook.clock import format_rfc3339, to_micros
from tallybook.ingest.events import BatchTooLarge, InvalidEvents, may_hold_surrogates, parse_time
from tallybook.store.base import ApiKeyRecord
from tallybook.voids.model import (
    MAX_KEYS,
    Actor,
    AmendRequest,
    EventKey,
    VoidFilter,
    VoidPreview,
    VoidRecord,
    VoidRequest,
)

router = APIRouter(prefix="/api/v1/events", tags=["events"])


class EventKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1)
    id: str = Field(min_length=1)


class VoidFilterBody(BaseModel):
    """Events by subject, type and/or source, with event time in [from, to)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    subject: str | None = None
    type: str | None = None
    source: str | None = None
    from_: str | None = Field(default=None, alias="from", description="RFC 3339, inclusive")
    to: str | None = Field(default=None, description="RFC 3339, exclusive")


class VoidBody(BaseModel):
    """Either `events` or `filter`; `reason` is required and kept in the audit trail."""

    model_config = ConfigDict(extra="forbid")
    events: list[EventKeyBody] | None = Field(default=None, max_length=MAX_KEYS)
    filter: VoidFilterBody | None = None
    reason: str
    dryRun: bool = False


class AmendBody(BaseModel):
    """The event to void (`source`, `id`) and its corrected version (`event`, a CloudEvent with a new id)."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1)
    id: str = Field(min_length=1)
    reason: str
    event: dict[str, Any]


# -- response shapes (documentation of what the routes render) ---------------------------------------
class ActorOut(BaseModel):
    type: str = Field(description="apiKey or cli")
    id: str | None = Field(description="the API key's id (apiKey)")
    name: str | None = Field(description="the API key's name, or the CLI's operating-system user")


class VoidRecordOut(BaseModel):
    id: str
    kind: str = Field(description="void or amend")
    createdAt: str = Field(description="when the events stopped counting (RFC 3339)")
    reason: str
    actor: ActorOut
    selection: dict[str, Any] = Field(description='what was asked: {"events": [...]} or {"filter": {...}}')
    eventCount: int
    events: list[EventKeyBody] | None = Field(
        default=None, description="the first 1,000 voided events (left out of list items)"
    )
    replacement: EventKeyBody | None = Field(description="amend: the corrected event's key")


class VoidPreviewOut(BaseModel):
    dryRun: bool
    eventCount: int
    events: list[EventKeyBody] = Field(description="the first 1,000 events a void would take out")


class VoidPageOut(BaseModel):
    totalCount: int
    page: int
    pageSize: int
    items: list[VoidRecordOut]


def actor_of(key: ApiKeyRecord) -> Actor:
    return Actor("apiKey", key.id, key.name)


def _instant(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError) as exc:
        raise Problem(400, "invalid-void", f"filter.{name}: {exc}") from None


def record_json(record: VoidRecord, with_events: bool = True) -> dict[str, Any]:
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


def preview_json(preview: VoidPreview) -> dict[str, Any]:
    return {"dryRun": True, "eventCount": preview.event_count, "events": [k.as_dict() for k in preview.events]}


def _json(body: Any, status: int = 200) -> Response:
    return Response(jsonutil.dumpb(body), status_code=status, media_type="application/json")


@router.post(
    "/void",
    status_code=201,
    responses={
        201: {"model": VoidRecordOut, "description": "voided: the audit record"},
        200: {"model": VoidPreviewOut, "description": "dryRun: what would be voided"},
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
        flt = VoidFilter(f.subject, f.type, f.source, _instant(f.from_, "from"), _instant(f.to, "to"))
    void = VoidRequest(
        reason=body.reason,
        actor=actor_of(key),
        events=tuple(EventKey(k.source, k.id) for k in body.events or ()),
        filter=flt,
        dry_run=body.dryRun,
    )
    if void.dry_run:
        return _json(preview_json(await run_in_threadpool(runtime.voids.preview, void)))
    return _json(record_json(await run_in_threadpool(runtime.voids.void, void)), 201)


@router.post(
    "/amend",
    status_code=201,
    responses={201: {"model": VoidRecordOut, "description": "amended: the audit record"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": AmendBody.model_json_schema()}},
        }
    },
)
async def amend_event(request: Request, key: Annotated[ApiKeyRecord, Depends(require("admin"))]) -> Response:
    """Void one event and store its corrected version (validated like any ingested event), atomically."""
    runtime = runtime_of(request)
    raw = await read_limited_body(request, runtime.settings.ingest.max_batch_bytes)
    try:
        payload = decode_json(raw)  # exact numbers, as ingest reads them
    except RecursionError:
        raise Problem(400, "malformed-json", "the body nests too deeply; send a flat amend request") from None
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
        [event] = parse_cloudevents(body.event, SINGLE, to_micros(runtime.clock.now()), 1, not may_hold_surrogates(raw))
    except (InvalidEvents, BatchTooLarge) as exc:
        problems = exc.errors if isinstance(exc, InvalidEvents) else []
        errors = [{"field": f"event.{e.field}", "message": e.message} for e in problems]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or str(exc)
        raise Problem(
            400, "invalid-events", f"the corrected event is invalid; nothing changed. {detail}", errors=errors
        ) from None
    amend = AmendRequest(EventKey(body.source, body.id), event, body.reason, actor_of(key))
    return _json(record_json(await run_in_threadpool(runtime.voids.amend, amend)), 201)


@router.get("/voids", responses={200: {"model": VoidPageOut, "description": "the audit trail, newest first"}})
async def list_voids(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("admin"))],
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    pageSize: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """The audit trail of voids and amends, newest first (each record's events: GET /voids/{id})."""
    runtime = runtime_of(request)
    total, records = await run_in_threadpool(runtime.voids.list, page, pageSize)
    return _json(
        {
            "totalCount": total,
            "page": page,
            "pageSize": pageSize,
            "items": [record_json(r, with_events=False) for r in records],
        }
    )


@router.get("/voids/{void_id}", responses={200: {"model": VoidRecordOut, "description": "one void or amend"}})
async def get_void(
    request: Request, void_id: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """One void or amend with the keys of the events it voided (the first 1,000)."""
    runtime = runtime_of(request)
    return _json(record_json(await run_in_threadpool(runtime.voids.get, void_id)))
