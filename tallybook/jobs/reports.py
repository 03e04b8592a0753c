"""`report.meter`: for every finished hour or day, one usage report per meter and subject.

Shaped like the usage that OpenMeter's Stripe webhook example forwards: the meter, the query that
produced the figures, and the windows. A report's event id (and so its `webhook-id`) derives from
the meter, subject and window, so the same report always has the same id: receivers can use it as
an idempotency key, e.g. for Stripe meter events.

Fault isolation: each meter's window is one item (`meter_window`). One that fails (its query, a
write) is recorded (GET /api/v1/jobs/failures) and skipped; the other meters are reported and the
cursor moves on. Later runs retry the recorded windows first (the same report keeps its id, so a
window half sent before the failure is not sent twice).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from tallybook.clock import format_rfc3339, from_micros, to_micros
from tallybook.jobs.aggregation import PeriodBounds, plain_number
from tallybook.jobs.ports import AggregationStorage
from tallybook.jobs.runs import ItemFailureLog, JobRun
from tallybook.meters.models import UsageQuery
from tallybook.meters.windows import WindowSize
from tallybook.webhooks.model import OutboxMessage
from tallybook.webhooks.service import WebhookService
from tallybook.webhooks.settings import REPORT_METER, WebhookSettings

log = logging.getLogger(__name__)

WINDOW_SIZES = {"hourly": "HOUR", "daily": "DAY"}
FIRST_RUN_WINDOWS = 1  # the first run reports the last finished window, not history
METER_WINDOW = "meter_window"  # the item kind of a failed meter's window


class ReportMeters(Protocol):
    def list(self) -> Any: ...

    def query(self, query: Any) -> Any: ...


def meter_usage_query(slug: str, start: datetime, end: datetime, window: str, tz: str) -> UsageQuery:
    """The query a report runs for one meter's window: usage per subject in windows of `window`."""
    return UsageQuery(
        meter=slug,
        from_=start,
        to=end,
        window_size=WindowSize(window),
        window_time_zone=tz,
        group_by=("subject",),
    )


def meter_summary(meter: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": meter.id,
        "slug": meter.slug,
        "name": meter.name,
        "eventType": meter.event_type,
        "aggregation": str(meter.aggregation),
    }
    if meter.value_property:
        body["valueProperty"] = meter.value_property
    if meter.group_by:
        body["groupBy"] = dict(meter.group_by)
    return body


class MeterReportJob:
    name = "report.meter"

    def __init__(
        self,
        storage: AggregationStorage,
        webhooks: WebhookService,
        meters: ReportMeters,
        settings: WebhookSettings,
        period_bounds: PeriodBounds,
        usage_query: Callable[[str, datetime, datetime, str, str], Any],
        failures: ItemFailureLog,
    ) -> None:
        self.storage = storage
        self.webhooks = webhooks
        self.meters = meters
        self.settings = settings
        self.period_bounds = period_bounds
        self.usage_query = usage_query  # (meter slug, from, to, window size, time zone) -> a query
        self.failures = failures

    def __call__(self, now: datetime) -> dict[str, Any]:
        return self.run(now)

    def run(self, now: datetime) -> dict[str, Any]:
        with self.failures.run(self.name) as run:
            counts = self._run(now, run)
        return run.outcome(counts)

    def _run(self, now: datetime, run: JobRun) -> dict[str, int]:
        counts = {"windows": 0, "reports": 0}
        interval = self.settings.reports.interval
        zone = self.settings.zone
        cursor_name = f"report.meter:{interval}"
        with self.storage.reading() as tx:
            cursor_us = tx.get_cursor(cursor_name)
            active = bool(self.webhooks.destinations(tx.outbox, REPORT_METER))
        if active:
            counts["reports"] += self._retry_failed(run, now)
        if cursor_us is None:
            # Start with the last window that is finished (grace included).
            last_open, _ = self.period_bounds(interval, now - self.settings.grace, zone)
            start = last_open
            for _ in range(FIRST_RUN_WINDOWS):
                start, _ = self.period_bounds(interval, start - timedelta(microseconds=1), zone)
        else:
            start = from_micros(cursor_us)
        reported_through: datetime | None = None
        while True:
            start, end = self.period_bounds(interval, start, zone)
            if end + self.settings.grace > now:
                break
            if active:
                counts["reports"] += self._report_window(start, end, now, run)
                with self.storage.writing() as tx:
                    tx.set_cursor(cursor_name, to_micros(end))
            reported_through = end
            counts["windows"] += 1
            start = end
        if not active and reported_through is not None:
            with self.storage.writing() as tx:
                tx.set_cursor(cursor_name, to_micros(reported_through))
        return counts

    def _meters(self) -> list[Any]:
        meters = list(self.meters.list())
        wanted = self.settings.reports.meters
        if wanted is None:
            return meters
        return [m for m in meters if m.slug in wanted or m.id in wanted]

    def _retry_failed(self, run: JobRun, now: datetime) -> int:
        """Report the meter windows that failed in earlier runs."""
        sent = 0
        meters = {m.slug: m for m in self._meters()}
        for row in self.failures.failing(self.name, METER_WINDOW):
            ctx = row.context
            meter = meters.get(str(ctx.get("meter")))
            try:
                start = datetime.fromisoformat(str(ctx["from"]))
                end = datetime.fromisoformat(str(ctx["to"]))
            except (KeyError, ValueError):
                continue
            if meter is None:
                # The meter was deleted or is no longer reported: nothing left to retry.
                run.ok(METER_WINDOW, row.item_id)
                continue
            sent += self._report_meter_isolated(run, meter, start, end, now)
        return sent

    def _report_window(self, start: datetime, end: datetime, now: datetime, run: JobRun) -> int:
        sent = 0
        for meter in self._meters():
            sent += self._report_meter_isolated(run, meter, start, end, now)
        return sent

    def _report_meter_isolated(self, run: JobRun, meter: Any, start: datetime, end: datetime, now: datetime) -> int:
        item_id = f"{meter.slug}|{format_rfc3339(start)}|{format_rfc3339(end)}"
        context: dict[str, Any] = {"meter": meter.slug, "from": format_rfc3339(start), "to": format_rfc3339(end)}
        sent = 0
        with run.item(METER_WINDOW, item_id, **context):
            sent = self._report_meter(meter, start, end, now)
        return sent

    def _report_meter(self, meter: Any, start: datetime, end: datetime, now: datetime) -> int:
        window_size = WINDOW_SIZES[self.settings.reports.interval]
        sent = 0
        query = self.usage_query(meter.slug, start, end, window_size, self.settings.timezone)
        rows = self.meters.query(query)
        by_subject: dict[str, list[Any]] = {}
        for row in rows:
            if row.subject is not None:
                by_subject.setdefault(row.subject, []).append(row)
        for subject in sorted(by_subject):
            usage = sorted(by_subject[subject], key=lambda r: r.window_start)
            payload = {
                "type": REPORT_METER,
                "meter": meter_summary(meter),
                "query": {
                    "subject": subject,
                    "from": format_rfc3339(start),
                    "to": format_rfc3339(end),
                    "windowSize": window_size,
                },
                "usage": [
                    {
                        "value": plain_number(r.value),
                        "windowStart": format_rfc3339(r.window_start),
                        "windowEnd": format_rfc3339(r.window_end),
                    }
                    for r in usage
                ],
            }
            key = f"{REPORT_METER}|{meter.slug}|{subject}|{to_micros(start)}|{to_micros(end)}|{window_size}"
            with self.storage.writing() as tx:
                destinations = self.webhooks.destinations(tx.outbox, REPORT_METER)
                message = OutboxMessage(REPORT_METER, key, payload, subject=subject, stable_id=True)
                # The id's time part is the window end: the same report gets the same id.
                if self.webhooks.enqueue(tx.outbox, message, destinations, now, id_time=end) is not None:
                    sent += 1
        return sent
