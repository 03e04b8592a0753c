"""What the Stripe room's services need from storage.

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


__all__ = ["SyncStorage", "SyncTransaction"]
