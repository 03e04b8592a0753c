"""The composition root: builds the store and the domain services from settings.

The HTTP app and the CLI both start from a Runtime, so they run the same code paths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.engine import make_url

from tallybook.auth.keys import ApiKeyService
from tallybook.auth.sql import SqlApiKeyStorage
from tallybook.billing.catalog import CatalogService
from tallybook.billing.catalog_sql import SqlPlanRepository
from tallybook.billing.invoicing import INVOICE_JOB, InvoicingService
from tallybook.billing.profiles import ProfileService
from tallybook.billing.subscriptions import SubscriptionService
from tallybook.billing.verification import InvoiceVerifier
from tallybook.billing.wiring import build_billing
from tallybook.clock import Clock, SystemClock
from tallybook.config import Settings
from tallybook.creditnotes.service import CreditNoteService
from tallybook.customers import CustomerService
from tallybook.customers.sql import SqlCustomerRepository
from tallybook.entitlements.notifications import NOTIFY_JOB, EntitlementNotifier
from tallybook.entitlements.notifications_sql import SqlNotifierStorage
from tallybook.entitlements.service import EntitlementService
from tallybook.entitlements.sql import SqlEntitlementRepository
from tallybook.entitlements.subscriptions import SubscriptionEntitlements
from tallybook.eventlist.service import EventListService
from tallybook.eventlist.sql import SqlEventList
from tallybook.ingest.service import IngestService
from tallybook.ingest.sql import SqlEventLog
from tallybook.jobs.aggregation import PeriodCloseJob
from tallybook.jobs.aggregation_sql import SqlAggregationStorage
from tallybook.jobs.reports import MeterReportJob, meter_usage_query
from tallybook.jobs.scheduler import Job, JobScheduler
from tallybook.jobs.sql import sql_scheduler
from tallybook.meters.inline_sql import InlineProjection
from tallybook.meters.service import REBUILD_INTERVAL, REBUILD_JOB, MeterService
from tallybook.meters.sql import SqlMeterStorage
from tallybook.meters.windows import period_bounds
from tallybook.observability.metrics import Metrics
from tallybook.portal.service import PortalService
from tallybook.portal.sql import PortalTokenRepository
from tallybook.store import SqlStore, open_store
from tallybook.stripe.checkout import CHECKOUT_EVENTS, CheckoutService
from tallybook.stripe.credit_notes import SYNC_JOB as CREDIT_NOTE_SYNC_JOB
from tallybook.stripe.credit_notes import CreditNoteSyncService
from tallybook.stripe.invoices import INVOICE_EVENTS, SYNC_JOB, InvoiceSyncService
from tallybook.stripe.service import REPORT_JOB, StripeService
from tallybook.stripe.sql import SqlStripeStorage
from tallybook.stripe.sql_sync import SqlSyncStorage
from tallybook.unbilled.service import EVENT_TYPE as UNBILLED_EVENT
from tallybook.unbilled.service import JOB_NAME as UNBILLED_JOB
from tallybook.unbilled.service import UnbilledNotifications, UnbilledService
from tallybook.unbilled.sql import OutboxNotifier, SqlUnbilledSources
from tallybook.voids.service import VoidService
from tallybook.voids.sql import SqlVoidStorage
from tallybook.webhooks.delivery import DELIVERY_JOB, DeliveryWorker
from tallybook.webhooks.service import WebhookService
from tallybook.webhooks.sql import SqlWebhookStorage

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: SqlStore
    clock: Clock
    metrics: Metrics
    ingest: IngestService
    keys: ApiKeyService
    started: bool = field(default=False)
    customers: CustomerService = field(init=False)
    meters: MeterService = field(init=False)
    webhooks: WebhookService = field(init=False)
    jobs: JobScheduler = field(init=False)
    catalog: CatalogService = field(init=False)
    subscriptions: SubscriptionService = field(init=False)
    invoicing: InvoicingService = field(init=False)
    stripe: StripeService = field(init=False)
    profiles: ProfileService = field(init=False)
    checkout: CheckoutService = field(init=False)
    invoice_sync: InvoiceSyncService = field(init=False)
    portal: PortalService = field(init=False)
    voids: VoidService = field(init=False)
    event_list: EventListService = field(init=False)
    unbilled: UnbilledService = field(init=False)
    invoice_checks: InvoiceVerifier = field(init=False)
    credit_notes: CreditNoteService = field(init=False)
    credit_note_sync: CreditNoteSyncService = field(init=False)
    entitlements: EntitlementService = field(init=False)
    entitlement_notifier: EntitlementNotifier = field(init=False)

    @classmethod
    def build(
        cls, settings: Settings, clock: Clock | None = None, migrate: bool = True, sync_meters: bool = True
    ) -> Runtime:
        """`sync_meters=False` for tools that only read or manage other things: syncing would make the
        meters of *this* process's config (possibly none) the live set, deleting everyone else's."""
        clock = clock or SystemClock()
        store = open_store(settings.database.url)
        if migrate:
            store.migrate()
        metrics = Metrics()
        ingest = IngestService(
            SqlEventLog(store),
            metrics=metrics,
            clock=clock,
            max_group_events=settings.ingest.group_commit_max_events,
            writers=settings.ingest.writers_for(settings.database.url),
        )
        runtime = cls(settings, store, clock, metrics, ingest, ApiKeyService(SqlApiKeyStorage(store), clock))
        runtime.customers = CustomerService(SqlCustomerRepository(store), clock)
        for key in settings.auth.bootstrap_keys:
            if runtime.keys.ensure(key.name, key.scope, key.key):
                log.info("registered API key from config", extra={"key_name": key.name, "scope": key.scope})
        runtime.meters = MeterService(SqlMeterStorage(store), clock, settings.meters)
        if store.dialect_name == "sqlite":
            # One writer holds SQLite's only write lock: it projects its own new events into the
            # caught-up meters in the same transaction (fresh at once, no second read of them).
            ingest.projection = InlineProjection(runtime.meters.materializer.load_projections)
        if sync_meters:
            runtime.meters.sync_config()
        runtime.voids = VoidService(SqlVoidStorage(store), clock)
        runtime.event_list = EventListService(SqlEventList(store), runtime.meters.catch_up)
        runtime.entitlements = EntitlementService(
            SqlEntitlementRepository(store), runtime.customers, runtime.meters, clock
        )
        runtime.catalog = CatalogService(SqlPlanRepository(store), clock, runtime.meters, settings.billing)
        runtime.portal = PortalService(PortalTokenRepository(store), clock, runtime.customers, runtime.meters)

        # The webhook service (config endpoints synced) and every job, registered here in the order
        # `run_once` runs them: period close, reports and entitlement notifications put events into
        # the outbox first, then delivery sends them in the same run.
        webhook_storage = SqlWebhookStorage(store)
        runtime.webhooks = WebhookService(webhook_storage, settings.webhooks, clock)
        runtime.webhooks.sync_config_endpoints()
        hooks = settings.webhooks
        runtime.jobs = sql_scheduler(store, clock, poll_interval=hooks.scheduler.poll_interval, metrics=metrics)
        failures = runtime.jobs.failures
        aggregation = SqlAggregationStorage(store)
        close = PeriodCloseJob(aggregation, runtime.webhooks, runtime.meters, hooks, period_bounds, failures)
        runtime.jobs.register(Job(close.name, close.run, hooks.scheduler.close_interval))
        report = MeterReportJob(
            aggregation, runtime.webhooks, runtime.meters, hooks, period_bounds, meter_usage_query, failures
        )
        runtime.jobs.register(Job(report.name, report.run, hooks.scheduler.close_interval))
        notifier = EntitlementNotifier(
            SqlNotifierStorage(store), runtime.webhooks, runtime.entitlements, clock, failures
        )
        runtime.entitlement_notifier = notifier
        runtime.jobs.register(Job(NOTIFY_JOB, notifier.run, hooks.scheduler.close_interval))
        delivery = DeliveryWorker(webhook_storage, hooks, clock, failures=failures)
        runtime.jobs.register(
            Job(
                DELIVERY_JOB, lambda _now: delivery.run_once().as_dict(), hooks.scheduler.poll_interval, exclusive=False
            )
        )
        runtime.jobs.on_stop(delivery.close)
        runtime.stripe = StripeService(
            SqlStripeStorage(store), runtime.jobs.failures, runtime.customers, runtime.meters, settings.stripe, clock
        )
        if settings.stripe.enabled:
            runtime.jobs.register(
                Job(REPORT_JOB, lambda now: runtime.stripe.run_job(now), settings.stripe.report_interval)
            )
        runtime.checkout = CheckoutService(runtime.stripe, runtime.customers, clock)
        billing = build_billing(
            store,
            clock,
            settings.billing,
            settings.stripe.enabled,
            runtime.catalog,
            runtime.customers,
            runtime.meters,
            runtime.webhooks,
            runtime.jobs.failures,
        )
        runtime.profiles, runtime.subscriptions = billing.profiles, billing.subscriptions
        runtime.credit_notes, runtime.invoicing = billing.credit_notes, billing.invoicing
        runtime.jobs.register(Job(INVOICE_JOB, runtime.invoicing.run, settings.billing.invoice_interval))
        runtime.invoice_checks = InvoiceVerifier(runtime.invoicing.storage, clock, runtime.invoicing)
        unbilled_sources = SqlUnbilledSources(store, runtime.meters, runtime.subscriptions)
        runtime.unbilled = UnbilledService(unbilled_sources, unbilled_sources, clock)
        unbilled_job = UnbilledNotifications(
            runtime.unbilled,
            OutboxNotifier(store, runtime.webhooks, UNBILLED_EVENT),
            grace=settings.billing.invoice_grace,
        )
        runtime.jobs.register(Job(UNBILLED_JOB, unbilled_job.run, settings.billing.unbilled_interval))
        # Meter rebuilds for `worker` and `jobs run` (serve's materializer thread does them too).
        runtime.jobs.register(Job(REBUILD_JOB, runtime.meters.rebuild_job, REBUILD_INTERVAL, exclusive=False))
        plan_entitlements = SubscriptionEntitlements(runtime.entitlements, runtime.subscriptions)
        runtime.subscriptions.listeners.append(plan_entitlements.sync)
        sync_storage = SqlSyncStorage(store, runtime.webhooks)
        runtime.invoice_sync = InvoiceSyncService(
            sync_storage,
            runtime.stripe,
            runtime.invoicing,
            runtime.profiles,
            runtime.customers,
            settings.billing,
            clock,
            failures=runtime.jobs.failures,
        )
        runtime.credit_note_sync = CreditNoteSyncService(
            sync_storage, runtime.stripe, runtime.credit_notes, runtime.invoicing, clock, failures=runtime.jobs.failures
        )
        runtime.use_stripe(runtime.stripe)
        if settings.stripe.enabled:
            runtime.jobs.register(
                Job(SYNC_JOB, lambda now: runtime.invoice_sync.run(now), settings.stripe.invoice_sync_interval)
            )
            runtime.jobs.register(
                Job(
                    CREDIT_NOTE_SYNC_JOB,
                    lambda now: runtime.credit_note_sync.run(now),
                    settings.stripe.invoice_sync_interval,
                )
            )
        return runtime

    def use_stripe(self, service: StripeService) -> None:
        """Make `service` the Stripe service of everything that talks to Stripe, and route its
        inbound webhook events (a reconfigured service, or a test's)."""
        self.stripe = service
        self.checkout.stripe = service
        self.invoice_sync.stripe = service
        self.credit_note_sync.stripe = service
        service.on_event(CHECKOUT_EVENTS, self.checkout.handle_event)
        service.on_event(INVOICE_EVENTS, self.invoice_sync.handle_event)

    def start(self) -> None:
        self.ingest.start()
        self.meters.start()
        if self.settings.webhooks.scheduler.run_in_server:
            self.jobs.start()
        self.started = True

    def stop(self) -> None:
        self.jobs.stop()
        self.ingest.stop()
        self.meters.stop()
        self.store.close()
        self.started = False

    @property
    def database_label(self) -> str:
        """The database URL with any password masked, safe for logs and output."""
        return make_url(self.settings.database.url).render_as_string(hide_password=True)
