"""Stripe invoicing: Tallybook rates usage, Stripe collects the money.

Each invoice of a customer whose billing profile names Stripe as its app is mirrored as one Stripe
invoice: a draft (`pending_invoice_items_behavior=exclude`, `auto_advance=false`) holding one
invoice item per Tallybook line with the line's precomputed amount, service period, a description
"name (quantity \u00d7 unit price)", its tax code and metadata naming the Tallybook invoice and line.
When the Tallybook invoice is issued, the draft is finalized (numbered) with `auto_advance` and the
collection method of the profile, and Stripe charges the default payment method or emails it.

Syncing converges Stripe on Tallybook's state instead of replaying steps, so it is idempotent and
resumable:

- the Stripe invoice is created with an idempotency key derived from the Tallybook invoice id, and
  its id is stored before any item is added; if the answer was lost (crash, timeout) the next run
  gets the same invoice back from the key (24 h), or finds it by its `tallybook_invoice_id` metadata;
- items are diffed by a stable line key in their metadata against what the Stripe draft holds now:
  missing items are created (idempotency key = line key + content fingerprint), changed ones
  updated, extra ones deleted. A crash halfway leaves a partial draft that the next run completes;
  it can never add an item twice;
- the draft's subtotal is compared with the Tallybook total before it is finalized, so a Stripe
  invoice is never finalized with an amount Tallybook did not compute;
- status changes go both ways: Tallybook void / paid / uncollectible are applied to the Stripe
  invoice (void, pay out of band, mark uncollectible); Stripe's `invoice.paid`, `invoice.voided`,
  `invoice.marked_uncollectible` (webhooks, or the next sync if a webhook was missed) are applied
  to the Tallybook invoice, which sends Tallybook's own invoice webhooks.

Stripe Tax: with tax enabled in the profile, the invoice has `automatic_tax[enabled]=true` and every
item a `tax_behavior`. If Stripe cannot place the customer, finalization fails and the sync row
waits in `tax_location_required` (with Stripe's message) until the customer's address is fixed;
each retry pushes the Tallybook customer's address to the Stripe customer first.

Shape: `planner.py` decides what must change (pure), `invoice_executor.py` makes the Stripe calls,
this module runs the job and records each result through `ports.SyncStorage`.

Fault isolation: each invoice is one item of the `stripe.invoices` job. A Stripe refusal is the
invoice's sync state (`sync.error`, retried with backoff). A failure inside Tallybook (a bug, a
failed write) is recorded as a failed `invoice` item (GET /api/v1/jobs/failures), retried later
with backoff like a Stripe error, and the other invoices are synced.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import stripe

from tallybook.billing.invoicing import (
    DRAFT,
    ISSUED,
    PAID,
    VOID,
    Invoice,
    InvoiceConflict,
    InvoiceNotFound,
    InvoicingService,
)
from tallybook.billing.profiles import STRIPE, BillingProfile, ProfileService
from tallybook.billing.settings import BillingSettings
from tallybook.clock import Clock, format_rfc3339, to_micros
from tallybook.customers import CustomerService
from tallybook.jobs.runs import ItemFailureLog
from tallybook.stripe.client import error_json
from tallybook.stripe.invoice_executor import AmountMismatch, InvoiceExecutor, ItemCounts
from tallybook.stripe.items import collection, desired_items, from_minor, to_minor
from tallybook.stripe.model import (
    SYNC_DONE,
    SYNC_FAILED,
    SYNC_PENDING,
    SYNC_SYNCED,
    SYNC_TAX_LOCATION_REQUIRED,
    InvoiceNotSynced,
)
from tallybook.stripe.planner import (
    TAX_LOCATION_CODES,
    AdoptStatus,
    DeleteDraft,
    Finalize,
    Target,
    adopt,
    failure_status,
    plan_draft,
    plan_status,
    retry_delay,
    settled_status,
)
from tallybook.stripe.ports import SyncStorage, SyncTransaction
from tallybook.stripe.service import StripeService, stripe_address
from tallybook.stripe.sync_json import invoice_external_json
from tallybook.webhooks.settings import (
    INVOICE_PAID,
    INVOICE_PAYMENT_FAILED,
    INVOICE_SYNC_FAILED,
    INVOICE_UNCOLLECTIBLE,
)

log = logging.getLogger(__name__)

SYNC_JOB = "stripe.invoices"
# The Stripe events this module handles (registered on StripeService by the runtime).
INVOICE_EVENTS = (
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "invoice.marked_uncollectible",
    "invoice.finalization_failed",
)
# Invoices handed to Stripe when first seen (paid, void and uncollectible ones stay where they are).
OPEN_STATUSES = (DRAFT, ISSUED)
BATCH = 100  # invoices per job run


@dataclass
class SyncOutcome:
    invoice_id: str
    status: str
    external_id: str | None = None
    created_items: int = 0
    updated_items: int = 0
    deleted_items: int = 0
    error: dict[str, Any] | None = None


def _sum_tax(s_invoice: Any) -> int:
    return sum(int(t["amount"]) for t in (s_invoice.get("total_taxes") or []))


class InvoiceSyncService:
    def __init__(
        self,
        storage: SyncStorage,
        stripe_service: StripeService,
        invoicing: InvoicingService,
        profiles: ProfileService,
        customers: CustomerService,
        billing: BillingSettings,
        clock: Clock,
        failures: ItemFailureLog,
    ) -> None:
        self.storage = storage
        self.failures = failures
        self.stripe = stripe_service
        self.invoicing = invoicing
        self.profiles = profiles
        self.customers = customers
        self.billing = billing
        self.clock = clock

    # -- the job --------------------------------------------------------------------------------
    def run(self, now: datetime | None = None) -> dict[str, Any]:
        """Sync every invoice that is due: new open invoices of Stripe customers, changed ones, retries."""
        now = now or self.clock.now()
        with self.storage.reading() as tx:
            due = tx.changed_invoices(to_micros(now), BATCH)
            fresh = tx.never_synced_invoices(OPEN_STATUSES)
        # Customers on other apps never get a sync row, so they are filtered here on every run:
        # one grouped profile read, never one per invoice.
        profiles = self.profiles.for_customers({customer for _, customer in fresh})
        due += [iid for iid, customer in fresh if profiles[customer].collector == STRIPE][: max(0, BATCH - len(due))]
        counts: dict[str, int] = {}
        with self.failures.run(SYNC_JOB) as run:
            for invoice_id in due:
                outcome: SyncOutcome | None = None
                with run.item("invoice", invoice_id, invoiceId=invoice_id) as result:
                    outcome = self.sync(invoice_id, now)
                if result.failed:
                    # One invoice's bug must not stop the others; it is retried later, with backoff.
                    counts["crashed"] = counts.get("crashed", 0) + 1
                    with run.item("invoice_retry", invoice_id, invoiceId=invoice_id):
                        self._schedule_retry(invoice_id, now, {"message": "internal error; see the server log"})
                elif outcome is not None:
                    counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return run.outcome({"due": len(due), **counts})

    # -- one invoice ----------------------------------------------------------------------------
    def sync(self, invoice_id: str, now: datetime | None = None) -> SyncOutcome | None:
        """Bring the Stripe invoice in line with the Tallybook invoice (None: not a Stripe invoice)."""
        now = now or self.clock.now()
        invoice = self.invoicing.get(invoice_id)
        profile = self.profiles.for_customers([invoice.customer_id])[invoice.customer_id]
        with self.storage.reading() as tx:
            row = tx.invoice_row(invoice_id)
        if profile.collector != STRIPE and (row is None or row["external_id"] is None):
            return None
        self.stripe.require_enabled()
        with self.storage.writing() as tx:
            tx.ensure_invoice_row(invoice_id, STRIPE, to_micros(now))
            row = tx.invoice_row(invoice_id)
        assert row is not None
        outcome = SyncOutcome(invoice_id, SYNC_PENDING, row["external_id"])
        try:
            self._converge(invoice, profile, row, outcome, now)
        except stripe.StripeError as exc:
            self._failed(invoice, exc, outcome, now)
        return outcome

    def _converge(
        self, invoice: Invoice, profile: BillingProfile, row: dict[str, Any], outcome: SyncOutcome, now: datetime
    ) -> None:
        executor = InvoiceExecutor(self.stripe.client())
        customer_id = self._stripe_customer(executor, invoice.customer_id, sync_address=profile.tax_enabled)
        external_id = row["external_id"] or executor.find_existing(customer_id, invoice.id)
        s_invoice: Any = None
        if external_id is None:
            if invoice.status == VOID:  # voided before it ever reached Stripe
                self._record(invoice, SYNC_DONE, now, external_customer_id=customer_id)
                outcome.status = SYNC_DONE
                return
            s_invoice = executor.create_invoice(self._invoice_params(invoice, profile, customer_id), invoice.id)
            external_id = str(s_invoice.id)
        outcome.external_id = external_id
        # Stored before any item is added: from here on every run works on this one Stripe invoice.
        with self.storage.writing() as tx:
            tx.update_invoice_row(
                invoice.id,
                {"external_id": external_id, "external_customer_id": customer_id, "updated_us": to_micros(now)},
            )
        # An invoice created just now is the answer in hand, with no items yet: two requests saved.
        fresh = s_invoice is not None
        if s_invoice is None:
            s_invoice = executor.retrieve(external_id)
        if s_invoice.status == "draft":
            # A draft created just now has no items, and a draft to delete needs none listed.
            draft = executor.draft_of(s_invoice, list_items=not fresh and invoice.status != VOID)
            steps = plan_draft(self._target(invoice, profile), draft)
            counts = ItemCounts()
            try:
                s_invoice = executor.apply_draft(s_invoice, steps, invoice.id, invoice.currency, counts)
            finally:
                outcome.created_items += counts.created
                outcome.updated_items += counts.updated
                outcome.deleted_items += counts.deleted
            if any(isinstance(step, DeleteDraft) for step in steps):
                self._record(invoice, SYNC_DONE, now, external_status="deleted")
                outcome.status = SYNC_DONE
                return
            if not any(isinstance(step, Finalize) for step in steps):
                self._record(invoice, SYNC_SYNCED, now, external_status="draft")
                outcome.status = SYNC_SYNCED
                return
        self._converge_status(executor, invoice, s_invoice, outcome, now)

    def _target(self, invoice: Invoice, profile: BillingProfile) -> Target:
        items, _ = desired_items(invoice, profile, self.billing.default_tax_code)
        return Target(
            status=invoice.status,
            tax_enabled=profile.tax_enabled,
            collection=collection(profile),
            auto_advance=profile.auto_collect,
            items=tuple(items),
            total=to_minor(invoice.totals.total, invoice.currency),
        )

    @staticmethod
    def _invoice_params(invoice: Invoice, profile: BillingProfile, customer_id: str) -> dict[str, Any]:
        start, end = invoice.period.start, invoice.period.end
        return {
            "customer": customer_id,
            "currency": invoice.currency.lower(),
            "auto_advance": False,
            "pending_invoice_items_behavior": "exclude",
            "automatic_tax": {"enabled": profile.tax_enabled},
            **collection(profile),
            "description": f"Tallybook invoice {invoice.id}: {start:%Y-%m-%d} to {end:%Y-%m-%d}",
            "metadata": {"tallybook_invoice_id": invoice.id, "tallybook_customer_id": invoice.customer_id},
        }

    def _converge_status(
        self, executor: InvoiceExecutor, invoice: Invoice, s_invoice: Any, outcome: SyncOutcome, now: datetime
    ) -> None:
        """A finalized Stripe invoice: apply whichever side moved last."""
        step = plan_status(invoice.status, str(s_invoice.status))
        if isinstance(step, AdoptStatus):
            invoice = self._adopt(invoice, step)
        else:
            s_invoice = executor.apply_status(s_invoice, step)
        s_status = str(s_invoice.status)
        if invoice.status == VOID and s_status == "paid":
            raise AmountMismatch(
                f"the invoice is void in Tallybook but {s_invoice.id} is paid in Stripe; refund it in Stripe"
            )
        status = settled_status(s_status)
        self._record(invoice, status, now, **self._stripe_fields(s_invoice, invoice.currency))
        outcome.status = status

    def _adopt(self, invoice: Invoice, step: AdoptStatus | None) -> Invoice:
        """Stripe moved on (paid, voided, written off): move the Tallybook invoice the same way."""
        if step is None:
            return invoice
        try:
            if step.status == PAID:
                changed = self.invoicing.mark_paid(invoice.id)
                self._emit(INVOICE_PAID, changed)
            elif step.status == VOID:
                changed = self.invoicing.void(invoice.id)
            else:
                changed = self.invoicing.mark_uncollectible(invoice.id)
                self._emit(INVOICE_UNCOLLECTIBLE, changed)
        except InvoiceConflict:
            return self.invoicing.get(invoice.id)  # changed meanwhile; the next sync sees it
        return changed

    # -- Stripe customers -----------------------------------------------------------------------
    def _stripe_customer(self, executor: InvoiceExecutor, customer_id: str, sync_address: bool) -> str:
        """The customer's Stripe customer (created and linked if it has none); with `sync_address`,
        the Tallybook billing address is pushed to it, since Stripe Tax places the customer by it."""
        link = self.stripe.db.get_customer(customer_id)
        if link is None:
            return self.stripe.ensure_stripe_customer(self.customers.resolve(customer_id))
        if sync_address:
            address = stripe_address(self.customers.resolve(customer_id))
            if address is not None:
                executor.update_customer_address(link.stripe_customer_id, address)
        return link.stripe_customer_id

    # -- recording --------------------------------------------------------------------------------
    @staticmethod
    def _stripe_fields(stripe_invoice: Any, currency: str) -> dict[str, Any]:
        s_invoice = stripe_invoice.to_dict()
        tax = s_invoice.get("automatic_tax") or {}
        return {
            "external_status": str(s_invoice["status"]),
            "number": s_invoice.get("number"),
            "hosted_url": s_invoice.get("hosted_invoice_url"),
            "pdf_url": s_invoice.get("invoice_pdf"),
            "tax_status": tax.get("status"),
            "tax_amount": str(from_minor(_sum_tax(s_invoice), currency)),
            "total": str(from_minor(int(s_invoice["total"]), currency)),
            **({"payment_status": "paid"} if s_invoice["status"] == "paid" else {}),
        }

    def _record(self, invoice: Invoice, status: str, now: datetime, **values: Any) -> None:
        with self.storage.writing() as tx:
            tx.update_invoice_row(
                invoice.id,
                {
                    "status": status,
                    "synced_revision": invoice.revision,
                    "attempts": 0,
                    "next_attempt_us": None,
                    "error": None,
                    "updated_us": to_micros(now),
                    **values,
                },
            )

    def _failed(self, invoice: Invoice, exc: stripe.StripeError, outcome: SyncOutcome, now: datetime) -> None:
        error = error_json(exc)
        status = failure_status(error.get("code"), exc.http_status)
        if status == SYNC_TAX_LOCATION_REQUIRED:
            error["message"] = (
                "Stripe Tax cannot place the customer: set the customer's billingAddress (country; postal code "
                f"in the US and Canada). Stripe said: {error['message']}"
            )
        outcome.status, outcome.error = status, error
        entered = self._schedule_retry(invoice.id, now, error, status)
        if status != SYNC_PENDING and entered:
            self._emit(INVOICE_SYNC_FAILED, self.invoicing.get(invoice.id))

    def _schedule_retry(
        self, invoice_id: str, now: datetime, error: dict[str, Any], status: str = SYNC_PENDING
    ) -> bool:
        """Record the error and when to try again; True if the row entered `status` just now."""
        settings = self.stripe.settings
        with self.storage.writing() as tx:
            row = tx.invoice_row(invoice_id, for_update=True)
            if row is None:
                return False
            attempts = int(row["attempts"]) + 1
            delay = retry_delay(attempts, settings.retry_base, settings.retry_max)
            tx.update_invoice_row(
                invoice_id,
                {
                    "status": status,
                    "attempts": attempts,
                    "next_attempt_us": to_micros(now + delay),
                    "error": error,
                    "updated_us": to_micros(now),
                },
            )
        return str(row["status"]) != status

    def _emit(self, event_type: str, invoice: Invoice) -> None:
        from tallybook.billing.export import invoice_json

        now = self.clock.now()
        with self.storage.writing() as tx:
            targets = tx.webhook_targets(event_type)
            if not targets:
                return
            external = self._external(tx, [invoice.id]).get(invoice.id)
            tx.enqueue_webhook(
                event_type,
                f"{event_type}:{invoice.id}:{invoice.revision}:{to_micros(now)}",
                {"type": event_type, "invoice": invoice_json(invoice, external), "created": int(now.timestamp())},
                invoice.customer_id,
                targets,
                now,
            )

    # -- reading --------------------------------------------------------------------------------
    def external_of(self, invoice_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The sync state of these invoices as API JSON (`number`, `externalIds`, `sync`)."""
        if not invoice_ids:
            return {}
        with self.storage.reading() as tx:
            return self._external(tx, invoice_ids)

    @staticmethod
    def _external(tx: SyncTransaction, invoice_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {iid: invoice_external_json(row) for iid, row in tx.invoice_rows(invoice_ids).items()}

    def sync_now(self, invoice_id: str) -> SyncOutcome:
        """Sync one invoice now (the API's retry button), whatever its backoff says."""
        outcome = self.sync(invoice_id)
        if outcome is None:
            raise InvoiceNotSynced(
                f"invoice {invoice_id} is not collected by Stripe: its customer's billing profile uses another app"
            )
        return outcome

    # -- Stripe webhooks --------------------------------------------------------------------------
    def handle_event(self, event: stripe.Event) -> dict[str, Any]:
        obj = event.data.to_dict().get("object") or {}
        external_id = str(obj.get("id") or "")
        with self.storage.reading() as tx:
            row = tx.invoice_row_by_external_id(external_id)
        invoice_id = row["invoice_id"] if row else (obj.get("metadata") or {}).get("tallybook_invoice_id")
        if not invoice_id:
            return {"handled": False, "reason": "not an invoice Tallybook created"}
        try:
            invoice = self.invoicing.get(str(invoice_id))
        except InvoiceNotFound:
            return {"handled": False, "reason": f"no Tallybook invoice {invoice_id}"}
        now = self.clock.now()
        currency = invoice.currency
        if event.type == "invoice.payment_failed":
            payment_error = {
                "attemptCount": obj.get("attempt_count"),
                "nextPaymentAttempt": obj.get("next_payment_attempt"),
                "amountDue": str(from_minor(int(obj.get("amount_due") or 0), currency)),
                "failedAt": format_rfc3339(now),
            }
            with self.storage.writing() as tx:
                tx.update_invoice_row(
                    invoice.id,
                    {"payment_status": "failed", "payment_error": payment_error, "updated_us": to_micros(now)},
                )
            self._emit(INVOICE_PAYMENT_FAILED, invoice)
            return {"handled": True, "invoiceId": invoice.id, "paymentStatus": "failed"}
        if event.type == "invoice.finalization_failed":
            failure = obj.get("last_finalization_error") or {}
            error = {"code": failure.get("code"), "message": failure.get("message"), "type": failure.get("type")}
            status = SYNC_TAX_LOCATION_REQUIRED if error["code"] in TAX_LOCATION_CODES else SYNC_FAILED
            if self._schedule_retry(invoice.id, now, error, status):
                self._emit(INVOICE_SYNC_FAILED, invoice)
            return {"handled": True, "invoiceId": invoice.id, "syncStatus": status}
        s_status = {"invoice.paid": "paid", "invoice.voided": "void", "invoice.marked_uncollectible": "uncollectible"}[
            event.type
        ]
        changed = self._adopt(invoice, adopt(invoice.status, s_status))
        values: dict[str, Any] = {"external_status": s_status, "updated_us": to_micros(now)}
        if s_status == "paid":
            values["payment_status"] = "paid"
        if s_status in ("paid", "void"):
            values["status"] = SYNC_DONE
        values["synced_revision"] = changed.revision
        with self.storage.writing() as tx:
            if tx.invoice_row(invoice.id) is not None:
                tx.update_invoice_row(invoice.id, values)
        return {"handled": True, "invoiceId": invoice.id, "status": changed.status}


__all__ = ["INVOICE_EVENTS", "SYNC_JOB", "InvoiceSyncService", "SyncOutcome"]
