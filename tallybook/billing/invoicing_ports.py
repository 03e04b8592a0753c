"""What invoicing needs from storage: transactions that read and write invoices (a unit of work).

The services never see SQL or a connection: each reads in one `reading()` transaction and writes
in one `writing()` transaction, whose `savepoint()` lets the scheduled run roll back one invoice's
writes without losing the others' (a failed statement aborts a PostgreSQL transaction). Invoice
numbers, webhook messages, the cutoff's materializer lock and the hooks run when an invoice is
voided all happen inside the transaction that changes the invoice, so they commit or roll back
with it. `invoicing_sql.SqlInvoiceStorage` is the adapter on the SQL store.

Rows cross the port as plain dicts of column values (`InvoiceRecord`: an invoice row and its
line rows); the model (`invoicing_model.py`) turns them into `Invoice`s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class InvoiceRecord:
    row: dict[str, Any]
    lines: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class InvoiceSearch:
    customer_ids: tuple[str, ...] | None = None
    statuses: tuple[str, ...] | None = None
    period_end_from_us: int | None = None  # inclusive
    period_end_to_us: int | None = None  # inclusive
    limit: int | None = None
    offset: int = 0
    newest_first: bool = True


# (customer id, currency, period start us, period end us, kind)
StoredKey = tuple[str, str, int, int, str]


class InvoiceTransaction(Protocol):
    # -- invoices ---------------------------------------------------------------------------------------
    def get_invoice(self, invoice_id: str, for_update: bool = False) -> InvoiceRecord | None: ...

    def search_invoices(self, search: InvoiceSearch, with_lines: bool = True) -> tuple[int, list[InvoiceRecord]]: ...

    def existing_invoice_keys(self, period_end_us: Iterable[int]) -> dict[StoredKey, dict[str, Any]]:
        """Invoice rows (no lines) for these period ends, by their unique period key."""
        ...

    def in_advance_fee_lines(self, subscription_ids: Sequence[str], kinds: Sequence[str]) -> list[dict[str, Any]]:
        """Lines of these kinds of these subscriptions on invoices that are not void, with their
        invoice's `invoice_kind`, `invoice_status` and `invoice_period_end_us`."""
        ...

    def corrections_of(self, invoice_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Correction lines (on any invoice) correcting these invoices, with `invoice_status`."""
        ...

    def invoice_totals(self, invoice_ids: Sequence[str]) -> dict[str, str]: ...

    # -- what invoices are drafted from ------------------------------------------------------------------
    def unbilled_subscriptions(self, cutoff_us: int) -> list[dict[str, Any]]: ...

    def unopened_subscriptions(self, now_us: int) -> list[dict[str, Any]]: ...

    def list_subscriptions(
        self, customer_ids: Sequence[str] | None, overlapping: tuple[int | None, int | None] | None = None
    ) -> list[dict[str, Any]]: ...

    def customer_rows(self, customer_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Customers by id (deleted ones too), for the invoice's customer snapshot."""
        ...

    def live_customer_ids(self, customer_ids: Sequence[str]) -> set[str]: ...

    def latest_ingest_us(self) -> int | None:
        """When usage last changed: the newest event's ingest or void (None: neither happened)."""
        ...

    def customer_subjects(self, customer_id: str) -> list[str]: ...

    def usage_changes(
        self, meter: str, subjects: Sequence[str], start_us: int, end_us: int, as_of_us: int, as_of_seq: int | None
    ) -> tuple[int, int]:
        """(events counted now but not at the cutoff, events counted then but voided since) of a
        meter's usage by these subjects in [start, end)."""
        ...

    # -- writes (only in a `writing()` transaction) -------------------------------------------------------
    def savepoint(self) -> AbstractContextManager[None]:
        """Writes inside it are rolled back alone if it raises; the transaction goes on."""
        ...

    def insert_invoices(self, records: Sequence[InvoiceRecord]) -> None: ...

    def update_invoice(
        self, invoice_id: str, revision: int, values: dict[str, Any], lines: Sequence[dict[str, Any]] | None = None
    ) -> bool:
        """Apply `values` (and replace the lines) if the invoice is still at `revision`; bumps it."""
        ...

    def set_billed_through(self, marks: Sequence[tuple[str, int]]) -> None: ...

    def next_number(self, prefix: str, now_us: int) -> int:
        """The next number of the prefix's series; the row stays held until the transaction ends."""
        ...

    def store_document(self, invoice_id: str, number: str | None, seller: dict[str, Any] | None) -> None: ...

    def webhook_destinations(self, event_type: str) -> list[Any]: ...

    def enqueue_webhook(self, message: Any, targets: list[Any], now: datetime) -> None: ...

    def invoice_voided(self, invoice_id: str, now: datetime) -> None:
        """Run what goes with voiding an invoice (its credit notes are voided with it)."""
        ...

    # -- the ingest cutoff (tallybook/billing/cutoff.py) -------------------------------------------------
    def lock_materializer(self) -> None: ...

    def settled_horizon(self) -> int: ...


class InvoiceStorage(Protocol):
    def reading(self) -> AbstractContextManager[InvoiceTransaction]: ...

    def writing(self) -> AbstractContextManager[InvoiceTransaction]: ...


__all__ = ["InvoiceRecord", "InvoiceSearch", "InvoiceStorage", "InvoiceTransaction", "StoredKey"]
