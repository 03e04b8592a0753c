"""An invoice's life after drafting: reading and listing, issuing (counted at a fresh ingest
cutoff, numbered), snapshotting a draft's quantities, refreshing a draft, and the status changes
(void, paid, uncollectible), each in one unit of work that also queues its `invoice.*` webhook.

Transitions: `draft` → `issued` → `paid` | `uncollectible` | `void` (a draft can be voided too);
`TRANSITIONS` (invoicing_model.py) says which. A change names the revision it read, so a change
made meanwhile (the scheduler refreshing a draft while someone approves it) is a conflict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from tallybook.billing import final_corrections
from tallybook.billing.cutoff import take_cutoff
from tallybook.billing.documents import issue_document
from tallybook.billing.export import invoice_json
from tallybook.billing.invoicing_compute import InvoiceComputation
from tallybook.billing.invoicing_model import (
    CORRECTION,
    DRAFT,
    ISSUED,
    PAID,
    PERIOD,
    STATUSES,
    TRANSITIONS,
    UNCOLLECTIBLE,
    VOID,
    Invoice,
    InvoiceConflict,
    InvoiceError,
    InvoiceKey,
    InvoiceNotFound,
    Line,
    customer_snapshot,
    invoice_from_record,
    key_of,
    same_lines,
    totals_of,
    values_of,
)
from tallybook.billing.invoicing_ports import InvoiceSearch, InvoiceTransaction
from tallybook.billing.invoicing_segments import InvoiceJob
from tallybook.billing.profiles import BillingProfile, config_profile
from tallybook.ids import new_ulid
from tallybook.webhooks.service import OutboxMessage
from tallybook.webhooks.settings import INVOICE_ISSUED, INVOICE_UPDATED, INVOICE_VOIDED


class InvoiceLifecycle(InvoiceComputation):
    def get(self, invoice_id: str) -> Invoice:
        with self.storage.reading() as tx:
            record = tx.get_invoice(invoice_id)
        if record is None:
            raise InvoiceNotFound(f"no invoice has the id {invoice_id!r}")
        return invoice_from_record(record)

    def list_invoices(
        self,
        customer: str | None = None,
        statuses: Sequence[str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[Invoice]]:
        customer_ids = None
        if customer is not None:
            customer_ids = (self.subscriptions.customer_id(customer),)
        for status in statuses or ():
            if status not in STATUSES:
                raise InvoiceError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        search = InvoiceSearch(
            customer_ids=customer_ids,
            statuses=tuple(statuses) if statuses else None,
            limit=limit,
            offset=offset,
        )
        with self.storage.reading() as tx:
            total, records = tx.search_invoices(search)
        return total, [invoice_from_record(r) for r in records]

    def _profile_of(self, customer_id: str) -> BillingProfile:
        if self.profiles is None:
            return config_profile(self.settings)
        return self.profiles.for_customers([customer_id])[customer_id]

    def _issue_document(
        self, tx: InvoiceTransaction, invoice: Invoice, profile: BillingProfile | None, now: datetime
    ) -> Invoice:
        """The invoice with its number and seller snapshot, taken in the issuing transaction."""
        number, seller = issue_document(tx, profile or config_profile(self.settings), now)
        return replace(invoice, number=number, seller=seller)

    def issue(self, invoice_id: str) -> Invoice:
        """Freeze a draft: count usage at an ingest cutoff taken now, store the quantities and the
        cutoff, give it its number, lock the meters, notify."""
        draft = self.get(invoice_id)
        self._check_transition(draft, ISSUED)
        return self._recount(draft, ISSUED)

    def snapshot_quantities(self, invoice_id: str) -> Invoice:
        """OpenMeter's snapshot-quantities: count a draft's usage now, at a fresh ingest cutoff, and
        store it (the job would on its next run once events arrived). It stays a draft; issuing
        counts again, at the issue's own cutoff."""
        draft = self.get(invoice_id)
        if draft.status != DRAFT:
            raise InvoiceConflict(
                f"invoice {draft.id} is {draft.status}; only draft invoices can snapshot quantities (an issued "
                "invoice keeps the quantities it was issued with: see its verify action)",
                invoiceStatus=draft.status,
            )
        return self._recount(draft, DRAFT)

    def _recount(self, draft: Invoice, status: str) -> Invoice:
        profile = self._profile_of(draft.customer_id) if status == ISSUED else None
        cutoff = take_cutoff(self.storage, self.clock)
        now = cutoff.at
        self._plans.clear()
        job = self._draft_job(draft, now)
        lines = self._compute([job], as_of=now, through_seq=cutoff.seq)[job.key]
        if draft.kind == CORRECTION:
            # What went down since the last refresh is for credit notes (the next run issues them).
            lines, _ = final_corrections.split(lines, *final_corrections.credit_targets(self, job.previous))
            if not lines:
                raise InvoiceConflict(
                    f"correction invoice {draft.id} has nothing left to bill: usage went down since it was drafted, "
                    "so the next billing run credits it with credit notes and voids this draft"
                )
        if status == ISSUED:
            self._lock_meters([lines])
        event_type = INVOICE_ISSUED if status == ISSUED else INVOICE_UPDATED
        with self.storage.writing() as tx:
            customers = tx.customer_rows([draft.customer_id])
            snapshot = customer_snapshot(customers.get(draft.customer_id), draft.customer_id)
            changed = replace(self._updated(draft, lines, snapshot, now, status), as_of_seq=cutoff.seq)
            if status == ISSUED:
                changed = self._issue_document(tx, changed, profile, now)
            if not tx.update_invoice(draft.id, draft.revision, values_of(changed), [ln.row() for ln in lines]):
                raise InvoiceConflict(f"invoice {draft.id} changed while its usage was being counted; retry")
            self._emit(tx, {event_type: tx.webhook_destinations(event_type)}, event_type, changed, now)
        return changed

    def refresh(self, invoice_id: str) -> Invoice:
        """Recompute a period or opening draft now and store it if a line changed (`invoice.updated`);
        e.g. right after a cancel, so the credit for its unused in-advance time shows at once."""
        now = self.clock.now()
        draft = self.get(invoice_id)
        if draft.status != DRAFT or draft.kind == CORRECTION:
            return draft
        self._plans.clear()
        job = self._draft_job(draft, now)
        lines = self._compute([job], as_of=now)[job.key]
        if same_lines(draft.lines, lines):
            return draft
        with self.storage.writing() as tx:
            customers = tx.customer_rows([draft.customer_id])
            snapshot = customer_snapshot(customers.get(draft.customer_id), draft.customer_id)
            changed = self._updated(draft, lines, snapshot, now, DRAFT)
            if not tx.update_invoice(draft.id, draft.revision, values_of(changed), [ln.row() for ln in lines]):
                return self.get(invoice_id)  # changed meanwhile (issued, voided, refreshed): that stands
            destinations = {INVOICE_UPDATED: tx.webhook_destinations(INVOICE_UPDATED)}
            self._emit(tx, destinations, INVOICE_UPDATED, changed, now)
        return changed

    def _draft_job(self, draft: Invoice, now: datetime) -> InvoiceJob:
        """The job that recomputes a draft now: its segments and the invoices it corrects."""
        key = key_of(draft)
        if draft.kind == CORRECTION:
            found = final_corrections.correction_jobs(self, now, [draft], None, [draft.customer_id])
            return next(
                (j for j in found if j.key == key), InvoiceJob(key, [], existing=draft, corrections_allowed=False)
            )
        segments = self._segments_for([key]).get(key, [])
        job = InvoiceJob(key, segments, existing=draft, corrections_allowed=draft.kind == PERIOD)
        self._attach_previous([job], now)
        return job

    def void(self, invoice_id: str) -> Invoice:
        return self._set_status(invoice_id, VOID, INVOICE_VOIDED)

    def mark_paid(self, invoice_id: str) -> Invoice:
        return self._set_status(invoice_id, PAID, INVOICE_UPDATED)

    def mark_uncollectible(self, invoice_id: str) -> Invoice:
        return self._set_status(invoice_id, UNCOLLECTIBLE, INVOICE_UPDATED)

    def _check_transition(self, invoice: Invoice, target: str) -> None:
        if invoice.status not in TRANSITIONS[target]:
            allowed = " or ".join(TRANSITIONS[target])
            raise InvoiceConflict(
                f"invoice {invoice.id} is {invoice.status}; only {allowed} invoices can become {target}",
                invoiceStatus=invoice.status,
            )

    def _set_status(self, invoice_id: str, target: str, event_type: str) -> Invoice:
        now = self.clock.now()
        with self.storage.writing() as tx:
            record = tx.get_invoice(invoice_id, for_update=True)
            if record is None:
                raise InvoiceNotFound(f"no invoice has the id {invoice_id!r}")
            invoice = invoice_from_record(record)
            self._check_transition(invoice, target)
            changed = replace(invoice, status=target, updated_at=now, revision=invoice.revision + 1)
            if target == PAID:
                changed = replace(changed, paid_at=now)
            elif target == VOID:
                changed = replace(changed, voided_at=now)
            else:
                changed = replace(changed, uncollectible_at=now)
            if not tx.update_invoice(invoice.id, invoice.revision, values_of(changed)):
                raise InvoiceConflict(f"invoice {invoice.id} changed meanwhile; retry")
            if target == VOID:
                tx.invoice_voided(invoice.id, now)
            self._emit(tx, {event_type: tx.webhook_destinations(event_type)}, event_type, changed, now)
        return changed

    def _new_invoice(
        self, key: InvoiceKey, lines: list[Line], customer: dict[str, Any], now: datetime, status: str
    ) -> Invoice:
        return Invoice(
            id=new_ulid(now),
            customer_id=key[0],
            customer=customer,
            currency=key[1],
            status=status,
            period=key[2],
            kind=key[3],
            lines=lines,
            totals=totals_of(lines, key[1], self.settings),
            as_of=now,
            revision=1,
            created_at=now,
            updated_at=now,
            issued_at=now if status == ISSUED else None,
        )

    def _updated(
        self, draft: Invoice, lines: list[Line], customer: dict[str, Any], now: datetime, status: str
    ) -> Invoice:
        return replace(
            draft,
            lines=lines,
            customer=customer,
            totals=totals_of(lines, draft.currency, self.settings),
            status=status,
            as_of=now,
            revision=draft.revision + 1,
            updated_at=now,
            issued_at=now if status == ISSUED else draft.issued_at,
        )

    def _emit(
        self, tx: InvoiceTransaction, destinations: dict[str, Any], event_type: str, invoice: Invoice, now: datetime
    ) -> None:
        targets = destinations.get(event_type) or []
        if not targets:
            return
        message = OutboxMessage(
            type=event_type,
            dedup_key=f"{event_type}:{invoice.id}:{invoice.revision}",
            payload={"type": event_type, "invoice": invoice_json(invoice), "created": int(now.timestamp())},
            subject=invoice.customer_id,
        )
        tx.enqueue_webhook(message, targets, now)


__all__ = ["InvoiceLifecycle"]
