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

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from typing import Any

import stripe

from tallybook.clock import Clock, format_rfc3339, from_micros, to_micros
from tallybook.jobs.failures import FailureLog, JobRun
from tallybook.jobs.sql import JobStore
from tallybook.meters.models import Aggregation, UsageQuery
from tallybook.meters.service import MeterService
from tallybook.meters.windows import WindowSize, next_window_start, window_start, zone
from tallybook.store.base import SqlStore
from tallybook.store.stripe import (
    CANCEL,
    EVENT,
    OUT_OF_RANGE,
    PENDING,
    REJECTED,
    SENT,
    USAGE_RECORD,
    CustomerLink,
    ReportRow,
    StripeStore,
)
from tallybook.stripe.client import TokenBucket, error_json
from tallybook.stripe.settings import LEGACY_API_VERSION, StripeMeterMapping, StripeSettings

log = logging.getLogger(__name__)

REPORT_JOB = "stripe.report"
UTC_ZONE = zone("UTC")
MAX_PAST = timedelta(days=35)  # Stripe refuses meter events older than this
MAX_FUTURE = timedelta(minutes=5)  # ... or further ahead than this
PAST_MARGIN = timedelta(minutes=10)  # keep clear of the edge: the request takes time to arrive
CANCEL_WINDOW = timedelta(hours=24)  # adjustments only for events received in the last 24 h
CANCEL_MARGIN = timedelta(minutes=30)
STALE_AFTER = timedelta(hours=23)  # PENDING intents older than this are not resent blindly
SESSION_REFRESH = timedelta(minutes=1)  # renew the v2 session token this long before it expires
STREAM_BATCH = 100  # events per v2 stream request
OUTCOME_BATCH = 200  # answers recorded per transaction
IDENTIFIER_MAX = 100
# Stripe answers these for a resent row whose first send did arrive: the row is done. Its v1 meter
# event endpoint names a duplicate identifier only in the message ("An event already exists with
# identifier …", no code), so any "already …" answer counts.
ALREADY_DONE_CODES = frozenset({"duplicate_meter_event", "meter_event_already_cancelled"})
UNCONFIRMED = "not confirmed within Stripe's 24 h identifier window"
KEY_TAKEN = "Stripe refused its idempotency key as used before with other parameters (a restored database?)"
ALREADY_DONE_MESSAGE = re.compile(r"\balready (exists|been|received|cancell?ed|canceled)\b", re.IGNORECASE)
LAST_AGGREGATIONS = frozenset(
    {
        Aggregation.MAX,
        Aggregation.MIN,
        Aggregation.AVG,
        Aggregation.UNIQUE_COUNT,
        Aggregation.LATEST,
        Aggregation.FIRST,
    }
)


def stripe_formula(aggregation: Aggregation) -> str:
    """The Stripe meter formula a Tallybook aggregation reports to: `sum` or `last`."""
    return "last" if aggregation in LAST_AGGREGATIONS else "sum"


def already_done(info: dict[str, Any]) -> bool:
    """Whether Stripe's refusal says it holds this event (or cancel) already: the first send arrived."""
    if info.get("code") in ALREADY_DONE_CODES:
        return True
    return info.get("http_status") == 400 and bool(ALREADY_DONE_MESSAGE.search(str(info.get("message") or "")))


def idempotency_key(row: ReportRow) -> str:
    """The row's identifier: every attempt for a window and version carries the same key, so a resend
    after a lost answer gets Stripe's saved answer (or waits while the first request still runs).
    Only after Stripe replayed a saved 5xx under it (the key is spent) do attempts get their own key."""
    last = row.response if isinstance(row.response, dict) else {}
    if last.get("replayed") and int(last.get("http_status") or 0) >= 500:
        return f"{row.identifier}-a{row.attempts + 1}"
    return row.identifier


def make_identifier(prefix: str, meter: str, customer_id: str, start_us: int, version: int) -> str:
    """Deterministic: the same window and version always give the same identifier."""
    readable = f"tb-{prefix}-{meter}-{customer_id}-{start_us // 1_000_000}-v{version}"
    if len(readable) <= IDENTIFIER_MAX:
        return readable
    digest = hashlib.sha256(f"{meter}|{customer_id}|{start_us}".encode()).hexdigest()[:32]
    return f"tb-{prefix}-{digest}-{start_us // 1_000_000}-v{version}"


@dataclass(frozen=True, slots=True)
class ReportedRange:
    """What one run reported of one mapped meter, rounded to its windows, and why those bounds."""

    meter: str
    mode: str  # billing_meter | usage_record
    formula: str  # sum | last
    window: WindowSize
    start: datetime | None  # first window (None for usage records: each item's billing period)
    end: datetime  # end of the last whole window that ended `settle_delay` ago (or at --to)
    start_reason: str  # "from": --from rounded down; "first": no run before, end - backfill; "lookback"
    end_reason: str  # "settle": now - settle_delay rounded down; "to": --to rounded down


@dataclass
class RunSummary:
    sent: int = 0
    corrections: int = 0
    pending: int = 0
    rejected: int = 0
    out_of_range: int = 0
    requests: int = 0
    halted: str | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    failed_items: int = 0  # meters or subscription items skipped because they failed
    ranges: list[ReportedRange] = field(default_factory=list)  # per mapped meter reported

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "sent": self.sent,
            "corrections": self.corrections,
            "pending": self.pending,
            "rejected": self.rejected,
            "outOfRange": self.out_of_range,
            "requests": self.requests,
        }
        if self.halted:
            body["halted"] = self.halted
        if self.failed_items:
            body["failedItems"] = self.failed_items
        return body


class Halt(Exception):
    """Stop sending for this run (rate limited or credentials refused); retried later."""


@dataclass(frozen=True, slots=True)
class Target:
    """A mapping resolved against the live meter."""

    mapping: StripeMeterMapping
    formula: str

    @property
    def meter(self) -> str:
        return self.mapping.meter

    @property
    def size(self) -> WindowSize:
        return WindowSize(self.mapping.window)


class Reporter:
    def __init__(
        self,
        store: SqlStore,
        meters: MeterService,
        settings: StripeSettings,
        clock: Clock,
        client: stripe.StripeClient,
        session_client: Callable[[str], stripe.StripeClient],
        budget: TokenBucket | None = None,
        mappings: Sequence[StripeMeterMapping] | None = None,
        failures: FailureLog | None = None,
    ) -> None:
        self.store = store
        self.failures = failures or FailureLog(store, clock)
        self._job_run: JobRun | None = None  # the run in progress (one at a time: _run_lock)
        self.db = StripeStore(store)
        self.jobs = JobStore(store)
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

    def _horizon(self, target: Target, now: datetime, to: datetime | None) -> datetime:
        """End of the last whole window that is settled (and not after `to`)."""
        limit = now - self._settle
        if to is not None:
            limit = min(limit, to)
        return window_start(target.size, limit, UTC_ZONE)

    def _range(
        self, target: Target, now: datetime, from_: datetime | None, to: datetime | None, summary: RunSummary
    ) -> tuple[datetime, datetime]:
        """[first window, end of the last whole settled window) for this run, recorded with why."""
        horizon = self._horizon(target, now, to)
        end_reason = "to" if to is not None and to < now - self._settle else "settle"
        if from_ is not None:
            start, reason = window_start(target.size, from_, UTC_ZONE), "from"
        else:
            with self.store.read() as conn:
                cursor = self.jobs.get_cursor(conn, _cursor_name(target.meter))
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
        name = _cursor_name(target.meter)
        with self.store.write() as conn:
            current = self.jobs.get_cursor(conn, name)
            if current is None or current < to_micros(until):
                self.jobs.set_cursor(conn, name, to_micros(until))
            first = self.jobs.get_cursor(conn, reported_from_cursor(target.meter))
            if first is None or (to_micros(start) < first <= to_micros(until)):
                self.jobs.set_cursor(conn, reported_from_cursor(target.meter), to_micros(start))

    def _linked(self, customer_ids: Sequence[str] | None) -> dict[str, CustomerLink]:
        return self.db.customers(customer_ids)

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
        doubt = _doubt_id(history)
        if doubt and any(r.id == doubt and r.response.get("stripeWindowTotal") is None for r in history):
            return None  # Stripe's figure for the window is unknown: a person decides (see reports)
        live = [r for r in history if r.kind == EVENT and r.status == SENT and not r.cancelled and r.id > doubt]
        held = held_in_window(history)
        if figure == held:
            return None
        last = history[-1] if history else None
        if last is not None and _refused(last) and last.target == figure:
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
                if latest is not None and _refused(latest) and latest.target == figure:
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

    # -- legacy usage records -------------------------------------------------------------------------
    def _report_usage_records(
        self, target: Target, now: datetime, customer_ids: Sequence[str] | None, summary: RunSummary
    ) -> None:
        """Per active subscription item on the mapped price: `set` the period's usage so far."""
        links = self._linked(customer_ids)
        by_stripe = {link.stripe_customer_id: link for link in links.values()}
        if not by_stripe:
            return
        price = target.mapping.price
        assert price is not None
        horizon = self._horizon(target, now, None)
        summary.ranges.append(
            ReportedRange(target.meter, "usage_record", target.formula, target.size, None, horizon, "period", "settle")
        )
        subscriptions = self._call(
            lambda: self.client.v1.subscriptions.list(
                {"price": price, "status": "active", "limit": 100},
                {"stripe_version": LEGACY_API_VERSION},
            )
        )
        for found in subscriptions.auto_paging_iter():
            subscription = found.to_dict()
            link = by_stripe.get(str(subscription["customer"]))
            if link is None:
                continue
            for item in subscription["items"]["data"]:
                if item["price"]["id"] != price:
                    continue
                # Periods live on items from basil on, on the subscription before it.
                self._usage_record_isolated(target, link, subscription, item, horizon, now, summary)

    def _usage_record_isolated(
        self,
        target: Target,
        link: CustomerLink,
        subscription: dict[str, Any],
        item: dict[str, Any],
        horizon: datetime,
        now: datetime,
        summary: RunSummary,
    ) -> None:
        """One subscription item's usage record; one that fails is recorded and the others go on."""
        run = self._job_run
        assert run is not None
        ids = {"customerId": link.customer_id, "meter": target.meter, "subscriptionId": subscription.get("id")}
        with run.item("subscription_item", str(item["id"]), passthrough=(Halt,), **ids):
            # Periods live on items from basil on, on the subscription before it.
            period_start = int(item.get("current_period_start") or subscription["current_period_start"])
            period_end = int(item.get("current_period_end") or subscription["current_period_end"])
            self._usage_record_for(target, link, item["id"], period_start, period_end, horizon, now, summary)

    def _usage_record_for(
        self,
        target: Target,
        link: CustomerLink,
        item_id: str,
        period_start: int,
        period_end: int,
        horizon: datetime,
        now: datetime,
        summary: RunSummary,
    ) -> None:
        """`set` the period's quantity: its usage up to the last whole window, plus what earlier
        periods did not bill (carried: Stripe takes no usage record for a period once it renewed)."""
        start_us = period_start * 1_000_000
        start = from_micros(start_us)
        # Whole windows only: what follows the last whole window is carried into the next period.
        until = max(min(horizon, datetime.fromtimestamp(period_end, UTC)), start)
        ledger_key = f"ur:{item_id}"
        rows = self.db.item_rows(target.meter, link.customer_id, ledger_key)
        history = [r for r in rows if r.window_start_us == start_us]
        if any(r.status == PENDING for r in history) or now < from_micros(start_us + 1_000_000):
            return  # in flight; or the period began less than a second ago (its timestamp is ahead)
        own = self._usage(target, link, start, until)
        carried = self._carried(target, link, item_id, rows, start_us)
        quantity = max(own + carried, Decimal(0)).to_integral_value(rounding=ROUND_HALF_UP)
        sent = [r for r in history if r.status == SENT]
        if sent and sent[-1].target == quantity and sent[-1].carried == carried:
            return
        if not sent and quantity == 0:
            return
        version = max((r.version for r in history), default=0) + 1
        plan = {
            "meter": target.meter,
            "customer_id": link.customer_id,
            "stripe_customer_id": link.stripe_customer_id,
            "window_start_us": start_us,
            "window_end_us": period_end * 1_000_000,
            "version": version,
            "timestamp_us": start_us + 1_000_000,  # period start + 1 s, as OpenMeter's example does
            "kind": USAGE_RECORD,
            # Derived from (subscription item, period); the version tells changed quantities apart.
            "identifier": f"tallybook-usage-{item_id}-{period_start}-{period_end}-v{version}",
            "value": quantity,
            "target": quantity,
            "cancels": ledger_key,  # which subscription item (usage records have no cancels)
            "carried": carried,
        }
        self._persist_and_send(target, [plan], now, summary, item_id=item_id)
        summary.items.append(
            {
                "meter": target.meter,
                "customer": link.stripe_customer_id,
                "price": target.mapping.price,
                "usage": quantity,
                "carried": carried,
                "from": start,
                "to": until,
            }
        )

    def _usage(self, target: Target, link: CustomerLink, start: datetime, end: datetime) -> Decimal:
        if end <= start:
            return Decimal(0)
        rows = self.meters.query(UsageQuery(meter=target.meter, from_=start, to=end, customer_ids=(link.customer_id,)))
        return sum((r.value for r in rows), Decimal(0))

    def _carried(
        self, target: Target, link: CustomerLink, item_id: str, rows: list[ReportRow], start_us: int
    ) -> Decimal:
        """Usage before this period that no earlier period billed: the tail after a period's last
        whole window, late events of closed periods, and the half units rounding left over.

        The latest earlier period with a sent record billed `target - carried` of its own usage from
        its start on; everything since its start not billed so is carried. Without one, the usage
        since Tallybook first saw the item (its first period's start) is carried."""
        earlier = [r for r in rows if r.window_start_us < start_us and r.status == SENT]
        if earlier:
            period = max(r.window_start_us for r in earlier)
            final = [r for r in earlier if r.window_start_us == period][-1]  # what Stripe billed for it
            billed_own = final.target - (final.carried or Decimal(0))
            return self._usage(target, link, from_micros(period), from_micros(start_us)) - billed_own
        name = f"stripe.usage_record:{item_id}"  # where Tallybook started billing the item
        with self.store.read() as conn:
            anchor = self.jobs.get_cursor(conn, name)
        if anchor is None:
            anchor = start_us
            with self.store.write() as conn:
                self.jobs.set_cursor(conn, name, anchor)
        return self._usage(target, link, from_micros(anchor), from_micros(start_us))

    # -- persisting and sending ---------------------------------------------------------------------
    def _persist_and_send(
        self,
        target: Target,
        plans: list[dict[str, Any]],
        now: datetime,
        summary: RunSummary,
        item_id: str | None = None,
    ) -> None:
        now_us = to_micros(now)
        intents = []
        out_of_range = []
        for plan in plans:
            values = {
                **plan,
                "value": str(plan["value"]),
                "target": str(plan["target"]),
                "carried": None if plan.get("carried") is None else str(plan["carried"]),
                "cancelled": False,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_us": now_us,
                "request": self._request_body(target, plan, item_id),
                "response": None,
                "error": None,
                "created_us": now_us,
                "updated_us": now_us,
                "sent_us": None,
            }
            problem = self._range_problem(plan, now) if plan["kind"] == EVENT else None
            if problem is not None:
                values.update(status=OUT_OF_RANGE, error=problem, next_attempt_us=None)
                out_of_range.append(plan)
            intents.append(values)
        with self.store.write() as conn:
            ids = self.db.insert_reports(conn, intents)
        summary.out_of_range += len(out_of_range)
        for plan in out_of_range:
            log.error(
                "usage not reported: timestamp outside Stripe's accepted range",
                extra={"meter": plan["meter"], "customer_id": plan["customer_id"]},
            )
        pending = [
            ReportRow(
                id=report_id,
                **{
                    **values,
                    "value": Decimal(values["value"]),
                    "target": Decimal(values["target"]),
                    "carried": None if values["carried"] is None else Decimal(values["carried"]),
                },
            )
            for report_id, values in zip(ids, intents, strict=True)
            if values["status"] == PENDING
        ]
        self._send(target, pending, now, summary)

    def _range_problem(self, plan: dict[str, Any], now: datetime) -> str | None:
        ts = from_micros(plan["timestamp_us"])
        if ts < now - MAX_PAST + PAST_MARGIN:
            return (
                f"timestamp {format_rfc3339(ts)} is more than 35 days before now; Stripe refuses it. "
                "Bill this usage by hand (e.g. an invoice item)"
            )
        if ts > now + MAX_FUTURE:
            return f"timestamp {format_rfc3339(ts)} is more than 5 minutes ahead; Stripe refuses it"
        return None

    def _request_body(self, target: Target, plan: dict[str, Any], item_id: str | None) -> dict[str, Any]:
        if plan["kind"] == USAGE_RECORD:
            return {
                "path": f"/v1/subscription_items/{item_id}/usage_records",
                "quantity": int(plan["value"]),
                "timestamp": plan["timestamp_us"] // 1_000_000,
                "action": "set",
                "idempotency_key": plan["identifier"],
                "stripe_version": LEGACY_API_VERSION,
            }
        event_name = target.mapping.event_name
        if plan["kind"] == CANCEL:
            return {"event_name": event_name, "type": "cancel", "cancel": {"identifier": plan["cancels"]}}
        return {
            "event_name": event_name,
            "identifier": plan["identifier"],
            "timestamp": plan["timestamp_us"] // 1_000_000,
            "payload": {"stripe_customer_id": plan["stripe_customer_id"], "value": str(plan["value"])},
            "transport": target.mapping.transport,
        }

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

    def _settle_by_summaries(
        self, target: Target, row: ReportRow, now: datetime, summary: RunSummary, why: str
    ) -> None:
        """Decide a row in doubt (`why`: unconfirmed for 23 h, or its idempotency key taken by other
        parameters) by what Stripe holds for its window: its event summaries (Stripe processes meter
        events asynchronously, but not for a day).

        Stripe's window total equal to the ledger's with the row: it arrived (SENT, `confirmed`).
        Equal to the ledger's without it: it did not (REJECTED with `verifiedAbsent`; the window is
        planned again under the next version). Neither: REJECTED `inDoubt`, holding Stripe's total,
        which the window's next correction starts from (Stripe is the truth); counted as rejected.
        """
        now_us = to_micros(now)
        try:
            held, total = self._window_totals(target, row)
        except stripe.StripeError as exc:
            # Stripe's figure cannot be read now: the row stays PENDING and is decided at its next attempt.
            info = error_info(exc)
            delay = min(self.settings.retry_base * (2**row.attempts), self.settings.retry_max)
            waiting = f"waiting for Stripe's event summaries to decide whether it arrived: {info['message']}"
            with self.store.write() as conn:
                self.db.record_outcome(
                    conn,
                    row.id,
                    {
                        "next_attempt_us": to_micros(now + delay),
                        "response": info,
                        "error": waiting,
                        "updated_us": now_us,
                    },
                )
            summary.pending += 1
            return
        # What Stripe holds with the row and without it (a `last` meter holds its latest value).
        with_row = row.value if target.formula == "last" and row.kind == EVENT else held + row.value
        if total is not None and (total == with_row or (row.kind == EVENT and row.value == 0)):
            done = "it arrived" if row.kind == EVENT else "the cancel was applied"
            confirmed = f"Stripe's event summaries for the window hold {total}: {done}"
            self._succeeded([(row, {"confirmed": confirmed, "stripeWindowTotal": str(total)})], now, summary)
            return
        if total is not None and total == held:
            response: dict[str, Any] = {"verifiedAbsent": True, "stripeWindowTotal": str(total)}
            error = (
                f"did not reach Stripe: its event summaries for the window hold {total}, what the ledger "
                "holds without it; " + ("sent again under the next version" if row.kind == EVENT else "not retried")
            )
        else:
            response = {"inDoubt": True, "stripeWindowTotal": None if total is None else str(total)}
            seen = "could not be read" if total is None else f"hold {total}"
            error = (
                f"{why}, and Stripe's event summaries for the window {seen} (the ledger: {held} without it, "
                f"{with_row} with it); the window's next correction starts from Stripe's figure. "
                "Compare with `tallybook stripe reconcile`"
            )
            summary.rejected += 1
        with self.store.write() as conn:
            self.db.record_outcome(
                conn,
                row.id,
                {
                    "status": REJECTED,
                    "next_attempt_us": None,
                    "response": response,
                    "error": error,
                    "updated_us": now_us,
                },
            )
            self.db.insert_attempts(
                conn,
                [{"report_id": row.id, "attempted_us": now_us, "outcome": REJECTED, "http_status": None,
                  "response": response, "error": error}],
            )  # fmt: skip

    def _window_totals(self, target: Target, row: ReportRow) -> tuple[Decimal, Decimal | None]:
        """What the ledger says Stripe holds for the row's window without the row, and what Stripe's
        event summaries say it holds (None: no Stripe meter has the mapping's event name)."""
        history = self.db.latest_per_window(
            row.meter, row.window_start_us, row.window_start_us + 1, [row.customer_id]
        ).get((row.customer_id, row.window_start_us), [])
        live = [r for r in history if r.kind == EVENT and r.status == SENT and not r.cancelled and r.id != row.id]
        if target.formula == "last":
            held = live[-1].value if live else Decimal(0)
        else:
            held = held_in_window([r for r in history if r.id != row.id])
        total = self.stripe_window_total(target, row.stripe_customer_id, row.window_start_us, row.window_end_us)
        return held, total

    def stripe_window_total(self, target: Target, stripe_customer: str, start_us: int, end_us: int) -> Decimal | None:
        """Stripe's own figure for [start, end): the sum (or, for `last` meters, the last value) of its
        event summaries; None when the Stripe meter for the event name is not found."""
        meter_id = self.stripe_meter_id(target.mapping.event_name)
        if meter_id is None:
            return None
        summaries = self._call(
            lambda: self.client.v1.billing.meters.event_summaries.list(
                meter_id,
                {"customer": stripe_customer, "start_time": start_us // 1_000_000, "end_time": end_us // 1_000_000,
                 "limit": 100},
            )
        )  # fmt: skip
        values = [Decimal(str(s.aggregated_value)) for s in summaries.auto_paging_iter()]
        if target.formula == "last":
            return values[-1] if values else Decimal(0)
        return sum(values, Decimal(0))

    def forget_meter_ids(self) -> None:
        """Look Stripe meters up afresh (each run and each reconcile: a meter may have been replaced)."""
        self._meter_ids.clear()

    def stripe_meter_id(self, event_name: str | None) -> str | None:
        """The Stripe meter of an event name: linked by `tallybook stripe setup`, else looked up once."""
        if event_name is None:
            return None
        if event_name not in self._meter_ids:
            linked = {m.event_name: m.stripe_meter_id for m in self.db.meter_links() if m.stripe_meter_id}
            found = linked.get(event_name)
            if found is None:
                listed = self._call(lambda: self.client.v1.billing.meters.list({"limit": 100})).auto_paging_iter()
                named = [m for m in listed if m.event_name == event_name]
                active = [m for m in named if m.status == "active"]
                found = str((active or named)[0].id) if named else None
            if found is None:
                return None
            self._meter_ids[event_name] = found
        return self._meter_ids[event_name]

    def _send(self, target: Target, rows: list[ReportRow], now: datetime, summary: RunSummary) -> None:
        stream: list[ReportRow] = []
        single: list[ReportRow] = []
        for row in rows:
            is_stream = row.kind == EVENT and row.request.get("transport") == "v2_stream"
            (stream if is_stream else single).append(row)
        done: list[tuple[ReportRow, dict[str, Any]]] = []
        try:
            for row in single:
                response = self._send_one(row, now, summary)
                if response is not None and "keyTaken" in response:
                    self._settle_by_summaries(target, row, now, summary, KEY_TAKEN)
                elif response is not None:
                    done.append((row, response))
                if len(done) >= OUTCOME_BATCH:
                    self._succeeded(done, now, summary)
                    done = []
        finally:
            # Outcomes are recorded in batches; a crash before that only means a harmless resend.
            if done:
                self._succeeded(done, now, summary)
        for start in range(0, len(stream), STREAM_BATCH):
            self._send_stream(stream[start : start + STREAM_BATCH], now, summary)

    def _send_one(self, row: ReportRow, now: datetime, summary: RunSummary) -> dict[str, Any] | None:
        """Send one row; returns Stripe's answer, or None when the failure was recorded."""
        body = dict(row.request)
        options: dict[str, Any] = {"idempotency_key": idempotency_key(row)}
        try:
            if row.kind == USAGE_RECORD:
                path = body.pop("path")
                key = body.pop("idempotency_key")
                version = body.pop("stripe_version")
                raw = self._request(
                    lambda: self.client.raw_request("post", path, stripe_version=version, idempotency_key=key, **body),
                    summary,
                )
                response = self.client.deserialize(raw, api_mode="V1").to_dict()
            elif row.kind == CANCEL:
                response = self._request(
                    lambda: self.client.v1.billing.meter_event_adjustments.create(body, options),  # type: ignore[arg-type]
                    summary,
                ).to_dict()
            else:
                body.pop("transport", None)
                response = self._request(
                    lambda: self.client.v1.billing.meter_events.create(body, options),  # type: ignore[arg-type]
                    summary,
                ).to_dict()
        except stripe.StripeError as exc:
            info = error_info(exc)
            if row.kind != USAGE_RECORD and already_done(info):
                return {"alreadyReceived": info}  # the first send arrived
            if row.kind != USAGE_RECORD and isinstance(exc, stripe.IdempotencyError) and exc.http_status == 400:
                return {"keyTaken": info}  # the identifier was sent before with other parameters
            self._failed([row], exc, now, summary)
            return None
        return dict(response)

    def _send_stream(self, rows: list[ReportRow], now: datetime, summary: RunSummary) -> None:
        events = []
        for row in rows:
            body = row.request
            events.append(
                {
                    "event_name": body["event_name"],
                    "identifier": body["identifier"],
                    "timestamp": format_rfc3339(datetime.fromtimestamp(body["timestamp"], UTC)),
                    "payload": body["payload"],
                }
            )
        params: Any = {"events": events}
        for attempt in range(2):
            client = self._stream(now)
            try:
                self._request(partial(client.v2.billing.meter_event_stream.create, params), summary)
            except stripe.TemporarySessionExpiredError:
                self._session_token = None  # expired early (clock skew): renew once and resend
                if attempt == 0:
                    continue
                raise
            except stripe.StripeError as exc:
                self._failed(rows, exc, now, summary)
                return
            break
        answer = {"stream": "accepted", "events": len(events)}
        self._succeeded([(row, answer) for row in rows], now, summary)

    def _stream(self, now: datetime) -> stripe.StripeClient:
        """A client carrying a v2 meter event session token, renewed before its 15 minutes run out."""
        if (
            self._session_token is None
            or self._session_expires is None
            or now >= self._session_expires - SESSION_REFRESH
            or self._stream_client is None
        ):
            session = self._request(lambda: self.client.v2.billing.meter_event_session.create(), None)
            self._session_token = session.authentication_token
            expires = session.expires_at
            self._session_expires = (
                datetime.fromisoformat(expires.replace("Z", "+00:00"))
                if isinstance(expires, str)
                else now + timedelta(minutes=15)
            )
            self._stream_client = self.session_client(self._session_token)
        return self._stream_client

    def _request(self, call: Any, summary: RunSummary | None) -> Any:
        if summary is not None:
            summary.requests += 1
        return call()

    def _call(self, call: Any) -> Any:
        try:
            return call()
        except stripe.RateLimitError as exc:
            self._pause()
            raise Halt(f"Stripe rate limit (429): {exc.user_message or exc}") from None

    def _pause(self) -> None:
        if self.budget is not None:
            self.budget.pause(1.0)

    def _succeeded(self, done: list[tuple[ReportRow, dict[str, Any]]], now: datetime, summary: RunSummary) -> None:
        now_us = to_micros(now)
        with self.store.write() as conn:
            for row, response in done:
                earlier = "alreadyReceived" in response or "confirmed" in response
                self.db.record_outcome(
                    conn,
                    row.id,
                    {
                        "status": SENT,
                        "attempts": row.attempts + (0 if "confirmed" in response else 1),
                        "next_attempt_us": None,
                        "response": _jsonable(response),
                        "error": None,
                        "updated_us": now_us,
                        # Stripe received it at an earlier attempt: the earliest it can have is when
                        # the intent was written (so the 24 h cancel window is never overestimated).
                        "sent_us": row.created_us if earlier else now_us,
                    },
                )
                if row.kind == CANCEL and row.cancels:
                    self.db.mark_cancelled(conn, row.cancels, now_us)
            self.db.insert_attempts(
                conn,
                [
                    {
                        "report_id": row.id,
                        "attempted_us": now_us,
                        "outcome": _outcome(response),
                        "http_status": _http_status(response),
                        "response": _jsonable(response),
                        "error": None,
                    }
                    for row, response in done
                ],
            )
        summary.sent += len(done)
        summary.corrections += sum(1 for r, _ in done if r.kind == CANCEL or r.version > 1)

    def _failed(self, rows: list[ReportRow], exc: stripe.StripeError, now: datetime, summary: RunSummary) -> None:
        info = error_info(exc)
        if len(rows) == 1 and rows[0].kind != USAGE_RECORD and already_done(info):
            # The first send arrived (we crashed or timed out before recording it).
            self._succeeded([(row, {"alreadyReceived": info}) for row in rows], now, summary)
            return
        status_code = exc.http_status or 0
        retry = isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError) or status_code >= 500
        retry = retry or status_code in (401, 403, 409) or isinstance(exc, stripe.AuthenticationError)
        now_us = to_micros(now)
        attempts = rows[0].attempts + 1
        delay = min(self.settings.retry_base * (2 ** (attempts - 1)), self.settings.retry_max)
        with self.store.write() as conn:
            for row in rows:
                self.db.record_outcome(
                    conn,
                    row.id,
                    {
                        "status": PENDING if retry else REJECTED,
                        "attempts": row.attempts + 1,
                        "next_attempt_us": to_micros(now + delay) if retry else None,
                        "response": info,
                        "error": info["message"],
                        "updated_us": now_us,
                    },
                )
            self.db.insert_attempts(
                conn,
                [
                    {
                        "report_id": row.id,
                        "attempted_us": now_us,
                        "outcome": "RETRY" if retry else REJECTED,
                        "http_status": exc.http_status,
                        "response": info,
                        "error": info["message"],
                    }
                    for row in rows
                ],
            )
        if retry:
            summary.pending += len(rows)
        else:
            summary.rejected += len(rows)
        if isinstance(exc, stripe.RateLimitError):
            self._pause()
            raise Halt(f"Stripe rate limit (429); resuming at the next run: {info['message']}")
        if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
            raise Halt(f"Stripe refused the credentials: {info['message']}")


def held_in_window(history: list[ReportRow]) -> Decimal:
    """What Stripe holds for a sum meter's window, by its ledger rows: the live (sent, not cancelled)
    events; after Stripe's own figure when a row of the window was settled in doubt."""
    doubt = _doubt_id(history)
    live = [r for r in history if r.kind == EVENT and r.status == SENT and not r.cancelled and r.id > doubt]
    return _doubt_base(history) + sum((r.value for r in live), Decimal(0))


def _refused(row: ReportRow) -> bool:
    """Stripe refused the row, or it was out of range (not: settled by event summaries, see _settle_stale)."""
    if row.status == OUT_OF_RANGE:
        return True
    settled = isinstance(row.response, dict) and (row.response.get("verifiedAbsent") or row.response.get("inDoubt"))
    return row.status == REJECTED and not settled


def _doubt_id(history: list[ReportRow]) -> int:
    """The id of the window's latest row held in doubt (0: none): rows up to it are replaced by
    Stripe's own figure for the window, stored on it."""
    doubtful = [
        r.id for r in history if r.status == REJECTED and isinstance(r.response, dict) and r.response.get("inDoubt")
    ]
    return max(doubtful, default=0)


def _doubt_base(history: list[ReportRow]) -> Decimal:
    """Stripe's figure for the window as read when its latest doubtful row was settled (0: none)."""
    base = Decimal(0)
    for r in history:
        if r.status == REJECTED and isinstance(r.response, dict) and r.response.get("inDoubt"):
            total = r.response.get("stripeWindowTotal")
            base = Decimal(str(total)) if total is not None else base
    return base


def error_info(exc: stripe.StripeError) -> dict[str, Any]:
    """Stripe's error as stored on the ledger; `replayed` when Stripe replayed a saved answer for
    the idempotency key (a saved 5xx means the key is spent)."""
    info = error_json(exc)
    headers = exc.headers or {}
    if str(headers.get("Idempotent-Replayed") or headers.get("idempotent-replayed") or "").lower() == "true":
        info["replayed"] = True
    return info


def _outcome(response: dict[str, Any]) -> str:
    if "alreadyReceived" in response:
        return "ALREADY_RECEIVED"
    if "confirmed" in response:
        return "CONFIRMED"
    return SENT


def _http_status(response: dict[str, Any]) -> int | None:
    if "alreadyReceived" in response:
        status = response["alreadyReceived"].get("http_status")
        return int(status) if status is not None else None
    return None if "confirmed" in response else 200


def _cursor_name(meter: str) -> str:
    return f"stripe.reported:{meter}"


def reported_cursor(meter: str) -> str:
    """The job cursor holding the end of what was reported of `meter` (the last run's end)."""
    return _cursor_name(meter)


def reported_from_cursor(meter: str) -> str:
    """The job cursor holding where reporting of `meter` started (the first run's first window)."""
    return f"stripe.reported_from:{meter}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float):
        return str(Decimal(repr(value)))
    return value
