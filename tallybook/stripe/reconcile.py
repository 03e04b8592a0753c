"""Reconciling with Stripe: what Stripe's meter event summaries hold against Tallybook's figures, and
the subscription items `tallybook stripe report` explains (the service's `reconcile` and
`explain_report` call these)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import stripe

from tallybook.clock import to_micros
from tallybook.meters.windows import WindowSize, window_start
from tallybook.stripe.explain import Drift, Explainer
from tallybook.stripe.ledger import UTC_ZONE, stripe_formula
from tallybook.stripe.model import CustomerLink
from tallybook.stripe.ports import StripeStorage
from tallybook.stripe.reporter import Reporter
from tallybook.stripe.settings import StripeMeterMapping


def reconcile_drifts(
    reporter: Reporter, explainer: Explainer, links: dict[str, CustomerLink], from_: datetime, to: datetime
) -> list[Drift]:
    """Per linked customer and mapped Billing Meter: Stripe's total over [from, to) rounded down to
    the meter's windows, against Tallybook's, with what the drift is made of."""
    drifts: list[Drift] = []
    reporter.forget_meter_ids()
    for mapping in reporter.mappings():
        if mapping.mode != "billing_meter":
            continue
        meter = reporter.meters.get(mapping.meter)
        formula = stripe_formula(meter.aggregation)
        target = reporter.target(mapping, formula)
        if reporter.stripe_meter_id(mapping.event_name) is None:
            continue
        start = window_start(WindowSize(mapping.window), from_, UTC_ZONE)
        end = window_start(WindowSize(mapping.window), to, UTC_ZONE)
        if end <= start:
            continue
        for customer_id, link in sorted(links.items()):
            theirs = reporter.stripe_window_total(target, link.stripe_customer_id, to_micros(start), to_micros(end))
            drifts.append(
                explainer.drift(
                    mapping, formula, customer_id, link.stripe_customer_id, theirs or Decimal(0), start, end
                )
            )
    return drifts


def active_subscription_items(
    client: stripe.StripeClient, storage: StripeStorage, mappings: Sequence[StripeMeterMapping]
) -> list[dict[str, Any]]:
    """For `stripe report`: each linked customer's subscription items on a mapped price (linked
    by `setup`, or a usage-record mapping's) and their current period."""
    links = {link.stripe_customer_id: link for link in storage.customers().values()}
    prices: dict[str, Any] = {m.price_id: m for m in storage.meter_links() if m.price_id}
    prices.update({m.price: m for m in mappings if m.price})
    found = []
    for subscription in client.v1.subscriptions.list({"status": "active", "limit": 100}).auto_paging_iter():
        link = links.get(str(subscription.customer))
        if link is None:
            continue
        for item in subscription["items"].data:
            meter_link = prices.get(item.price.id)
            if meter_link is None:
                continue
            found.append(
                {
                    "customer_id": link.customer_id,
                    "stripe_customer_id": link.stripe_customer_id,
                    "item_id": item.id,
                    "price": item.price.id,
                    "meter": meter_link.meter,
                    "from": datetime.fromtimestamp(int(item.current_period_start), UTC),
                    "to": datetime.fromtimestamp(int(item.current_period_end), UTC),
                }
            )
    return found


__all__ = ["active_subscription_items", "reconcile_drifts"]
