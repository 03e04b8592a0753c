"""Period close: `aggregation.completed` once per subject, period and channel; `aggregation.corrected`
when late events change figures a channel was already sent.

For every configured period type a cursor remembers up to where periods are closed. A period
[start, end) closes once `end + grace` has passed: its subjects' figures are computed from the
meters and, in one transaction per subject, the event goes into the outbox and each receiving
channel's figures go into `aggregation_sent`. That table's primary key (subject, period, start,
channel) is what makes the event exactly once, whatever runs the job and however often.

Corrections: a second cursor follows the events table's commit watermark (the highest seq below
which every insert has committed, as the materializer uses it). Events stored since the last run
whose event time falls into an already closed period make the job recompute that period for their
subject: a backfill into closed periods is reported on the next run, not after a wall-clock margin.
Channels whose stored figures differ get `aggregation.corrected` (new and previous figures), or
`aggregation.completed` when nothing was sent for that subject and period yet, and the stored
figures move on. Voids are stamped with the clock inside their transaction, so they are followed by
time, a settle margin behind the clock.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from tallybook import jsonutil
from tallybook.clock import format_rfc3339, from_micros, to_micros
from tallybook.jobs.model import SentFigures
from tallybook.jobs.ports import AggregationStorage, AggregationTransaction
from tallybook.jobs.runs import ItemFailureLog, JobRun
from tallybook.webhooks.model import Destination, OutboxMessage
from tallybook.webhooks.service import WebhookService
from tallybook.webhooks.settings import AGGREGATION_COMPLETED, AGGREGATION_CORRECTED, WebhookSettings

log = logging.getLogger(__name__)

# Where the first run starts looking back, per period (as the codehooks template's cron does).
FIRST_RUN_LOOKBACK = {
    "hourly": timedelta(days=7),
    "daily": timedelta(days=30),
    "weekly": timedelta(days=60),
    "monthly": timedelta(days=90),
    "yearly": timedelta(days=365),
}
# A void stamps its events with the clock just before its transaction commits; the scan of voids
# stays this far behind the clock so a void still committing is never skipped.
VOID_SETTLE = timedelta(minutes=2)
CORRECTIONS_CURSOR = "aggregation.corrections"  # voids: by void time
CORRECTIONS_SEQ_CURSOR = "aggregation.corrections.seq"  # late events: by the commit watermark
SUBJECT_PERIOD = "subject_period"  # the item kind of a failed subject's period


class PeriodUsageLike(Protocol):
    events: dict[str, Decimal]
    event_counts: dict[str, int]
    event_count: int


class PeriodMeters(Protocol):
    def period_usage(self, subject: str, start: datetime, end: datetime, as_of: datetime | None = None) -> Any: ...

    def subjects_with_events(self, start: datetime, end: datetime) -> list[str]: ...


class PeriodBounds(Protocol):
    def __call__(self, period: str, at: datetime, tz: Any) -> tuple[datetime, datetime]: ...


def iso_millis(when: datetime) -> str:
    """2026-01-12T00:00:00.000Z, the template's timestamp format."""
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def plain_number(value: Decimal) -> int | Decimal:
    """Usage as a JSON number without noise: 1543 (not 1543.000), 245.5."""
    if value == value.to_integral_value():
        return int(value)
    return value.normalize()


def figures_of(usage: PeriodUsageLike) -> dict[str, Any]:
    """The template's figures: a value per event type that had events in the period, and the count."""
    counts = usage.event_counts
    return {
        "events": {
            key: plain_number(Decimal(value)) for key, value in sorted(usage.events.items()) if counts.get(key, 0) > 0
        },
        "eventCount": int(usage.event_count),
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    events_a = {k: Decimal(str(v)) for k, v in (a.get("events") or {}).items()}
    events_b = {k: Decimal(str(v)) for k, v in (b.get("events") or {}).items()}
    return events_a == events_b and int(a.get("eventCount", 0)) == int(b.get("eventCount", 0))


def _digest(value: Any) -> str:
    return hashlib.sha256(jsonutil.dumpb(value)).hexdigest()[:16]


class PeriodCloseJob:
    name = "aggregation.close"

    def __init__(
        self,
        storage: AggregationStorage,
        webhooks: WebhookService,
        meters: PeriodMeters,
        settings: WebhookSettings,
        period_bounds: PeriodBounds,
        failures: ItemFailureLog,
    ) -> None:
        self.storage = storage
        self.webhooks = webhooks
        self.meters = meters
        self.settings = settings
        self.period_bounds = period_bounds
        self.failures = failures

    def __call__(self, now: datetime) -> dict[str, Any]:
        return self.run(now)

    def run(self, now: datetime) -> dict[str, Any]:
        counts = {"periodsClosed": 0, "completed": 0, "corrected": 0}
        if not self.settings.periods:
            return counts
        with self.failures.run(self.name) as run:
            with self.storage.reading() as tx:
                active = bool(
                    self.webhooks.destinations(tx.outbox, AGGREGATION_COMPLETED)
                    or self.webhooks.destinations(tx.outbox, AGGREGATION_CORRECTED)
                )
            if active:
                self._retry_failed(run, now, counts)
            for period in self.settings.periods:
                self._close_periods(period, now, active, counts, run)
            self._corrections(now, active, counts, run)
        return run.outcome(counts)

    # -- one subject's period, isolated ---------------------------------------------------------------
    def _publish_isolated(
        self,
        run: JobRun,
        subject: str,
        period: str,
        start: datetime,
        end: datetime,
        now: datetime,
        counts: dict[str, int],
        first_close: bool,
    ) -> None:
        item_id = f"{period}|{format_rfc3339(start)}|{subject}"
        with run.item(
            SUBJECT_PERIOD,
            item_id,
            subject=subject,
            period=period,
            periodStart=format_rfc3339(start),
            periodEnd=format_rfc3339(end),
        ):
            self._publish(subject, period, start, end, now, counts, first_close)

    def _retry_failed(self, run: JobRun, now: datetime, counts: dict[str, int]) -> None:
        """Publish the subjects' periods that failed in earlier runs (sent once, like any other)."""
        for row in self.failures.failing(self.name, SUBJECT_PERIOD):
            ctx = row.context
            try:
                subject, period = str(ctx["subject"]), str(ctx["period"])
                start = datetime.fromisoformat(str(ctx["periodStart"]))
                end = datetime.fromisoformat(str(ctx["periodEnd"]))
            except (KeyError, ValueError):
                continue
            # Not a first close: the periods are closed already, and it may have been sent meanwhile.
            self._publish_isolated(run, subject, period, start, end, now, counts, first_close=False)

    # -- closing ----------------------------------------------------------------------------------
    def _cursor_name(self, period: str) -> str:
        return f"aggregation.close:{period}"

    def _close_periods(self, period: str, now: datetime, active: bool, counts: dict[str, int], run: JobRun) -> None:
        zone = self.settings.zone
        name = self._cursor_name(period)
        with self.storage.reading() as tx:
            cursor_us = tx.get_cursor(name)
        if cursor_us is None:
            start, _ = self.period_bounds(period, now - FIRST_RUN_LOOKBACK[period], zone)
        else:
            start, _ = self.period_bounds(period, from_micros(cursor_us), zone)
            if to_micros(start) < cursor_us:  # the time zone changed: continue after the cursor
                start = self.period_bounds(period, from_micros(cursor_us), zone)[1]
        closed_through: datetime | None = None
        while True:
            start, end = self.period_bounds(period, start, zone)
            if end + self.settings.grace > now:
                break
            if active:
                for subject in self.meters.subjects_with_events(start, end):
                    self._publish_isolated(run, subject, period, start, end, now, counts, first_close=True)
                with self.storage.writing() as tx:
                    tx.set_cursor(name, to_micros(end))
            closed_through = end
            counts["periodsClosed"] += 1
            start = end
        if not active and closed_through is not None:
            # Nobody listens: move past these periods in one write; new channels get new periods.
            with self.storage.writing() as tx:
                tx.set_cursor(name, to_micros(closed_through))

    def _publish(
        self,
        subject: str,
        period: str,
        start: datetime,
        end: datetime,
        now: datetime,
        counts: dict[str, int],
        first_close: bool,
    ) -> None:
        usage = self.meters.period_usage(subject, start, end)
        figures = figures_of(usage)
        start_us = to_micros(start)
        with self.storage.writing() as tx:
            sent = tx.sent_figures(subject, period, start_us)
            if not sent:
                if figures["eventCount"] == 0 and not figures["events"]:
                    return
                destinations = self.webhooks.destinations(tx.outbox, AGGREGATION_COMPLETED)
                self._send_completed(tx, subject, period, start, end, figures, destinations, now, counts)
                return
            if first_close:
                return  # already sent by an earlier (or concurrent) run
            changed = [s for s in sent if not _same(s.figures, figures)]
            if not changed:
                return
            receiving = {d.channel_id: d for d in self.webhooks.destinations(tx.outbox, AGGREGATION_CORRECTED)}
            groups: dict[str, list[SentFigures]] = {}
            for row in changed:
                if row.channel_id in receiving:
                    groups.setdefault(row.event_id, []).append(row)
            for previous_event_id, rows in sorted(groups.items()):
                destinations = [receiving[r.channel_id] for r in rows]
                self._send_corrected(
                    tx,
                    subject,
                    period,
                    start,
                    end,
                    figures,
                    rows[0].figures,
                    previous_event_id,
                    destinations,
                    now,
                    counts,
                )

    def _send_completed(
        self,
        tx: AggregationTransaction,
        subject: str,
        period: str,
        start: datetime,
        end: datetime,
        figures: dict[str, Any],
        destinations: Sequence[Destination],
        now: datetime,
        counts: dict[str, int],
    ) -> None:
        payload = {
            "type": AGGREGATION_COMPLETED,
            "customerId": subject,
            "period": period,
            "data": {
                "periodStart": iso_millis(start),
                "periodEnd": iso_millis(end - timedelta(milliseconds=1)),
                "events": figures["events"],
                "eventCount": figures["eventCount"],
            },
            "created": int(now.timestamp()),
        }
        message = OutboxMessage(
            type=AGGREGATION_COMPLETED,
            dedup_key=f"{AGGREGATION_COMPLETED}|{subject}|{period}|{to_micros(start)}",
            payload=payload,
            subject=subject,
            stable_id=True,
        )
        event = self.webhooks.enqueue(tx.outbox, message, destinations, now, id_time=end)
        if event is None:
            return
        for destination in destinations:
            tx.record_sent(
                SentFigures(
                    subject, period, to_micros(start), destination.channel_id, to_micros(end), figures, event.id
                ),
                to_micros(now),
            )
        counts["completed"] += 1

    def _send_corrected(
        self,
        tx: AggregationTransaction,
        subject: str,
        period: str,
        start: datetime,
        end: datetime,
        figures: dict[str, Any],
        previous: dict[str, Any],
        previous_event_id: str,
        destinations: Sequence[Destination],
        now: datetime,
        counts: dict[str, int],
    ) -> None:
        payload = {
            "type": AGGREGATION_CORRECTED,
            "customerId": subject,
            "period": period,
            "data": {
                "periodStart": iso_millis(start),
                "periodEnd": iso_millis(end - timedelta(milliseconds=1)),
                "events": figures["events"],
                "eventCount": figures["eventCount"],
            },
            "previous": {
                "events": {k: plain_number(Decimal(str(v))) for k, v in (previous.get("events") or {}).items()},
                "eventCount": int(previous.get("eventCount", 0)),
            },
            "created": int(now.timestamp()),
        }
        message = OutboxMessage(
            type=AGGREGATION_CORRECTED,
            dedup_key=f"{AGGREGATION_CORRECTED}|{previous_event_id}|{_digest(figures)}",
            payload=payload,
            subject=subject,
            stable_id=True,
        )
        event = self.webhooks.enqueue(tx.outbox, message, destinations, now)
        if event is None:
            return
        for destination in destinations:
            tx.update_sent(
                SentFigures(
                    subject, period, to_micros(start), destination.channel_id, to_micros(end), figures, event.id
                ),
                previous_event_id,
                to_micros(now),
            )
        counts["corrected"] += 1

    # -- corrections ------------------------------------------------------------------------------
    def _corrections(self, now: datetime, active: bool, counts: dict[str, int], run: JobRun) -> None:
        through_us = to_micros(now - VOID_SETTLE)
        with self.storage.reading() as tx:  # its own short transaction: it may wait for inserts to commit
            horizon = tx.settled_horizon()
        with self.storage.reading() as tx:
            cursor_us = tx.get_cursor(CORRECTIONS_CURSOR)
            seq = tx.get_cursor(CORRECTIONS_SEQ_CURSOR)
            if seq is None and cursor_us is not None:
                # An install that followed ingest time: continue by seq from where that scan stood.
                seq = tx.seq_ingested_through(cursor_us)
            closed = {p: tx.get_cursor(self._cursor_name(p)) for p in self.settings.periods}
            moved = cursor_us is None or seq is None or through_us > cursor_us or horizon > seq
            late = (
                tx.late_subjects(seq, horizon, cursor_us, through_us)
                if cursor_us is not None and seq is not None and moved and active
                else []
            )
        if not moved:
            return
        zone = self.settings.zone
        for subject, earliest_us, latest_us in late:
            for period in self.settings.periods:
                closed_us = closed.get(period)
                if closed_us is None:
                    continue
                start, end = self.period_bounds(period, from_micros(earliest_us), zone)
                while to_micros(start) <= latest_us and to_micros(end) <= closed_us:
                    self._publish_isolated(run, subject, period, start, end, now, counts, first_close=False)
                    start, end = self.period_bounds(period, end, zone)
        with self.storage.writing() as tx:
            tx.set_cursor(CORRECTIONS_CURSOR, max(through_us, cursor_us or through_us))
            tx.set_cursor(CORRECTIONS_SEQ_CURSOR, max(horizon, seq or horizon))
