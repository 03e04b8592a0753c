"""Verify an invoice: recompute it from the events at its ingest cutoff and compare, to the cent.

An invoice records the cutoff its quantities were counted at (`asOf` and the commit watermark
`asOfSeq`, tallybook/billing/cutoff.py). Recomputing it at that cutoff reads exactly the rows it
read then, so an issued invoice is *reproduced exactly*: every line's quantity and amount, and so
the totals. When it is not, the answer lists the lines that differ and why (an invoice counted
before watermarks were recorded, a customer whose subjects changed, a plan or rounding change).

The same answer also says what changed *since* the cutoff: for each usage line whose quantity,
counted now, differs from the quantity billed, how many events arrived late or were voided after
the cutoff for that line's customer, meter and period, and which later invoices carry the
difference as correction lines. That is the difference a correction is (or will be) made of; a
difference no invoice carries is what the unbilled-usage report calls out (tallybook/unbilled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from tallybook.billing.cutoff import IngestCutoff, take_cutoff
from tallybook.billing.invoicing import InvoicingService
from tallybook.billing.invoicing_model import BILLED, Invoice, Line, totals_of
from tallybook.billing.invoicing_ports import InvoiceStorage, InvoiceTransaction
from tallybook.clock import Clock, to_micros

REPRODUCED = "reproduced exactly"
DIFFERS = "differs"

LineKey = tuple[str, str | None, str | None, str | None, datetime, datetime, str | None]


def line_key(line: Line) -> LineKey:
    return (
        line.kind,
        line.subscription_id,
        line.rate_card_key,
        line.meter,
        line.period.start,
        line.period.end,
        line.corrects_invoice_id,
    )


@dataclass(frozen=True, slots=True)
class LineDifference:
    """A line whose recomputation at the invoice's cutoff does not match what is stored."""

    stored: Line | None  # None: the recomputation has a line the invoice lacks
    recomputed: Line | None  # None: the invoice has a line the recomputation lacks
    reason: str


@dataclass(frozen=True, slots=True)
class Correction:
    invoice_id: str
    status: str
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class ChangeSinceCutoff:
    """A usage line whose quantity, counted now, is not what was billed at the cutoff."""

    line: Line
    billed_quantity: Decimal  # the line's quantity at the cutoff
    current_quantity: Decimal  # counted now (billable: a negative total counts as 0)
    late_events: int  # stored after the cutoff, counted now
    voided_events: int  # counted at the cutoff, voided since
    corrections: list[Correction] = field(default_factory=list)

    @property
    def corrected_quantity(self) -> Decimal:
        """What later issued (or paid, uncollectible) invoices have billed of the difference."""
        return sum((c.quantity for c in self.corrections if c.status in BILLED), Decimal(0))

    @property
    def uncorrected_quantity(self) -> Decimal:
        return self.current_quantity - self.billed_quantity - self.corrected_quantity


@dataclass(frozen=True, slots=True)
class Verification:
    invoice: Invoice
    cutoff: tuple[datetime | None, int | None]  # the invoice's asOf and asOfSeq
    checked: IngestCutoff  # the cutoff "now" was counted at
    stored_total: Decimal
    recomputed_total: Decimal
    differences: list[LineDifference]
    since_cutoff: list[ChangeSinceCutoff]

    @property
    def reproduced(self) -> bool:
        return not self.differences and self.stored_total == self.recomputed_total

    @property
    def result(self) -> str:
        return REPRODUCED if self.reproduced else DIFFERS


def _difference_reason(invoice: Invoice, stored: Line | None, recomputed: Line | None) -> str:
    if stored is None:
        return "the recomputation has this line and the invoice does not: the subscription or plan changed since"
    if recomputed is None:
        return "the invoice has this line and the recomputation does not: the subscription or plan changed since"
    if stored.quantity != recomputed.quantity:
        if invoice.as_of_seq is None:
            return (
                "the usage counted at asOf differs; this invoice was counted before Tallybook recorded ingest "
                "watermarks, so an event ingested before asOf whose transaction committed after it counts now"
            )
        return (
            "the usage counted at the invoice's cutoff differs: usage is read for the subjects the customer has "
            "now, so a subject added to or removed from the customer since changes it"
        )
    return "same quantity, different amount: the price or the rounding setting changed since"


class InvoiceVerifier:
    def __init__(self, storage: InvoiceStorage, clock: Clock, invoicing: InvoicingService) -> None:
        self.storage = storage
        self.clock = clock
        self.invoicing = invoicing

    def verify(self, invoice_id: str) -> Verification:
        invoice = self.invoicing.get(invoice_id)
        recomputed = self.invoicing.recompute(invoice_id)
        differences = self._compare(invoice, recomputed)
        settings = self.invoicing.settings
        recomputed_total = totals_of(recomputed, invoice.currency, settings).total
        now = take_cutoff(self.storage, self.clock)
        current = self.invoicing.recompute(invoice_id, at=now)
        return Verification(
            invoice=invoice,
            cutoff=(invoice.as_of, invoice.as_of_seq),
            checked=now,
            stored_total=invoice.totals.total,
            recomputed_total=recomputed_total,
            differences=differences,
            since_cutoff=self._since_cutoff(invoice, current),
        )

    def _compare(self, invoice: Invoice, recomputed: list[Line]) -> list[LineDifference]:
        stored = {line_key(ln): ln for ln in invoice.lines}
        again = {line_key(ln): ln for ln in recomputed}
        out: list[LineDifference] = []
        for key in dict.fromkeys([*stored, *again]):
            a, b = stored.get(key), again.get(key)
            if a is not None and b is not None and a.row() == b.row():
                continue
            out.append(LineDifference(a, b, _difference_reason(invoice, a, b)))
        return out

    def _since_cutoff(self, invoice: Invoice, current: list[Line]) -> list[ChangeSinceCutoff]:
        now_by_key = {line_key(ln): ln for ln in current}
        changed: list[tuple[Line, Decimal]] = []
        for line in invoice.lines:
            if line.kind != "usage" or line.meter is None or line.quantity is None:
                continue
            counted = now_by_key.get(line_key(line))
            if counted is None or counted.quantity is None or counted.quantity == line.quantity:
                continue
            changed.append((line, counted.quantity))
        if not changed:
            return []
        with self.storage.reading() as tx:
            subjects = tx.customer_subjects(invoice.customer_id)
            corrections = tx.corrections_of([invoice.id])
            out = []
            for line, quantity in changed:
                late, voided = _event_changes(tx, invoice, line, subjects)
                carried = [
                    Correction(row["invoice_id"], row["invoice_status"], Decimal(row["quantity"]))
                    for row in corrections
                    if row["quantity"] is not None
                    and row["subscription_id"] == line.subscription_id
                    and row["rate_card_key"] == line.rate_card_key
                    and row["period_start_us"] == to_micros(line.period.start)
                    and row["period_end_us"] == to_micros(line.period.end)
                ]
                assert line.quantity is not None
                out.append(ChangeSinceCutoff(line, line.quantity, quantity, late, voided, carried))
        return out


def _event_changes(tx: InvoiceTransaction, invoice: Invoice, line: Line, subjects: list[str]) -> tuple[int, int]:
    """(events counted now but not at the cutoff, events counted at the cutoff but voided since) for
    this line's meter, period and the customer's subjects."""
    assert line.meter is not None
    if not subjects or invoice.as_of is None:
        return 0, 0
    start_us, end_us = to_micros(line.period.start), to_micros(line.period.end)
    return tx.usage_changes(line.meter, subjects, start_us, end_us, to_micros(invoice.as_of), invoice.as_of_seq)


__all__ = [
    "DIFFERS",
    "REPRODUCED",
    "ChangeSinceCutoff",
    "Correction",
    "InvoiceVerifier",
    "LineDifference",
    "Verification",
    "line_key",
]
