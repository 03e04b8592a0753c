"""What the Stripe room's services need from storage.

`StripeStorage` holds the links (customer and meter) and the report ledger: reads and single writes
are one transaction each; the reporter's multi-row writes (intents, outcomes and their attempts,
the reporting cursors) go through a `writing()` unit of work. `sql.SqlStripeStorage` is its adapter.

Invoice and credit note sync run each step in one `writing()` (or `reading()`) transaction, a unit
of work like `voids/ports.py`'s: the service never sees a connection. A sync row is a plain dict
with the columns of `invoice_syncs` / `credit_note_syncs` (tallybook/stripe/sql_sync.py).
The invoice webhooks a sync sends are queued in the same transaction as the row they follow from.
`sql_sync.SqlSyncStorage` is the adapter on the SQL store.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from tallybook.stripe.model import CustomerLink, MeterLink, ReportFilter, ReportRow


class SyncTransaction(Protocol):
    # -- invoices ---------------------------------------------------------------------------------------
    def invoice_row(self, invoice_id: str, for_update: bool = False) -> dict[str, Any] | None:
        """The invoice's sync row; with `for_update`, locked until the transaction ends (where the
        engine can lock rows)."""
        ...

    def invoice_row_by_external_id(self, external_id: str) -> dict[str, Any] | None: ...

    def invoice_rows(self, invoice_ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    def ensure_invoice_row(self, invoice_id: str, app: str, now_us: int) -> None:
        """Create the invoice's row as pending unless it has one (concurrent callers: one wins)."""
        ...

    def update_invoice_row(self, invoice_id: str, values: dict[str, Any]) -> None: ...

    def changed_invoices(self, now_us: int, limit: int) -> list[str]:
        """Invoices with a row not done whose revision moved on or whose retry time has come."""
        ...

    def never_synced_invoices(self, open_statuses: Sequence[str]) -> list[tuple[str, str]]:
        """(invoice id, customer id) of invoices in `open_statuses` that have no row, oldest first."""
        ...

    # -- credit notes -----------------------------------------------------------------------------------
    def credit_note_row(self, credit_note_id: str) -> dict[str, Any] | None: ...

    def credit_note_rows(self, credit_note_ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    def ensure_credit_note_row(self, credit_note_id: str, app: str, now_us: int) -> None: ...

    def update_credit_note_row(self, credit_note_id: str, values: dict[str, Any]) -> None: ...

    def due_credit_notes(self, now_us: int, limit: int) -> list[str]:
        """Credit notes to hand to Stripe: new ones of invoices it holds, retries, voided here since."""
        ...

    # -- webhooks ---------------------------------------------------------------------------------------
    def webhook_targets(self, event_type: str) -> Sequence[object]:
        """Who receives `event_type` now (empty: building the payload can be skipped)."""
        ...

    def enqueue_webhook(
        self,
        event_type: str,
        dedup_key: str,
        payload: dict[str, Any],
        subject: str | None,
        targets: Sequence[object],
        now: datetime,
    ) -> None: ...


class SyncStorage(Protocol):
    def reading(self) -> AbstractContextManager[SyncTransaction]: ...

    def writing(self) -> AbstractContextManager[SyncTransaction]: ...


class LedgerTransaction(Protocol):
    def cursor(self, name: str) -> int | None:
        """A job cursor (microseconds): how far reporting of a meter reached, or began."""
        ...

    def set_cursor(self, name: str, value_us: int) -> None: ...

    def insert_reports(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Write intents (PENDING rows); their ids, in order."""
        ...

    def record_outcome(self, report_id: int, values: dict[str, Any]) -> None: ...

    def insert_attempts(self, rows: Sequence[dict[str, Any]]) -> None: ...

    def mark_cancelled(self, identifier: str, now_us: int) -> None:
        """The event `identifier` was cancelled at Stripe (a cancel adjustment was sent for it)."""
        ...


class StripeStorage(Protocol):
    def reading(self) -> AbstractContextManager[LedgerTransaction]: ...

    def writing(self) -> AbstractContextManager[LedgerTransaction]: ...

    # -- links ------------------------------------------------------------------------------------------
    def put_customer(self, link: CustomerLink) -> None:
        """Link (or relink) a customer; StripeCustomerTaken if another customer holds that Stripe customer."""
        ...

    def customer_owning(self, stripe_customer_id: str) -> CustomerLink | None: ...

    def get_customer(self, customer_id: str) -> CustomerLink | None: ...

    def customers(self, customer_ids: Sequence[str] | None = None) -> dict[str, CustomerLink]: ...

    def set_period_start(self, customer_id: str, period_start_us: int, now_us: int) -> None: ...

    def set_default_payment_method(
        self, customer_id: str, stripe_customer_id: str, payment_method_id: str, now_us: int
    ) -> bool:
        """Store it only while the customer is still linked to `stripe_customer_id` (False: relinked)."""
        ...

    def put_meter_link(self, link: MeterLink) -> None: ...

    def meter_links(self) -> list[MeterLink]: ...

    # -- the ledger ---------------------------------------------------------------------------------------
    def due_pending(self, now_us: int, meter: str | None = None, limit: int = 10_000) -> list[ReportRow]:
        """PENDING rows whose next attempt is due, oldest first."""
        ...

    def latest_per_window(
        self, meter: str, from_us: int, to_us: int, customer_ids: Sequence[str] | None = None
    ) -> dict[tuple[str, int], list[ReportRow]]:
        """Every row of `meter` for windows starting in [from_us, to_us), per (customer, window start)."""
        ...

    def item_rows(self, meter: str, customer_id: str, item_key: str) -> list[ReportRow]:
        """Every usage-record row of one subscription item, all periods, oldest first."""
        ...

    def list_reports(self, flt: ReportFilter) -> tuple[int, list[ReportRow]]: ...

    def attempts_of(self, report_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]: ...

    def status_counts(self) -> dict[str, int]: ...


__all__ = ["LedgerTransaction", "StripeStorage", "SyncStorage", "SyncTransaction"]
