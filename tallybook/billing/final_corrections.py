"""Late usage of subscriptions that have ended: a final correction invoice, or credit notes.

Late events (or voids) for a period whose invoice was issued are billed on the customer's next
period invoice, as `correction` lines. A customer whose subscriptions in a currency have all ended
gets no next period invoice, so their late usage would be billed nowhere. For such a customer and
currency the `billing.invoice` run instead:

- drafts a **final correction invoice** (kind `correction`) holding the corrections that raise what
  was billed (and any that lower it but cannot be credited, below), once the customer's last period
  invoice was issued at least the billing profile's grace ago (late events that arrive together are
  billed together). It is refreshed like a period draft while it is one, and issued like any draft;
- issues a **credit note** against each invoice whose usage went down (voided events, negative late
  events): an issued invoice is never edited. A credit note never takes an invoice below zero; what
  would stays on the correction invoice as a negative line.

Its `period` runs from the start of the earliest period it may correct to the instant it was
drafted, which keeps successive correction invoices of one customer apart (the invoice key is
unique). Previews show the pending corrections of ended subscriptions as a `correction` invoice.
A customer with a subscription still running (or scheduled) in that currency gets its corrections
on that subscription's next period invoice, as before; an open correction draft keeps them until
it is issued, so the two never bill the same usage.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from tallybook.billing.invoicing_model import (
    BILLED,
    CORRECTION,
    PERIOD,
    Invoice,
    InvoiceKey,
    Line,
    invoice_from_record,
    key_of,
)
from tallybook.billing.invoicing_ports import InvoiceSearch
from tallybook.billing.invoicing_segments import InvoiceJob
from tallybook.billing.periods import Period
from tallybook.billing.subscriptions import subscription_from_row
from tallybook.clock import to_micros
from tallybook.creditnotes.model import CORRECTION as CORRECTION_LINE
from tallybook.creditnotes.model import USAGE_CORRECTION, CreditNoteLine, CreditNoteRequest
from tallybook.exact import total

if TYPE_CHECKING:
    from tallybook.billing.invoicing_compute import InvoiceComputation
    from tallybook.jobs.runs import JobRun

log = logging.getLogger(__name__)

ZERO = Decimal(0)


def correction_jobs(
    svc: InvoiceComputation,
    now: datetime,
    drafts: Sequence[Invoice],
    graces: Callable[[Sequence[str]], dict[str, timedelta]] | None,
    customer_ids: Sequence[str] | None = None,
) -> list[InvoiceJob]:
    """One job per customer and currency whose late usage needs a final correction: an open
    correction draft to refresh, or (all its subscriptions ended, no period draft, its last period
    invoice issued at least its billing profile's grace ago: `graces(customer ids)`; no wait without
    it) a new one.
    `drafts`: the drafts of the customers concerned (all drafts, for the scheduled run)."""
    earliest = now - svc.settings.correction_lookback
    ids = None if customer_ids is None else tuple(customer_ids)
    with svc.storage.reading() as tx:
        search = InvoiceSearch(
            customer_ids=ids, statuses=BILLED, period_end_from_us=to_micros(earliest), newest_first=False
        )
        _, records = tx.search_invoices(search)
        billed: dict[tuple[str, str], list[Invoice]] = defaultdict(list)
        for record in records:
            invoice = invoice_from_record(record)
            if invoice.kind == PERIOD:
                billed[(invoice.customer_id, invoice.currency)].append(invoice)
        open_drafts = {(d.customer_id, d.currency): d for d in drafts if d.kind == CORRECTION}
        with_period_draft = {(d.customer_id, d.currency) for d in drafts if d.kind == PERIOD}
        pairs = [p for p in billed if p in open_drafts or p not in with_period_draft]
        subscription_rows = tx.list_subscriptions(sorted({p[0] for p in pairs})) if pairs else []
    running: set[tuple[str, str]] = set()
    for row in subscription_rows:
        try:
            sub = subscription_from_row(row)
        except Exception:  # a broken row: its customer's corrections wait (the period run records it)
            log.warning("subscription row cannot be read; final corrections wait", extra={"subscription_id": row["id"]})
            running.add((row["customer_id"], row["currency"]))
            continue
        ended = sub.active_to is not None and (
            sub.active_to <= sub.active_from
            or (sub.active_to <= now and sub.billed_through is not None and sub.billed_through >= sub.active_to)
        )
        if not ended:
            running.add((sub.customer_id, sub.currency))
    waiting = [p for p in pairs if p not in open_drafts and p not in running]
    grace = {} if graces is None or not waiting else graces(sorted({p[0] for p in waiting}))
    jobs: list[InvoiceJob] = []
    for pair in pairs:
        previous = sorted(billed[pair], key=lambda i: i.period.start)
        draft = open_drafts.get(pair)
        if draft is not None:
            jobs.append(InvoiceJob(key_of(draft), [], existing=draft, corrections_allowed=False, previous=previous))
            continue
        if pair in running:
            continue
        last_issue = max((i.issued_at for i in previous if i.issued_at is not None), default=None)
        if graces is not None and (last_issue is None or last_issue + grace[pair[0]] > now):
            continue
        key = (pair[0], pair[1], Period(previous[0].period.start, now), CORRECTION)
        jobs.append(InvoiceJob(key, [], corrections_allowed=False, previous=previous))
    return jobs


def settle(
    svc: InvoiceComputation, computed: dict[InvoiceKey, list[Line]], finals: dict[InvoiceKey, InvoiceJob], run: JobRun
) -> tuple[list[CreditNoteRequest], list[Invoice]]:
    """Split each computed final correction (in place): `computed` keeps what the invoice bills, and
    loses the keys left with nothing to bill (or that failed here: recorded, tried again next run);
    returned are the credit notes to issue and the open correction drafts that have nothing left to
    bill (to be voided)."""
    requests: list[CreditNoteRequest] = []
    emptied: list[Invoice] = []
    for key in [k for k in finals if k in computed]:
        with run.item("final_correction", f"{key[0]}|{key[1]}", customerId=key[0], currency=key[1]) as item:
            kept, found = split(computed[key], *credit_targets(svc, finals[key].previous))
        if item.failed:
            del computed[key]
            continue
        computed[key] = kept
        requests.extend(found)
        if not kept:
            del computed[key]
            draft = finals[key].existing
            if draft is not None:
                emptied.append(draft)
    return requests, emptied


def issue_credit_notes(svc: InvoiceComputation, requests: Sequence[CreditNoteRequest], run: JobRun) -> int:
    """Issue each credit note on its own: one that fails is recorded in the run and tried again next
    run (its usage is still not credited then); the others are issued."""
    issued = 0
    if svc.credit_notes is None:
        return issued
    for request in requests:
        with run.item("credit_note", f"{request.invoice_id}|{request.reason}", invoiceId=request.invoice_id) as item:
            svc.credit_notes.issue(request)
        issued += 0 if item.failed else 1
    return issued


def credit_targets(
    svc: InvoiceComputation, invoices: Sequence[Invoice]
) -> tuple[dict[str, list[str]], dict[str, Decimal]]:
    """For each of these invoices, the billed invoices that billed its usage: those that billed its
    late usage as corrections, newest first, then itself; and what is left of each of those for
    credit notes (its total minus the credit notes issued against it)."""
    ids = [i.id for i in invoices]
    targets: dict[str, list[str]] = {iid: [] for iid in ids}
    with svc.storage.reading() as tx:
        for row in tx.corrections_of(ids) if ids else []:
            raised = row["quantity"] is not None and Decimal(row["quantity"]) > 0
            later = targets.get(row["corrects_invoice_id"])
            if row["invoice_status"] in BILLED and raised and later is not None and row["invoice_id"] not in later:
                later.append(row["invoice_id"])
        for iid in ids:
            targets[iid] = [*sorted(targets[iid], reverse=True), iid]  # ULIDs: newest first
        every = sorted({t for found in targets.values() for t in found})
        totals = tx.invoice_totals(every)
    credited = svc.credit_notes.credited_totals(every) if svc.credit_notes else {}
    left = {t: total([Decimal(totals[t])], -credited.get(t, ZERO)) for t in every if t in totals}
    return targets, left


def split(
    lines: Sequence[Line], targets: dict[str, list[str]], creditable: dict[str, Decimal]
) -> tuple[list[Line], list[CreditNoteRequest]]:
    """The lines a final correction invoice bills, and the credit notes for usage that went down.

    Corrections that lower the usage of an invoice become a credit note against the invoice that
    billed those units (`targets[invoice]`: the invoices that billed its usage, the latest late
    usage first, then the invoice itself), the first whose credit notes stay within its total
    (`creditable`: what is left of each); if none can take it, it stays on the invoice. Lines of
    zero amount go along with the invoice's other lines (they move billed quantities).
    """
    lowering: dict[str, list[Line]] = defaultdict(list)
    for line in lines:
        if line.amount < 0 and line.corrects_invoice_id is not None:
            lowering[line.corrects_invoice_id].append(line)
    left = dict(creditable)
    credited: set[int] = set()
    requests: list[CreditNoteRequest] = []
    for corrected, group in lowering.items():
        amount = -total(ln.amount for ln in group)
        target = next((t for t in targets.get(corrected, [corrected]) if amount <= left.get(t, ZERO)), None)
        if target is None:
            continue  # more than is left of any invoice that billed it: a negative line on the invoice
        left[target] = total([left[target]], -amount)
        credited.update(id(ln) for ln in group)
        requests.append(
            CreditNoteRequest(
                invoice_id=target,
                reason=USAGE_CORRECTION,
                lines=tuple(_credit_line(ln) for ln in group),
                memo="Usage billed on this invoice went down after it was issued (voided or negative late events).",
            )
        )
    kept = [ln for ln in lines if id(ln) not in credited]
    if all(ln.amount == 0 for ln in kept):
        kept = []
    return kept, requests


def _credit_line(line: Line) -> CreditNoteLine:
    detail = line.detail or {}
    return CreditNoteLine(
        kind=CORRECTION_LINE,
        name=line.name,
        period=line.period,
        amount=-line.amount,
        subscription_id=line.subscription_id,
        rate_card_key=line.rate_card_key,
        meter=line.meter,
        quantity=None if line.quantity is None else -line.quantity,
        unit_price=line.unit_price,
        tax_code=line.tax_code,
        description=(
            f"usage lowered by {-line.quantity if line.quantity is not None else 'some units'} after it was billed "
            "(voided or negative late events)"
        ),
        corrects_invoice_id=line.corrects_invoice_id,
        detail={k: detail[k] for k in ("previousQuantity", "quantity") if k in detail} or None,
    )


__all__ = ["CORRECTION", "correction_jobs", "credit_targets", "issue_credit_notes", "settle", "split"]
