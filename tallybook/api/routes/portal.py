"""OpenMeter's consumer portal API: /api/v1/portal.

Admins issue tokens bound to one customer or subject (`POST /tokens`), list and invalidate them.
A token holder may only query meters (`GET /meters/{slug}/query`), and only its own usage. Portal
tokens are a separate credential: the API-key dependency doesn't know them (their hashes live in
another table), and the portal dependency below accepts nothing else.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import json_body, responses
from tallybook.api.params import Instant
from tallybook.api.problems import Problem
from tallybook.api.render import json_response
from tallybook.api.routes.meters import QUERY_PARAMETERS, _json_body, _query_from_params, _run_query
from tallybook.api.security import presented_key, require
from tallybook.api.wire.entitlements import PortalEntitlements, render_grant, render_value
from tallybook.api.wire.meters import CSV_CONTENT, MeterQueryResult
from tallybook.api.wire.portal import InvoiceEstimate, PortalHolderInfo
from tallybook.api.wire.portal import PortalToken as PortalTokenShape
from tallybook.auth.model import ApiKeyRecord
from tallybook.clock import format_rfc3339
from tallybook.entitlements.model import EntitlementError
from tallybook.portal.service import PortalHolder, PortalToken

router = APIRouter(prefix="/api/v1/portal", tags=["portal"])

Admin = Annotated[ApiKeyRecord, Depends(require("admin"))]


class TokenBody(BaseModel):
    """OpenMeter's PortalToken (subject, allowedMeterSlugs) plus Tallybook's customerId and expiresAt."""

    model_config = ConfigDict(extra="forbid")

    subject: str | None = Field(None, min_length=1, max_length=256)
    customerId: str | None = Field(None, min_length=1, max_length=256)
    expiresAt: Instant | None = None
    allowedMeterSlugs: list[str] | None = Field(None, max_length=100)


class InvalidateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, min_length=1)
    subject: str | None = Field(None, min_length=1)
    customerId: str | None = Field(None, min_length=1)


def token_json(token: PortalToken, now: datetime, plaintext: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": token.id,
        "subject": token.subject,
        "expiresAt": format_rfc3339(token.expires_at),
        "expired": token.expired(now),
        "createdAt": format_rfc3339(token.created_at),
    }
    if token.customer_id is not None:
        body["customerId"] = token.customer_id
    if token.allowed_meters is not None:
        body["allowedMeterSlugs"] = list(token.allowed_meters)
    if token.invalidated_at is not None:
        body["invalidatedAt"] = format_rfc3339(token.invalidated_at)
    if plaintext is not None:
        body["token"] = plaintext
    return body


async def portal_holder(request: Request) -> PortalHolder:
    """The dependency of the holder-facing routes: a live portal token, and nothing else."""
    secret = presented_key(request)
    if secret is None:
        raise Problem(401, "unauthenticated", "send a portal token as 'Authorization: Bearer <token>'")
    holder = await run_in_threadpool(runtime_of(request).portal.verify, secret)
    if holder is None:
        raise Problem(401, "unauthenticated", "the portal token is unknown, expired or invalidated")
    return holder


Holder = Annotated[PortalHolder, Depends(portal_holder)]


# -- admin: issuing tokens --------------------------------------------------------------------------
@router.post(
    "/tokens", responses=responses(PortalTokenShape, 404, 413), openapi_extra=json_body(("application/json", TokenBody))
)
async def create_token(request: Request, _key: Admin) -> Response:
    """Issue a token for one customer (`customerId`, id or key) or one `subject`. The token is shown once."""
    body: TokenBody = await _json_body(request, TokenBody)
    runtime = runtime_of(request)
    created = await run_in_threadpool(
        lambda: runtime.portal.create(
            subject=body.subject,
            customer=body.customerId,
            expires_at=body.expiresAt,
            allowed_meters=body.allowedMeterSlugs,
        )
    )
    return json_response(token_json(created.token, runtime.clock.now(), created.plaintext))


@router.get("/tokens", response_model=list[PortalTokenShape])
async def list_tokens(request: Request, _key: Admin, limit: Annotated[int, Query(ge=1, le=100)] = 25) -> Response:
    """The newest tokens (never their secrets)."""
    runtime = runtime_of(request)
    tokens = await run_in_threadpool(runtime.portal.list, limit)
    now = runtime.clock.now()
    return json_response([token_json(t, now) for t in tokens])


@router.post(
    "/tokens/invalidate",
    status_code=204,
    response_class=Response,
    responses=responses(None, 404, 413),
    openapi_extra=json_body(("application/json", InvalidateBody)),
)
async def invalidate_tokens(request: Request, _key: Admin) -> Response:
    """Invalidate a token by `id`, every token of a `subject`, or every token of a `customerId`."""
    body: InvalidateBody = await _json_body(request, InvalidateBody)
    portal = runtime_of(request).portal
    await run_in_threadpool(lambda: portal.invalidate(body.id, body.subject, body.customerId))
    return Response(status_code=204)


# -- token holders ----------------------------------------------------------------------------------
@router.get(
    "/meters/{meterSlug}/query",
    responses=responses(MeterQueryResult, 403, 404, content=CSV_CONTENT),
    openapi_extra=QUERY_PARAMETERS,
)
async def query_portal_meter(meterSlug: str, request: Request, holder: Holder) -> Response:
    """The holder's usage of one meter; same parameters and answer as `GET /api/v1/meters/{slug}/query`."""
    portal = runtime_of(request).portal
    asked = _query_from_params(meterSlug, request)
    scoped = await run_in_threadpool(portal.scope_query, holder, asked)
    return await _run_query(request, scoped)


def _billing_period(runtime: Any, customer_id: str, now: datetime) -> tuple[datetime, datetime] | None:
    """The billing period holding `now` of the customer's active subscription (the earliest-started
    one if there are several), or None without one."""
    subscriptions = getattr(runtime, "subscriptions", None)
    if subscriptions is None:
        return None
    active = subscriptions.of_customers([customer_id], now, now + timedelta(microseconds=1))
    if not active:
        return None
    period = min(active, key=lambda sub: sub.active_from).schedule.period_containing(now)
    return period.start, period.end


def _current_month(zone_name: str, now: datetime) -> tuple[datetime, datetime]:
    local = now.astimezone(ZoneInfo(zone_name))
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


@router.get("/me", response_model=PortalHolderInfo)
async def portal_me(request: Request, holder: Holder) -> Response:
    """Tallybook extension for the portal page: whose usage this is, the meters it may read, the period."""
    runtime = runtime_of(request)
    meters = await run_in_threadpool(runtime.portal.meters_for, holder)
    customer = holder.customer
    zone = (customer.timezone if customer else None) or "UTC"
    now = runtime.clock.now()
    billing_period = await run_in_threadpool(_billing_period, runtime, customer.id, now) if customer else None
    if billing_period is not None:
        tz = ZoneInfo(zone)
        start, end, source = billing_period[0].astimezone(tz), billing_period[1].astimezone(tz), "subscription"
    else:
        (start, end), source = _current_month(zone, now), "calendar_month"
    body: dict[str, Any] = {
        "subject": holder.token.subject,
        "customer": {"id": customer.id, "name": customer.name} if customer else None,
        "expiresAt": format_rfc3339(holder.token.expires_at),
        "timeZone": zone,
        "currentPeriod": {"from": start.isoformat(), "to": end.isoformat()},
        "periodSource": source,  # the customer's billing period, else the calendar month
        "meters": [
            {
                "slug": m.slug,
                "name": m.name,
                "description": m.description,
                "aggregation": m.aggregation.value,
                "groupBy": sorted(m.group_by),
            }
            for m in meters
        ],
    }
    return json_response(body)


def _estimate(runtime: Any, holder: PortalHolder) -> list[dict[str, Any]]:
    # Billing is optional: imported only when the runtime has it, so the portal runs without it.
    from tallybook.billing.export import invoice_json
    from tallybook.billing.invoicing import InvoiceError
    from tallybook.billing.subscriptions import SubscriptionError

    assert holder.customer is not None
    try:
        previews = runtime.invoicing.preview(holder.customer.id, None)
    except (InvoiceError, SubscriptionError) as exc:
        raise Problem(exc.status, exc.code, str(exc)) from None
    items = []
    for preview in previews:
        visible, partial = runtime.portal.scope_invoice(holder, preview)
        body = invoice_json(visible)
        if partial:
            # The holder's token reads only some meters: say so rather than show a total that
            # silently disagrees with the invoice the customer will get.
            body["partial"] = True
        items.append(body)
    return items


@router.get("/invoice-estimate", responses=responses(InvoiceEstimate, 404))
async def portal_invoice_estimate(request: Request, holder: Holder) -> Response:
    """Tallybook extension: the holder's upcoming invoice(s) for the current period, as they stand now.

    404 when this server has no billing, or the token is bound to a bare subject (invoices are per
    customer); an empty list when the customer has no subscription covering today.
    """
    runtime = runtime_of(request)
    if getattr(runtime, "invoicing", None) is None:
        raise Problem(404, "billing-not-available", "this server does not bill; there is no invoice estimate")
    if holder.customer is None:
        raise Problem(404, "not-a-customer", "invoice estimates need a token bound to a customer")
    items = await run_in_threadpool(_estimate, runtime, holder)
    return json_response({"items": items})


def _entitlements(runtime: Any, holder: PortalHolder) -> dict[str, Any]:
    service = runtime.entitlements
    if holder.customer is not None:
        customer = holder.customer
    else:
        try:
            customer = service.customer_of_subject(holder.token.subject)
        except EntitlementError:
            return {"entitlements": []}
    now = runtime.clock.now()
    items = []
    for key, value in sorted(service.access(customer, now).items()):
        entitlement = value.entitlement
        body: dict[str, Any] = {"featureKey": key, "type": entitlement.type, **render_value(value)}
        if value.period_start is not None and value.period_end is not None:
            body["currentUsagePeriod"] = {
                "from": format_rfc3339(value.period_start),
                "to": format_rfc3339(value.period_end),
            }
        if entitlement.type == "metered":
            grants = service.grants_of(customer, entitlement.id)
            body["grants"] = [
                {
                    k: v
                    for k, v in render_grant(g).items()
                    if k in ("id", "amount", "priority", "effectiveAt", "expiresAt", "recurrence")
                }
                for g in grants
            ]
        items.append(body)
    return {"entitlements": items}


@router.get("/entitlements", responses=responses(PortalEntitlements))
async def portal_entitlements(request: Request, holder: Holder) -> Response:
    """Tallybook extension: the holder's own entitlements, with access, balance and grants (read only)."""
    return json_response(await run_in_threadpool(_entitlements, runtime_of(request), holder))
