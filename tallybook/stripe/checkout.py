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
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import stripe

from tallybook.clock import Clock, format_rfc3339, to_micros
from tallybook.customers import (
    Customer,
    CustomerInput,
    CustomerKeyConflict,
    CustomerNotFound,
    CustomerService,
    InvalidCustomer,
    SubjectConflict,
    parse_customer,
)
from tallybook.ids import looks_like_ulid
from tallybook.stripe.service import InvalidStripeData, StripeProblem, StripeService

log = logging.getLogger(__name__)

# The Stripe events this module handles (registered on StripeService by the runtime).
CHECKOUT_EVENTS = ("checkout.session.completed", "setup_intent.succeeded")

# Metadata Tallybook writes to Stripe objects.
META_CUSTOMER = "tallybook_customer_id"
META_SETUP_INTENT = "tallybook_default_setup_intent"
META_SETUP_CREATED = "tallybook_default_setup_intent_created"

REQUEST_FIELDS = ("customer", "stripeCustomerId", "options", "appId")
OPTION_FIELDS = (
    "billingAddressCollection",
    "cancelURL",
    "clientReferenceID",
    "consentCollection",
    "currency",
    "customText",
    "customerUpdate",
    "expiresAt",
    "locale",
    "metadata",
    "paymentMethodTypes",
    "redirectOnCompletion",
    "returnURL",
    "successURL",
    "taxIdCollection",
    "uiMode",
)
UI_MODES = {"hosted": "hosted_page", "embedded": "embedded_page"}
EXPIRY_MIN_SECONDS = 30 * 60
EXPIRY_MAX_SECONDS = 24 * 3600
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500
CLIENT_REFERENCE_MAX = 200
CUSTOM_TEXT_MAX = 1200
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")

# Stripe's parameter -> the request field to fix, for Stripe's refusals.
_FIELD_OF_PARAM = {
    "customer": "stripeCustomerId",
    "currency": "options.currency",
    "success_url": "options.successURL",
    "cancel_url": "options.cancelURL",
    "return_url": "options.returnURL",
    "ui_mode": "options.uiMode",
    "locale": "options.locale",
    "allowed_payment_method_types": "options.paymentMethodTypes",
    "expires_at": "options.expiresAt",
    "metadata": "options.metadata",
    "client_reference_id": "options.clientReferenceID",
    "billing_address_collection": "options.billingAddressCollection",
    "customer_update": "options.customerUpdate",
    "tax_id_collection": "options.taxIdCollection",
    "consent_collection": "options.consentCollection",
    "custom_text": "options.customText",
    "redirect_on_completion": "options.redirectOnCompletion",
}


class InvalidCheckoutRequest(StripeProblem):
    status = 400
    code = "invalid-checkout-request"


class StripeRequestFailed(StripeProblem):
    """Stripe refused a request or could not be reached; `status` and `code` say which."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class CustomerRef:
    """Which Tallybook customer the session is for: an existing one by id or key, or one to create."""

    id: str | None = None
    key: str | None = None
    create: CustomerInput | None = None


@dataclass(frozen=True, slots=True)
class CheckoutRequest:
    customer: CustomerRef
    stripe_customer_id: str | None
    currency: str | None  # lower case, as Stripe wants it
    payment_method_types: list[str] | None
    params: dict[str, Any] = field(default_factory=dict)  # Stripe session params from the options


def stripe_failure(exc: stripe.StripeError, doing: str) -> StripeRequestFailed:
    """A Stripe SDK error as a problem that says what to fix (the client, the operator, or nobody)."""
    message = exc.user_message or str(exc) or type(exc).__name__
    if isinstance(exc, stripe.IdempotencyError):
        return StripeRequestFailed(409, "stripe-conflict", f"Stripe refused to {doing}: {message}; retry the request")
    if isinstance(exc, stripe.InvalidRequestError | stripe.CardError):
        param = getattr(exc, "param", None)
        where = ""
        if param:
            head, bracket, rest = str(param).partition("[")
            fixed = _FIELD_OF_PARAM.get(head)
            where = (
                f" (fix {fixed}{bracket}{rest}; Stripe parameter {param})" if fixed else f" (Stripe parameter {param})"
            )
        return StripeRequestFailed(400, "stripe-rejected", f"Stripe refused to {doing}: {message}{where}")
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return StripeRequestFailed(
            502,
            "stripe-credentials",
            f"Stripe refused Tallybook's API key while trying to {doing}: {message}; "
            "check STRIPE_API_KEY (an operator has to fix this, not the request)",
        )
    if isinstance(exc, stripe.RateLimitError):
        return StripeRequestFailed(
            503, "stripe-rate-limited", f"Stripe is rate limiting requests ({doing}); retry shortly"
        )
    if isinstance(exc, stripe.APIConnectionError):
        return StripeRequestFailed(
            503, "stripe-unreachable", f"could not reach Stripe to {doing} ({message}); retry the request"
        )
    return StripeRequestFailed(502, "stripe-error", f"Stripe failed to {doing}: {message}; retry the request")


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
        return self._save_default(retrieved.to_dict(), session_customer=_id_of(obj.get("customer")))

    def _save_default(self, intent: dict[str, Any], session_customer: str | None = None) -> dict[str, Any]:
        intent_id = str(intent.get("id"))
        if intent.get("status") != "succeeded":
            return {"handled": False, "reason": f"setup intent {intent_id} is {intent.get('status')}, not succeeded"}
        method = _id_of(intent.get("payment_method"))
        if not method:
            return {"handled": False, "reason": f"setup intent {intent_id} has no payment method"}
        stripe_customer = _id_of(intent.get("customer")) or session_customer
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
        default = _id_of((current.get("invoice_settings") or {}).get("default_payment_method"))
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


# -- the request --------------------------------------------------------------------------------------
class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, field_: str, message: str) -> None:
        self.items.append(f"{field_}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidCheckoutRequest("; ".join(self.items))


def canonical_names(value: dict[str, Any], names: tuple[str, ...], path: str, errors: _Errors) -> dict[str, Any]:
    """`value` with its field names spelled as `names` spells them, ignoring case: OpenMeter decodes
    with Go's encoding/json, which matches names case-insensitively, so its clients and docs send
    `successUrl` for `successURL` and `clientReferenceId` for `clientReferenceID`. One field given
    twice in two spellings is refused (Go would keep whichever came last)."""
    spelled = {name.lower(): name for name in names}
    given: dict[str, str] = {}
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = spelled.get(key.lower(), key)
        if name in given:
            errors.add(f"{path}{name}", f"given twice, as {given[name]!r} and {key!r}; send it once")
        given[name] = key
        out[name] = item
    return out


def parse_checkout_request(payload: Any, now: datetime) -> CheckoutRequest:
    """Check a CreateStripeCheckoutSessionRequest; every problem is named in one InvalidCheckoutRequest
    (the customer object's own problems come as InvalidCustomer, with `customer.` paths)."""
    if not isinstance(payload, dict):
        raise InvalidCheckoutRequest('the body must be a JSON object: {"customer": ..., "options": {...}}')
    errors = _Errors()
    payload = canonical_names(payload, REQUEST_FIELDS, "", errors)
    for name in sorted(set(payload) - set(REQUEST_FIELDS)):
        errors.add(name, f"unknown field; the request has {', '.join(REQUEST_FIELDS)}")
    app_id = payload.get("appId")
    if app_id is not None and not isinstance(app_id, str):
        errors.add("appId", "must be a string (Tallybook has one Stripe app; the field is accepted and ignored)")
    ref = _customer_ref(payload.get("customer"), errors)
    stripe_customer_id = payload.get("stripeCustomerId")
    if stripe_customer_id is not None and (
        not isinstance(stripe_customer_id, str)
        or not stripe_customer_id.startswith("cus_")
        or len(stripe_customer_id) > 255
    ):
        errors.add("stripeCustomerId", f"{stripe_customer_id!r} is not a Stripe customer id (cus_...)")
        stripe_customer_id = None
    options = payload.get("options")
    if options is None:
        errors.add("options", 'required: an object with at least currency and successURL, e.g. {"currency": "USD", '
                   '"successURL": "https://example.com/done"}')  # fmt: skip
        options = {}
    elif not isinstance(options, dict):
        errors.add("options", "must be an object")
        options = {}
    else:
        options = canonical_names(options, OPTION_FIELDS, "options.", errors)
    params, currency, types = _options(options, now, errors)
    errors.raise_if_any()
    assert ref is not None
    return CheckoutRequest(ref, stripe_customer_id, currency, types, params)


def _customer_ref(value: Any, errors: _Errors) -> CustomerRef | None:
    usage = (
        'give {"id": "<customer id>"} or {"key": "<customer key>"} for an existing customer, '
        'or a customer to create ({"name": ..., "key": ..., "usageAttribution": {"subjectKeys": [...]}})'
    )
    if not isinstance(value, dict):
        errors.add("customer", f"required: {usage}")
        return None
    if "name" in value:
        try:
            return CustomerRef(create=parse_customer(value))
        except InvalidCustomer as exc:
            paths = [(f"customer.{f}", m) for f, m in exc.errors]
            for path, message in paths:
                errors.add(path, message)
            return None
    names = set(value)
    if names == {"id"}:
        if not isinstance(value["id"], str) or not looks_like_ulid(value["id"]):
            errors.add(
                "customer.id", f"{value['id']!r} is not a customer id (a ULID such as 01G65Z755AFWAKHE12NY0CQ9FH)"
            )
            return None
        return CustomerRef(id=value["id"])
    if names == {"key"}:
        if not isinstance(value["key"], str) or not value["key"].strip():
            errors.add("customer.key", "must be a non-empty string")
            return None
        return CustomerRef(key=value["key"])
    if not names:
        errors.add("customer", usage)
    elif names <= {"id", "key"}:
        errors.add("customer", "give either id or key, not both")
    else:
        errors.add("customer.name", f"required to create a customer; to use an existing one, {usage}")
    return None


def _options(options: dict[str, Any], now: datetime, errors: _Errors) -> tuple[dict[str, Any], str | None, Any]:
    params: dict[str, Any] = {}
    for name in sorted(set(options) - set(OPTION_FIELDS)):
        errors.add(f"options.{name}", f"unknown field; the options are {', '.join(OPTION_FIELDS)}")

    currency = options.get("currency")
    if currency is not None:
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            errors.add("options.currency", f"{currency!r} is not a three-letter ISO 4217 code such as USD")
            currency = None
        else:
            currency = currency.lower()

    ui_mode = options.get("uiMode", "hosted")
    if not isinstance(ui_mode, str) or ui_mode not in UI_MODES:
        errors.add("options.uiMode", f"{ui_mode!r} is not one of {', '.join(UI_MODES)}")
        ui_mode = "hosted"
    params["ui_mode"] = UI_MODES[ui_mode]

    urls = {}
    for name, param in (("successURL", "success_url"), ("cancelURL", "cancel_url"), ("returnURL", "return_url")):
        url = options.get(name)
        if url is None:
            continue
        if not isinstance(url, str) or not _is_web_url(url):
            errors.add(f"options.{name}", f"{url!r} is not an absolute http(s) URL such as https://example.com/done")
            continue
        urls[name] = url
        params[param] = url
    redirect = options.get("redirectOnCompletion")
    if ui_mode == "hosted":
        if "successURL" not in urls and "successURL" not in options:
            errors.add(
                "options.successURL",
                "required with uiMode hosted (the default): the page Stripe sends the customer to afterwards",
            )
        for name in ("returnURL", "redirectOnCompletion"):
            if name in options:
                errors.add(f"options.{name}", "only for uiMode embedded; use successURL (and cancelURL) when hosted")
    else:
        for name in ("successURL", "cancelURL"):
            if name in options:
                errors.add(f"options.{name}", "not allowed with uiMode embedded; use returnURL")
        if redirect is not None and redirect not in ("always", "if_required", "never"):
            errors.add("options.redirectOnCompletion", f"{redirect!r} is not one of always, if_required, never")
        elif redirect is not None:
            params["redirect_on_completion"] = redirect
        if "returnURL" not in options and redirect != "never":
            errors.add("options.returnURL", "required with uiMode embedded unless redirectOnCompletion is never")

    _enum(options, "billingAddressCollection", ("auto", "required"), errors, params, "billing_address_collection")
    _text(options, "clientReferenceID", CLIENT_REFERENCE_MAX, errors, params, "client_reference_id")
    _text(options, "locale", 20, errors, params, "locale")

    update = _object(options, "customerUpdate", ("address", "name", "shipping"), errors)
    if update is not None:
        changes: dict[str, Any] = {}
        for name, value in update.items():
            if value not in ("auto", "never"):
                errors.add(f"options.customerUpdate.{name}", f"{value!r} is not one of auto, never")
            else:
                changes[name] = value
        if changes:
            params["customer_update"] = changes

    tax = _object(options, "taxIdCollection", ("enabled", "required"), errors)
    if tax is not None:
        if not isinstance(tax.get("enabled"), bool):
            errors.add("options.taxIdCollection.enabled", "required: true or false")
        elif "required" in tax and tax["required"] not in ("if_supported", "never"):
            errors.add("options.taxIdCollection.required", f"{tax['required']!r} is not one of if_supported, never")
        else:
            params["tax_id_collection"] = {
                "enabled": tax["enabled"],
                **({"required": tax["required"]} if "required" in tax else {}),
            }

    consent = _object(
        options, "consentCollection", ("paymentMethodReuseAgreement", "promotions", "termsOfService"), errors
    )
    if consent is not None:
        mapped: dict[str, Any] = {}
        reuse = consent.get("paymentMethodReuseAgreement")
        if reuse is not None:
            if (
                not isinstance(reuse, dict)
                or set(reuse) - {"position"}
                or reuse.get("position") not in ("auto", "hidden")
            ):
                errors.add(
                    "options.consentCollection.paymentMethodReuseAgreement",
                    'must be {"position": "auto"} or {"position": "hidden"}',
                )
            else:
                mapped["payment_method_reuse_agreement"] = {"position": reuse["position"]}
        for name, param, allowed in (
            ("promotions", "promotions", ("auto", "none")),
            ("termsOfService", "terms_of_service", ("none", "required")),
        ):
            if name in consent:
                if consent[name] not in allowed:
                    errors.add(
                        f"options.consentCollection.{name}", f"{consent[name]!r} is not one of {', '.join(allowed)}"
                    )
                else:
                    mapped[param] = consent[name]
        if mapped:
            params["consent_collection"] = mapped

    text_fields = {
        "afterSubmit": "after_submit",
        "shippingAddress": "shipping_address",
        "submit": "submit",
        "termsOfServiceAcceptance": "terms_of_service_acceptance",
    }
    custom = _object(options, "customText", tuple(text_fields), errors)
    if custom is not None:
        texts: dict[str, Any] = {}
        for name, value in custom.items():
            path = f"options.customText.{name}"
            message = value.get("message") if isinstance(value, dict) else None
            if not isinstance(value, dict) or set(value) != {"message"} or not isinstance(message, str):
                errors.add(path, 'must be {"message": "<text>"}')
            elif not message.strip() or len(message) > CUSTOM_TEXT_MAX:
                errors.add(f"{path}.message", f"must be 1 to {CUSTOM_TEXT_MAX} characters")
            else:
                texts[text_fields[name]] = {"message": message}
        if texts:
            params["custom_text"] = texts

    expires = options.get("expiresAt")
    if expires is not None:
        start = int(now.timestamp())
        if isinstance(expires, bool) or not isinstance(expires, int):
            errors.add("options.expiresAt", "must be an integer: Unix time in seconds")
        elif not start + EXPIRY_MIN_SECONDS <= expires <= start + EXPIRY_MAX_SECONDS:
            earliest = format_rfc3339(datetime.fromtimestamp(start + EXPIRY_MIN_SECONDS, UTC))
            latest = format_rfc3339(datetime.fromtimestamp(start + EXPIRY_MAX_SECONDS, UTC))
            errors.add(
                "options.expiresAt",
                f"{expires} is outside what Stripe allows: 30 minutes to 24 hours from now ({earliest} to {latest})",
            )
        else:
            params["expires_at"] = expires

    metadata = options.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            errors.add("options.metadata", 'must be an object of string values such as {"plan": "pro"}')
        else:
            if len(metadata) > METADATA_MAX_KEYS - 1:
                errors.add(
                    "options.metadata", f"at most {METADATA_MAX_KEYS - 1} keys (Stripe's limit, less Tallybook's)"
                )
            for name, value in metadata.items():
                path = f"options.metadata.{name}"
                if name == META_CUSTOMER:
                    errors.add(path, "reserved: Tallybook sets it to the customer's id")
                elif not name or len(name) > METADATA_KEY_MAX or "[" in name or "]" in name:
                    errors.add(path, f"keys must be 1 to {METADATA_KEY_MAX} characters without square brackets")
                elif not isinstance(value, str) or len(value) > METADATA_VALUE_MAX:
                    errors.add(path, f"values must be strings of at most {METADATA_VALUE_MAX} characters")
            params["metadata"] = {k: v for k, v in metadata.items() if isinstance(v, str)}

    types = options.get("paymentMethodTypes")
    if types is not None:
        if not isinstance(types, list) or not types or not all(isinstance(t, str) and t for t in types):
            errors.add("options.paymentMethodTypes", 'must be a non-empty array of type names such as ["card"]')
            types = None
        else:
            params["allowed_payment_method_types"] = list(types)
    return params, currency, types


def _is_web_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and len(url) <= 5000


def _enum(
    options: dict[str, Any], name: str, allowed: tuple[str, ...], errors: _Errors, params: dict[str, Any], param: str
) -> None:
    if name not in options:
        return
    if options[name] not in allowed:
        errors.add(f"options.{name}", f"{options[name]!r} is not one of {', '.join(allowed)}")
    else:
        params[param] = options[name]


def _text(options: dict[str, Any], name: str, limit: int, errors: _Errors, params: dict[str, Any], param: str) -> None:
    if name not in options:
        return
    value = options[name]
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        errors.add(f"options.{name}", f"must be a string of 1 to {limit} characters")
    else:
        params[param] = value


def _object(options: dict[str, Any], name: str, fields: tuple[str, ...], errors: _Errors) -> dict[str, Any] | None:
    if name not in options:
        return None
    value = options[name]
    if not isinstance(value, dict):
        errors.add(f"options.{name}", f"must be an object with {', '.join(fields)}")
        return None
    value = canonical_names(value, fields, f"options.{name}.", errors)
    for extra in sorted(set(value) - set(fields)):
        errors.add(f"options.{name}.{extra}", f"unknown field; {name} has {', '.join(fields)}")
    return {k: v for k, v in value.items() if k in fields}


# -- the answer ---------------------------------------------------------------------------------------
def session_result(customer_id: str, stripe_customer_id: str, session: dict[str, Any]) -> dict[str, Any]:
    """OpenMeter's CreateStripeCheckoutSessionResult for a Stripe Checkout Session."""
    intent = _id_of(session.get("setup_intent"))
    if intent is None:
        log.warning("Stripe returned checkout session %s without a setup intent", session.get("id"))
    body: dict[str, Any] = {
        "customerId": customer_id,
        "stripeCustomerId": stripe_customer_id,
        "sessionId": session["id"],
        "setupIntentId": intent,
    }
    optional = {
        "clientSecret": session.get("client_secret"),
        "clientReferenceId": session.get("client_reference_id"),
        "customerEmail": session.get("customer_email"),
        "currency": (session.get("currency") or "").upper() or None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    body["createdAt"] = format_rfc3339(datetime.fromtimestamp(int(session["created"]), UTC))
    if session.get("expires_at"):
        body["expiresAt"] = format_rfc3339(datetime.fromtimestamp(int(session["expires_at"]), UTC))
    body["metadata"] = dict(session.get("metadata") or {})
    if session.get("status"):
        body["status"] = session["status"]
    if session.get("url"):
        body["url"] = session["url"]
    body["mode"] = session.get("mode") or "setup"
    urls = {"cancelURL": "cancel_url", "successURL": "success_url", "returnURL": "return_url"}
    body.update({name: session[param] for name, param in urls.items() if session.get(param)})
    return body


def _id_of(value: Any) -> str | None:
    """A Stripe reference, expanded (an object with `id`) or not (the id)."""
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if value else None


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
