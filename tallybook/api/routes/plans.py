"""OpenMeter-compatible plans: /api/v1/plans (versioned rate cards; publish, archive, next version)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook.api.body import decode_json, media_type, read_limited_body
from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import responses
from tallybook.api.problems import Problem
from tallybook.api.render import json_response
from tallybook.api.security import require
from tallybook.api.wire.billing import Plan, PlanPage
from tallybook.api.wire.plans import parse_plan, plan_json
from tallybook.auth.model import ApiKeyRecord
from tallybook.billing.catalog_model import PlanListQuery, PlanStatus
from tallybook.billing.currency import validate_currency

router = APIRouter(prefix="/api/v1", tags=["plans"])

MAX_BODY_BYTES = 1 << 20
JSON_MEDIA_TYPE = "application/json"
_STATUS_FILTER = {"draft": PlanStatus.DRAFT, "active": PlanStatus.PUBLISHED, "archived": PlanStatus.ARCHIVED}

_AMOUNT = {"type": "string", "description": "decimal number as a string, e.g. '0.001'"}
_COMMITMENTS = {"minimumAmount": _AMOUNT, "maximumAmount": _AMOUNT}
_PLAN_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["key", "name", "billingCadence", "phases"],
    "properties": {
        "key": {"type": "string", "pattern": "^[a-z0-9]+(?:_[a-z0-9]+)*$", "maxLength": 64},
        "name": {"type": "string", "minLength": 1, "maxLength": 256},
        "description": {"type": "string", "maxLength": 1024},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$", "default": "USD"},
        "billingCadence": {"type": "string", "description": "P1D, P1W, P1M, P3M, P1Y or PnD"},
        "commitments": {"type": "object", "properties": _COMMITMENTS, "description": "per invoice"},
        "phases": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["key", "name", "rateCards"],
                "properties": {
                    "key": {"type": "string"},
                    "name": {"type": "string"},
                    "duration": {"type": "string", "nullable": True},
                    "rateCards": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["type", "key", "name", "price"],
                            "properties": {
                                "type": {"type": "string", "enum": ["flat_fee", "usage_based"]},
                                "key": {"type": "string"},
                                "name": {"type": "string"},
                                "description": {"type": "string"},
                                "meterSlug": {"type": "string", "description": "usage_based: the meter priced"},
                                "billingCadence": {"type": "string"},
                                "taxConfig": {
                                    "type": "object",
                                    "properties": {"stripe": {"type": "object", "properties": {"code": {}}}},
                                },
                                "price": {
                                    "type": "object",
                                    "description": "flat {amount, paymentTerm}; unit {amount}; package "
                                    "{amount, quantityPerPackage}; tiered {mode, tiers: [{upToAmount, "
                                    "unitPrice: {amount}, flatPrice: {amount}}]}; usage prices also take "
                                    "minimumAmount and maximumAmount",
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
_BODY_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {JSON_MEDIA_TYPE: {"schema": _PLAN_BODY_SCHEMA}}}
}


async def _plan_body(request: Request) -> Any:
    kind = media_type(request)
    if kind and kind != JSON_MEDIA_TYPE and not kind.endswith("+json"):
        raise Problem(415, "unsupported-media-type", f"send the plan as {JSON_MEDIA_TYPE}, got {kind!r}")
    return decode_json(await read_limited_body(request, MAX_BODY_BYTES))


@router.get("/plans", response_class=Response, responses=responses(PlanPage))
async def list_plans(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    page: Annotated[int, Query(ge=1, le=10_000_000)] = 1,
    pageSize: Annotated[int, Query(ge=1, le=1000)] = 100,
    orderBy: Literal["id", "key", "version", "created_at", "updated_at"] = "id",
    order: Literal["ASC", "DESC"] = "ASC",
    includeDeleted: bool = False,
    id: Annotated[list[str] | None, Query()] = None,
    key: Annotated[list[str] | None, Query()] = None,
    status: Annotated[list[Literal["draft", "active", "archived", "scheduled"]] | None, Query()] = None,
    currency: Annotated[list[str] | None, Query()] = None,
) -> Response:
    """A page of plan versions. Filters take several values (?key=a&key=b); status is draft, active
    or archived (Tallybook publishes at once, so no version is ever scheduled)."""
    statuses = tuple(_STATUS_FILTER[s] for s in status or () if s in _STATUS_FILTER)
    if status and not statuses:
        return json_response({"totalCount": 0, "page": page, "pageSize": pageSize, "items": []})
    currencies: list[str] = []
    for code in currency or ():
        try:
            currencies.append(validate_currency(code))
        except ValueError as exc:
            raise Problem(400, "invalid-parameters", f"currency: {exc}") from None
    query = PlanListQuery(
        page=page,
        page_size=pageSize,
        keys=tuple(key or ()),
        ids=tuple(id or ()),
        statuses=statuses,
        currencies=tuple(currencies),
        include_deleted=includeDeleted,
        order_by=orderBy,
        descending=order == "DESC",
    )
    found = await run_in_threadpool(runtime_of(request).catalog.list, query)
    return json_response(
        {
            "totalCount": found.total_count,
            "page": found.page,
            "pageSize": found.page_size,
            "items": [plan_json(p) for p in found.items],
        }
    )


@router.post(
    "/plans",
    status_code=201,
    response_class=Response,
    openapi_extra=_BODY_DOC,
    responses=responses(Plan, 409, 413, 415, status=201),
)
async def create_plan(request: Request, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]) -> Response:
    """Create a new plan key as a draft, version 1. Rate cards come in a single phase."""
    payload = await _plan_body(request)
    catalog = runtime_of(request).catalog
    plan = await run_in_threadpool(catalog.create, parse_plan(payload))
    return json_response(plan_json(plan), 201, headers={"Location": f"/api/v1/plans/{plan.id}"})


@router.get("/plans/{planId}", response_class=Response, responses=responses(Plan, 404))
async def get_plan(
    request: Request,
    planId: str,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    includeLatest: bool = False,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """A version by id, or by key: the published version (includeLatest: the newest, drafts too;
    version=N: that version). A key with no published version answers its newest version."""
    catalog = runtime_of(request).catalog
    plan = await run_in_threadpool(catalog.get, planId, version, includeLatest)
    return json_response(plan_json(plan))


@router.put(
    "/plans/{planId}", response_class=Response, openapi_extra=_BODY_DOC, responses=responses(Plan, 404, 409, 413, 415)
)
async def update_plan(
    request: Request, planId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Replace a draft version's content (a published version is immutable: 409)."""
    payload = await _plan_body(request)
    catalog = runtime_of(request).catalog

    def work() -> Any:
        current = catalog.get_live(planId)
        return catalog.update(planId, parse_plan(payload, update_of=current.spec))

    plan = await run_in_threadpool(work)
    return json_response(plan_json(plan))


@router.delete("/plans/{planId}", status_code=204, response_class=Response, responses=responses(None, 404, 409))
async def delete_plan(
    request: Request, planId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Delete a draft or archived version (a published one must be archived first)."""
    await run_in_threadpool(runtime_of(request).catalog.delete, planId)
    return Response(status_code=204)


@router.post("/plans/{planId}/publish", response_class=Response, responses=responses(Plan, 404, 409))
async def publish_plan(
    request: Request, planId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Publish a draft: it becomes the active version, immutable; the previous active one is archived."""
    plan = await run_in_threadpool(runtime_of(request).catalog.publish, planId)
    return json_response(plan_json(plan))


@router.post("/plans/{planId}/archive", response_class=Response, responses=responses(Plan, 404, 409))
async def archive_plan(
    request: Request, planId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Archive the active version: new subscriptions can no longer start on it."""
    plan = await run_in_threadpool(runtime_of(request).catalog.archive, planId)
    return json_response(plan_json(plan))


@router.post(
    "/plans/{planIdOrKey}/next",
    status_code=201,
    response_class=Response,
    responses=responses(Plan, 404, 409, status=201),
)
async def next_plan_version(
    request: Request, planIdOrKey: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """A new draft version copied from the newest version (409 when a draft already exists)."""
    plan = await run_in_threadpool(runtime_of(request).catalog.next_version, planIdOrKey)
    return json_response(plan_json(plan), 201, headers={"Location": f"/api/v1/plans/{plan.id}"})
