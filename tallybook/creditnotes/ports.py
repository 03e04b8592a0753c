"""What the credit note service needs from storage and from invoicing."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Protocol

from tallybook.creditnotes.model import CreditedInvoice, CreditNote, CreditNoteQuery, FeeCredit, UsageCredit


class CreditNoteStore(Protocol):
    def add(self, note: CreditNote, limit: Decimal) -> CreditNote:
        """Store a new credit note, give it the next number, and send `invoice.credit_note.created`,
        all in one transaction. CreditNoteConflict when the invoice's issued credit notes would then
        add up to more than `limit` (nothing is stored)."""
        ...

    def get(self, credit_note_id: str) -> CreditNote | None: ...

    def search(self, query: CreditNoteQuery) -> tuple[int, list[CreditNote]]:
        """Matching credit notes, newest first, and how many match in all."""
        ...

    def fee_credits(self, subscription_ids: Sequence[str]) -> list[FeeCredit]:
        """`credit` lines of issued credit notes for these subscriptions."""
        ...

    def usage_credits(self, invoice_ids: Sequence[str]) -> list[UsageCredit]:
        """`correction` lines of issued credit notes that correct these invoices' usage lines."""
        ...

    def credited_totals(self, invoice_ids: Sequence[str]) -> dict[str, Decimal]:
        """How much the issued credit notes of each of these invoices add up to (only those with any)."""
        ...


class InvoiceReader(Protocol):
    def credited_invoice(self, invoice_id: str) -> CreditedInvoice | None:
        """The invoice a credit note would lower (None: there is no such invoice)."""
        ...


__all__ = ["CreditNoteStore", "InvoiceReader"]
