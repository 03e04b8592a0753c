"""The checkout request and answer: OpenMeter's CreateStripeCheckoutSessionRequest checked and
turned into Stripe session parameters, the CreateStripeCheckoutSessionResult built from Stripe's
session, and Stripe's refusals named by the request field to fix.

`checkout.CheckoutService` takes the payload as OpenMeter clients send it (and tests and the CLI
call it so), so the parsing stays in the room next to `customers.parse_customer`, which it uses
for the customer object, rather than in `api/wire`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import stripe

from tallybook.clock import format_rfc3339
from tallybook.customers import CustomerInput, InvalidCustomer, parse_customer
from tallybook.ids import looks_like_ulid
from tallybook.stripe.model import InvalidCheckoutRequest, StripeRequestFailed

log = logging.getLogger(__name__)

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
    intent = id_of(session.get("setup_intent"))
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


def id_of(value: Any) -> str | None:
    """A Stripe reference, expanded (an object with `id`) or not (the id)."""
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if value else None


__all__ = [
    "CheckoutRequest",
    "CustomerRef",
    "id_of",
    "parse_checkout_request",
    "session_result",
    "stripe_failure",
]
