"""Checkout onboarding (OpenMeter's createStripeCheckoutSession) and saving the collected payment
method as the customer's default.

`create_session` takes OpenMeter's CreateStripeCheckoutSessionRequest: it finds or creates the
Tallybook customer, finds, takes or creates its Stripe customer (and links the two), and opens a
Stripe Checkout Session in `setup` mode. The customer fills in Stripe's page; Stripe then sends
`setup_intent.succeeded` and `checkout.session.completed`, and `handle_event` stores the collected
payment method as the customer's default, in Tallybook and in Stripe's
`invoice_settings.default_payment_method`.

Stripe delivers events at least once and in any order. Handling is idempotent, and an event about
an older setup never replaces the default set by a newer one: the Stripe customer's metadata
records which SetupIntent set the current default (`tallybook_default_setup_intent` and its
`…_created` time).
"""

from __future__ import annotations

import logging
from typing import Any

import stripe

from tallybook.clock import Clock, to_micros
from tallybook.customers import (
    Customer,
    CustomerKeyConflict,
    CustomerNotFound,
    CustomerService,
    SubjectConflict,
)
from tallybook.stripe.checkout_request import (
    META_CUSTOMER,
    META_SETUP_CREATED,
    META_SETUP_INTENT,
    CustomerRef,
    id_of,
    parse_checkout_request,
    session_result,
    stripe_failure,
)
from tallybook.stripe.model import InvalidCheckoutRequest, InvalidStripeData, StripeRequestFailed
from tallybook.stripe.service import StripeService

log = logging.getLogger(__name__)

# The Stripe events this module handles (registered on StripeService by the runtime).
CHECKOUT_EVENTS = ("checkout.session.completed", "setup_intent.succeeded")


class CheckoutService:
    def __init__(self, stripe_service: StripeService, customers: CustomerService, clock: Clock) -> None:
        self.stripe = stripe_service
        self.customers = customers
        self.clock = clock

    # -- creating a session -------------------------------------------------------------------------
    def create_session(self, payload: Any) -> dict[str, Any]:
        """The OpenMeter CreateStripeCheckoutSessionResult for a CreateStripeCheckoutSessionRequest."""
        request = parse_checkout_request(payload, self.clock.now())
        self.stripe.require_enabled()
        existing = self._existing_customer(request.customer)
        currency = request.currency
        if currency is None:
            # Default to the customer's own currency.
            known = existing or request.customer.create
            currency = known.currency.lower() if known is not None and known.currency else None
        if currency is None and not request.payment_method_types:
            raise InvalidCheckoutRequest(
                "options.currency: required (a three-letter ISO 4217 code such as USD): Stripe needs a currency "
                "for a setup session unless options.paymentMethodTypes is given, and the customer has none"
            )
        customer = existing or self._create_customer(request.customer)
        stripe_customer_id, link = self._stripe_customer(customer, request.stripe_customer_id)

        params: dict[str, Any] = {
            **request.params,
            "mode": "setup",
            "customer": stripe_customer_id,
            "metadata": {**request.params.get("metadata", {}), META_CUSTOMER: customer.id},
            "setup_intent_data": {"metadata": {META_CUSTOMER: customer.id}},
        }
        if currency is not None:
            params["currency"] = currency
        try:
            session = self.stripe.client().v1.checkout.sessions.create(params)  # type: ignore[arg-type]
        except stripe.StripeError as exc:
            raise stripe_failure(exc, "create the checkout session") from None
        if link:
            self.stripe.put_customer_stripe(customer.id, {"stripeCustomerId": stripe_customer_id})
        return session_result(customer.id, stripe_customer_id, session.to_dict())

    def _existing_customer(self, ref: CustomerRef) -> Customer | None:
        """The customer named by id or key (CustomerNotFound if none), or the live customer a
        CustomerCreate with a key describes (None: it is to be created)."""
        if ref.id is not None:
            by_id = self.customers.resolve(ref.id)
            if by_id.id != ref.id.upper():
                raise CustomerNotFound(ref.id, f"no customer has the id {ref.id!r}")
            return by_id
        if ref.key is not None:
            by_key = self._live_by_key(ref.key)
            if by_key is None:
                raise CustomerNotFound(ref.key, f"no live customer has the key {ref.key!r}")
            return by_key
        assert ref.create is not None
        return None if ref.create.key is None else self._live_by_key(ref.create.key)

    def _live_by_key(self, key: str) -> Customer | None:
        try:
            found = self.customers.resolve(key)
        except CustomerNotFound:
            return None
        return found if found.key == key else None

    def _create_customer(self, ref: CustomerRef) -> Customer:
        """Create the customer; a retry of the same request reuses the one the first attempt made."""
        data = ref.create
        assert data is not None
        try:
            return self.customers.create(data)
        except CustomerKeyConflict:
            found = self._live_by_key(data.key) if data.key else None
            if found is None:
                raise
            return found
        except SubjectConflict as exc:
            # Without a key, the same name and subjects mean the same customer (a retried request).
            owner = self.customers.get(exc.owner_customer_id)
            same = (
                data.key is None
                and owner.key is None
                and not owner.deleted
                and owner.name == data.name
                and set(owner.subject_keys) == set(data.subject_keys)
            )
            if not same:
                raise
            return owner

    def _stripe_customer(self, customer: Customer, requested: str | None) -> tuple[str, bool]:
        """(Stripe customer id, whether to link it after the session is made)."""
        link = self.stripe.db.get_customer(customer.id)
        if requested is not None:
            owner = self.stripe.db.customer_owning(requested)
            if owner is not None and owner.customer_id != customer.id:
                raise InvalidStripeData(
                    f"stripeCustomerId: {requested} is already linked to customer {owner.customer_id}; "
                    "a Stripe customer belongs to one Tallybook customer"
                )
            return requested, link is None or link.stripe_customer_id != requested
        if link is not None:
            return link.stripe_customer_id, False
        try:
            return self.stripe.ensure_stripe_customer(customer), False
        except stripe.StripeError as exc:
            raise stripe_failure(exc, "create the Stripe customer") from None

    # -- saving the collected payment method ----------------------------------------------------------
    def handle_event(self, event: stripe.Event) -> dict[str, Any]:
        """checkout.session.completed / setup_intent.succeeded: store the default payment method."""
        obj = event.data.to_dict().get("object") or {}
        if event.type == "setup_intent.succeeded":
            return self._save_default(obj)
        if event.type != "checkout.session.completed":
            return {"handled": False, "reason": f"{event.type} is not a checkout event"}
        if obj.get("mode") != "setup":
            return {"handled": False, "reason": f"a {obj.get('mode')}-mode session; only setup sessions are handled"}
        intent = obj.get("setup_intent")
        if isinstance(intent, dict):
            intent = intent.get("id")
        if not intent:
            return {"handled": False, "reason": "the session has no setup intent"}
        self.stripe.require_enabled()
        try:
            retrieved = self.stripe.client().v1.setup_intents.retrieve(str(intent))
        except stripe.StripeError as exc:
            raise stripe_failure(exc, f"read setup intent {intent}") from None
        return self._save_default(retrieved.to_dict(), session_customer=id_of(obj.get("customer")))

    def _save_default(self, intent: dict[str, Any], session_customer: str | None = None) -> dict[str, Any]:
        intent_id = str(intent.get("id"))
        if intent.get("status") != "succeeded":
            return {"handled": False, "reason": f"setup intent {intent_id} is {intent.get('status')}, not succeeded"}
        method = id_of(intent.get("payment_method"))
        if not method:
            return {"handled": False, "reason": f"setup intent {intent_id} has no payment method"}
        stripe_customer = id_of(intent.get("customer")) or session_customer
        if not stripe_customer:
            return {"handled": False, "reason": f"setup intent {intent_id} has no customer"}
        link = self.stripe.db.customer_owning(stripe_customer)
        if link is None:
            return {
                "handled": False,
                "reason": f"the Stripe customer {stripe_customer} is not linked to a Tallybook customer",
            }
        self.stripe.require_enabled()
        client = self.stripe.client()
        try:
            current = client.v1.customers.retrieve(stripe_customer).to_dict()
        except stripe.StripeError as exc:
            raise stripe_failure(exc, f"read Stripe customer {stripe_customer}") from None
        result: dict[str, Any] = {
            "customerId": link.customer_id,
            "stripeCustomerId": stripe_customer,
            "setupIntentId": intent_id,
            "paymentMethodId": method,
        }
        if current.get("deleted"):
            return {"handled": False, "reason": f"the Stripe customer {stripe_customer} is deleted", **result}
        metadata = current.get("metadata") or {}
        recorded = metadata.get(META_SETUP_INTENT)
        this = (int(intent.get("created") or 0), intent_id)
        if recorded and recorded != intent_id and (_int(metadata.get(META_SETUP_CREATED)), recorded) > this:
            return {
                "handled": False,
                "reason": f"a newer setup ({recorded}) already set the default payment method",
                **result,
            }
        default = id_of((current.get("invoice_settings") or {}).get("default_payment_method"))
        if default != method or recorded != intent_id:
            update: Any = {
                "invoice_settings": {"default_payment_method": method},
                "metadata": {META_SETUP_INTENT: intent_id, META_SETUP_CREATED: str(this[0])},
            }
            try:
                client.v1.customers.update(stripe_customer, update)
            except stripe.StripeError as exc:
                raise stripe_failure(exc, f"set the default payment method of {stripe_customer}") from None
        stored = self.stripe.db.set_default_payment_method(
            link.customer_id, stripe_customer, method, to_micros(self.clock.now())
        )
        if not stored:  # relinked meanwhile; the new link is not this Stripe customer's
            return {"handled": False, "reason": f"customer {link.customer_id} was linked elsewhere", **result}
        log.info(
            "customer %s: default payment method %s (setup intent %s, Stripe customer %s)",
            link.customer_id,
            method,
            intent_id,
            stripe_customer,
        )
        return {"handled": True, **result}


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


__all__ = [
    "CHECKOUT_EVENTS",
    "CheckoutService",
    "InvalidCheckoutRequest",
    "StripeRequestFailed",
    "parse_checkout_request",
    "session_result",
    "stripe_failure",
]
