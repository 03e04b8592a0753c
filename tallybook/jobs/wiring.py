"""Assembles the webhook service, the delivery worker and the job scheduler for a Runtime."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tallybook.clock import Clock
from tallybook.jobs.scheduler import Job, JobScheduler
from tallybook.observability.metrics import Metrics
from tallybook.store.base import SqlStore
from tallybook.webhooks.delivery import DELIVERY_JOB, DeliveryWorker
from tallybook.webhooks.service import WebhookService
from tallybook.webhooks.settings import WebhookSettings

log = logging.getLogger(__name__)

__all__ = ["DELIVERY_JOB", "build_jobs"]


def build_jobs(
    store: SqlStore,
    settings: WebhookSettings,
    clock: Clock,
    meters: Any | None,
    metrics: Metrics | None = None,
    producers: Callable[[WebhookService, JobScheduler], None] | None = None,
) -> tuple[WebhookService, JobScheduler]:
    """The webhook service (config endpoints synced) and a scheduler with every job registered.

    Order matters for `run_once`: period close and reports put events into the outbox first, then
    delivery sends them in the same run. `producers` registers more outbox-writing jobs (e.g.
    entitlement notifications) before delivery.
    """
    webhooks = WebhookService(store, settings, clock)
    webhooks.sync_config_endpoints()
    scheduler = JobScheduler(store, clock, poll_interval=settings.scheduler.poll_interval, metrics=metrics)
    if meters is not None:
        from tallybook.jobs.aggregation import PeriodCloseJob
        from tallybook.jobs.reports import MeterReportJob
        from tallybook.meters.models import UsageQuery
        from tallybook.meters.windows import WindowSize, period_bounds

        def usage_query(slug: str, start: datetime, end: datetime, window: str, tz: str) -> UsageQuery:
            return UsageQuery(
                meter=slug,
                from_=start,
                to=end,
                window_size=WindowSize(window),
                window_time_zone=tz,
                group_by=("subject",),
            )

        close = PeriodCloseJob(store, webhooks, meters, settings, period_bounds, scheduler.failures)
        scheduler.register(Job(close.name, close.run, settings.scheduler.close_interval))
        report = MeterReportJob(store, webhooks, meters, settings, period_bounds, usage_query, scheduler.failures)
        scheduler.register(Job(report.name, report.run, settings.scheduler.close_interval))
    else:
        log.warning("no meter service: period close and usage reports are off")
    if producers is not None:
        producers(webhooks, scheduler)
    worker = DeliveryWorker(store, settings, clock, failures=scheduler.failures)
    scheduler.register(
        Job(DELIVERY_JOB, lambda _now: worker.run_once().as_dict(), settings.scheduler.poll_interval, exclusive=False)
    )
    scheduler.on_stop(worker.close)
    return webhooks, scheduler
