"""Legacy usage records: `set` each Stripe subscription item's period total.

Stripe closes a period to usage records when it renews, so usage after the period's last whole
window (and late events of a closed period) is carried into the next period's quantity (`carried`
on the row). Each subscription item is one item of the report job: one that fails is recorded and
the others go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from tallybook.clock import from_micros
from tallybook.meters.models import UsageQuery
from tallybook.stripe.ledger import Halt, ReportedRange, RunSummary, Target
from tallybook.stripe.model import PENDING, SENT, USAGE_RECORD, CustomerLink, ReportRow
from tallybook.stripe.sender import LedgerSender
from tallybook.stripe.settings import LEGACY_API_VERSION


class UsageRecordReporting(LedgerSender):
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
        with self.db.reading() as tx:
            anchor = tx.cursor(name)
        if anchor is None:
            anchor = start_us
            with self.db.writing() as tx:
                tx.set_cursor(name, anchor)
        return self._usage(target, link, from_micros(anchor), from_micros(start_us))
