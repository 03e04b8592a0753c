"""Stripe: customer ↔ Stripe links (OpenMeter's shapes), the period-end webhook, the report ledger."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook.api.body import decode_json, media_type, read_limited_body
from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import responses
from tallybook.api.params import Instant
from tallybook.api.problems import Problem
from tallybook.api.render import json_response
from tallybook.api.security import require
from tallybook.api.wire.customers import CustomerAppDataPage, StripeCustomerLink
from tallybook.api.wire.stripe import CheckoutSession, StripeReportPage, WebhookReceipt
from tallybook.auth.model import ApiKeyRecord
from tallybook.clock import format_rfc3339, from_micros, to_micros
from tallybook.stripe.model import OUT_OF_RANGE, PENDING, REJECTED, SENT, CustomerLink, ReportFilter, ReportRow

router = APIRouter(prefix="/api/v1", tags=["stripe"])

MAX_BODY_BYTES = 64 * 1024
WEBHOOK_MAX_BYTES = 1 << 20
T = TypeVar("T")

_STRIPE_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["stripeCustomerId"],
    "properties": {
        "stripeCustomerId": {"type": "string", "description": "The Stripe customer ID (cus_...)"},
        "stripeDefaultPaymentMethodId": {"type": "string", "description": "The Stripe default payment method ID"},
    },
}
_APPS_BODY_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["type", "stripeCustomerId"],
        "properties": {"type": {"type": "string", "enum": ["stripe"]}, **_STRIPE_BODY_SCHEMA["properties"]},
    },
}


def _doc(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_STRIPE_WEBHOOK_DOC: dict[str, Any] = {
    **_doc({"type": "object", "description": "A Stripe event, exactly as Stripe sends it"}),
    "parameters": [
        {
            "name": "Stripe-Signature",
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "description": "Stripe's signature of the body with the webhook secret",
        }
    ],
}


def link_json(link: CustomerLink) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "stripe", "stripeCustomerId": link.stripe_customer_id}
    if link.stripe_default_payment_method_id:
        body["stripeDefaultPaymentMethodId"] = link.stripe_default_payment_method_id
    return body


def attempt_json(attempt: dict[str, Any]) -> dict[str, Any]:
    return {
        "attemptedAt": format_rfc3339(from_micros(attempt["attempted_us"])),
        "outcome": attempt["outcome"],
        "httpStatus": attempt["http_status"],
        "response": attempt["response"],
        "error": attempt["error"],
    }


def report_json(row: ReportRow, attempts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "id": row.id,
        "meter": row.meter,
        "customerId": row.customer_id,
        "stripeCustomerId": row.stripe_customer_id,
        "windowStart": format_rfc3339(from_micros(row.window_start_us)),
        "windowEnd": format_rfc3339(from_micros(row.window_end_us)),
        "kind": row.kind,
        "version": row.version,
        "identifier": row.identifier,
        "value": row.value,
        "target": row.target,
        "cancels": row.cancels,
        "cancelled": row.cancelled,
        "carried": row.carried,
        "timestamp": format_rfc3339(from_micros(row.timestamp_us)),
        "status": row.status,
        "attempts": row.attempts,
        "nextAttemptAt": None if row.next_attempt_us is None else format_rfc3339(from_micros(row.next_attempt_us)),
        "request": row.request,
        "response": row.response,
        "error": row.error,
        "createdAt": format_rfc3339(from_micros(row.created_us)),
        "updatedAt": format_rfc3339(from_micros(row.updated_us)),
        "sentAt": None if row.sent_us is None else format_rfc3339(from_micros(row.sent_us)),
        "attemptLog": [attempt_json(a) for a in attempts or []],
    }


async def _call(fn: Callable[..., T], *args: Any) -> T:
    # Customer errors are DomainErrors: the API's one handler answers them as problems.
    return await run_in_threadpool(fn, *args)


async def _json_body(request: Request) -> Any:
    kind = media_type(request)
    if kind and kind != "application/json":
        raise Problem(415, "unsupported-media-type", f"send application/json, got {kind!r}")
    return decode_json(await read_limited_body(request, MAX_BODY_BYTES))


@router.put(
    "/customers/{customerIdOrKey}/stripe",
    response_class=Response,
    openapi_extra=_doc(_STRIPE_BODY_SCHEMA),
    responses=responses(StripeCustomerLink, 404, 409, 413, 415),
)
async def put_customer_stripe(
    request: Request, customerIdOrKey: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Link the customer to a Stripe customer (OpenMeter's upsertCustomerStripeAppData)."""
    payload = await _json_body(request)
    link = await _call(runtime_of(request).stripe.put_customer_stripe, customerIdOrKey, payload)
    return json_response(link_json(link))


@router.get(
    "/customers/{customerIdOrKey}/stripe", response_class=Response, responses=responses(StripeCustomerLink, 404)
)
async def get_customer_stripe(
    request: Request, customerIdOrKey: str, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    link = await _call(runtime_of(request).stripe.get_customer_stripe, customerIdOrKey)
    return json_response(link_json(link))


@router.put(
    "/customers/{customerIdOrKey}/apps",
    response_class=Response,
    openapi_extra=_doc(_APPS_BODY_SCHEMA),
    responses=responses(list[StripeCustomerLink], 404, 409, 413, 415),
)
async def put_customer_apps(
    request: Request, customerIdOrKey: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """OpenMeter's upsertCustomerAppData; `stripe` is the supported app type."""
    payload = await _json_body(request)
    links = await _call(runtime_of(request).stripe.put_customer_apps, customerIdOrKey, payload)
    return json_response([link_json(link) for link in links])


@router.get("/customers/{customerIdOrKey}/apps", response_class=Response, responses=responses(CustomerAppDataPage, 404))
async def list_customer_apps(
    request: Request,
    customerIdOrKey: str,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    pageSize: Annotated[int, Query(ge=1, le=1000)] = 100,
    type: Annotated[Literal["stripe"] | None, Query()] = None,
) -> Response:
    """OpenMeter's listCustomerAppData: 200 with an empty page for a customer linked to no app."""
    links = await _call(runtime_of(request).stripe.customer_apps, customerIdOrKey)
    items = [link_json(link) for link in links]
    shown = items[(page - 1) * pageSize : page * pageSize]
    return json_response({"items": shown, "page": page, "pageSize": pageSize, "totalCount": len(items)})


@router.post(
    "/stripe/webhook",
    response_class=Response,
    responses=responses(WebhookReceipt, 404, 409, 413),
    openapi_extra=_STRIPE_WEBHOOK_DOC,
)
async def stripe_webhook(request: Request) -> Response:
    """Stripe's webhook target: authenticated by the Stripe-Signature header, not by an API key."""
    payload = await read_limited_body(request, WEBHOOK_MAX_BYTES)
    signature = request.headers.get("stripe-signature")
    result = await _call(runtime_of(request).stripe.handle_webhook, payload, signature)
    return json_response(result)


@router.get("/stripe/reports", response_class=Response, responses=responses(StripeReportPage))
async def list_reports(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    meter: str | None = None,
    customer: Annotated[str | None, Query(description="Tallybook customer id")] = None,
    status: Literal["PENDING", "SENT", "REJECTED", "OUT_OF_RANGE"] | None = None,
    from_: Annotated[Instant | None, Query(alias="from", description="window start, inclusive")] = None,
    to: Annotated[Instant | None, Query(description="window start, exclusive")] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=1000)] = 100,
) -> Response:
    """Every report attempt: what was sent, Stripe's answer, status and attempts (newest first)."""
    for name, value in (("from", from_), ("to", to)):
        if value is not None and value.tzinfo is None:
            raise Problem(400, "invalid-parameters", f"{name}: add a time zone offset, e.g. 2026-01-01T00:00:00Z")
    assert status in (None, PENDING, SENT, REJECTED, OUT_OF_RANGE)
    flt = ReportFilter(
        meter=meter,
        customer_id=customer,
        status=status,
        from_us=None if from_ is None else to_micros(from_),
        to_us=None if to is None else to_micros(to),
        limit=page_size,
        offset=(page - 1) * page_size,
    )
    service = runtime_of(request).stripe
    total, rows = await _call(service.list_reports, flt)
    attempts = await _call(service.attempts_of, [r.id for r in rows])
    items = [report_json(r, attempts.get(r.id)) for r in rows]
    return json_response({"totalCount": total, "page": page, "pageSize": page_size, "items": items})


# -- checkout onboarding (OpenMeter's createStripeCheckoutSession) ---------------------------------------
_CHECKOUT_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["customer", "options"],
    "properties": {
        "customer": {
            "description": "An existing customer ({id} or {key}) or a customer to create (CustomerCreate)",
            "anyOf": [
                {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
                {"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}},
                {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
            ],
        },
        "stripeCustomerId": {"type": "string", "description": "Use this Stripe customer (cus_...)"},
        "appId": {"type": "string", "description": "Accepted and ignored: Tallybook has one Stripe app"},
        "options": {
            "type": "object",
            "properties": {
                "currency": {"type": "string", "pattern": "^[A-Za-z]{3}$"},
                "successURL": {"type": "string"},
                "cancelURL": {"type": "string"},
                "returnURL": {"type": "string"},
                "uiMode": {"type": "string", "enum": ["hosted", "embedded"]},
                "redirectOnCompletion": {"type": "string", "enum": ["always", "if_required", "never"]},
                "billingAddressCollection": {"type": "string", "enum": ["auto", "required"]},
                "clientReferenceID": {"type": "string"},
                "locale": {"type": "string"},
                "expiresAt": {"type": "integer", "description": "Unix seconds, 30 min to 24 h from now"},
                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                "paymentMethodTypes": {"type": "array", "items": {"type": "string"}},
                "customerUpdate": {"type": "object"},
                "taxIdCollection": {"type": "object"},
                "consentCollection": {"type": "object"},
                "customText": {"type": "object"},
            },
        },
    },
}


@router.post(
    "/stripe/checkout/sessions",
    status_code=201,
    response_class=Response,
    openapi_extra=_doc(_CHECKOUT_BODY_SCHEMA),
    responses=responses(CheckoutSession, 404, 409, 413, 415, status=201),
)
async def create_checkout_session(
    request: Request, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Open a Stripe Checkout Session (setup mode) to collect a customer's payment method, creating the
    customer and its Stripe customer if needed (OpenMeter's createStripeCheckoutSession)."""
    payload = await _json_body(request)
    result = await _call(runtime_of(request).checkout.create_session, payload)
    return json_response(result, 201)
