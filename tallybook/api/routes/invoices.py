"""Invoices: /api/v1/billing/invoices, plus a customer's current-period preview and usage."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import responses
from tallybook.api.params import Instant
from tallybook.api.problems import Problem
from tallybook.api.render import json_response
from tallybook.api.routes.invoice_tools import invoice_page
from tallybook.api.security import require
from tallybook.api.wire.billing import CustomerUsage, InvoiceList, InvoicePage
from tallybook.api.wire.billing import Invoice as InvoiceShape
from tallybook.auth.model import ApiKeyRecord
from tallybook.billing.export import invoice_json
from tallybook.billing.invoicing import STATUSES, Invoice, InvoiceError
from tallybook.billing.subscriptions import SubscriptionError
from tallybook.clock import format_rfc3339

router = APIRouter(prefix="/api/v1/billing", tags=["invoices"])
JSON_MEDIA_TYPE = "application/json"


def _problem(exc: InvoiceError | SubscriptionError) -> Problem:
    return Problem(exc.status, exc.code, exc.detail, **exc.extra)


def _wants_html(request: Request, format_: str | None) -> bool:
    if format_ is not None:
        return format_ == "html"
    accept = request.headers.get("accept", "")
    return "text/html" in accept and JSON_MEDIA_TYPE not in accept


async def _external(request: Request, invoices: list[Invoice]) -> dict[str, dict[str, Any]]:
    """Where the collecting app (Stripe) holds these invoices: number, external ids, sync state."""
    ids = [i.id for i in invoices if i.id]
    return await run_in_threadpool(runtime_of(request).invoice_sync.external_of, ids)


async def _invoice_response(request: Request, invoice: Invoice, html: bool) -> Response:
    if html:
        page = await run_in_threadpool(invoice_page, runtime_of(request), invoice)  # also the PDF's page
        return Response(page, media_type="text/html; charset=utf-8")
    external = (await _external(request, [invoice])).get(invoice.id)
    return json_response(invoice_json(invoice, external))


@router.get("/invoices", response_class=Response, responses=responses(InvoicePage, 404))
async def list_invoices(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    customerId: str | None = None,
    status: Annotated[list[str] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    """Invoices, newest period first; filter by customer (id or key) and `status` (repeatable)."""
    for value in status or ():
        if value not in STATUSES:
            raise Problem(400, "invalid-parameters", f"status: must be one of {', '.join(STATUSES)}, got {value!r}")
    invoicing = runtime_of(request).invoicing
    try:
        total, found = await run_in_threadpool(invoicing.list_invoices, customerId, status, limit, offset)
    except (InvoiceError, SubscriptionError) as exc:
        raise _problem(exc) from None
    external = await _external(request, found)
    items = [invoice_json(i, external.get(i.id)) for i in found]
    return json_response({"totalCount": total, "limit": limit, "offset": offset, "items": items})


@router.get(
    "/invoices/{invoiceId}",
    response_class=Response,
    responses=responses(InvoiceShape, 404, content={"text/html": {"schema": {"type": "string"}}}),
)
async def get_invoice(
    request: Request,
    invoiceId: str,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    format: Annotated[str | None, Query(pattern="^(json|html)$")] = None,
) -> Response:
    """One invoice as JSON, or as a printable HTML page (`?format=html` or `Accept: text/html`)."""
    try:
        invoice = await run_in_threadpool(runtime_of(request).invoicing.get, invoiceId)
    except InvoiceError as exc:
        raise _problem(exc) from None
    return await _invoice_response(request, invoice, _wants_html(request, format))


@router.get(
    "/invoices/{invoiceId}/html",
    response_class=Response,
    responses=responses(None, 404, content={"text/html": {"schema": {"type": "string"}}}),
)
async def get_invoice_html(
    request: Request, invoiceId: str, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    """The printable page (print it to PDF from the browser)."""
    try:
        invoice = await run_in_threadpool(runtime_of(request).invoicing.get, invoiceId)
    except InvoiceError as exc:
        raise _problem(exc) from None
    return await _invoice_response(request, invoice, True)


async def _transition(request: Request, invoice_id: str, action: str) -> Response:
    invoicing = runtime_of(request).invoicing
    method = {
        "advance": invoicing.issue,
        "approve": invoicing.issue,
        "void": invoicing.void,
        "mark-paid": invoicing.mark_paid,
        "mark-uncollectible": invoicing.mark_uncollectible,
    }[action]
    try:
        invoice = await run_in_threadpool(method, invoice_id)
    except InvoiceError as exc:
        raise _problem(exc) from None
    return await _invoice_response(request, invoice, False)


@router.post("/invoices/{invoiceId}/advance", response_class=Response, responses=responses(InvoiceShape, 404, 409))
async def advance_invoice(
    request: Request, invoiceId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Issue a draft: usage is counted as of now and frozen; the meters used are locked."""
    return await _transition(request, invoiceId, "advance")


@router.post("/invoices/{invoiceId}/approve", response_class=Response, responses=responses(InvoiceShape, 404, 409))
async def approve_invoice(
    request: Request, invoiceId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Same as advance: approve a draft that waits for manual approval."""
    return await _transition(request, invoiceId, "approve")


@router.post("/invoices/{invoiceId}/void", response_class=Response, responses=responses(InvoiceShape, 404, 409))
async def void_invoice(
    request: Request, invoiceId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Void a draft or an issued invoice. Final: its period is not invoiced again."""
    return await _transition(request, invoiceId, "void")


@router.post("/invoices/{invoiceId}/mark-paid", response_class=Response, responses=responses(InvoiceShape, 404, 409))
async def mark_invoice_paid(
    request: Request, invoiceId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    return await _transition(request, invoiceId, "mark-paid")


@router.post(
    "/invoices/{invoiceId}/mark-uncollectible", response_class=Response, responses=responses(InvoiceShape, 404, 409)
)
async def mark_invoice_uncollectible(
    request: Request, invoiceId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    return await _transition(request, invoiceId, "mark-uncollectible")


@router.post("/invoices/{invoiceId}/sync", response_class=Response, responses=responses(InvoiceShape, 404, 409))
async def sync_invoice(
    request: Request, invoiceId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Sync the invoice to Stripe now (after fixing what its `sync.error` names), whatever its backoff."""
    runtime = runtime_of(request)
    try:
        await run_in_threadpool(runtime.invoice_sync.sync_now, invoiceId)
        invoice = await run_in_threadpool(runtime.invoicing.get, invoiceId)
    except InvoiceError as exc:
        raise _problem(exc) from None
    return await _invoice_response(request, invoice, False)


def _at(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise Problem(400, "invalid-parameters", "at: date-times need a time zone offset, e.g. 2026-01-05T10:00:00Z")
    return value


@router.get(
    "/customers/{customerId}/invoices/simulate",
    response_class=Response,
    responses=responses(InvoiceList, 404, content={"text/html": {"schema": {"type": "string"}}}),
)
async def simulate_invoices(
    request: Request,
    customerId: str,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    at: Instant | None = None,
    format: Annotated[str | None, Query(pattern="^(json|html)$")] = None,
) -> Response:
    """What the customer's invoice for the current period (or the one holding `at`) says now. Nothing is stored."""
    invoicing = runtime_of(request).invoicing
    try:
        previews = await run_in_threadpool(invoicing.preview, customerId, _at(at))
    except (InvoiceError, SubscriptionError) as exc:
        raise _problem(exc) from None
    if _wants_html(request, format) and len(previews) == 1:
        return await _invoice_response(request, previews[0], True)
    return json_response({"items": [invoice_json(p) for p in previews]})


@router.get("/customers/{customerId}/usage", response_class=Response, responses=responses(CustomerUsage, 404))
async def current_usage(
    request: Request,
    customerId: str,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    at: Instant | None = None,
) -> Response:
    """The customer's usage per rate card in the current billing period, with the charge so far."""
    invoicing = runtime_of(request).invoicing
    try:
        previews = await run_in_threadpool(invoicing.preview, customerId, _at(at))
    except (InvoiceError, SubscriptionError) as exc:
        raise _problem(exc) from None
    items = []
    for preview in previews:
        for line in preview.lines:
            if line.kind != "usage":
                continue
            items.append(
                {
                    "meter": line.meter,
                    "rateCardKey": line.rate_card_key,
                    "name": line.name,
                    "subscriptionId": line.subscription_id,
                    "from": format_rfc3339(line.period.start),
                    "to": format_rfc3339(line.period.end),
                    "quantity": str(line.quantity),
                    "amount": str(line.amount),
                    "currency": preview.currency,
                }
            )
    periods = [{"from": format_rfc3339(p.period.start), "to": format_rfc3339(p.period.end)} for p in previews]
    return json_response(
        {"customerId": previews[0].customer_id if previews else customerId, "periods": periods, "usage": items}
    )
