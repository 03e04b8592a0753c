"""Builds the billing profile, subscription, invoicing and credit note services from their
collaborators. The config billing profile is written to the database here, at start.

It takes what it needs as arguments and never imports the runtime: tallybook/runtime.py (the one
composition root) calls it and registers the `billing.invoice` job. The job is exclusive (the
scheduler's job lock), so with several processes on one database each run drafts, refreshes and
issues invoices in exactly one of them; the invoices' unique period key and revision checks make
a repeated run harmless as well.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tallybook.billing.cancel_credits import CancelCredits
from tallybook.billing.catalog import CatalogService
from tallybook.billing.catalog import PlanNotFound as CatalogPlanNotFound
from tallybook.billing.invoicing import INVOICE_JOB, InvoicingService
from tallybook.billing.invoicing_sql import SqlInvoiceStorage
from tallybook.billing.models import PlanVersion
from tallybook.billing.profiles import STRIPE, ProfileService
from tallybook.billing.profiles_sql import SqlProfileStorage
from tallybook.billing.settings import BillingSettings
from tallybook.billing.subscriptions import PlanNotFound, SubscriptionService
from tallybook.billing.subscriptions_sql import SqlSubscriptionStorage
from tallybook.clock import Clock
from tallybook.creditnotes.service import CreditNoteService
from tallybook.creditnotes.sql import SqlCreditNotes, void_of_invoice
from tallybook.customers import CustomerService
from tallybook.jobs.runs import ItemFailureLog
from tallybook.meters.service import MeterService
from tallybook.store.base import SqlStore
from tallybook.webhooks.service import WebhookService

log = logging.getLogger(__name__)

__all__ = ["INVOICE_JOB", "BillingServices", "build_billing"]


@dataclass(frozen=True, slots=True)
class BillingServices:
    profiles: ProfileService
    subscriptions: SubscriptionService
    credit_notes: CreditNoteService
    invoicing: InvoicingService


def build_billing(
    store: SqlStore,
    clock: Clock,
    settings: BillingSettings,
    stripe_enabled: bool,
    catalog: CatalogService,
    customers: CustomerService,
    meters: MeterService,
    webhooks: WebhookService,
    failures: ItemFailureLog,
) -> BillingServices:
    def plan_lookup(key: str, version: int | None) -> PlanVersion:
        try:
            return catalog.plan_version(key, version)
        except CatalogPlanNotFound as exc:
            raise PlanNotFound(exc.detail, planKey=key) from None

    profiles = ProfileService(SqlProfileStorage(store), clock, customers, settings, stripe_enabled)
    profiles.sync_config()
    if settings.profile.collector == STRIPE and not stripe_enabled:
        log.warning(
            "billing.profile.collector is stripe but stripe.enabled is false: invoices of the default "
            "profile are not sent to Stripe until it is enabled"
        )
    subscriptions = SubscriptionService(SqlSubscriptionStorage(store), clock, customers, plan_lookup)
    credit_note_store = SqlCreditNotes(store, webhooks)
    credit_notes = CreditNoteService(credit_note_store, credit_note_store, clock, customer_id=subscriptions.customer_id)
    # An invoice's credit notes are voided in the transaction that voids it.
    storage = SqlInvoiceStorage(store, webhooks, on_void=[void_of_invoice])
    invoicing = InvoicingService(
        storage,
        clock,
        subscriptions,
        meters,
        failures,
        settings,
        profiles=profiles,
        credit_notes=credit_notes,
    )
    # In-advance time not used after a cancel or plan change is credited when the end is set.
    subscriptions.on_end(CancelCredits(invoicing, credit_notes).subscription_ended)
    return BillingServices(profiles, subscriptions, credit_notes, invoicing)
