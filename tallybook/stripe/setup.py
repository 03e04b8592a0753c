"""`tallybook stripe setup`: the Stripe side of metered billing for one meter and customer, made in one
go (product, Billing Meter, metered monthly price, customer and subscription), as OpenMeter's Go
example does, and linked to the Tallybook meter and customer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tallybook.clock import to_micros
from tallybook.stripe.ledger import stripe_formula
from tallybook.stripe.model import MeterLink

if TYPE_CHECKING:
    from tallybook.stripe.service import StripeService

# The OpenMeter example's price: $0.20 per 1,000,000 units = 0.00002 cents per unit.
SETUP_UNIT_AMOUNT_DECIMAL = Decimal("0.00002")


@dataclass(frozen=True, slots=True)
class SetupResult:
    product: str
    meter: str
    price: str
    customer: str
    subscription: str
    urls: dict[str, str]


class StripeSetup:
    def __init__(self, service: StripeService) -> None:
        self.service = service

    def run(self, meter_slug: str, customer_id_or_key: str, event_name: str | None = None) -> SetupResult:
        meter = self.service.meters.get(meter_slug)
        customer = self.service.customers.resolve(customer_id_or_key)
        client = self.service.client()
        formula = stripe_formula(meter.aggregation)
        name = event_name or meter.slug
        product = client.v1.products.create({"name": f"{meter.name} (Tallybook)"})
        stripe_meter = client.v1.billing.meters.create(
            {
                "display_name": meter.name,
                "event_name": name,
                "default_aggregation": {"formula": formula},
                "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
                "value_settings": {"event_payload_key": "value"},
            }
        )
        price = client.v1.prices.create(
            {
                "currency": "usd",
                "product": product.id,
                "unit_amount_decimal": SETUP_UNIT_AMOUNT_DECIMAL,
                "recurring": {"interval": "month", "usage_type": "metered", "meter": stripe_meter.id},
            }
        )
        existing = self.service.db.get_customer(customer.id)
        if existing is not None:
            stripe_customer_id = existing.stripe_customer_id
        else:
            params: Any = {"name": customer.name, "metadata": {"tallybook_customer_id": customer.id}}
            if customer.primary_email:
                params["email"] = customer.primary_email
            stripe_customer_id = client.v1.customers.create(params).id
            self.service.put_customer_stripe(customer.id, {"stripeCustomerId": stripe_customer_id})
        subscription = client.v1.subscriptions.create({"customer": stripe_customer_id, "items": [{"price": price.id}]})
        period_start = period_start_of(subscription.to_dict())
        if period_start:
            self.service.db.set_period_start(
                customer.id, int(period_start) * 1_000_000, to_micros(self.service.clock.now())
            )
        self.service.db.put_meter_link(
            MeterLink(
                meter=meter.slug,
                event_name=name,
                stripe_meter_id=stripe_meter.id,
                price_id=price.id,
                formula=formula,
                mode="billing_meter",
                updated_us=to_micros(self.service.clock.now()),
            )
        )
        base = "https://dashboard.stripe.com/test" if self._test_mode() else "https://dashboard.stripe.com"
        return SetupResult(
            product=product.id,
            meter=stripe_meter.id,
            price=price.id,
            customer=stripe_customer_id,
            subscription=subscription.id,
            urls={
                "product": f"{base}/products/{product.id}",
                "meter": f"{base}/billing/meters/{stripe_meter.id}",
                "price": f"{base}/prices/{price.id}",
                "customer": f"{base}/customers/{stripe_customer_id}",
                "subscription": f"{base}/subscriptions/{subscription.id}",
            },
        )

    def _test_mode(self) -> bool:
        return not (self.service.settings.secret_key() or "").startswith(("sk_live_", "rk_live_"))


def period_start_of(obj: Any) -> int | None:
    """current_period_start of a subscription dict: on it (before basil) or on its items."""
    if not isinstance(obj, dict):
        return None
    if obj.get("current_period_start"):
        return int(obj["current_period_start"])
    items = obj.get("items")
    for item in (items.get("data") if isinstance(items, dict) else None) or []:
        if isinstance(item, dict) and item.get("current_period_start"):
            return int(item["current_period_start"])
    return None


def finished_period(subscription: Any, previous: Any) -> tuple[datetime, datetime] | None:
    """[old period start, new period start) when the update moved the subscription to a new period."""
    old = period_start_of(previous)
    new = period_start_of(subscription)
    if old is None or new is None or new <= old:
        return None
    return datetime.fromtimestamp(old, UTC), datetime.fromtimestamp(new, UTC)


__all__ = ["SETUP_UNIT_AMOUNT_DECIMAL", "SetupResult", "StripeSetup", "finished_period", "period_start_of"]
