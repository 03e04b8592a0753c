"""Issue and read credit notes.

A credit note is issued against an invoice that was issued (issued, paid or uncollectible: a draft
is recomputed instead) in the invoice's currency, and all of an invoice's credit notes never add up
to more than its total. It is final once issued; voiding the invoice voids its credit notes with it
(tallybook/creditnotes/sql.py, in the invoice's transaction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from decimal import Decimal

from tallybook.billing.currency import minor_units
from tallybook.clock import Clock
from tallybook.creditnotes.model import (
    CREDITABLE,
    ISSUED,
    CreditNote,
    CreditNoteConflict,
    CreditNoteError,
    CreditNoteNotFound,
    CreditNoteQuery,
    CreditNoteRequest,
    FeeCredit,
    UsageCredit,
)
from tallybook.creditnotes.ports import CreditNoteStore, InvoiceReader
from tallybook.exact import total
from tallybook.ids import new_ulid


def _storable(text: str) -> bool:
    """No stored id or key holds U+0000 (PostgreSQL text refuses it): such a reference finds nothing."""
    return "\x00" not in text


class CreditNoteService:
    def __init__(
        self,
        store: CreditNoteStore,
        invoices: InvoiceReader,
        clock: Clock,
        customer_id: Callable[[str], str] | None = None,
    ) -> None:
        self.store = store
        self.invoices = invoices
        self.clock = clock
        # A customer's id from its id or key (raising the customers' not-found error); None: ids only.
        self.customer_id = customer_id or (lambda ref: ref)

    def issue(self, request: CreditNoteRequest) -> CreditNote:
        request.check()
        invoice = self.invoices.credited_invoice(request.invoice_id)
        if invoice is None:
            raise CreditNoteNotFound(f"no invoice has the id {request.invoice_id!r}", invoiceId=request.invoice_id)
        if invoice.status not in CREDITABLE:
            raise CreditNoteConflict(
                f"invoice {invoice.id} is {invoice.status}; only {', '.join(CREDITABLE)} invoices take credit "
                "notes (a draft is recomputed instead)",
                invoiceStatus=invoice.status,
            )
        quantum = Decimal(1).scaleb(-minor_units(invoice.currency))
        for index, line in enumerate(request.lines):
            if line.amount != line.amount.quantize(quantum):
                raise CreditNoteError(f"lines[{index}].amount {line.amount} is not rounded to {invoice.currency}")
        now = self.clock.now()
        note = CreditNote(
            id=new_ulid(now),
            number="",
            invoice_id=invoice.id,
            customer_id=invoice.customer_id,
            customer=dict(invoice.customer),
            currency=invoice.currency,
            reason=request.reason,
            status=ISSUED,
            lines=request.lines,
            total=total(line.amount for line in request.lines).quantize(quantum),
            issued_at=now,
            memo=request.memo,
        )
        return self.store.add(note, limit=invoice.total)

    def get(self, credit_note_id: str) -> CreditNote:
        note = self.store.get(credit_note_id) if _storable(credit_note_id) else None
        if note is None:
            raise CreditNoteNotFound(f"no credit note has the id {credit_note_id!r}")
        return note

    def search(self, query: CreditNoteQuery, customer: str | None = None) -> tuple[int, list[CreditNote]]:
        """Credit notes matching `query`, newest first; `customer` (id or key) narrows to one customer."""
        if customer is not None:
            if not _storable(customer):
                raise CreditNoteNotFound(f"no customer has the id or key {customer!r}", customerIdOrKey=customer)
            query = replace(query, customer_id=self.customer_id(customer))
        if query.invoice_id is not None and not _storable(query.invoice_id):
            return 0, []
        return self.store.search(query)

    def fee_credits(self, subscription_ids: Sequence[str]) -> list[FeeCredit]:
        return self.store.fee_credits(subscription_ids) if subscription_ids else []

    def usage_credits(self, invoice_ids: Sequence[str]) -> list[UsageCredit]:
        return self.store.usage_credits(invoice_ids) if invoice_ids else []

    def credited_totals(self, invoice_ids: Sequence[str]) -> dict[str, Decimal]:
        return self.store.credited_totals(invoice_ids) if invoice_ids else {}


__all__ = ["CreditNoteService"]
