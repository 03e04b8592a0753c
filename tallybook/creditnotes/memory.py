"""An in-memory credit note store, for unit tests of the service (no database)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal

from tallybook.creditnotes.model import (
    CORRECTION,
    CREDIT,
    ISSUED,
    CreditedInvoice,
    CreditNote,
    CreditNoteConflict,
    CreditNoteQuery,
    FeeCredit,
    UsageCredit,
    number_of,
)
from tallybook.exact import total


class MemoryCreditNotes:
    """The store port and the invoice reader, kept in dicts; `notified` lists what was sent."""

    def __init__(self) -> None:
        self.notes: dict[str, CreditNote] = {}
        self.invoices: dict[str, CreditedInvoice] = {}
        self.notified: list[CreditNote] = []

    def add(self, note: CreditNote, limit: Decimal) -> CreditNote:
        credited = total(n.total for n in self.notes.values() if n.invoice_id == note.invoice_id and n.status == ISSUED)
        if credited + note.total > limit:
            raise CreditNoteConflict(
                f"invoice {note.invoice_id} totals {limit}; with {credited} credited already it cannot take "
                f"{note.total} more",
                invoiceId=note.invoice_id,
            )
        stored = replace(note, number=number_of(len(self.notes) + 1))
        self.notes[stored.id] = stored
        self.notified.append(stored)
        return stored

    def get(self, credit_note_id: str) -> CreditNote | None:
        return self.notes.get(credit_note_id)

    def search(self, query: CreditNoteQuery) -> tuple[int, list[CreditNote]]:
        found = [
            n
            for n in self.notes.values()
            if (query.customer_id is None or n.customer_id == query.customer_id)
            and (query.invoice_id is None or n.invoice_id == query.invoice_id)
            and (query.statuses is None or n.status in query.statuses)
        ]
        found.sort(key=lambda n: n.number, reverse=True)
        return len(found), found[query.offset : query.offset + query.limit]

    def fee_credits(self, subscription_ids: Sequence[str]) -> list[FeeCredit]:
        wanted = set(subscription_ids)
        return [
            FeeCredit(n.invoice_id, line.subscription_id, line.rate_card_key, line.period, line.amount)
            for n in self.notes.values()
            if n.status == ISSUED
            for line in n.lines
            if line.kind == CREDIT and line.subscription_id in wanted and line.rate_card_key is not None
        ]

    def usage_credits(self, invoice_ids: Sequence[str]) -> list[UsageCredit]:
        wanted = set(invoice_ids)
        return [
            UsageCredit(line.corrects_invoice_id, line.subscription_id, line.rate_card_key, line.quantity)
            for n in self.notes.values()
            if n.status == ISSUED
            for line in n.lines
            if line.kind == CORRECTION
            and line.quantity is not None
            and line.corrects_invoice_id is not None
            and line.corrects_invoice_id in wanted
        ]

    def credited_totals(self, invoice_ids: Sequence[str]) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for note in self.notes.values():
            if note.status == ISSUED and note.invoice_id in invoice_ids:
                out[note.invoice_id] = total([note.total], out.get(note.invoice_id, Decimal(0)))
        return out

    def credited_invoice(self, invoice_id: str) -> CreditedInvoice | None:
        return self.invoices.get(invoice_id)


__all__ = ["MemoryCreditNotes"]
