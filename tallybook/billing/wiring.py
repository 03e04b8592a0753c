"""Builds the billing profile, subscription, invoicing and credit note services for a Runtime and
registers `billing.invoice`. The config billing profile is written to the database here, at start.

The job is exclusive (the scheduler's job lock), so with several processes on one database each
run drafts, refreshes and issues invoices in exactly one of them; the invoices' unique period key
and revision checks make a repeated run harmless as well.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tallybook.billing.cancel_credits import CancelCredits
from tallybook.billing.catalog import PlanNotFound as CatalogPlanNotFound
from tallybook.billing.invoicing import INVOICE_JOB, InvoicingService
from tallybook.billing.models import PlanVersion
from tallybook.billing.profiles import STRIPE, ProfileService
from tallybook.billing.profiles_sql import SqlProfileStorage
from tallybook.billing.subscriptions import PlanNotFound, SubscriptionService
from tallybook.billing.subscriptions_sql import SqlSubscriptionStorage
from tallybook.creditnotes.service import CreditNoteService
from tallybook.creditnotes.sql import SqlCreditNotes, void_of_invoice
from tallybook.jobs.scheduler import Job

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from tallybook.runtime import Runtime

__all__ = ["INVOICE_JOB", "build_billing"]


def build_billing(runtime: Runtime) -> tuple[SubscriptionService, InvoicingService]:
    catalog = runtime.catalog

    def plan_lookup(key: str, version: int | None) -> PlanVersion:
        try:
            return catalog.plan_version(key, version)
        except CatalogPlanNotFound as exc:
            raise PlanNotFound(exc.detail, planKey=key) from None

    settings = runtime.settings.billing
    stripe_enabled = runtime.settings.stripe.enabled
    runtime.profiles = ProfileService(
        SqlProfileStorage(runtime.store), runtime.clock, runtime.customers, settings, stripe_enabled
    )
    runtime.profiles.sync_config()
    if settings.profile.collector == STRIPE and not stripe_enabled:
        log.warning(
            "billing.profile.collector is stripe but stripe.enabled is false: invoices of the default "
            "profile are not sent to Stripe until it is enabled"
        )
    subscriptions = SubscriptionService(
        SqlSubscriptionStorage(runtime.store), runtime.clock, runtime.customers, plan_lookup
    )
    credit_note_store = SqlCreditNotes(runtime.store, runtime.webhooks)
    runtime.credit_notes = CreditNoteService(
        credit_note_store, credit_note_store, runtime.clock, customer_id=subscriptions.customer_id
    )
    invoicing = InvoicingService(
        runtime.store,
        runtime.clock,
        subscriptions,
        runtime.meters,
        runtime.webhooks,
        settings,
        profiles=runtime.profiles,
        failures=runtime.jobs.failures,
        credit_notes=runtime.credit_notes,
    )
    invoicing.on_void.append(void_of_invoice)  # an invoice's credit notes are voided with it
    # In-advance time not used after a cancel or plan change is credited when the end is set.
    subscriptions.on_end(CancelCredits(invoicing, runtime.credit_notes).subscription_ended)
    runtime.jobs.register(Job(INVOICE_JOB, invoicing.run, settings.invoice_interval))
    return subscriptions, invoicing
