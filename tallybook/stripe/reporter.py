"""Reporting usage to Stripe exactly once, through a durable ledger.

For every (meter, customer, window) the reporter
1. decides the figure (MeterService.query with `as_of`, so the figure is frozen while it works),
2. compares it with what the ledger says Stripe holds for that window,
3. writes the difference as PENDING intents (one transaction) with deterministic identifiers,
4. sends them and records Stripe's answer on the same rows.

A crash after 3 leaves PENDING rows; the next run resends them with the same identifier and the
same idempotency key (both fixed per window and version), so Stripe replays its saved answer or, when
the key is gone, answers that the identifier already exists: any "already" answer counts as sent.
A row unconfirmed for 23 h (Stripe keeps identifiers 24 h) is not resent blindly: Stripe's event
summaries for its window say whether it arrived. A figure that grows after a window was reported
(late events) produces a correction: inside Stripe's 24 h cancel window the sent event is cancelled
and replaced by one carrying the new full figure; after it, an event carrying only the difference.
The held figure is never sent a second time in full.

`sum` Stripe meters (Tallybook SUM/COUNT) get one amount per window, timestamped at the window
start. `last` Stripe meters (MAX, AVG, UNIQUE_COUNT, LATEST, FIRST, MIN) get the period-to-date
figure of the calendar month (UTC), timestamped at the end of the reported range.

Legacy usage records `set` each subscription item's period total. Stripe closes a period to usage
records when it renews, so usage after the period's last whole window (and late events of a closed
period) is carried into the next period's quantity (`carried` on the row).

Fault isolation: each mapped meter is one item (`meter`), and each legacy subscription item one
(`subscription_item`). One that fails inside Tallybook (its meter was deleted, its query or a
write fails) is recorded (GET /api/v1/jobs/failures) and skipped; the other meters are reported.
Its cursor does not move, so the next run reports it from where it stopped. Stripe's own refusals
are not failures of the run: they are recorded on the ledger rows (REJECTED, retried PENDING).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import stripe

from tallybook.clock import Clock, from_micros, to_micros
from tallybook.jobs.runs import ItemFailureLog, JobRun
from tallybook.meters.models import UsageQuery
from tallybook.meters.service import MeterService
from tallybook.meters.windows import WindowSize, next_window_start, window_start
from tallybook.stripe.client import TokenBucket
from tallybook.stripe.ledger import (
    CANCEL_MARGIN,
    CANCEL_WINDOW,
    REPORT_JOB,
    STALE_AFTER,
    UNCONFIRMED,
    UTC_ZONE,
    Halt,
    ReportedRange,
    RunSummary,
    Target,
    doubt_id,
    held_in_window,
    make_identifier,
    refused,
    reported_cursor,
    reported_from_cursor,
    stripe_formula,
)
from tallybook.stripe.model import CANCEL, EVENT, PENDING, REJECTED, SENT, USAGE_RECORD, CustomerLink, ReportRow
from tallybook.stripe.ports import StripeStorage
from tallybook.stripe.settings import StripeMeterMapping, StripeSettings
from tallybook.stripe.usage_records import UsageRecordReporting


class Reporter(UsageRecordReporting):
    """Reports every mapped meter: sum meters per window, last meters per month, legacy usage records."""

    def __init__(
        self,
        storage: StripeStorage,
        meters: MeterService,
        settings: StripeSettings,
        clock: Clock,
        client: stripe.StripeClient,
        session_client: Callable[[str], stripe.StripeClient],
        failures: ItemFailureLog,
        budget: TokenBucket | None = None,
        mappings: Sequence[StripeMeterMapping] | None = None,
    ) -> None:
        self.failures = failures
        self._job_run: JobRun | None = None  # the run in progress (one at a time: _run_lock)
        self.db = storage
        self.meters = meters
        self.settings = settings
        self.clock = clock
        self.client = client
        self.session_client = session_client  # a client authenticated with a v2 session token
        self.budget = budget
        self._mappings = list(mappings) if mappings is not None else None
        self._session_token: str | None = None
        self._session_expires: datetime | None = None
        self._stream_client: stripe.StripeClient | None = None
        self._settle = settings.settle_delay
        self._run_lock = threading.Lock()
        self._meter_ids: dict[str, str] = {}  # event name -> Stripe meter id (for event summaries)

    # -- configuration ------------------------------------------------------------------------------
    def mappings(self) -> list[StripeMeterMapping]:
        """Config mappings, plus meter links saved by `tallybook stripe setup` (config wins)."""
        found = {m.meter: m for m in (self._mappings if self._mappings is not None else self.settings.meters)}
        for link in self.db.meter_links():
            if link.meter in found:
                continue
            if link.mode == "usage_record" and link.price_id:
                found[link.meter] = StripeMeterMapping(meter=link.meter, mode="usage_record", price=link.price_id)
            elif link.event_name:
                found[link.meter] = StripeMeterMapping(meter=link.meter, event_name=link.event_name)
        return list(found.values())

    def target(self, mapping: StripeMeterMapping, formula: str) -> Target:
        return Target(mapping, formula)

    def _targets(self, run: JobRun | None = None) -> list[Target]:
        """The mappings whose meter exists; with `run`, a mapping whose meter cannot be read (it was
        deleted) is recorded as a failed `meter` item and left out."""
        targets = []
        for mapping in self.mappings():
            if run is None:
                targets.append(Target(mapping, stripe_formula(self.meters.get(mapping.meter).aggregation)))
                continue
            with run.item("meter", mapping.meter, meter=mapping.meter, eventName=mapping.event_name) as outcome:
                meter = self.meters.get(mapping.meter)
            if not outcome.failed:
                targets.append(Target(mapping, stripe_formula(meter.aggregation)))
        return targets

    # -- the run ------------------------------------------------------------------------------------
    def run(
        self,
        now: datetime | None = None,
        from_: datetime | None = None,
        to: datetime | None = None,
        customer_ids: Sequence[str] | None = None,
        meters: Sequence[str] | None = None,
        settle: timedelta | None = None,
    ) -> RunSummary:
        """Resend due intents, then report every mapped meter up to `to` (default: now - settle).

        `settle` overrides settings.settle_delay (the period-end report passes 0: the period is over).
        """
        with self._run_lock, self.failures.run(REPORT_JOB) as run:  # one run at a time per process
            self._job_run = run
            try:
                summary = self._run(now, from_, to, customer_ids, meters, settle, run)
            finally:
                self._job_run = None
        summary.failed_items = run.failed
        return summary

    def _run(
        self,
        now: datetime | None,
        from_: datetime | None,
        to: datetime | None,
        customer_ids: Sequence[str] | None,
        meters: Sequence[str] | None,
        settle: timedelta | None,
        run: JobRun,
    ) -> RunSummary:
        now = now or self.clock.now()
        self._settle = self.settings.settle_delay if settle is None else settle
        self.forget_meter_ids()
        summary = RunSummary()
        targets = [t for t in self._targets(run) if meters is None or t.meter in meters]
        by_meter = {t.meter: t for t in targets}
        try:
            self._resend_due(now, by_meter, summary, run)
            for target in targets:
                with run.item("meter", target.meter, passthrough=(Halt,), meter=target.meter, mode=target.mapping.mode):
                    if target.mapping.mode == "usage_record":
                        self._report_usage_records(target, now, customer_ids, summary)
                    elif target.formula == "sum":
                        self._report_sum(target, now, from_, to, customer_ids, summary)
                    else:
                        self._report_last(target, now, from_, to, customer_ids, summary)
        except Halt as exc:
            summary.halted = str(exc)
        return summary

    def _range(
        self, target: Target, now: datetime, from_: datetime | None, to: datetime | None, summary: RunSummary
    ) -> tuple[datetime, datetime]:
        """[first window, end of the last whole settled window) for this run, recorded with why."""
        horizon = self._horizon(target, now, to)
        end_reason = "to" if to is not None and to < now - self._settle else "settle"
        if from_ is not None:
            start, reason = window_start(target.size, from_, UTC_ZONE), "from"
        else:
            with self.db.reading() as tx:
                cursor = tx.cursor(reported_cursor(target.meter))
            if cursor is None:
                begin, reason = horizon - self.settings.backfill, "first"
            else:
                begin, reason = from_micros(cursor) - self.settings.lookback, "lookback"
            start = window_start(target.size, min(begin, horizon), UTC_ZONE)
        summary.ranges.append(
            ReportedRange(
                target.meter, target.mapping.mode, target.formula, target.size, start, horizon, reason, end_reason
            )
        )
        return start, horizon

    def _advance_cursor(self, target: Target, start: datetime, until: datetime) -> None:
        """The meter is reported up to `until`; and from `start` on, when that reaches further back
        without a gap (`stripe.reported_from:`, what reconcile calls "reporting started")."""
        name = reported_cursor(target.meter)
        with self.db.writing() as tx:
            current = tx.cursor(name)
            if current is None or current < to_micros(until):
                tx.set_cursor(name, to_micros(until))
            first = tx.cursor(reported_from_cursor(target.meter))
            if first is None or (to_micros(start) < first <= to_micros(until)):
                tx.set_cursor(reported_from_cursor(target.meter), to_micros(start))

    # -- sum meters: one amount per window ------------------------------------------------------------
    def _report_sum(
        self,
        target: Target,
        now: datetime,
        from_: datetime | None,
        to: datetime | None,
        customer_ids: Sequence[str] | None,
        summary: RunSummary,
    ) -> None:
        start, horizon = self._range(target, now, from_, to, summary)
        links = self._linked(customer_ids)
        if start >= horizon or not links:
            return
        figures: dict[tuple[str, int], tuple[Decimal, int]] = {}
        rows = self.meters.query(
            UsageQuery(
                meter=target.meter,
                from_=start,
                to=horizon,
                window_size=target.size,
                group_by=("customer_id",),
                as_of=now,
            )
        )
        for row in rows:
            if row.customer_id in links:
                key = (row.customer_id, to_micros(row.window_start))
                figures[key] = (row.value, to_micros(row.window_end))
        ledger = self.db.latest_per_window(target.meter, to_micros(start), to_micros(horizon), customer_ids)
        for key, history in ledger.items():
            if key not in figures and key[0] in links:
                figures[key] = (Decimal(0), history[-1].window_end_us)
        for _round in range(2):  # a cancel is followed by its replacement in the second round
            plans: list[dict[str, Any]] = []
            for (customer_id, start_us), (figure, end_us) in sorted(figures.items()):
                history = ledger.get((customer_id, start_us), [])
                plan = self._plan_sum(target, links[customer_id], start_us, end_us, figure, history, now)
                if plan is not None:
                    plans.append(plan)
            if not plans:
                break
            self._persist_and_send(target, plans, now, summary)
            touched = sorted({(p["customer_id"], p["window_start_us"]) for p in plans if p["kind"] == CANCEL})
            if not touched:
                break
            fresh = self.db.latest_per_window(target.meter, to_micros(start), to_micros(horizon), customer_ids)
            ledger = {k: fresh.get(k, []) for k in touched}
            figures = {k: figures[k] for k in touched}
        self._advance_cursor(target, start, horizon)
        summary.items.append(
            {"meter": target.meter, "from": start, "to": horizon, "windows": len(figures), "formula": "sum"}
        )

    def _plan_sum(
        self,
        target: Target,
        link: CustomerLink,
        start_us: int,
        end_us: int,
        figure: Decimal,
        history: list[ReportRow],
        now: datetime,
    ) -> dict[str, Any] | None:
        if any(r.status == PENDING for r in history):
            return None  # an intent is in flight; it is resent first
        doubt = doubt_id(history)
        if doubt and any(r.id == doubt and r.response.get("stripeWindowTotal") is None for r in history):
            return None  # Stripe's figure for the window is unknown: a person decides (see reports)
        live = [r for r in history if r.kind == EVENT and r.status == SENT and not r.cancelled and r.id > doubt]
        held = held_in_window(history)
        if figure == held:
            return None
        last = history[-1] if history else None
        if last is not None and refused(last) and last.target == figure:
            return None  # the same figure was refused already; it waits for a person (see reports)
        version = max((r.version for r in history), default=0) + 1
        timestamp_us = self._timestamp_for(link, start_us, end_us)
        base = {
            "meter": target.meter,
            "customer_id": link.customer_id,
            "stripe_customer_id": link.stripe_customer_id,
            "window_start_us": start_us,
            "window_end_us": end_us,
            "version": version,
            "timestamp_us": timestamp_us,
        }
        refused_cancels = {r.cancels for r in history if r.kind == CANCEL and r.status == REJECTED}
        if (
            len(live) == 1
            and live[0].sent_us is not None
            and from_micros(live[0].sent_us) > now - CANCEL_WINDOW + CANCEL_MARGIN
            and live[0].identifier not in refused_cancels
        ):
            # Inside the cancel window: replace the sent amount instead of stacking a delta on it.
            return {
                **base,
                "kind": CANCEL,
                "identifier": make_identifier("c", target.meter, link.customer_id, start_us, version),
                "value": -live[0].value,
                "target": held - live[0].value,
                "cancels": live[0].identifier,
            }
        value = figure - held
        return {
            **base,
            "kind": EVENT,
            "identifier": make_identifier("e", target.meter, link.customer_id, start_us, version),
            "value": value,
            "target": figure,
            "cancels": None,
        }

    def _timestamp_for(self, link: CustomerLink, start_us: int, end_us: int) -> int:
        """The window start; a window split by the customer's period boundary goes after it, so
        usage after the last whole window of a period slips into the next period."""
        boundary = link.period_start_us
        if boundary is not None and start_us < boundary < end_us:
            return boundary
        return start_us

    # -- last meters: the period-to-date figure ---------------------------------------------------------
    def _report_last(
        self,
        target: Target,
        now: datetime,
        from_: datetime | None,
        to: datetime | None,
        customer_ids: Sequence[str] | None,
        summary: RunSummary,
    ) -> None:
        start, horizon = self._range(target, now, from_, to, summary)
        links = self._linked(customer_ids)
        if start >= horizon or not links:
            return
        period = window_start(WindowSize.MONTH, start, UTC_ZONE)
        while period < horizon:
            period_end = next_window_start(WindowSize.MONTH, period, UTC_ZONE)
            until = min(period_end, horizon)
            rows = self.meters.query(
                UsageQuery(meter=target.meter, from_=period, to=until, group_by=("customer_id",), as_of=now)
            )
            figures = {r.customer_id: r.value for r in rows if r.customer_id in links}
            ledger = self.db.latest_per_window(target.meter, to_micros(period), to_micros(period) + 1, customer_ids)
            plans = []
            for customer_id, figure in sorted(figures.items()):
                assert customer_id is not None
                history = ledger.get((customer_id, to_micros(period)), [])
                if any(r.status == PENDING for r in history):
                    continue
                sent = [r for r in history if r.kind == EVENT and r.status == SENT]
                latest = history[-1] if history else None
                if latest is not None and refused(latest) and latest.target == figure:
                    continue
                if sent and sent[-1].target == figure:
                    continue  # same figure: a later timestamp would change nothing at Stripe
                version = max((r.version for r in history), default=0) + 1
                timestamp_us = to_micros(min(until, now)) - 1_000_000
                if sent:
                    timestamp_us = max(timestamp_us, sent[-1].timestamp_us + 1_000_000)
                link = links[customer_id]
                plans.append(
                    {
                        "meter": target.meter,
                        "customer_id": customer_id,
                        "stripe_customer_id": link.stripe_customer_id,
                        "window_start_us": to_micros(period),
                        "window_end_us": to_micros(period_end),
                        "version": version,
                        "timestamp_us": timestamp_us,
                        "kind": EVENT,
                        "identifier": make_identifier("l", target.meter, customer_id, to_micros(period), version),
                        "value": figure,
                        "target": figure,
                        "cancels": None,
                    }
                )
            if plans:
                self._persist_and_send(target, plans, now, summary)
            period = period_end
        self._advance_cursor(target, start, horizon)
        summary.items.append({"meter": target.meter, "from": start, "to": horizon, "formula": "last"})

    def _resend_due(self, now: datetime, by_meter: dict[str, Target], summary: RunSummary, run: JobRun) -> None:
        due = self.db.due_pending(to_micros(now))
        grouped: dict[str, list[ReportRow]] = {}
        stale = []
        for row in due:
            if row.meter not in by_meter:
                continue
            if row.kind != USAGE_RECORD and from_micros(row.created_us) < now - STALE_AFTER:
                stale.append(row)
                continue
            grouped.setdefault(row.meter, []).append(row)
        for row in stale:
            # Stripe dedups identifiers for 24 h only. An intent unconfirmed for that long may or
            # may not have arrived, so resending it could bill twice: Stripe's event summaries decide.
            with run.item("meter", row.meter, passthrough=(Halt,), meter=row.meter):
                self._settle_by_summaries(by_meter[row.meter], row, now, summary, UNCONFIRMED)
        for meter, rows in grouped.items():
            with run.item("meter", meter, passthrough=(Halt,), meter=meter):
                self._send(by_meter[meter], rows, now, summary)


__all__ = [
    "REPORT_JOB",
    "UTC_ZONE",
    "Reporter",
    "RunSummary",
    "make_identifier",
    "reported_cursor",
    "reported_from_cursor",
    "stripe_formula",
]
