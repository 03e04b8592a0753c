"""What `tallybook stripe report` and `tallybook stripe reconcile` print, computed and worded.

A figure about Stripe reporting is only useful with its bounds and their reasons: Stripe gets one
amount per whole window, only once the window ended `settle_delay` ago, and a meter's first run
reaches back `backfill` only. So every line says which window-rounded range it covers, how much of
the usage in it was sent (what the ledger says Stripe holds), how much is held back (windows not
yet whole and settled: the next run sends them), how much is not sent (pending, refused, out of
range) and, for reconcile, how much was never reported (before reporting started) and whether
Stripe's own figure matches what was sent. The identity

    drift = stripe - tallybook = (stripe - sent) - not_reported - not_sent - held_back

holds for every `sum` meter line, so a drift is always explained by the parts printed next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from tallybook.clock import format_rfc3339, from_micros, to_micros
from tallybook.jobs.sql import JobStore
from tallybook.meters.models import UsageQuery
from tallybook.meters.service import MeterService
from tallybook.meters.windows import WindowSize, window_start
from tallybook.store.base import SqlStore
from tallybook.store.stripe import SENT, StripeStore
from tallybook.stripe.reporter import (
    UTC_ZONE,
    ReportedRange,
    Reporter,
    RunSummary,
    held_in_window,
    reported_cursor,
    reported_from_cursor,
)
from tallybook.stripe.settings import StripeMeterMapping, StripeSettings


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One subscription item (or linked customer) after a report: its period and what of it went out."""

    meter: str
    customer_id: str
    stripe_customer_id: str
    price: str | None
    mode: str  # billing_meter | usage_record
    formula: str  # sum | last
    window: WindowSize
    period_from: datetime  # the billing period (or the run's range when no subscription is known)
    period_to: datetime
    sent_from: datetime  # window-rounded bounds of what was reported for the period
    sent_to: datetime
    sent: Decimal  # what the ledger says Stripe holds for those windows
    not_sent: Decimal  # usage of those windows Stripe does not hold: pending, refused, out of range
    held_back: Decimal  # usage after sent_to: windows not yet whole and settled
    held_back_to: datetime
    not_reported: Decimal = Decimal(0)  # usage before reporting of the meter started (stripe.backfill)
    reported_from: datetime | None = None  # where reporting of the meter started
    carried: Decimal | None = None  # usage records: earlier periods' usage included in `sent`


@dataclass(frozen=True, slots=True)
class Drift:
    """Stripe's figure against Tallybook's for one meter and customer over a window-rounded range."""

    meter: str
    customer_id: str
    stripe_customer_id: str
    tallybook: Decimal  # usage in [start, end)
    stripe: Decimal  # Stripe's event summaries for [start, end)
    ledger: Decimal  # what Tallybook sent for the windows in [start, end) (the ledger)
    start: datetime  # the compared range, rounded down to whole windows
    end: datetime
    window: WindowSize
    formula: str  # sum | last
    reported_from: datetime | None  # where reporting of the meter started (first run)
    reported_to: datetime | None  # the end of the last run's range
    not_reported: Decimal = Decimal(0)  # usage before reporting started, never sent
    not_sent: Decimal = Decimal(0)  # reported windows' usage not sent: pending, refused, out of range
    held_back: Decimal = Decimal(0)  # usage in windows the last run did not reach yet

    @property
    def drift(self) -> Decimal:
        return self.stripe - self.tallybook

    @property
    def other(self) -> Decimal:
        """What Stripe holds beyond (or short of) what Tallybook sent."""
        return self.stripe - self.ledger

    @property
    def needs_action(self) -> bool:
        """Usage that will not reach Stripe by itself, or Stripe disagreeing with what was sent.
        Held-back usage is on its way (the next run sends it)."""
        return bool(self.not_reported or self.not_sent or self.other)


class Explainer:
    """Computes the report and reconcile breakdowns from the ledger, the cursors and the meters."""

    def __init__(self, store: SqlStore, meters: MeterService, settings: StripeSettings, reporter: Reporter) -> None:
        self.db = StripeStore(store)
        self.jobs = JobStore(store)
        self.store = store
        self.meters = meters
        self.settings = settings
        self.reporter = reporter

    # -- cursors ------------------------------------------------------------------------------------
    def cursors(self, meter: str) -> tuple[datetime | None, datetime | None]:
        """(where reporting of `meter` started, the end of what was reported so far)."""
        with self.store.read() as conn:
            first = self.jobs.get_cursor(conn, reported_from_cursor(meter))
            last = self.jobs.get_cursor(conn, reported_cursor(meter))
        return (None if first is None else from_micros(first), None if last is None else from_micros(last))

    def usage(self, meter: str, customer_id: str, start: datetime, end: datetime) -> Decimal:
        if end <= start:
            return Decimal(0)
        rows = self.meters.query(UsageQuery(meter=meter, from_=start, to=end, customer_ids=(customer_id,)))
        return sum((r.value for r in rows), Decimal(0))

    def sent(self, meter: str, formula: str, customer_id: str, start: datetime, end: datetime) -> Decimal:
        """What the ledger says Stripe holds for the windows starting in [start, end): summed for
        `sum` meters, the latest sent figure for `last` meters."""
        if end <= start:
            return Decimal(0)
        ledger = self.db.latest_per_window(meter, to_micros(start), to_micros(end), [customer_id])
        if formula == "last":
            sent = [r for h in ledger.values() for r in h if r.kind == "event" and r.status == SENT]
            return max(sent, key=lambda r: r.timestamp_us).value if sent else Decimal(0)
        return sum((held_in_window(history) for history in ledger.values()), Decimal(0))

    # -- report -------------------------------------------------------------------------------------
    def report_lines(
        self,
        summary: RunSummary,
        items: Sequence[dict[str, Any]],
        now: datetime,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[UsageLine]:
        """One line per subscription item (`items`: customer, price, meter, its current period), or,
        for a mapped meter whose price Tallybook does not know, per linked customer with usage in
        the run's range. `start`/`end` (--from/--to) replace the periods."""
        mappings = {m.meter: m for m in self.reporter.mappings()}
        ranges = {r.meter: r for r in summary.ranges}
        lines = []
        covered = set()
        for item in items:
            mapping = mappings.get(item["meter"])
            reported = ranges.get(item["meter"])
            if mapping is None or reported is None:
                continue
            covered.add(item["meter"])
            period_from, period_to = start or item["from"], end or item["to"]
            lines.append(
                self._line(mapping, reported, item["customer_id"], item["stripe_customer_id"], item.get("price"),
                           period_from, period_to, now, item.get("item_id"))
            )  # fmt: skip
        links = self.db.customers()
        for reported in summary.ranges:
            if reported.meter in covered or reported.start is None or reported.meter not in mappings:
                continue
            period_from, period_to = start or reported.start, end or now
            for link in sorted(links.values(), key=lambda c: c.customer_id):
                line = self._line(
                    mappings[reported.meter], reported, link.customer_id, link.stripe_customer_id, None,
                    period_from, period_to, now, None,
                )  # fmt: skip
                if line.sent or line.not_sent or line.held_back:
                    lines.append(line)
        return lines

    def _line(
        self,
        mapping: StripeMeterMapping,
        reported: ReportedRange,
        customer_id: str,
        stripe_customer_id: str,
        price: str | None,
        period_from: datetime,
        period_to: datetime,
        now: datetime,
        item_id: str | None,
    ) -> UsageLine:
        size = reported.window
        held_back_to = max(min(period_to, now), period_from)
        if mapping.mode == "usage_record":
            # The period's quantity covers its whole windows up to the run's end (and what earlier
            # periods carried into it); Stripe holds the last `set` quantity.
            sent_to = max(min(reported.end, period_to), period_from)
            rows = [] if item_id is None else self.db.item_rows(mapping.meter, customer_id, f"ur:{item_id}")
            last = [r for r in rows if r.window_start_us == to_micros(period_from) and r.status == SENT]
            held = last[-1].target if last else Decimal(0)
            carried = last[-1].carried if last else None
            own = self.usage(mapping.meter, customer_id, period_from, sent_to)
            due = max(own + (carried or Decimal(0)), Decimal(0)).to_integral_value(rounding=ROUND_HALF_UP)
            return UsageLine(
                mapping.meter, customer_id, stripe_customer_id, price, mapping.mode, reported.formula, size,
                period_from, period_to, period_from, sent_to, held, due - held,
                self.usage(mapping.meter, customer_id, sent_to, held_back_to), held_back_to, carried=carried,
            )  # fmt: skip
        sent_from = window_start(size, period_from, UTC_ZONE)
        reported_from, reported_to = self.cursors(mapping.meter)
        # Windows of the period: a window cut by the period's end belongs to the next period.
        period_windows_end = window_start(size, period_to, UTC_ZONE)
        sent_to = max(min(reported_to or sent_from, period_windows_end), sent_from)
        if reported.formula == "last":
            sent = self.sent(mapping.meter, "last", customer_id, sent_from, sent_to)
            to_date = self._aggregate(mapping.meter, customer_id, period_from, held_back_to)
            return UsageLine(
                mapping.meter, customer_id, stripe_customer_id, price, mapping.mode, "last", size, period_from,
                period_to, sent_from, sent_to, sent, Decimal(0), to_date - sent, held_back_to,
            )  # fmt: skip
        (u1, s1), (u2, s2), (u3, s3) = self._split(
            mapping.meter, customer_id, sent_from, max(held_back_to, sent_to), reported_from, sent_to
        )
        return UsageLine(
            mapping.meter, customer_id, stripe_customer_id, price, mapping.mode, "sum", size, period_from,
            period_to, sent_from, sent_to, s1 + s2 + s3, u2 - s2, u3 - s3, held_back_to, u1 - s1, reported_from,
        )  # fmt: skip

    def _split(
        self,
        meter: str,
        customer_id: str,
        start: datetime,
        end: datetime,
        reported_from: datetime | None,
        reported_to: datetime | None,
    ) -> list[tuple[Decimal, Decimal]]:
        """(usage, sent) of [start, end) cut in three: before reporting started (never reported),
        reported, and after the last run's end (held back)."""
        first = min(max(reported_from or start, start), end)
        last = min(max(reported_to or first, first), end)
        return [
            (self.usage(meter, customer_id, lo, hi), self.sent(meter, "sum", customer_id, lo, hi))
            for lo, hi in ((start, first), (first, last), (last, end))
        ]

    def _aggregate(self, meter: str, customer_id: str, start: datetime, end: datetime) -> Decimal:
        if end <= start:
            return Decimal(0)
        rows = self.meters.query(UsageQuery(meter=meter, from_=start, to=end, customer_ids=(customer_id,)))
        return rows[0].value if rows else Decimal(0)

    # -- reconcile ----------------------------------------------------------------------------------
    def drift(
        self,
        mapping: StripeMeterMapping,
        formula: str,
        customer_id: str,
        stripe_customer_id: str,
        stripe_figure: Decimal,
        start: datetime,
        end: datetime,
    ) -> Drift:
        size = WindowSize(mapping.window)
        reported_from, reported_to = self.cursors(mapping.meter)
        meter = mapping.meter
        if formula == "last":
            figure = self._aggregate(meter, customer_id, start, end)
            sent = self.sent(meter, "last", customer_id, window_start(WindowSize.MONTH, start, UTC_ZONE), end)
            return Drift(
                meter, customer_id, stripe_customer_id, figure, stripe_figure, sent, start, end, size, formula,
                reported_from, reported_to,
            )  # fmt: skip
        (u1, s1), (u2, s2), (u3, s3) = self._split(meter, customer_id, start, end, reported_from, reported_to)
        return Drift(
            meter, customer_id, stripe_customer_id, u1 + u2 + u3, stripe_figure, s1 + s2 + s3, start, end, size,
            formula, reported_from, reported_to, u1 - s1, u2 - s2, u3 - s3,
        )  # fmt: skip


# -- wording ----------------------------------------------------------------------------------------


def iso_duration(span: timedelta) -> str:
    """PT5M, P1D, P2D, PT1H30M: how the settings are written in tallybook.yaml."""
    seconds = int(span.total_seconds())
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    clock = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if n)
    return "P" + (f"{days}D" if days else "") + (f"T{clock}" if clock else "") if (days or clock) else "PT0S"


def _t(value: datetime | None) -> str:
    return "-" if value is None else format_rfc3339(value)


def _n(value: Decimal | None) -> str:
    if value is None:
        return "-"
    text = format(value.normalize(), "f") if value == value.to_integral_value() else format(value, "f")
    return "0" if text in ("-0", "") else text


def range_lines(reported: ReportedRange, settings: StripeSettings) -> list[str]:
    """Where a run's range for one meter starts and ends, and why."""
    size = reported.window.value
    if reported.mode == "usage_record":
        return [
            f"{reported.meter} (legacy usage records, {size} windows): each subscription item's period is reported "
            f"up to {_t(reported.end)} (now - settle_delay {iso_duration(settings.settle_delay)}, rounded down to a "
            "whole window); a period's tail after its last whole window is carried into the next period"
        ]
    why_start = {
        "from": f"--from, rounded down to a whole {size} window",
        "first": f"the first run for this meter: its end - stripe.backfill {iso_duration(settings.backfill)}; "
        "earlier usage is not sent (not_reported) unless you run `tallybook stripe report --from …`",
        "lookback": f"the last run's end - stripe.lookback {iso_duration(settings.lookback)}, "
        "re-checked for late events",
    }[reported.start_reason]
    why_end = (
        f"--to, rounded down to a whole {size} window"
        if reported.end_reason == "to"
        else f"now - stripe.settle_delay {iso_duration(settings.settle_delay)}, rounded down to a whole {size} "
        "window; later windows are held back until they ended settle_delay ago"
    )
    return [
        f"{reported.meter} ({reported.formula} meter, {size} windows): reported {_t(reported.start)} -> "
        f"{_t(reported.end)}",
        f"  from: {why_start}",
        f"  to:   {why_end}",
    ]


REPORT_HEADER = "customer  price  meter  sent  held_back  not_sent  not_reported  sent_from  sent_to  held_back_to"


def report_text(summary: RunSummary, lines: Sequence[UsageLine], settings: StripeSettings) -> list[str]:
    """`tallybook stripe report`'s output: the ranges, one line per item, the legend, the totals."""
    out: list[str] = []
    for reported in summary.ranges:
        out.extend(range_lines(reported, settings))
    out.append(REPORT_HEADER)
    for line in lines:
        fields = (
            line.stripe_customer_id, line.price or "-", line.meter, _n(line.sent), _n(line.held_back),
            _n(line.not_sent), _n(line.not_reported), _t(line.sent_from), _t(line.sent_to), _t(line.held_back_to),
        )  # fmt: skip
        out.append("  ".join(fields))
        if line.carried:
            out.append(
                f"  {_n(line.carried)} of the {_n(line.sent)} sent is usage of earlier periods (their tails after "
                "the last whole window), carried: Stripe takes no usage record for a renewed period"
            )
        if line.not_reported:
            out.append(
                f"  {_n(line.not_reported)} not reported: usage before {_t(line.reported_from)}, where reporting "
                f"reaches back; send it with `tallybook stripe report --from {_t(line.sent_from)} "
                f"--to {_t(line.reported_from)}`"
            )
    out.extend(
        [
            "sent: what Stripe holds for the whole windows sent_from -> sent_to (the item's period, rounded to "
            "windows; a window cut by the period end belongs to the next period)",
            "held_back: usage sent_to -> held_back_to, in windows not yet whole or not yet settled; the next run "
            "sends it",
            "not_sent: usage of sent windows Stripe does not hold: pending, refused or out of range "
            "(see `tallybook stripe reports`)",
            "not_reported: usage before reporting of the meter reaches back (its first run started "
            "stripe.backfill before its end); never sent unless you run `tallybook stripe report --from … --to …`",
            ", ".join(f"{k}={v}" for k, v in summary.as_dict().items()),
        ]
    )
    return out


RECONCILE_HEADER = "meter  customer  stripe_customer  tallybook  stripe  drift  sent  held_back  not_sent  not_reported"


def reconcile_text(drifts: Sequence[Drift], settings: StripeSettings) -> list[str]:
    """`tallybook stripe reconcile`'s output: per meter, the compared range and why; one line per
    customer; under each line with a drift, what it is made of."""
    out: list[str] = []
    by_meter: dict[str, list[Drift]] = {}
    for d in drifts:
        by_meter.setdefault(d.meter, []).append(d)
    for meter, rows in by_meter.items():
        d = rows[0]
        size = d.window.value
        out.append(
            f"{meter} ({d.formula} meter, {size} windows): compared {_t(d.start)} -> {_t(d.end)} "
            f"(--from/--to rounded down to whole {size} windows; Stripe gets one amount per window)"
        )
        if d.reported_from is not None:
            out.append(
                f"  reporting reaches back to {_t(d.reported_from)}: where the first run started (stripe.backfill "
                f"{iso_duration(settings.backfill)} before its end), or an earlier --from joined to it; usage before "
                "it was never sent"
            )
        else:
            out.append("  reporting has not started for this meter (no run yet)")
        if d.reported_to is not None:
            out.append(
                f"  reported up to {_t(d.reported_to)}: the furthest a run reached (now - stripe.settle_delay "
                f"{iso_duration(settings.settle_delay)}, rounded down); later windows are held back"
            )
    out.append(RECONCILE_HEADER)
    for d in drifts:
        values = (
            d.meter, d.customer_id, d.stripe_customer_id, _n(d.tallybook), _n(d.stripe), _n(d.drift),
            _n(d.ledger), _n(d.held_back), _n(d.not_sent), _n(d.not_reported),
        )  # fmt: skip
        out.append("  ".join(values))
        out.extend(f"  {text}" for text in _drift_reasons(d))
    return out


def _drift_reasons(d: Drift) -> list[str]:
    if not d.drift and not d.needs_action:
        return []
    reasons = []
    if d.formula == "last":
        reasons.append(
            f"a last meter: Stripe bills its last value ({_n(d.stripe)}); Tallybook's figure for the range is "
            f"{_n(d.tallybook)}, the last value it sent {_n(d.ledger)}"
        )
        return reasons
    if d.not_reported:
        until = d.reported_from or d.end
        reasons.append(
            f"{_n(-d.not_reported)}: usage {_t(d.start)} -> {_t(until)}, before reporting reaches back, never sent; "
            f"send it with `tallybook stripe report --from {_t(d.start)} --to {_t(until)}`"
        )
    if d.not_sent:
        reasons.append(
            f"{_n(-d.not_sent)}: usage of reported windows Stripe does not hold (pending, refused, out of range, or "
            "late events the next run corrects): see `tallybook stripe reports`"
        )
    if d.held_back:
        reasons.append(
            f"{_n(-d.held_back)}: usage {_t(d.reported_to or d.start)} -> {_t(d.end)}, in windows not reported yet "
            "(not whole or not settled); the next run sends it"
        )
    if d.other:
        reasons.append(
            f"{_n(d.other)}: Stripe holds {_n(d.stripe)} where Tallybook sent {_n(d.ledger)} (events from another "
            "sender, or sent in the last minutes and not yet in Stripe's summaries)"
        )
    return reasons
