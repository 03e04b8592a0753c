"""The Stripe domain service: customer links, reporting runs, the period-end webhook, setup and
reconciliation. The API and the CLI call this; it never imports FastAPI."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

import stripe

from tallybook.clock import Clock, to_micros
from tallybook.customers import CustomerService
from tallybook.customers.model import Customer
from tallybook.jobs.runs import ItemFailureLog
from tallybook.meters.service import MeterService
from tallybook.stripe.client import TokenBucket, budget_for, build_client
from tallybook.stripe.explain import Drift, Explainer, UsageLine
from tallybook.stripe.model import (
    CustomerLink,
    InvalidStripeData,
    NotLinked,
    ReportFilter,
    ReportRow,
    StripeCustomerTaken,
    StripeDisabled,
    StripeProblem,
    WebhookRejected,
)
from tallybook.stripe.ports import StripeStorage
from tallybook.stripe.reconcile import active_subscription_items, reconcile_drifts
from tallybook.stripe.reporter import REPORT_JOB, Reporter, RunSummary
from tallybook.stripe.settings import StripeSettings
from tallybook.stripe.setup import SetupResult, StripeSetup, finished_period

log = logging.getLogger(__name__)

EventHandler = Callable[[stripe.Event], dict[str, Any]]

WEBHOOK_TOLERANCE_SECONDS = 300


def _check_id(value: Any, field: str, prefixes: tuple[str, ...]) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidStripeData(f"{field}: is required and must be a non-empty string")
    if not value.startswith(prefixes):
        raise InvalidStripeData(f"{field}: {value!r} is not a Stripe id (it should start with {' or '.join(prefixes)})")
    if len(value) > 255:
        raise InvalidStripeData(f"{field}: is longer than 255 characters")
    return value


class StripeService:
    def __init__(
        self,
        storage: StripeStorage,
        failures: ItemFailureLog,
        customers: CustomerService,
        meters: MeterService,
        settings: StripeSettings,
        clock: Clock,
        client_factory: Callable[[str | None], stripe.StripeClient] | None = None,
        budget: TokenBucket | None = None,
    ) -> None:
        # Where the reporting run records the meters it skipped (GET /api/v1/jobs/failures).
        self.failures = failures
        self.db = storage
        self.customers = customers
        self.meters = meters
        self.settings = settings
        self.clock = clock
        self.budget = budget or budget_for(settings)
        self._client_factory = client_factory or (lambda key: build_client(settings, key, self.budget))
        self._client: stripe.StripeClient | None = None
        self._reporter: Reporter | None = None
        self._event_handlers: dict[str, EventHandler] = {}
        self.on_event(["customer.subscription.updated"], self._on_subscription_updated)

    # -- clients ------------------------------------------------------------------------------------
    def client(self) -> stripe.StripeClient:
        if self._client is None:
            self._client = self._client_factory(None)
        return self._client

    def reporter(self) -> Reporter:
        if self._reporter is None:
            self._reporter = Reporter(
                self.db,
                self.meters,
                self.settings,
                self.clock,
                self.client(),
                session_client=self._client_factory,
                budget=self.budget,
                failures=self.failures,
            )
        return self._reporter

    # -- customer <-> Stripe ------------------------------------------------------------------------
    def put_customer_stripe(self, id_or_key: str, data: Any) -> CustomerLink:
        """OpenMeter's upsertCustomerStripeAppData: {stripeCustomerId, stripeDefaultPaymentMethodId?}."""
        if not isinstance(data, dict):
            raise InvalidStripeData("the body must be a JSON object with stripeCustomerId")
        unknown = sorted(set(data) - {"stripeCustomerId", "stripeDefaultPaymentMethodId", "type", "id"})
        if unknown:
            raise InvalidStripeData(f"{unknown[0]}: unknown field")
        if "type" in data and data["type"] != "stripe":
            raise InvalidStripeData(f"type: only 'stripe' apps are supported, got {data['type']!r}")
        stripe_id = _check_id(data.get("stripeCustomerId"), "stripeCustomerId", ("cus_",))
        method = data.get("stripeDefaultPaymentMethodId")
        if method is not None:
            method = _check_id(method, "stripeDefaultPaymentMethodId", ("pm_", "card_", "src_"))
        customer = self.customers.resolve(id_or_key)
        owner = self.db.customer_owning(stripe_id)
        if owner is not None and owner.customer_id != customer.id:
            raise InvalidStripeData(
                f"stripeCustomerId: {stripe_id} is already linked to customer {owner.customer_id}; "
                "a Stripe customer belongs to one Tallybook customer"
            )
        current = self.db.get_customer(customer.id)
        link = CustomerLink(
            customer_id=customer.id,
            stripe_customer_id=stripe_id,
            stripe_default_payment_method_id=method,
            period_start_us=current.period_start_us if current else None,
            updated_us=to_micros(self.clock.now()),
        )
        try:
            self.db.put_customer(link)
        except StripeCustomerTaken:
            raise InvalidStripeData(
                f"stripeCustomerId: {stripe_id} is already linked to another customer; "
                "a Stripe customer belongs to one Tallybook customer"
            ) from None
        return link

    def ensure_stripe_customer(self, customer: Customer) -> str:
        """The Stripe customer linked to this Tallybook customer, created and linked if there is none.

        Creation carries an idempotency key derived from the Tallybook id and version (`updatedAt`:
        a retry with changed details must not reuse the key), and `tallybook_customer_id` metadata,
        so a retried or concurrent call never makes a second one.
        """
        link = self.db.get_customer(customer.id)
        if link is not None:
            return link.stripe_customer_id
        self.require_enabled()
        params: dict[str, Any] = {"name": customer.name, "metadata": {"tallybook_customer_id": customer.id}}
        if customer.primary_email:
            params["email"] = customer.primary_email
        address = stripe_address(customer)
        if address:
            params["address"] = address
        if customer.billing_address is not None and customer.billing_address.phone_number:
            params["phone"] = customer.billing_address.phone_number
        key = f"tallybook-customer-{customer.id}-{to_micros(customer.updated_at)}"
        created = self.client().v1.customers.create(cast(Any, params), {"idempotency_key": key})
        now = to_micros(self.clock.now())
        # A concurrent call may have linked the same customer first (same idempotency key: same id).
        with contextlib.suppress(StripeCustomerTaken):
            self.db.put_customer(CustomerLink(customer.id, str(created.id), None, None, now))
        current = self.db.get_customer(customer.id)
        return current.stripe_customer_id if current else str(created.id)

    def get_customer_stripe(self, id_or_key: str) -> CustomerLink:
        customer = self.customers.resolve(id_or_key)
        link = self.db.get_customer(customer.id)
        if link is None:
            raise NotLinked(f"customer {customer.id} is not linked to a Stripe customer; PUT its /stripe first")
        return link

    def customer_apps(self, id_or_key: str) -> list[CustomerLink]:
        """OpenMeter's listCustomerAppData: the customer's app data, empty when it has none (an
        unknown customer is still refused)."""
        customer = self.customers.resolve(id_or_key)
        link = self.db.get_customer(customer.id)
        return [] if link is None else [link]

    def put_customer_apps(self, id_or_key: str, items: Any) -> list[CustomerLink]:
        """OpenMeter's upsertCustomerAppData: a list of app data items, of which `stripe` is supported."""
        if not isinstance(items, list) or not items:
            raise InvalidStripeData("the body must be a non-empty JSON array of app data items")
        stripe_items = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidStripeData(f"[{index}]: must be an object")
            if item.get("type") != "stripe":
                raise InvalidStripeData(f"[{index}].type: only 'stripe' is supported, got {item.get('type')!r}")
            stripe_items.append(item)
        if len(stripe_items) > 1:
            raise InvalidStripeData("a customer has one Stripe app data item; send one")
        return [self.put_customer_stripe(id_or_key, stripe_items[0])]

    # -- reporting ----------------------------------------------------------------------------------
    def report(
        self,
        from_: datetime | None = None,
        to: datetime | None = None,
        customer_ids: Sequence[str] | None = None,
        now: datetime | None = None,
    ) -> RunSummary:
        self.require_enabled()
        return self.reporter().run(now=now, from_=from_, to=to, customer_ids=customer_ids)

    def run_job(self, now: datetime) -> dict[str, Any]:
        return self.report(now=now).as_dict()

    def list_reports(self, flt: ReportFilter) -> tuple[int, list[ReportRow]]:
        return self.db.list_reports(flt)

    def attempts_of(self, report_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """Each request made for these ledger rows, oldest first."""
        return self.db.attempts_of(report_ids)

    def require_enabled(self) -> None:
        if not self.settings.secret_key():
            raise StripeDisabled("Stripe is not configured: set STRIPE_API_KEY and the stripe: section")

    # -- inbound webhooks -----------------------------------------------------------------------
    def on_event(self, types: Sequence[str], handler: EventHandler) -> None:
        """Route verified Stripe events of these types to `handler` (checkout, invoice sync, ...).

        Stripe delivers at least once and in any order, so every handler must be idempotent."""
        for type_ in types:
            self._event_handlers[type_] = handler

    def handle_webhook(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """Verify `Stripe-Signature`, then hand the event to the handler registered for its type."""
        secret = self.settings.signing_secret()
        if not secret:
            raise StripeDisabled("no webhook secret: set STRIPE_WEBHOOK_SECRET")
        if not signature:
            raise WebhookRejected("the Stripe-Signature header is missing")
        try:
            event = stripe.Webhook.construct_event(payload, signature, secret, WEBHOOK_TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError:
            raise WebhookRejected("the Stripe-Signature does not match this payload and secret") from None
        except ValueError:
            raise WebhookRejected("the body is not a Stripe event (invalid JSON)") from None
        handler = self._event_handlers.get(event.type)
        if handler is None:
            return {"received": True, "handled": False, "type": event.type}
        return {"received": True, "type": event.type, **handler(event)}

    def _on_subscription_updated(self, event: stripe.Event) -> dict[str, Any]:
        """A subscription entered a new period: report the finished one at once (settle 0).

        Billing meters take events for the finished period during Stripe's grace hour. Legacy usage
        records cannot reach a renewed period, so the finished period's tail (after its last whole
        window) is carried into the new period's quantity, at once."""
        data = event.data.to_dict()
        subscription = data.get("object") or {}
        finished = finished_period(subscription, data.get("previous_attributes"))
        if finished is None:
            return {"handled": False, "reason": "no new billing period"}
        old_start, new_start = finished
        link = self.db.customer_owning(str(subscription["customer"]))
        if link is None:
            return {"handled": False, "reason": "the Stripe customer is not linked"}
        self.require_enabled()
        now = self.clock.now()
        self.db.set_period_start(link.customer_id, to_micros(new_start), to_micros(now))
        summary = self.reporter().run(
            now=now, from_=old_start, to=new_start, customer_ids=[link.customer_id], settle=timedelta(0)
        )
        return {
            "handled": True,
            "customerId": link.customer_id,
            "periodStart": old_start,
            "periodEnd": new_start,
            "report": summary.as_dict(),
        }

    # -- reconciliation -----------------------------------------------------------------------------
    def explainer(self) -> Explainer:
        return Explainer(self.db, self.meters, self.settings, self.reporter())

    def reconcile(self, from_: datetime, to: datetime) -> list[Drift]:
        """Stripe's meter event summaries vs Tallybook's figures, per customer and meter, over
        [from, to) rounded down to each meter's windows, with what each drift is made of."""
        self.require_enabled()
        return reconcile_drifts(self.reporter(), self.explainer(), self.db.customers(), from_, to)

    def explain_report(
        self,
        summary: RunSummary,
        now: datetime,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[UsageLine]:
        """After `report`: per subscription item (or linked customer), what was sent of its period,
        what is held back and what is not sent, with window-rounded bounds."""
        items = active_subscription_items(self.client(), self.db, self.reporter().mappings())
        return self.explainer().report_lines(summary, items, now, start, end)

    def setup(self, meter_slug: str, customer_id_or_key: str, event_name: str | None = None) -> SetupResult:
        """Create product, Billing Meter, metered monthly price, customer and subscription in Stripe,
        link them to a Tallybook meter and customer (mirrors OpenMeter's Go example)."""
        self.require_enabled()
        return StripeSetup(self).run(meter_slug, customer_id_or_key, event_name)


def stripe_address(customer: Customer) -> dict[str, str] | None:
    """The customer's billing address as Stripe's `address` (Stripe Tax places customers by it)."""
    address = customer.billing_address
    if address is None:
        return None
    fields = {
        "country": address.country,
        "postal_code": address.postal_code,
        "state": address.state,
        "city": address.city,
        "line1": address.line1,
        "line2": address.line2,
    }
    return {k: v for k, v in fields.items() if v} or None


__all__ = [
    "REPORT_JOB",
    "Drift",
    "InvalidStripeData",
    "NotLinked",
    "SetupResult",
    "StripeDisabled",
    "StripeProblem",
    "StripeService",
    "WebhookRejected",
]
