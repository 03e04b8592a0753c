"""Billing integrity tools: the unbilled-usage report (/api/v1/billing/unbilled), and per invoice
the PDF, OpenMeter's snapshot-quantities and the verify action."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import responses
from tallybook.api.params import Instant
from tallybook.api.problems import Problem
from tallybook.api.render import json_response
from tallybook.api.security import require
from tallybook.api.wire.billing import Invoice as InvoiceShape
from tallybook.api.wire.invoice_checks import InvoiceVerification
from tallybook.api.wire.unbilled import UnbilledReport
from tallybook.auth.model import ApiKeyRecord
from tallybook.billing.documents import seller_snapshot
from tallybook.billing.export import invoice_html, invoice_json, line_json
from tallybook.billing.invoicing import Invoice
from tallybook.billing.pdf import html_to_pdf
from tallybook.billing.verification import Verification
from tallybook.clock import format_rfc3339
from tallybook.runtime import Runtime
from tallybook.unbilled.model import REASONS, UnbilledQuery
from tallybook.unbilled.service import report_json

router = APIRouter(prefix="/api/v1/billing", tags=["invoices"])
JSON_MEDIA_TYPE = "application/json"


def invoice_page(runtime: Runtime, invoice: Invoice) -> str:
    """The invoice's printable page: Stripe's number and tax when Stripe holds it; an invoice without
    a seller snapshot (a draft, a preview, or one issued before snapshots) shows its customer's
    profile as it is now."""
    external = runtime.invoice_sync.external_of([invoice.id]).get(invoice.id) if invoice.id else None
    seller = None
    if invoice.seller is None:
        profile = runtime.profiles.for_customers([invoice.customer_id])[invoice.customer_id]
        seller = seller_snapshot(profile, invoice.created_at)
    return invoice_html(invoice, external, seller)


def pdf_filename(invoice: Invoice) -> str:
    name = invoice.number or f"invoice-{invoice.id}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) + ".pdf"


@router.get(
    "/invoices/{invoiceId}/pdf",
    response_class=Response,
    responses=responses(
        None, 404, 501, content={"application/pdf": {"schema": {"type": "string", "format": "binary"}}}
    ),
)
async def get_invoice_pdf(
    request: Request, invoiceId: str, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    """The invoice as a PDF download: the printable page rendered by WeasyPrint (the `pdf` extra;
    501 when this server cannot render PDFs, saying what to install)."""
    runtime = runtime_of(request)
    invoice = await run_in_threadpool(runtime.invoicing.get, invoiceId)
    html = await run_in_threadpool(invoice_page, runtime, invoice)
    pdf = await run_in_threadpool(html_to_pdf, html)
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{pdf_filename(invoice)}"'},
    )


@router.post(
    "/invoices/{invoiceId}/snapshot-quantities",
    response_class=Response,
    responses=responses(InvoiceShape, 404, 409),
)
async def snapshot_quantities(
    request: Request, invoiceId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """OpenMeter's snapshot-quantities: count a draft's usage now (at a fresh ingest cutoff) and store
    it; 409 for an invoice that is not a draft. Issuing counts again."""
    runtime = runtime_of(request)
    invoice = await run_in_threadpool(runtime.invoicing.snapshot_quantities, invoiceId)
    external = await run_in_threadpool(runtime.invoice_sync.external_of, [invoice.id])
    return json_response(invoice_json(invoice, external.get(invoice.id)))


def _cutoff_json(as_of: datetime | None, seq: int | None) -> dict[str, Any]:
    return {"asOf": None if as_of is None else format_rfc3339(as_of), "asOfSeq": seq}


def verification_json(found: Verification) -> dict[str, Any]:
    invoice = found.invoice
    return {
        "invoiceId": invoice.id,
        "number": invoice.number,
        "status": invoice.status,
        "result": found.result,
        "reproduced": found.reproduced,
        "cutoff": _cutoff_json(*found.cutoff),
        "checkedAt": _cutoff_json(found.checked.at, found.checked.seq),
        "totals": {"stored": str(found.stored_total), "recomputed": str(found.recomputed_total)},
        "differences": [
            {
                "stored": None if d.stored is None else line_json(d.stored),
                "recomputed": None if d.recomputed is None else line_json(d.recomputed),
                "reason": d.reason,
            }
            for d in found.differences
        ],
        "sinceCutoff": [
            {
                "name": c.line.name,
                "rateCardKey": c.line.rate_card_key,
                "meter": c.line.meter,
                "period": {"from": format_rfc3339(c.line.period.start), "to": format_rfc3339(c.line.period.end)},
                "billedQuantity": str(c.billed_quantity),
                "currentQuantity": str(c.current_quantity),
                "lateEvents": c.late_events,
                "voidedEvents": c.voided_events,
                "corrections": [
                    {"invoiceId": r.invoice_id, "status": r.status, "quantity": str(r.quantity)} for r in c.corrections
                ],
                "uncorrectedQuantity": str(c.uncorrected_quantity),
            }
            for c in found.since_cutoff
        ],
    }


@router.post("/invoices/{invoiceId}/verify", response_class=Response, responses=responses(InvoiceVerification, 404))
async def verify_invoice(
    request: Request, invoiceId: str, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    """Recompute the invoice from the events at its ingest cutoff: `"reproduced exactly"`, or the
    lines that differ and why; `sinceCutoff` lists usage lines that late events or voids changed
    after the cutoff, and the corrections carrying the difference. Changes nothing."""
    found = await run_in_threadpool(runtime_of(request).invoice_checks.verify, invoiceId)
    return json_response(verification_json(found))


@router.get("/unbilled", response_class=Response, responses=responses(UnbilledReport))
async def unbilled_usage(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    from_: Annotated[Instant | None, Query(alias="from")] = None,
    to: Instant | None = None,
    asOf: Instant | None = None,
    reason: Annotated[list[str] | None, Query()] = None,
    meter: Annotated[list[str] | None, Query()] = None,
) -> Response:
    """Usage no invoice will ever carry, with event time in [from, to) (default: the last 30 days to
    now): subjects without a customer, customers without a subscription at that time, meters their
    plans do not price. `reason` and `meter` filter (repeatable); `asOf` counts as of an instant."""
    runtime = runtime_of(request)
    now = runtime.clock.now()
    end = to or now
    start = from_ or (end - timedelta(days=30))
    for value, name in ((from_, "from"), (to, "to"), (asOf, "asOf")):
        if value is not None and value.tzinfo is None:
            raise Problem(400, "invalid-parameters", f"{name}: date-times need a time zone offset, e.g. 2026-01-05Z")
    bad = [r for r in reason or () if r not in REASONS]
    if bad:
        raise Problem(400, "invalid-parameters", f"reason: must be one of {', '.join(REASONS)}, got {bad[0]!r}")
    query = UnbilledQuery(
        start.astimezone(UTC), end.astimezone(UTC), asOf, reasons=tuple(reason or ()), meters=tuple(meter or ())
    )
    report = await run_in_threadpool(runtime.unbilled.report, query)
    return json_response(report_json(report))
