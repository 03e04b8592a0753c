"""Customers: create, retrieve, update, delete, list."""

from __future__ import annotations

from typing import Any

import stripe.params as p

from ..errors import StripeAPIError
from ..routes import ROUTER, Ctx, atomic, changed, merge_metadata, paginate
from ..state import deep_copy

_SIMPLE = ("description", "email", "name", "phone", "tax_exempt", "preferred_locales")


def _check_payment_method(value: Any, param: str) -> Any:
    # The fake has no PaymentMethod objects yet: it accepts any pm_ id and rejects anything else.
    if value not in (None, "") and not str(value).startswith("pm_"):
        raise StripeAPIError.missing("PaymentMethod", str(value), param=param)
    return value or None


def _address(value: Any) -> dict[str, Any] | None:
    if not value:
        return None
    keys = ("city", "country", "line1", "line2", "postal_code", "state")
    return {k: value.get(k) for k in keys}


@ROUTER.post("/v1/customers", params=p.CustomerCreateParams)
def create_customer(ctx: Ctx) -> dict[str, Any]:
    params = ctx.params
    settings = params.get("invoice_settings") or {}
    obj = ctx.state.base_object(
        "cus",
        "customer",
        address=_address(params.get("address")),
        balance=params.get("balance", 0),
        currency=None,
        default_source=None,
        delinquent=False,
        description=params.get("description"),
        email=params.get("email"),
        invoice_prefix=params.get("invoice_prefix") or ctx.request_id[-8:].upper(),
        invoice_settings={
            "custom_fields": None,
            "default_payment_method": _check_payment_method(
                settings.get("default_payment_method"), "invoice_settings[default_payment_method]"
            ),
            "footer": settings.get("footer"),
            "rendering_options": None,
        },
        metadata=merge_metadata({}, params.get("metadata")),
        name=params.get("name"),
        phone=params.get("phone"),
        preferred_locales=params.get("preferred_locales") or [],
        shipping=None,
        tax_exempt=params.get("tax_exempt") or "none",
        test_clock=None,
    )
    ctx.state.insert("customer", obj)
    ctx.event("customer.created", obj)
    return obj


@ROUTER.get("/v1/customers/{id}", params=p.CustomerRetrieveParams)
def retrieve_customer(ctx: Ctx) -> dict[str, Any]:
    ident = ctx.path_params["id"]
    deleted = ctx.state.internal.get("deleted_customers", {})
    if ident in deleted:
        return {"id": ident, "object": "customer", "deleted": True}
    return ctx.state.get("customer", ident, label="customer")


@ROUTER.post("/v1/customers/{id}", params=p.CustomerUpdateParams)
def update_customer(ctx: Ctx) -> dict[str, Any]:
    obj = ctx.state.get("customer", ctx.path_params["id"], label="customer")
    before = deep_copy(obj)
    params = ctx.params
    with atomic(ctx.state, "customer"):
        for key in _SIMPLE:
            if key in params:
                obj[key] = params[key] if params[key] != "" else None
        if "preferred_locales" in params:
            obj["preferred_locales"] = params["preferred_locales"] or []
        if "address" in params:
            obj["address"] = _address(params["address"])
        if "metadata" in params:
            obj["metadata"] = merge_metadata(obj["metadata"], params["metadata"])
        if "invoice_settings" in params:
            settings = params["invoice_settings"] or {}
            if "default_payment_method" in settings:
                obj["invoice_settings"]["default_payment_method"] = _check_payment_method(
                    settings["default_payment_method"], "invoice_settings[default_payment_method]"
                )
            if "footer" in settings:
                obj["invoice_settings"]["footer"] = settings["footer"] or None
    previous = changed(before, obj)
    if previous:
        ctx.event("customer.updated", obj, previous)
    return obj


@ROUTER.delete("/v1/customers/{id}", params=p.CustomerDeleteParams)
def delete_customer(ctx: Ctx) -> dict[str, Any]:
    ident = ctx.path_params["id"]
    obj = ctx.state.get("customer", ident, label="customer")
    del ctx.state.table("customer")[ident]
    ctx.state.internal.setdefault("deleted_customers", {})[ident] = obj
    ctx.event("customer.deleted", obj)
    return {"id": ident, "object": "customer", "deleted": True}


@ROUTER.get("/v1/customers", params=p.CustomerListParams)
def list_customers(ctx: Ctx) -> dict[str, Any]:
    items = ctx.state.all("customer")
    if "email" in ctx.params:
        items = [c for c in items if c.get("email") == ctx.params["email"]]
    return paginate(ctx, items, "/v1/customers")
