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

Fault isolation: each invoice is one item of the `stripe.invoices` job. A Stripe refusal is the
invoice's sync state (`sync.error`, retried with backoff). A failure inside Tallybook (a bug, a
failed write) is recorded as a failed `invoice` item (GET /api/v1/jobs/failures), retried later
with backoff like a Stripe error, and the other invoices are synced.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import stripe
from sqlalchemy import Connection

from tallybook.billing.currency import minor_units
from tallybook.billing.invoicing import (
    DRAFT,
    ISSUED,
    PAID,
    UNCOLLECTIBLE,
    VOID,
    Invoice,
    InvoiceConflict,
    InvoiceNotFound,
    InvoicingService,
    Line,
)
from tallybook.billing.profiles import STRIPE, BillingProfile, ProfileService
from tallybook.billing.settings import BillingSettings
from tallybook.clock import Clock, format_rfc3339, from_micros, to_micros
from tallybook.customers import CustomerService
from tallybook.jobs.failures import FailureLog
from tallybook.store import invoice_sync as sync_store
from tallybook.store.base import SqlStore
from tallybook.store.invoice_sync import DONE, FAILED, PENDING, SYNCED, TAX_LOCATION_REQUIRED
from tallybook.stripe.client import error_json
from tallybook.stripe.service import StripeProblem, StripeService, stripe_address
from tallybook.webhooks.service import OutboxMessage, WebhookService
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
TAX_LOCATION_CODES = ("customer_tax_location_invalid",)
TIMES = "\u00d7"  # the multiplication sign, as in "API calls (1200 \u00d7 0.001 USD)"


class InvoiceNotSynced(StripeProblem):
    status = 404
    code = "invoice-not-synced"


@dataclass(frozen=True, slots=True)
class DesiredItem:
    """One Stripe invoice item as a Tallybook line wants it."""

    key: str  # stable across revisions of the invoice (see line_keys)
    fingerprint: str  # changes when anything Stripe shows changes
    params: dict[str, Any]  # invoiceitems.create/update params, without customer/invoice


@dataclass
class SyncOutcome:
    invoice_id: str
    status: str
    external_id: str | None = None
    created_items: int = 0
    updated_items: int = 0
    deleted_items: int = 0
    error: dict[str, Any] | None = None


def line_keys(lines: Sequence[Line]) -> list[str]:
    """A key per line that survives recomputation: what the line is (kind, subscription, rate card,
    service period, corrected invoice), not where it sits or what it costs. Lines with the same
    identity (rare) are told apart by their order."""
    seen: dict[str, int] = {}
    keys = []
    for line in lines:
        identity = "|".join(
            str(part)
            for part in (
                line.kind,
                line.subscription_id,
                line.rate_card_key,
                line.meter,
                to_micros(line.period.start),
                to_micros(line.period.end),
                line.corrects_invoice_id,
                (line.detail or {}).get("reason"),
            )
        )
        digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
        n = seen.get(digest, 0)
        seen[digest] = n + 1
        keys.append(digest if n == 0 else f"{digest}-{n}")
    return keys


def to_minor(amount: Decimal, currency: str) -> int:
    """Major units (already rounded to the currency's minor unit) to Stripe's integer amount."""
    scaled = amount.scaleb(minor_units(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {currency} is not rounded to the currency's minor unit")
    return int(scaled)


def from_minor(amount: int, currency: str) -> Decimal:
    return Decimal(amount).scaleb(-minor_units(currency))


def describe(line: Line, currency: str) -> str:
    """What the Stripe line says: the name, then "(quantity TIMES unit price)" for priced usage."""
    if line.quantity is not None and line.unit_price is not None:
        quantity, unit = f"{line.quantity.normalize():f}", f"{line.unit_price.normalize():f}"
        return f"{line.name} ({quantity} {TIMES} {unit} {currency.upper()})"
    if line.quantity is not None:
        return f"{line.name} ({line.quantity.normalize():f} units)"
    return line.name


def desired_items(invoice: Invoice, profile: BillingProfile, default_tax_code: str) -> tuple[list[DesiredItem], int]:
    """The Stripe items for the invoice's lines, and their total in minor units."""
    items = []
    total = 0
    for line, key in zip(invoice.lines, line_keys(invoice.lines), strict=True):
        amount = to_minor(line.amount, invoice.currency)
        total += amount
        tax_code = line.tax_code or default_tax_code
        metadata = {
            "tallybook_invoice_id": invoice.id,
            "tallybook_line_key": key,
            "tallybook_line_kind": line.kind,
            "tallybook_tax_code": tax_code,
        }
        if line.rate_card_key:
            metadata["tallybook_rate_card"] = line.rate_card_key
        if line.subscription_id:
            metadata["tallybook_subscription_id"] = line.subscription_id
        params: dict[str, Any] = {
            "amount": amount,
            "currency": invoice.currency.lower(),
            "description": describe(line, invoice.currency)[:500],
            "period": {"start": int(line.period.start.timestamp()), "end": int(line.period.end.timestamp())},
            "tax_code": tax_code,
            "metadata": metadata,
        }
        if profile.tax_enabled:
            params["tax_behavior"] = profile.tax_behavior
        fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        params["metadata"]["tallybook_fingerprint"] = fingerprint
        items.append(DesiredItem(key, fingerprint, params))
    return items, total


def _sum_tax(s_invoice: Any) -> int:
    return sum(int(t["amount"]) for t in (s_invoice.get("total_taxes") or []))


class InvoiceSyncService:
    def __init__(
        self,
        store: SqlStore,
        stripe_service: StripeService,
        invoicing: InvoicingService,
        profiles: ProfileService,
        customers: CustomerService,
        webhooks: WebhookService,
        billing: BillingSettings,
        clock: Clock,
        failures: FailureLog | None = None,
    ) -> None:
        self.store = store
        self.failures = failures or FailureLog(store, clock)
        self.stripe = stripe_service
        self.invoicing = invoicing
        self.profiles = profiles
        self.customers = customers
        self.webhooks = webhooks
        self.billing = billing
        self.clock = clock

    # -- the job --------------------------------------------------------------------------------
    def run(self, now: datetime | None = None) -> dict[str, Any]:
        """Sync every invoice that is due: new open invoices of Stripe customers, changed ones, retries."""
        now = now or self.clock.now()
        with self.store.read() as conn:
            due = sync_store.changed(conn, to_micros(now), BATCH)
            fresh = sync_store.never_synced(conn, OPEN_STATUSES)
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
        with self.store.read() as conn:
            row = sync_store.get(conn, invoice_id)
        if profile.collector != STRIPE and (row is None or row["external_id"] is None):
            return None
        self.stripe.require_enabled()
        with self.store.write() as conn:
            sync_store.ensure(conn, invoice_id, STRIPE, to_micros(now))
            row = sync_store.get(conn, invoice_id)
        assert row is not None
        outcome = SyncOutcome(invoice_id, PENDING, row["external_id"])
        try:
            self._converge(invoice, profile, row, outcome, now)
        except stripe.StripeError as exc:
            self._failed(invoice, exc, outcome, now)
        return outcome

    def _converge(
        self, invoice: Invoice, profile: BillingProfile, row: dict[str, Any], outcome: SyncOutcome, now: datetime
    ) -> None:
        client = self.stripe.client()
        customer_id = self._stripe_customer(invoice.customer_id, sync_address=profile.tax_enabled)
        external_id = row["external_id"] or self._find_existing(client, customer_id, invoice.id)
        s_invoice: Any = None
        if external_id is None:
            if invoice.status == VOID:  # voided before it ever reached Stripe
                self._record(invoice, DONE, now, external_customer_id=customer_id)
                outcome.status = DONE
                return
            created = client.v1.invoices.create(
                cast(
                    Any,
                    {
                        "customer": customer_id,
                        "currency": invoice.currency.lower(),
                        "auto_advance": False,
                        "pending_invoice_items_behavior": "exclude",
                        "automatic_tax": {"enabled": profile.tax_enabled},
                        **self._collection(profile),
                        "description": self._title(invoice),
                        "metadata": {"tallybook_invoice_id": invoice.id, "tallybook_customer_id": invoice.customer_id},
                    },
                ),
                {"idempotency_key": f"tallybook-invoice-{invoice.id}"},
            )
            external_id, s_invoice = str(created.id), created
        outcome.external_id = external_id
        # Stored before any item is added: from here on every run works on this one Stripe invoice.
        with self.store.write() as conn:
            sync_store.update(
                conn,
                invoice.id,
                {"external_id": external_id, "external_customer_id": customer_id, "updated_us": to_micros(now)},
            )
        # An invoice created just now is the answer in hand, with no items yet: two requests saved.
        fresh = s_invoice is not None
        if s_invoice is None:
            s_invoice = client.v1.invoices.retrieve(external_id)
        if s_invoice.status == "draft":
            if invoice.status == VOID:
                client.v1.invoices.delete(external_id)
                self._record(invoice, DONE, now, external_status="deleted")
                outcome.status = DONE
                return
            self._update_draft(client, invoice, profile, s_invoice, outcome, fresh)
            if invoice.status == DRAFT:
                self._record(invoice, SYNCED, now, external_status="draft")
                outcome.status = SYNCED
                return
            s_invoice = client.v1.invoices.retrieve(external_id)
            expected = to_minor(invoice.totals.total, invoice.currency)
            if int(s_invoice.subtotal) != expected:
                found = from_minor(int(s_invoice.subtotal), invoice.currency)
                raise _Mismatch(
                    f"the Stripe draft {external_id} adds up to {found} but the invoice total is "
                    f"{invoice.totals.total}; it was not finalized"
                )
            try:
                s_invoice = client.v1.invoices.finalize_invoice(external_id, {"auto_advance": profile.auto_collect})
            except stripe.InvalidRequestError:
                # Another sync of this invoice (the job and a manual sync) may have finalized it first.
                s_invoice = client.v1.invoices.retrieve(external_id)
                if s_invoice.status == "draft":
                    raise
        self._converge_status(client, invoice, s_invoice, outcome, now)

    def _update_draft(
        self,
        client: stripe.StripeClient,
        invoice: Invoice,
        profile: BillingProfile,
        s_invoice: Any,
        outcome: SyncOutcome,
        fresh: bool,
    ) -> None:
        changes: dict[str, Any] = {}
        if bool(s_invoice.automatic_tax.enabled) != profile.tax_enabled:
            changes["automatic_tax"] = {"enabled": profile.tax_enabled}
        collection = self._collection(profile)
        if s_invoice.collection_method != collection["collection_method"]:
            changes.update(collection)
        if changes:
            client.v1.invoices.update(s_invoice.id, cast(Any, changes))
        wanted, _ = desired_items(invoice, profile, self.billing.default_tax_code)
        present: dict[str, Any] = {}
        extra: list[str] = []
        listing = (
            () if fresh else client.v1.invoice_items.list({"invoice": s_invoice.id, "limit": 100}).auto_paging_iter()
        )
        for item in listing:
            key = _metadata(item).get("tallybook_line_key")
            if key is None or key in present:
                extra.append(str(item.id))  # not ours, or a duplicate: the invoice must hold exactly our lines
            else:
                present[key] = item
        for desired in wanted:
            item = present.pop(desired.key, None)
            if item is None:
                client.v1.invoice_items.create(
                    cast(Any, {**desired.params, "customer": s_invoice.customer, "invoice": s_invoice.id}),
                    {"idempotency_key": f"tallybook-item-{invoice.id}-{desired.key}-{desired.fingerprint}"},
                )
                outcome.created_items += 1
            elif _metadata(item).get("tallybook_fingerprint") != desired.fingerprint:
                params = {k: v for k, v in desired.params.items() if k != "currency"}
                client.v1.invoice_items.update(item.id, cast(Any, params))
                outcome.updated_items += 1
        for item_id in [*extra, *(str(i.id) for i in present.values())]:
            client.v1.invoice_items.delete(item_id)
            outcome.deleted_items += 1

    def _converge_status(
        self, client: stripe.StripeClient, invoice: Invoice, s_invoice: Any, outcome: SyncOutcome, now: datetime
    ) -> None:
        """A finalized Stripe invoice: apply whichever side moved last."""
        s_status = str(s_invoice.status)
        if invoice.status == VOID and s_status in ("open", "uncollectible"):
            s_invoice = client.v1.invoices.void_invoice(s_invoice.id)
        elif invoice.status == PAID and s_status in ("open", "uncollectible"):
            s_invoice = client.v1.invoices.pay(s_invoice.id, {"paid_out_of_band": True})
        elif invoice.status == UNCOLLECTIBLE and s_status == "open":
            s_invoice = client.v1.invoices.mark_uncollectible(s_invoice.id)
        else:
            invoice = self._apply_stripe_status(invoice, s_status)
        s_status = str(s_invoice.status)
        if invoice.status == VOID and s_status == "paid":
            raise _Mismatch(
                f"the invoice is void in Tallybook but {s_invoice.id} is paid in Stripe; refund it in Stripe"
            )
        status = DONE if s_status in ("paid", "void") else SYNCED
        self._record(invoice, status, now, **self._stripe_fields(s_invoice, invoice.currency))
        outcome.status = status

    def _apply_stripe_status(self, invoice: Invoice, s_status: str) -> Invoice:
        """Stripe moved on (paid, voided, written off): move the Tallybook invoice the same way."""
        try:
            if s_status == "paid" and invoice.status in (ISSUED, UNCOLLECTIBLE):
                return self._transition(invoice, PAID)
            if s_status == "void" and invoice.status in (DRAFT, ISSUED, UNCOLLECTIBLE):
                return self._transition(invoice, VOID)
            if s_status == "uncollectible" and invoice.status == ISSUED:
                return self._transition(invoice, UNCOLLECTIBLE)
        except InvoiceConflict:
            return self.invoicing.get(invoice.id)  # changed meanwhile; the next sync sees it
        return invoice

    def _transition(self, invoice: Invoice, target: str) -> Invoice:
        if target == PAID:
            changed = self.invoicing.mark_paid(invoice.id)
            self._emit(INVOICE_PAID, changed)
        elif target == VOID:
            changed = self.invoicing.void(invoice.id)
        else:
            changed = self.invoicing.mark_uncollectible(invoice.id)
            self._emit(INVOICE_UNCOLLECTIBLE, changed)
        return changed

    # -- Stripe customers -----------------------------------------------------------------------
    def _stripe_customer(self, customer_id: str, sync_address: bool) -> str:
        """The customer's Stripe customer (created and linked if it has none); with `sync_address`,
        the Tallybook billing address is pushed to it, since Stripe Tax places the customer by it."""
        link = self.stripe.db.get_customer(customer_id)
        if link is None:
            return self.stripe.ensure_stripe_customer(self.customers.resolve(customer_id))
        if sync_address:
            address = stripe_address(self.customers.resolve(customer_id))
            if address is not None:
                self.stripe.client().v1.customers.update(link.stripe_customer_id, cast(Any, {"address": address}))
        return link.stripe_customer_id

    @staticmethod
    def _find_existing(client: stripe.StripeClient, customer_id: str, invoice_id: str) -> str | None:
        """A Stripe invoice already made for this Tallybook invoice (its id was never stored)."""
        listing = client.v1.invoices.list({"customer": customer_id, "limit": 100})
        for s_invoice in listing.auto_paging_iter():
            if _metadata(s_invoice).get("tallybook_invoice_id") == invoice_id:
                return str(s_invoice.id)
        return None

    @staticmethod
    def _collection(profile: BillingProfile) -> dict[str, Any]:
        if profile.collection_method == "send_invoice":
            return {"collection_method": "send_invoice", "days_until_due": profile.days_until_due}
        return {"collection_method": "charge_automatically"}

    @staticmethod
    def _title(invoice: Invoice) -> str:
        start, end = invoice.period.start, invoice.period.end
        return f"Tallybook invoice {invoice.id}: {start:%Y-%m-%d} to {end:%Y-%m-%d}"

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
        with self.store.write() as conn:
            sync_store.update(
                conn,
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
        permanent = exc.http_status is not None and 400 <= exc.http_status < 500 and exc.http_status not in (409, 429)
        status = PENDING
        if error.get("code") in TAX_LOCATION_CODES:
            status = TAX_LOCATION_REQUIRED
            error["message"] = (
                "Stripe Tax cannot place the customer: set the customer's billingAddress (country; postal code "
                f"in the US and Canada). Stripe said: {error['message']}"
            )
        elif permanent:
            status = FAILED
        outcome.status, outcome.error = status, error
        entered = self._schedule_retry(invoice.id, now, error, status)
        if status != PENDING and entered:
            self._emit(INVOICE_SYNC_FAILED, self.invoicing.get(invoice.id))

    def _schedule_retry(self, invoice_id: str, now: datetime, error: dict[str, Any], status: str = PENDING) -> bool:
        """Record the error and when to try again; True if the row entered `status` just now."""
        settings = self.stripe.settings
        with self.store.write() as conn:
            row = sync_store.get(conn, invoice_id, for_update=True)
            if row is None:
                return False
            attempts = int(row["attempts"]) + 1
            delay = min(settings.retry_base * (2 ** (attempts - 1)), settings.retry_max)
            sync_store.update(
                conn,
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
        with self.store.write() as conn:
            targets = self.webhooks.destinations(conn, event_type)
            if not targets:
                return
            external = self._external(conn, [invoice.id]).get(invoice.id)
            message = OutboxMessage(
                type=event_type,
                dedup_key=f"{event_type}:{invoice.id}:{invoice.revision}:{to_micros(now)}",
                payload={
                    "type": event_type,
                    "invoice": invoice_json(invoice, external),
                    "created": int(now.timestamp()),
                },
                subject=invoice.customer_id,
            )
            self.webhooks.enqueue(conn, message, targets, now)

    # -- reading --------------------------------------------------------------------------------
    def external_of(self, invoice_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The sync state of these invoices as API JSON (`number`, `externalIds`, `sync`)."""
        if not invoice_ids:
            return {}
        with self.store.read() as conn:
            return self._external(conn, invoice_ids)

    @staticmethod
    def _external(conn: Connection, invoice_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {iid: external_json(row) for iid, row in sync_store.rows_for(conn, invoice_ids).items()}

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
        with self.store.read() as conn:
            row = sync_store.by_external_id(conn, external_id)
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
            with self.store.write() as conn:
                sync_store.update(
                    conn,
                    invoice.id,
                    {"payment_status": "failed", "payment_error": payment_error, "updated_us": to_micros(now)},
                )
            self._emit(INVOICE_PAYMENT_FAILED, invoice)
            return {"handled": True, "invoiceId": invoice.id, "paymentStatus": "failed"}
        if event.type == "invoice.finalization_failed":
            failure = obj.get("last_finalization_error") or {}
            error = {"code": failure.get("code"), "message": failure.get("message"), "type": failure.get("type")}
            status = TAX_LOCATION_REQUIRED if error["code"] in TAX_LOCATION_CODES else FAILED
            if self._schedule_retry(invoice.id, now, error, status):
                self._emit(INVOICE_SYNC_FAILED, invoice)
            return {"handled": True, "invoiceId": invoice.id, "syncStatus": status}
        s_status = {"invoice.paid": "paid", "invoice.voided": "void", "invoice.marked_uncollectible": "uncollectible"}[
            event.type
        ]
        changed = self._apply_stripe_status(invoice, s_status)
        values: dict[str, Any] = {"external_status": s_status, "updated_us": to_micros(now)}
        if s_status == "paid":
            values["payment_status"] = "paid"
        if s_status in ("paid", "void"):
            values["status"] = DONE
        values["synced_revision"] = changed.revision
        with self.store.write() as conn:
            if sync_store.get(conn, invoice.id) is not None:
                sync_store.update(conn, invoice.id, values)
        return {"handled": True, "invoiceId": invoice.id, "status": changed.status}


class _Mismatch(stripe.StripeError):
    """Stripe and Tallybook disagree in a way syncing must not paper over (a person decides)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, http_status=422, code="tallybook_amount_mismatch")


def _instant(us: int | None) -> str | None:
    return None if us is None else format_rfc3339(from_micros(us))


def _metadata(obj: Any) -> dict[str, str]:
    """A Stripe object's metadata (SDK objects are not dicts since stripe-python 15)."""
    return dict(obj.to_dict().get("metadata") or {})


def external_json(row: dict[str, Any]) -> dict[str, Any]:
    """`number`, `externalIds` (OpenMeter's names) and the sync state of one invoice."""
    sync: dict[str, Any] = {
        "app": row["app"],
        "status": row["status"],
        "syncedRevision": row["synced_revision"],
        "updatedAt": format_rfc3339(from_micros(row["updated_us"])),
    }
    optional = {
        "externalStatus": row["external_status"],
        "hostedInvoiceUrl": row["hosted_url"],
        "invoicePdf": row["pdf_url"],
        "taxStatus": row["tax_status"],
        "tax": row["tax_amount"],
        "totalWithTax": row["total"],
        "paymentStatus": row["payment_status"],
        "paymentError": row["payment_error"],
        "error": row["error"],
        "attempts": row["attempts"] or None,
        "nextAttemptAt": _instant(row["next_attempt_us"]),
    }
    sync.update({k: v for k, v in optional.items() if v is not None})
    body: dict[str, Any] = {"sync": sync}
    if row["external_id"]:
        body["externalIds"] = {"invoicing": row["external_id"], "payment": row["external_id"]}
    if row["number"]:
        body["number"] = row["number"]
    return body
