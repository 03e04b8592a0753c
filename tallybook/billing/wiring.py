"""Builds the billing profile, subscription and invoicing services for a Runtime and registers
`billing.invoice`. The config billing profile is written to the database here, at start.

The job is exclusive (the scheduler's job lock), so with several processes on one database each
run drafts, refreshes and issues invoices in exactly one of them; the invoices' unique period key
and revision checks make a repeated run harmless as well.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tallybook.billing.catalog import PlanNotFound as CatalogPlanNotFound
from tallybook.billing.invoicing import INVOICE_JOB, InvoicingService
from tallybook.billing.models import PlanVersion
from tallybook.billing.profiles import STRIPE, ProfileService
from tallybook.billing.subscriptions import PlanNotFound, SubscriptionService
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
    runtime.profiles = ProfileService(runtime.store, runtime.clock, runtime.customers, settings, stripe_enabled)
    runtime.profiles.sync_config()
    if settings.profile.collector == STRIPE and not stripe_enabled:
        log.warning(
            "billing.profile.collector is stripe but stripe.enabled is false: invoices of the default "
            "profile are not sent to Stripe until it is enabled"
        )
    subscriptions = SubscriptionService(runtime.store, runtime.clock, runtime.customers, plan_lookup)
    invoicing = InvoicingService(
        runtime.store,
        runtime.clock,
        subscriptions,
        runtime.meters,
        runtime.webhooks,
        settings,
        profiles=runtime.profiles,
        failures=runtime.jobs.failures,
    )
    runtime.jobs.register(Job(INVOICE_JOB, invoicing.run, settings.invoice_interval))
    return subscriptions, invoicing
