"""Products and prices (one-off and recurring, licensed and metered, per-unit and tiered)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import stripe.params as p

from ..errors import StripeAPIError
from ..routes import ROUTER, Ctx, changed, merge_metadata, paginate
from ..state import BASIL, FakeState, deep_copy, version_before


def decimal_text(value: Decimal | int) -> str:
    """Stripe renders decimal strings without exponent or trailing zeros (at most 12 places)."""
    text = format(Decimal(value).normalize(), "f")
    return text


def _check_decimal(value: Decimal, param: str) -> Decimal:
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -12:
        raise StripeAPIError.invalid(f"Invalid decimal: {param} can have at most 12 decimal places", param=param)
    return value


# -- products ---------------------------------------------------------------------------------------


def _new_product(state: FakeState, params: dict[str, Any]) -> dict[str, Any]:
    now = state.now()
    return state.base_object(
        "prod",
        "product",
        active=params.get("active", True),
        default_price=None,
        description=params.get("description"),
        images=params.get("images") or [],
        marketing_features=[],
        metadata=merge_metadata({}, params.get("metadata")),
        name=params["name"],
        package_dimensions=None,
        shippable=params.get("shippable"),
        statement_descriptor=params.get("statement_descriptor"),
        tax_code=params.get("tax_code"),
        unit_label=params.get("unit_label"),
        updated=now,
        url=params.get("url"),
    )


@ROUTER.post("/v1/products", params=p.ProductCreateParams)
def create_product(ctx: Ctx) -> dict[str, Any]:
    params = ctx.params
    obj = _new_product(ctx.state, params)
    if "id" in params:
        if ctx.state.find("product", params["id"]):
            raise StripeAPIError.business(
                f"Product already exists: {params['id']}", param="id", code="resource_already_exists"
            )
        obj["id"] = params["id"]
    ctx.state.insert("product", obj)
    ctx.event("product.created", obj)
    return obj


@ROUTER.get("/v1/products/{id}", params=p.ProductRetrieveParams)
def retrieve_product(ctx: Ctx) -> dict[str, Any]:
    return ctx.state.get("product", ctx.path_params["id"], label="product")


@ROUTER.post("/v1/products/{id}", params=p.ProductUpdateParams)
def update_product(ctx: Ctx) -> dict[str, Any]:
    obj = ctx.state.get("product", ctx.path_params["id"], label="product")
    if ctx.params.get("default_price"):
        ctx.state.get("price", ctx.params["default_price"], label="price", param="default_price")
    before = deep_copy(obj)
    for key in ("active", "name", "description", "statement_descriptor", "tax_code", "unit_label", "url", "shippable"):
        if key in ctx.params:
            obj[key] = ctx.params[key] if ctx.params[key] != "" else None
    if "metadata" in ctx.params:
        obj["metadata"] = merge_metadata(obj["metadata"], ctx.params["metadata"])
    if "default_price" in ctx.params:
        obj["default_price"] = ctx.params["default_price"] or None
    previous = changed(before, obj)
    if previous:
        obj["updated"] = ctx.now
        ctx.event("product.updated", obj, previous)
    return obj


@ROUTER.get("/v1/products", params=p.ProductListParams)
def list_products(ctx: Ctx) -> dict[str, Any]:
    items = ctx.state.all("product")
    if "active" in ctx.params:
        items = [o for o in items if o["active"] == ctx.params["active"]]
    if "ids" in ctx.params:
        items = [o for o in items if o["id"] in ctx.params["ids"]]
    return paginate(ctx, items, "/v1/products")


# -- prices -----------------------------------------------------------------------------------------


def _tiers(params: dict[str, Any]) -> list[dict[str, Any]] | None:
    tiers = params.get("tiers")
    if not tiers:
        return None
    out = []
    for i, tier in enumerate(tiers):
        if "unit_amount" in tier and "unit_amount_decimal" in tier:
            raise StripeAPIError.invalid(
                "You may only specify one of these parameters: "
                f"tiers[{i}][unit_amount], tiers[{i}][unit_amount_decimal].",
                param=f"tiers[{i}][unit_amount]",
            )
        unit = tier.get("unit_amount_decimal", tier.get("unit_amount"))
        flat = tier.get("flat_amount_decimal", tier.get("flat_amount"))
        out.append(
            {
                "flat_amount": int(flat) if flat is not None and Decimal(flat) == int(flat) else None,
                "flat_amount_decimal": decimal_text(_check_decimal(Decimal(flat), f"tiers[{i}]"))
                if flat is not None
                else None,
                "unit_amount": int(unit) if unit is not None and Decimal(unit) == int(unit) else None,
                "unit_amount_decimal": decimal_text(_check_decimal(Decimal(unit), f"tiers[{i}]"))
                if unit is not None
                else None,
                "up_to": None if tier["up_to"] == "inf" else tier["up_to"],
            }
        )
    if out[-1]["up_to"] is not None:
        raise StripeAPIError.invalid(
            "The last tier must have `up_to` set to `inf`.", param=f"tiers[{len(out) - 1}][up_to]"
        )
    bounds = [int(t["up_to"]) for t in out[:-1] if t["up_to"] is not None]
    if len(bounds) != len(out) - 1 or bounds != sorted(set(bounds)):
        raise StripeAPIError.invalid(
            "Tiers must be sorted by ascending `up_to`, with only the last one `inf`.", param="tiers"
        )
    return out


@ROUTER.post("/v1/prices", params=p.PriceCreateParams)
def create_price(ctx: Ctx) -> dict[str, Any]:
    params = ctx.params
    state = ctx.state
    if ("product" in params) == ("product_data" in params):
        raise StripeAPIError.invalid(
            "You must specify exactly one of these parameters: product, product_data.", param="product"
        )
    if "product" in params:
        state.get("product", params["product"], label="product", param="product")

    scheme = params.get("billing_scheme", "per_unit")
    recurring = params.get("recurring")
    if "unit_amount" in params and "unit_amount_decimal" in params:
        raise StripeAPIError.invalid(
            "You may only specify one of these parameters: unit_amount, unit_amount_decimal.", param="unit_amount"
        )
    unit: Decimal | None = None
    if "unit_amount" in params:
        unit = Decimal(params["unit_amount"])
    elif "unit_amount_decimal" in params:
        unit = _check_decimal(params["unit_amount_decimal"], "unit_amount_decimal")
    tiers = _tiers(params)
    if scheme == "tiered":
        if tiers is None or "tiers_mode" not in params:
            raise StripeAPIError.invalid(
                "Tiered prices need `tiers` and `tiers_mode`.", param="tiers" if tiers is None else "tiers_mode"
            )
        if unit is not None:
            raise StripeAPIError.invalid("Tiered prices cannot have `unit_amount`.", param="unit_amount")
    else:
        if tiers is not None or "tiers_mode" in params:
            raise StripeAPIError.invalid("`tiers` require `billing_scheme=tiered`.", param="tiers")
        if unit is None and "custom_unit_amount" not in params:
            raise StripeAPIError.invalid(
                "Missing required param: unit_amount.", param="unit_amount", code="parameter_missing"
            )

    rendered_recurring = None
    if recurring is not None:
        usage_type = recurring.get("usage_type", "licensed")
        meter_id = recurring.get("meter")
        if meter_id is not None:
            if usage_type != "metered":
                raise StripeAPIError.invalid(
                    "`recurring[meter]` can only be set when `recurring[usage_type]` is `metered`.",
                    param="recurring[meter]",
                )
            meter = state.get("billing.meter", meter_id, label="billing meter", param="recurring[meter]")
            if meter["status"] != "active":
                raise StripeAPIError.invalid(f"The meter {meter_id} is not active.", param="recurring[meter]")
        elif usage_type == "metered" and not version_before(ctx.api_version, BASIL):
            raise StripeAPIError.invalid(
                "Metered prices must reference a billing meter (`recurring[meter]`) from API version "
                "2025-03-31.basil on; legacy usage-based prices cannot be created.",
                param="recurring[meter]",
            )
        rendered_recurring = {
            "interval": recurring["interval"],
            "interval_count": recurring.get("interval_count", 1),
            "meter": meter_id,
            "trial_period_days": recurring.get("trial_period_days"),
            "usage_type": usage_type,
        }
    if "product" in params:
        product_id = params["product"]
    else:
        product = state.insert("product", _new_product(state, params["product_data"]))
        ctx.event("product.created", product)
        product_id = product["id"]
    obj = state.base_object(
        "price",
        "price",
        active=params.get("active", True),
        billing_scheme=scheme,
        currency=params["currency"].lower(),
        custom_unit_amount=None,
        lookup_key=params.get("lookup_key"),
        metadata=merge_metadata({}, params.get("metadata")),
        nickname=params.get("nickname"),
        product=product_id,
        recurring=rendered_recurring,
        tax_behavior=params.get("tax_behavior", "unspecified"),
        tiers=tiers,
        tiers_mode=params.get("tiers_mode"),
        transform_quantity=params.get("transform_quantity"),
        type="recurring" if recurring is not None else "one_time",
        unit_amount=int(unit) if unit is not None and unit == int(unit) else None,
        unit_amount_decimal=decimal_text(unit) if unit is not None else None,
    )
    state.insert("price", obj)
    ctx.event("price.created", obj)
    return obj


@ROUTER.get("/v1/prices/{id}", params=p.PriceRetrieveParams)
def retrieve_price(ctx: Ctx) -> dict[str, Any]:
    return ctx.state.get("price", ctx.path_params["id"], label="price")


@ROUTER.post("/v1/prices/{id}", params=p.PriceUpdateParams)
def update_price(ctx: Ctx) -> dict[str, Any]:
    obj = ctx.state.get("price", ctx.path_params["id"], label="price")
    before = deep_copy(obj)
    for key in ("active", "lookup_key", "nickname", "tax_behavior"):
        if key in ctx.params:
            obj[key] = ctx.params[key] if ctx.params[key] != "" else None
    if "metadata" in ctx.params:
        obj["metadata"] = merge_metadata(obj["metadata"], ctx.params["metadata"])
    previous = changed(before, obj)
    if previous:
        ctx.event("price.updated", obj, previous)
    return obj


@ROUTER.get("/v1/prices", params=p.PriceListParams)
def list_prices(ctx: Ctx) -> dict[str, Any]:
    items = ctx.state.all("price")
    params = ctx.params
    if "product" in params:
        items = [o for o in items if o["product"] == params["product"]]
    if "active" in params:
        items = [o for o in items if o["active"] == params["active"]]
    if "type" in params:
        items = [o for o in items if o["type"] == params["type"]]
    if "currency" in params:
        items = [o for o in items if o["currency"] == params["currency"]]
    if "lookup_keys" in params:
        items = [o for o in items if o["lookup_key"] in params["lookup_keys"]]
    return paginate(ctx, items, "/v1/prices")
