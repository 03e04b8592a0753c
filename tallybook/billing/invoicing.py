"""Invoices: lines from rate cards and usage, commitments, rounding, totals and the lifecycle.

An invoice belongs to one customer and one currency and has a kind (see `InvoiceKey`): a `period`
invoice is drafted when a billing period of the customer's subscriptions ends (their cadence and
anchor, in the customer's time zone) and holds that period's usage and in-arrears fees plus the
next period's in-advance fees; an `opening` invoice is drafted when a subscription starts and holds
its first period's in-advance fees; a `correction` invoice bills late usage of a customer whose
subscriptions have ended (tallybook/billing/final_corrections.py). Every line keeps its own service
period. Its lines, per subscription (a plan change gives two, each prorated):

- `flat_fee`: the rate card's amount * covered seconds / period seconds, in whole seconds (each
  instant truncated to its second, tallybook/exact.py; exact, then rounded), in advance (at the
  start of the period it covers) or in arrears (at its end);
- `credit`: in-advance time paid for but not used after a cancel or plan change (negative): on the
  draft holding the fee, added when the end is set (an issued invoice gets a credit note instead,
  tallybook/billing/cancel_credits.py); on the invoice of the period the subscription ended in only
  for what nothing gave back yet;
- `usage`: the meter's value over the part of the period the subscription covered, for every
  subject of the customer, rated by the rate card's price (unit, package or tiers);
- `commitment`: what a rate card's or the plan's minimum/maximum spend adds or takes off;
- `correction`: usage that arrived after an earlier invoice was issued (see below).

Every line is rounded once to the currency's minor unit; totals add rounded lines. Sums of quantities
and amounts are exact whatever their number of digits (tallybook/exact.py). Issued credit notes
(tallybook/creditnotes) count as billed: what they gave back of an in-advance fee, and the units
they took off a usage line.

Lifecycle: `draft` → `issued` → `paid` | `uncollectible` | `void` (a draft can be voided too).
The `billing.invoice` job drafts the opening invoice of each subscription that started, an
invoice for each period that ended more than its customer's grace ago, refreshes period drafts on
each run (late events change drafts; in-advance lines stay as drafted) and issues drafts older than
the draft period when the customer's billing profile auto-advances (tallybook/billing/profiles.py;
the default profile takes `invoice_grace`, `auto_issue` and `auto_issue_after` from the settings).
Issuing counts usage *as of* an ingest cutoff (tallybook/billing/cutoff.py: the commit watermark
`asOfSeq` and the instant `asOf`) and stores the quantities and the cutoff, so recomputing an
issued invoice at its cutoff gives the same lines to the cent, whatever arrives or is voided later
(`verify`, tallybook/billing/verification.py). Issuing also gives the invoice its number and seller
snapshot (tallybook/billing/documents.py), in the same transaction.

Late events for an issued period are billed on the customer's latest draft as `correction` lines:
the quantity now minus the quantity billed so far (the issued line plus issued corrections),
priced as rate(new total) - rate(billed total), so tiers stay right.

Negative usage: a meter's total for a usage-priced line can be below zero (a SUM of events with
negative values). Rating refuses negative quantities, so the line bills 0 units (no charge, no
tier reached) and says so: `usageTotal` keeps the measured figure and `warnings` holds
"usage total was -5; billed as 0", in the JSON, the HTML page and previews alike. Corrections
compare billed quantities, so a total that stays negative corrects nothing.

Usage is read with grouped queries: one query per meter and distinct period (grouped by customer),
never one per customer.

Where each job lives (one service, `InvoicingService`, built in layers, one file per job):
invoicing_model.py (invoices, lines, statuses, errors), invoicing_ports.py (the storage it needs,
a unit of work), invoicing_sql.py (tables and the SQL adapter), invoicing_segments.py (what an
invoice holds), invoicing_lines.py (line building), invoicing_compute.py (reads and computing),
invoicing_lifecycle.py (issue, refresh, void, paid), invoicing_run.py (the scheduled run) and this
module (previews and recomputation, and the names callers import).

Fault isolation: one customer's invoice that cannot be computed or written (a usage query that
fails for it, a price that cannot rate its quantity, a failed write) is recorded as a failed
`invoice` item of the `billing.invoice` job (GET /api/v1/jobs/failures) and skipped; every other
invoice of the run is drafted, refreshed or issued. Its subscriptions' `billed_through` does not
move, so every later run tries it again until it succeeds. The writes share one transaction with a
savepoint per invoice, so a failed statement (on PostgreSQL it aborts the transaction) is rolled
back to before that invoice only.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from tallybook.billing import final_corrections
from tallybook.billing.cutoff import IngestCutoff
from tallybook.billing.invoicing_model import (
    BILLED,
    CORRECTION,
    DRAFT,
    INVOICE_EVENT_TYPES,
    ISSUED,
    OPENING,
    PAID,
    PERIOD,
    STATUSES,
    UNCOLLECTIBLE,
    VOID,
    Invoice,
    InvoiceConflict,
    InvoiceError,
    InvoiceKey,
    InvoiceNotFound,
    Line,
    Totals,
    billable_quantity,
    customer_snapshot,
    invoice_from_record,
    key_of,
    totals_of,
)
from tallybook.billing.invoicing_ports import InvoiceSearch
from tallybook.billing.invoicing_run import INVOICE_ITEM, INVOICE_JOB, InvoiceDrafting
from tallybook.billing.invoicing_segments import InvoiceJob
from tallybook.clock import format_rfc3339


class InvoicingService(InvoiceDrafting):
    """Invoices of subscriptions: the scheduled run (invoicing_run.py), the lifecycle
    (invoicing_lifecycle.py), computing (invoicing_compute.py), and here previews and recomputation."""

    def preview(self, customer: str, at: datetime | None = None) -> list[Invoice]:
        """What the customer's invoices for the period holding `at` (default now) would say now."""
        at = at or self.clock.now()
        cust = self.subscriptions.customer(customer)
        self._plans.clear()
        subs = self.subscriptions.of_customers([cust.id], at, at + timedelta(microseconds=1))
        keys: list[InvoiceKey] = []
        for sub in subs:
            period = sub.schedule.period_containing(at)
            if sub.covered(period) is not None and (cust.id, sub.currency, period, PERIOD) not in keys:
                keys.append((cust.id, sub.currency, period, PERIOD))
        segments = self._segments_for(keys)
        jobs = [InvoiceJob(key, segments.get(key, [])) for key in keys]
        self._attach_previous(jobs, at)
        now = self.clock.now()
        # Late usage of ended subscriptions: the final correction invoice as it would be now.
        with self.storage.reading() as tx:
            _, records = tx.search_invoices(
                InvoiceSearch(customer_ids=(cust.id,), statuses=(DRAFT,), newest_first=False)
            )
        finals = final_corrections.correction_jobs(
            self, now, [invoice_from_record(r) for r in records], None, [cust.id]
        )
        jobs += finals
        keys += [job.key for job in finals]
        computed = self._compute(jobs, as_of=None)
        snapshot = customer_snapshot(None, cust.id, cust)
        out = []
        for key in keys:
            lines = computed[key]
            if key[3] == CORRECTION and not lines:
                continue  # no late usage pending
            out.append(
                Invoice(
                    id="",
                    customer_id=cust.id,
                    customer=snapshot,
                    currency=key[1],
                    status="preview",
                    period=key[2],
                    lines=lines,
                    totals=totals_of(lines, key[1], self.settings),
                    as_of=None,
                    revision=0,
                    created_at=now,
                    updated_at=now,
                    kind=key[3],
                )
            )
        return out

    def recompute(self, invoice_id: str, at: IngestCutoff | None = None) -> list[Line]:
        """The invoice's lines computed again from the events, counting usage at its ingest cutoff
        (`asOf` and `asOfSeq`), or at `at` (e.g. a cutoff taken now, to see what changed since).

        For an issued invoice and its own cutoff this equals its stored lines, to the cent,
        whatever arrived or was voided since. Correction lines are recomputed from the quantity
        they say was billed before.
        """
        invoice = self.get(invoice_id)
        as_of, through_seq = (invoice.as_of, invoice.as_of_seq) if at is None else (at.at, at.seq)
        self._plans.clear()
        key = key_of(invoice)
        segments = self._segments_for([key]).get(key, [])
        job = InvoiceJob(key, segments, existing=invoice, corrections_allowed=False)
        fixed = [ln for ln in invoice.lines if ln.kind == "correction"]
        lines = self._compute([job], as_of=as_of, through_seq=through_seq)[key]
        if not fixed:
            return lines
        corrections = self._recompute_corrections(invoice, fixed, as_of, through_seq)
        return lines + corrections


__all__ = [
    "BILLED",
    "CORRECTION",
    "DRAFT",
    "INVOICE_EVENT_TYPES",
    "INVOICE_ITEM",
    "INVOICE_JOB",
    "ISSUED",
    "OPENING",
    "PAID",
    "PERIOD",
    "STATUSES",
    "UNCOLLECTIBLE",
    "VOID",
    "Invoice",
    "InvoiceConflict",
    "InvoiceError",
    "InvoiceNotFound",
    "InvoicingService",
    "Line",
    "Totals",
    "billable_quantity",
    "format_rfc3339",
    "totals_of",
]
