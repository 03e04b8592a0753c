"""Subscriptions: /api/v1/subscriptions (OpenMeter's shapes, simplified)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook.api.body import decode_json, media_type, read_limited_body
from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import responses
from tallybook.api.problems import Problem
from tallybook.api.render import json_response
from tallybook.api.security import require
from tallybook.api.wire.billing import Subscription as SubscriptionShape
from tallybook.api.wire.billing import SubscriptionChange, SubscriptionList
from tallybook.auth.model import ApiKeyRecord
from tallybook.billing.catalog_model import format_cadence
from tallybook.billing.periods import Alignment
from tallybook.billing.subscriptions import Subscription, SubscriptionError, SubscriptionInput, Timing
from tallybook.clock import format_rfc3339

router = APIRouter(prefix="/api/v1", tags=["subscriptions"])
MAX_BODY_BYTES = 64 * 1024
JSON_MEDIA_TYPE = "application/json"

_TIMING_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "string", "enum": ["immediate", "next_billing_cycle"]},
        {"type": "string", "format": "date-time"},
    ]
}
_PLAN_REF: dict[str, Any] = {
    "type": "object",
    "required": ["key"],
    "properties": {"key": {"type": "string"}, "version": {"type": "integer", "minimum": 1}},
}
_CREATE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON_MEDIA_TYPE: {
                "schema": {
                    "type": "object",
                    "required": ["plan"],
                    "properties": {
                        "customerId": {"type": "string"},
                        "customerKey": {"type": "string"},
                        "plan": _PLAN_REF,
                        "activeFrom": {"type": "string", "format": "date-time"},
                        "activeTo": {"type": "string", "format": "date-time"},
                        "alignment": {"type": "string", "enum": ["anniversary", "calendar"]},
                        "billingAnchor": {"type": "string", "format": "date-time"},
                        "name": {"type": "string"},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                }
            }
        },
    }
}
_CANCEL_DOC: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {JSON_MEDIA_TYPE: {"schema": {"type": "object", "properties": {"timing": _TIMING_SCHEMA}}}},
    }
}
_CHANGE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON_MEDIA_TYPE: {
                "schema": {
                    "type": "object",
                    "required": ["plan"],
                    "properties": {"plan": _PLAN_REF, "timing": _TIMING_SCHEMA},
                }
            }
        },
    }
}


def subscription_json(sub: Subscription, now: datetime) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": sub.id,
        "name": sub.name,
        "customerId": sub.customer_id,
        "plan": {"key": sub.plan_key, "version": sub.plan_version},
        "currency": sub.currency,
        "billingCadence": format_cadence(sub.cadence),
        "alignment": sub.alignment.value,
        "billingAnchor": format_rfc3339(sub.anchor),
        "timezone": sub.timezone,
        "status": sub.status(now),
        "activeFrom": format_rfc3339(sub.active_from),
        "createdAt": format_rfc3339(sub.created_at),
        "updatedAt": format_rfc3339(sub.updated_at),
    }
    optional = {
        "activeTo": sub.active_to,
        "canceledAt": sub.canceled_at,
        "billedThrough": sub.billed_through,
    }
    body.update({k: format_rfc3339(v) for k, v in optional.items() if v is not None})
    if sub.active_from <= now and (sub.active_to is None or now < sub.active_to):
        period = sub.schedule.period_containing(now)
        body["currentPeriod"] = {"from": format_rfc3339(period.start), "to": format_rfc3339(period.end)}
    if sub.previous_id:
        body["previousSubscriptionId"] = sub.previous_id
    if sub.next_id:
        body["nextSubscriptionId"] = sub.next_id
    if sub.metadata is not None:
        body["metadata"] = sub.metadata
    return body


def subscription_problem(exc: SubscriptionError) -> Problem:
    return Problem(exc.status, exc.code, exc.detail, **exc.extra)


async def _body(request: Request, required: bool) -> dict[str, Any]:
    raw = await read_limited_body(request, MAX_BODY_BYTES)
    if not raw.strip() and not required:
        return {}
    kind = media_type(request)
    if kind and kind != JSON_MEDIA_TYPE and not kind.endswith("+json"):
        raise Problem(415, "unsupported-media-type", f"send {JSON_MEDIA_TYPE}, got {kind!r}")
    body = decode_json(raw)
    if not isinstance(body, dict):
        raise Problem(400, "invalid-subscription", "the body must be a JSON object")
    return body


def _instant(body: dict[str, Any], name: str) -> datetime | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Problem(400, "invalid-subscription", f"{name} must be an RFC 3339 date-time string", field=name)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Problem(
            400, "invalid-subscription", f"{name}: {value!r} is not an RFC 3339 date-time", field=name
        ) from None
    if parsed.tzinfo is None:
        raise Problem(
            400, "invalid-subscription", f"{name} needs a time zone offset, e.g. 2026-01-01T00:00:00Z", field=name
        )
    return parsed


def _plan_ref(body: dict[str, Any]) -> tuple[str, int | None]:
    plan = body.get("plan")
    if not isinstance(plan, dict) or not isinstance(plan.get("key"), str) or not plan["key"]:
        raise Problem(400, "invalid-subscription", 'plan is required: {"key": "...", "version": 1}', field="plan")
    version = plan.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise Problem(400, "invalid-subscription", "plan.version must be a positive integer", field="plan.version")
    return plan["key"], version


def _timing(body: dict[str, Any], default: str) -> Timing:
    value = body.get("timing", default)
    if value in ("immediate", "next_billing_cycle"):
        return value
    when = _instant({"timing": value}, "timing")
    if when is None:
        raise Problem(400, "invalid-subscription", "timing must be 'immediate', 'next_billing_cycle' or a date-time")
    return when


def _str_map(value: Any, name: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise Problem(400, "invalid-subscription", f"{name} must be an object of strings", field=name)
    return value


@router.post(
    "/subscriptions",
    status_code=201,
    response_class=Response,
    openapi_extra=_CREATE_DOC,
    responses=responses(SubscriptionShape, 404, 409, 413, 415, status=201),
)
async def create_subscription(request: Request, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]) -> Response:
    """Subscribe a customer to a plan version (the published one unless `plan.version` is given)."""
    body = await _body(request, required=True)
    customer = body.get("customerId") or body.get("customerKey")
    if not isinstance(customer, str) or not customer:
        raise Problem(400, "invalid-subscription", "customerId or customerKey is required", field="customerId")
    key, version = _plan_ref(body)
    alignment = body.get("alignment", Alignment.ANNIVERSARY.value)
    if alignment not in (Alignment.ANNIVERSARY.value, Alignment.CALENDAR.value):
        raise Problem(400, "invalid-subscription", "alignment must be 'anniversary' or 'calendar'", field="alignment")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise Problem(400, "invalid-subscription", "name must be a non-empty string", field="name")
    data = SubscriptionInput(
        customer=customer,
        plan_key=key,
        plan_version=version,
        active_from=_instant(body, "activeFrom"),
        active_to=_instant(body, "activeTo"),
        alignment=Alignment(alignment),
        billing_anchor=_instant(body, "billingAnchor"),
        name=name,
        metadata=_str_map(body.get("metadata"), "metadata"),
    )
    runtime = runtime_of(request)
    try:
        sub = await run_in_threadpool(runtime.subscriptions.create, data)
    except SubscriptionError as exc:
        raise subscription_problem(exc) from None
    return json_response(
        subscription_json(sub, runtime.clock.now()), 201, {"Location": f"/api/v1/subscriptions/{sub.id}"}
    )


@router.get("/subscriptions", response_class=Response, responses=responses(SubscriptionList, 404))
async def list_subscriptions(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    customerId: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    """Subscriptions, oldest start first (of one customer, by id or key, with customerId)."""
    runtime = runtime_of(request)
    try:
        subs = await run_in_threadpool(runtime.subscriptions.list_subscriptions, customerId, limit, offset)
    except SubscriptionError as exc:
        raise subscription_problem(exc) from None
    now = runtime.clock.now()
    return json_response({"items": [subscription_json(s, now) for s in subs], "limit": limit, "offset": offset})


@router.get("/subscriptions/{subscriptionId}", response_class=Response, responses=responses(SubscriptionShape, 404))
async def get_subscription(
    request: Request, subscriptionId: str, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    runtime = runtime_of(request)
    try:
        sub = await run_in_threadpool(runtime.subscriptions.get, subscriptionId)
    except SubscriptionError as exc:
        raise subscription_problem(exc) from None
    return json_response(subscription_json(sub, runtime.clock.now()))


@router.post(
    "/subscriptions/{subscriptionId}/cancel",
    response_class=Response,
    openapi_extra=_CANCEL_DOC,
    responses=responses(SubscriptionShape, 404, 409, 413, 415),
)
async def cancel_subscription(
    request: Request, subscriptionId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Cancel: `timing` is `immediate` (default), `next_billing_cycle` (end of the current period) or a date-time."""
    body = await _body(request, required=False)
    timing = _timing(body, "immediate")
    runtime = runtime_of(request)
    try:
        sub = await run_in_threadpool(runtime.subscriptions.cancel, subscriptionId, timing)
    except SubscriptionError as exc:
        raise subscription_problem(exc) from None
    return json_response(subscription_json(sub, runtime.clock.now()))


@router.post(
    "/subscriptions/{subscriptionId}/change",
    response_class=Response,
    openapi_extra=_CHANGE_DOC,
    responses=responses(SubscriptionChange, 404, 409, 413, 415),
)
async def change_subscription(
    request: Request, subscriptionId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Move to another plan version at `timing`: the old subscription ends there and a new one starts."""
    body = await _body(request, required=True)
    key, version = _plan_ref(body)
    timing = _timing(body, "immediate")
    runtime = runtime_of(request)
    try:
        old, new = await run_in_threadpool(runtime.subscriptions.change, subscriptionId, key, version, timing)
    except SubscriptionError as exc:
        raise subscription_problem(exc) from None
    now = runtime.clock.now()
    return json_response({"current": subscription_json(old, now), "next": subscription_json(new, now)})
