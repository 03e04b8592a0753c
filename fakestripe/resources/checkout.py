"""Checkout Sessions in setup mode (collecting a payment method) and the Setup Intents they create.

As on Stripe, a setup-mode session gets its SetupIntent when it is created (``session.setup_intent``
is set from the start, status ``requires_payment_method``). The session stays ``open`` until a test
completes it (``fake.complete_checkout_session(id)`` or ``POST /_fake/checkout/sessions/{id}/complete``),
which stands in for the customer filling in the hosted or embedded form: the SetupIntent then
``succeeded`` with the collected payment method.
"""

from __future__ import annotations

from typing import Any

import stripe.params as p
import stripe.params.checkout as pc

from ..errors import StripeAPIError
from ..routes import ROUTER, Ctx, merge_metadata
from ..state import FakeState, new_id

SESSION_TTL = 24 * 3600
_HOSTED = ("hosted_page",)


@ROUTER.post("/v1/checkout/sessions", params=pc.SessionCreateParams)
def create_session(ctx: Ctx) -> dict[str, Any]:
    state, params = ctx.state, ctx.params
    mode = params.get("mode")
    if mode is None:
        raise StripeAPIError.invalid("Missing required param: mode.", param="mode", code="parameter_missing")
    if mode != "setup":
        raise StripeAPIError.invalid(
            f"Checkout mode `{mode}` is not supported by the fake (only `setup`).", param="mode"
        )
    ui_mode = params.get("ui_mode", "hosted_page")
    if ui_mode in _HOSTED:
        if "success_url" not in params:
            raise StripeAPIError.invalid(
                "Missing required param: success_url.", param="success_url", code="parameter_missing"
            )
        if "return_url" in params:
            raise StripeAPIError.invalid(
                f"`return_url` can only be used with an embedded `ui_mode` (got {ui_mode}).", param="return_url"
            )
    else:
        if "success_url" in params:
            raise StripeAPIError.invalid(
                f"`success_url` cannot be used with `ui_mode={ui_mode}`; use `return_url`.", param="success_url"
            )
        if "return_url" not in params and params.get("redirect_on_completion") != "never":
            raise StripeAPIError.invalid(
                "Missing required param: return_url.", param="return_url", code="parameter_missing"
            )
    types = params.get("allowed_payment_method_types")
    if "currency" not in params and not types:
        raise StripeAPIError.invalid(
            "Missing required param: currency (required in setup mode unless payment method types are given).",
            param="currency",
            code="parameter_missing",
        )
    customer = None
    if "customer" in params:
        customer = state.get("customer", params["customer"], label="customer", param="customer")
    session_id = new_id("cs_test", 58)
    hosted = ui_mode in _HOSTED
    intent_data = params.get("setup_intent_data") or {}
    intent = state.base_object(
        "seti",
        "setup_intent",
        application=None,
        automatic_payment_methods=None,
        cancellation_reason=None,
        client_secret=None,
        customer=customer["id"] if customer else None,
        customer_account=None,
        description=intent_data.get("description"),
        flow_directions=None,
        last_setup_error=None,
        latest_attempt=None,
        mandate=None,
        metadata=merge_metadata({}, intent_data.get("metadata")),
        next_action=None,
        on_behalf_of=intent_data.get("on_behalf_of"),
        payment_method=None,
        payment_method_options={},
        payment_method_types=list(types) if types else ["card"],
        single_use_mandate=None,
        status="requires_payment_method",
        usage="off_session",
    )
    intent["client_secret"] = f"{intent['id']}_secret_{new_id('x', 16)[2:]}"
    session = state.base_object(
        "cs_test",
        "checkout.session",
        adaptive_pricing=None,
        after_expiration=None,
        allow_promotion_codes=None,
        amount_subtotal=None,
        amount_total=None,
        automatic_tax={"enabled": False, "liability": None, "provider": None, "status": None},
        billing_address_collection=params.get("billing_address_collection"),
        cancel_url=params.get("cancel_url"),
        client_reference_id=params.get("client_reference_id"),
        client_secret=None if hosted else f"{session_id}_secret_{new_id('x', 16)[2:]}",
        currency=(params.get("currency") or "").lower() or None,
        customer=customer["id"] if customer else None,
        customer_details=None,
        customer_email=params.get("customer_email") or (customer or {}).get("email"),
        expires_at=params.get("expires_at") or ctx.now + SESSION_TTL,
        invoice=None,
        locale=params.get("locale"),
        metadata=merge_metadata({}, params.get("metadata")),
        mode="setup",
        payment_intent=None,
        payment_method_types=list(types) if types else ["card"],
        payment_status="no_payment_required",
        return_url=params.get("return_url"),
        setup_intent=intent["id"],
        status="open",
        subscription=None,
        success_url=params.get("success_url"),
        ui_mode=ui_mode,
        url=f"https://checkout.stripe.com/c/pay/{session_id}" if hosted else None,
    )
    session["id"] = session_id
    state.insert("setup_intent", intent)
    state.insert("checkout.session", session)
    return session


@ROUTER.get("/v1/checkout/sessions/{id}", params=pc.SessionRetrieveParams)
def retrieve_session(ctx: Ctx) -> dict[str, Any]:
    session = ctx.state.get("checkout.session", ctx.path_params["id"], label="checkout.session")
    if session["status"] == "open" and ctx.now >= session["expires_at"]:
        session["status"] = "expired"
    return session


@ROUTER.get("/v1/setup_intents/{id}", params=p.SetupIntentRetrieveParams)
def retrieve_setup_intent(ctx: Ctx) -> dict[str, Any]:
    return ctx.state.get("setup_intent", ctx.path_params["id"], label="setup_intent")


def complete_session(
    state: FakeState,
    session_id: str,
    *,
    payment_method: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The customer finished the Checkout form: the session's SetupIntent succeeds with a new ``pm_...``
    (or ``payment_method``), the session completes, and ``setup_intent.succeeded`` then
    ``checkout.session.completed`` are recorded."""
    session = state.get("checkout.session", session_id, label="checkout.session")
    if session["status"] == "open" and state.now() >= session["expires_at"]:
        session["status"] = "expired"
    if session["status"] != "open":
        raise StripeAPIError.invalid(f"Checkout session {session_id} is {session['status']}, not open.")
    method = payment_method or new_id("pm")
    if not method.startswith("pm_"):
        raise StripeAPIError.invalid("payment_method must be a pm_ id.", param="payment_method")
    intent = state.get("setup_intent", session["setup_intent"], label="setup_intent")
    intent.update(
        customer=session["customer"],
        latest_attempt=new_id("setatt"),
        payment_method=method,
        status="succeeded",
    )
    session["status"] = "complete"
    customer = state.find("customer", session["customer"]) if session["customer"] else None
    session["customer_details"] = {
        "address": (customer or {}).get("address"),
        "email": (customer or {}).get("email") or session["customer_email"],
        "name": (customer or {}).get("name"),
        "phone": None,
        "tax_exempt": (customer or {}).get("tax_exempt", "none"),
        "tax_ids": [],
    }
    state.record_event("setup_intent.succeeded", intent, request_id=request_id)
    state.record_event("checkout.session.completed", session, request_id=request_id)
    return session
