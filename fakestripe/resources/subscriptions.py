"""Subscriptions, subscription items (periods live on items from API 2025-03-31.basil on), and the
legacy usage-record endpoints that only accounts pinned to an older API version may call."""

from __future__ import annotations

from typing import Any

import stripe.params as p

from ..errors import StripeAPIError
from ..routes import ROUTER, Ctx, atomic, changed, merge_metadata, paginate
from ..state import BASIL, FakeState, UsageRecord, deep_copy, new_id, next_boundary, version_before
from .legacy_params import UsageRecordCreateParams, UsageRecordSummaryListParams

# -- rendering --------------------------------------------------------------------------------------


def _items_list(state: FakeState, sub_id: str) -> dict[str, Any]:
    items = [i for i in state.table("subscription_item").values() if i["subscription"] == sub_id]
    return {
        "object": "list",
        "data": items,
        "has_more": False,
        "total_count": len(items),
        "url": f"/v1/subscription_items?subscription={sub_id}",
    }


def refresh(state: FakeState, sub: dict[str, Any]) -> dict[str, Any]:
    sub["items"] = _items_list(state, sub["id"])
    return sub


def render(sub: dict[str, Any], api_version: str) -> dict[str, Any]:
    """Subscriptions carried ``current_period_*`` themselves before API 2025-03-31.basil."""
    out = deep_copy(sub)
    if version_before(api_version, BASIL):
        items = out["items"]["data"]
        out["current_period_start"] = items[0]["current_period_start"] if items else None
        out["current_period_end"] = items[0]["current_period_end"] if items else None
    return out


# -- validation helpers -----------------------------------------------------------------------------


def _recurring_price(ctx: Ctx, price_id: str, param: str) -> dict[str, Any]:
    price = ctx.state.get("price", price_id, label="price", param=param)
    if price["recurring"] is None:
        raise StripeAPIError.invalid(
            "The price specified is set to `type=one_time` but this field only accepts prices with `type=recurring`.",
            param=param,
        )
    if not price["active"]:
        raise StripeAPIError.invalid(f"The price specified is inactive: {price_id}.", param=param)
    recurring = price["recurring"]
    if (
        recurring["usage_type"] == "metered"
        and recurring["meter"] is None
        and not version_before(ctx.api_version, BASIL)
    ):
        raise StripeAPIError.invalid(
            "Legacy usage-based prices (metered without a meter) cannot be attached to subscriptions from API "
            "version 2025-03-31.basil on.",
            param=param,
        )
    return price


def _quantity(price: dict[str, Any], item: dict[str, Any], param: str) -> int | None:
    """The item's quantity; ``param`` is the item's parameter prefix (``""`` for top-level params)."""
    name = f"{param}[quantity]" if param else "quantity"
    if price["recurring"]["usage_type"] == "metered":
        if "quantity" in item:
            raise StripeAPIError.invalid(
                f"Quantity should not be specified where usage_type is `metered`. Remove `{name}`.", param=name
            )
        return None
    quantity = item.get("quantity", 1)
    if quantity < 0:
        raise StripeAPIError.invalid("Invalid quantity: must be non-negative", param=name)
    return quantity


def _check_compatible(prices: list[dict[str, Any]]) -> None:
    if not prices:
        return
    first = prices[0]
    for price in prices[1:]:
        if price["currency"] != first["currency"]:
            raise StripeAPIError.invalid("All prices on a subscription must have the same `currency`.", param="items")
        if (price["recurring"]["interval"], price["recurring"]["interval_count"]) != (
            first["recurring"]["interval"],
            first["recurring"]["interval_count"],
        ):
            raise StripeAPIError.invalid(
                "All prices on a subscription must have the same `recurring.interval` and `recurring.interval_count`.",
                param="items",
            )
    ids = [pr["id"] for pr in prices]
    if len(set(ids)) != len(ids):
        raise StripeAPIError.invalid("Cannot add multiple subscription items with the same price.", param="items")


def _item_params(item: dict[str, Any], param: str) -> None:
    for key in ("price_data", "plan", "discounts", "tax_rates", "billing_thresholds", "current_trial"):
        if key in item:
            raise StripeAPIError.invalid(
                f"The fake Stripe server does not support `{param}[{key}]` yet.", param=f"{param}[{key}]"
            )


def _new_item(
    state: FakeState, sub: dict[str, Any], price: dict[str, Any], quantity: int | None, metadata: Any
) -> dict[str, Any]:
    info = state.internal["subscriptions"][sub["id"]]
    item = state.base_object(
        "si",
        "subscription_item",
        billing_thresholds=None,
        current_period_end=info["period_end"],
        current_period_start=info["period_start"],
        discounts=[],
        metadata=merge_metadata({}, metadata),
        price=deep_copy(price),
        quantity=quantity,
        subscription=sub["id"],
        tax_rates=[],
    )
    state.insert("subscription_item", item)
    return item


def _live_subscription(ctx: Ctx, sub_id: str) -> dict[str, Any]:
    sub = ctx.state.get("subscription", sub_id, label="subscription")
    if sub["status"] == "canceled":
        raise StripeAPIError.invalid(
            f"A canceled subscription can only update its cancellation_details and metadata: {sub_id}.",
        )
    return sub


# -- subscriptions ----------------------------------------------------------------------------------


@ROUTER.post("/v1/subscriptions", params=p.SubscriptionCreateParams)
def create_subscription(ctx: Ctx) -> dict[str, Any]:
    state, params = ctx.state, ctx.params
    if "customer" not in params:
        raise StripeAPIError.invalid("Missing required param: customer.", param="customer", code="parameter_missing")
    customer = state.get("customer", params["customer"], label="customer", param="customer")
    items = params.get("items") or []
    if not items:
        raise StripeAPIError.invalid("Missing required param: items.", param="items", code="parameter_missing")
    for key in ("trial_period_days", "trial_end", "add_invoice_items", "discounts", "schedule"):
        if key in params:
            raise StripeAPIError.invalid(f"The fake Stripe server does not support `{key}` yet.", param=key)
    prices = []
    for i, item in enumerate(items):
        _item_params(item, f"items[{i}]")
        if "price" not in item:
            raise StripeAPIError.invalid(
                f"Missing required param: items[{i}][price].", param=f"items[{i}][price]", code="parameter_missing"
            )
        prices.append(_recurring_price(ctx, item["price"], f"items[{i}][price]"))
    _check_compatible(prices)
    quantities = [_quantity(pr, it, f"items[{i}]") for i, (pr, it) in enumerate(zip(prices, items, strict=True))]

    now = ctx.now
    recurring = prices[0]["recurring"]
    anchor = params.get("billing_cycle_anchor", now)
    if anchor < now:
        raise StripeAPIError.invalid("`billing_cycle_anchor` cannot be in the past.", param="billing_cycle_anchor")
    period_end = next_boundary(anchor, recurring["interval"], recurring["interval_count"], now)
    if params.get("collection_method") == "send_invoice" and "days_until_due" not in params:
        raise StripeAPIError.invalid(
            "Missing required param: days_until_due.", param="days_until_due", code="parameter_missing"
        )
    default_pm = params.get("default_payment_method") or None
    if default_pm is not None and not str(default_pm).startswith("pm_"):
        raise StripeAPIError.missing("PaymentMethod", default_pm, param="default_payment_method")
    sub = state.base_object(
        "sub",
        "subscription",
        billing_cycle_anchor=anchor,
        cancel_at=None,
        cancel_at_period_end=bool(params.get("cancel_at_period_end", False)),
        canceled_at=None,
        cancellation_details={"comment": None, "feedback": None, "reason": None},
        collection_method=params.get("collection_method", "charge_automatically"),
        currency=prices[0]["currency"],
        customer=customer["id"],
        days_until_due=params.get("days_until_due"),
        default_payment_method=default_pm,
        description=params.get("description"),
        ended_at=None,
        latest_invoice=None,
        metadata=merge_metadata({}, params.get("metadata")),
        start_date=now,
        status="active",
        test_clock=None,
    )
    state.insert("subscription", sub)
    state.internal.setdefault("subscriptions", {})[sub["id"]] = {
        "anchor": anchor,
        "interval": recurring["interval"],
        "interval_count": recurring["interval_count"],
        "period_start": now,
        "period_end": period_end,
    }
    if sub["cancel_at_period_end"]:
        sub["cancel_at"] = period_end
    for price, quantity, item in zip(prices, quantities, items, strict=True):
        _new_item(state, sub, price, quantity, item.get("metadata"))
    refresh(state, sub)
    ctx.event("customer.subscription.created", sub)
    return render(sub, ctx.api_version)


@ROUTER.get("/v1/subscriptions/{id}", params=p.SubscriptionRetrieveParams)
def retrieve_subscription(ctx: Ctx) -> dict[str, Any]:
    return render(ctx.state.get("subscription", ctx.path_params["id"], label="subscription"), ctx.api_version)


@ROUTER.post("/v1/subscriptions/{id}", params=p.SubscriptionUpdateParams)
def update_subscription(ctx: Ctx) -> dict[str, Any]:
    with atomic(ctx.state, "subscription", "subscription_item"):
        return _update_subscription(ctx)


def _update_subscription(ctx: Ctx) -> dict[str, Any]:
    state, params = ctx.state, ctx.params
    sub = state.get("subscription", ctx.path_params["id"], label="subscription")
    if sub["status"] == "canceled" and set(params) - {"metadata", "cancellation_details", "expand"}:
        _live_subscription(ctx, sub["id"])
    before = deep_copy(sub)
    for key in ("description", "days_until_due", "collection_method"):
        if key in params:
            sub[key] = params[key] if params[key] != "" else None
    if "default_payment_method" in params:
        pm = params["default_payment_method"] or None
        if pm is not None and not str(pm).startswith("pm_"):
            raise StripeAPIError.missing("PaymentMethod", pm, param="default_payment_method")
        sub["default_payment_method"] = pm
    if "metadata" in params:
        sub["metadata"] = merge_metadata(sub["metadata"], params["metadata"])
    if "cancel_at_period_end" in params:
        sub["cancel_at_period_end"] = params["cancel_at_period_end"]
        sub["cancel_at"] = (
            state.internal["subscriptions"][sub["id"]]["period_end"] if params["cancel_at_period_end"] else None
        )
    if "items" in params:
        _apply_item_changes(ctx, sub, params["items"])
    refresh(state, sub)
    previous = changed(before, sub)
    if previous:
        ctx.event("customer.subscription.updated", sub, previous)
    return render(sub, ctx.api_version)


def _apply_item_changes(ctx: Ctx, sub: dict[str, Any], changes: list[dict[str, Any]]) -> None:
    state = ctx.state
    table = state.table("subscription_item")
    for i, change in enumerate(changes):
        param = f"items[{i}]"
        _item_params(change, param)
        if "id" in change:
            item = table.get(change["id"])
            if item is None or item["subscription"] != sub["id"]:
                raise StripeAPIError.missing("subscription item", change["id"], param=f"{param}[id]")
            if change.get("deleted"):
                del table[item["id"]]
                continue
            if "price" in change:
                price = _recurring_price(ctx, change["price"], f"{param}[price]")
                item["price"] = deep_copy(price)
            if "quantity" in change or "price" in change:
                item["quantity"] = _quantity(item["price"], change, param)
            if "metadata" in change:
                item["metadata"] = merge_metadata(item["metadata"], change["metadata"])
        else:
            if change.get("deleted"):
                raise StripeAPIError.invalid(f"`{param}[deleted]` needs `{param}[id]`.", param=f"{param}[deleted]")
            if "price" not in change:
                raise StripeAPIError.invalid(
                    f"Missing required param: {param}[price].", param=f"{param}[price]", code="parameter_missing"
                )
            price = _recurring_price(ctx, change["price"], f"{param}[price]")
            _new_item(state, sub, price, _quantity(price, change, param), change.get("metadata"))
    remaining = [i["price"] for i in table.values() if i["subscription"] == sub["id"]]
    if not remaining:
        raise StripeAPIError.invalid("A subscription must keep at least one item.", param="items")
    _check_compatible(remaining)


@ROUTER.delete("/v1/subscriptions/{id}", params=p.SubscriptionCancelParams)
def cancel_subscription(ctx: Ctx) -> dict[str, Any]:
    sub = _live_subscription(ctx, ctx.path_params["id"])
    details = ctx.params.get("cancellation_details") or {}
    _cancel(ctx.state, sub, details, request_ctx=ctx)
    return render(sub, ctx.api_version)


def _cancel(state: FakeState, sub: dict[str, Any], details: dict[str, Any], request_ctx: Ctx | None = None) -> None:
    now = state.now()
    sub.update(
        status="canceled",
        canceled_at=now,
        ended_at=now,
        cancel_at=None,
        cancellation_details={
            "comment": details.get("comment") or None,
            "feedback": details.get("feedback") or None,
            "reason": "cancellation_requested",
        },
    )
    refresh(state, sub)
    if request_ctx is not None:
        request_ctx.event("customer.subscription.deleted", sub)
    else:
        state.record_event("customer.subscription.deleted", sub)


@ROUTER.get("/v1/subscriptions", params=p.SubscriptionListParams)
def list_subscriptions(ctx: Ctx) -> dict[str, Any]:
    params = ctx.params
    items = ctx.state.all("subscription")
    status = params.get("status")
    if status is None:
        items = [s for s in items if s["status"] != "canceled"]
    elif status != "all":
        items = [s for s in items if s["status"] == status]
    if "customer" in params:
        items = [s for s in items if s["customer"] == params["customer"]]
    if "price" in params:
        items = [s for s in items if any(i["price"]["id"] == params["price"] for i in s["items"]["data"])]
    page = paginate(ctx, items, "/v1/subscriptions")
    page["data"] = [render(s, ctx.api_version) for s in page["data"]]
    return page


def advance_period(state: FakeState, sub_id: str) -> dict[str, Any]:
    """Renew ``sub_id`` into its next billing period (see ``FakeState.advance_subscription``)."""
    sub = state.get("subscription", sub_id, label="subscription")
    if sub["status"] == "canceled":
        raise StripeAPIError.invalid(f"Subscription {sub_id} is canceled.")
    info = state.internal["subscriptions"][sub_id]
    if sub["cancel_at_period_end"]:
        _cancel(state, sub, {})
        return sub
    before = deep_copy(sub)
    start = info["period_end"]
    end = next_boundary(info["anchor"], info["interval"], info["interval_count"], start)
    info["period_start"], info["period_end"] = start, end
    for item in state.table("subscription_item").values():
        if item["subscription"] == sub_id:
            item["current_period_start"], item["current_period_end"] = start, end
    refresh(state, sub)
    state.record_event("customer.subscription.updated", sub, previous_attributes=changed(before, sub))
    return sub


# -- subscription items -----------------------------------------------------------------------------


@ROUTER.post("/v1/subscription_items", params=p.SubscriptionItemCreateParams)
def create_item(ctx: Ctx) -> dict[str, Any]:
    params = ctx.params
    sub = _live_subscription(ctx, params["subscription"])
    _item_params(params, "")
    if "price" not in params:
        raise StripeAPIError.invalid("Missing required param: price.", param="price", code="parameter_missing")
    before = deep_copy(sub)
    price = _recurring_price(ctx, params["price"], "price")
    existing = [i["price"] for i in ctx.state.table("subscription_item").values() if i["subscription"] == sub["id"]]
    _check_compatible([*existing, price])
    item = _new_item(ctx.state, sub, price, _quantity(price, params, ""), params.get("metadata"))
    refresh(ctx.state, sub)
    ctx.event("customer.subscription.updated", sub, changed(before, sub))
    return item


@ROUTER.get("/v1/subscription_items/{id}", params=p.SubscriptionItemRetrieveParams)
def retrieve_item(ctx: Ctx) -> dict[str, Any]:
    return ctx.state.get("subscription_item", ctx.path_params["id"], label="subscription item")


@ROUTER.post("/v1/subscription_items/{id}", params=p.SubscriptionItemUpdateParams)
def update_item(ctx: Ctx) -> dict[str, Any]:
    item = ctx.state.get("subscription_item", ctx.path_params["id"], label="subscription item")
    sub = _live_subscription(ctx, item["subscription"])
    _item_params(ctx.params, "")
    before = deep_copy(sub)
    params = ctx.params
    with atomic(ctx.state, "subscription_item"):
        _update_item(ctx, item, sub, params)
    refresh(ctx.state, sub)
    previous = changed(before, sub)
    if previous:
        ctx.event("customer.subscription.updated", sub, previous)
    return item


def _update_item(ctx: Ctx, item: dict[str, Any], sub: dict[str, Any], params: dict[str, Any]) -> None:
    if "price" in params:
        item["price"] = deep_copy(_recurring_price(ctx, params["price"], "price"))
    if "quantity" in params or "price" in params:
        item["quantity"] = _quantity(item["price"], params, "")
    if "metadata" in params:
        item["metadata"] = merge_metadata(item["metadata"], params["metadata"])
    _check_compatible(
        [i["price"] for i in ctx.state.table("subscription_item").values() if i["subscription"] == sub["id"]]
    )


@ROUTER.delete("/v1/subscription_items/{id}", params=p.SubscriptionItemDeleteParams)
def delete_item(ctx: Ctx) -> dict[str, Any]:
    item = ctx.state.get("subscription_item", ctx.path_params["id"], label="subscription item")
    sub = _live_subscription(ctx, item["subscription"])
    if sum(1 for i in ctx.state.table("subscription_item").values() if i["subscription"] == sub["id"]) == 1:
        raise StripeAPIError.invalid("A subscription must keep at least one item; cancel the subscription instead.")
    before = deep_copy(sub)
    del ctx.state.table("subscription_item")[item["id"]]
    refresh(ctx.state, sub)
    ctx.event("customer.subscription.updated", sub, changed(before, sub))
    return {"id": item["id"], "object": "subscription_item", "deleted": True}


@ROUTER.get("/v1/subscription_items", params=p.SubscriptionItemListParams)
def list_items(ctx: Ctx) -> dict[str, Any]:
    sub_id = ctx.params["subscription"]
    ctx.state.get("subscription", sub_id, label="subscription", param="subscription")
    items = [i for i in ctx.state.all("subscription_item") if i["subscription"] == sub_id]
    return paginate(ctx, items, "/v1/subscription_items")


# -- legacy usage records ---------------------------------------------------------------------------


def _legacy_item(ctx: Ctx) -> dict[str, Any]:
    if not version_before(ctx.api_version, BASIL):
        raise StripeAPIError.invalid(
            f"Usage records are not available in API version {ctx.api_version}: legacy usage-based billing was "
            "removed in 2025-03-31.basil. Report usage with billing meter events instead.",
        )
    item = ctx.state.get("subscription_item", ctx.path_params["id"], label="subscription item")
    recurring = item["price"]["recurring"]
    if recurring["usage_type"] != "metered" or recurring["meter"] is not None:
        raise StripeAPIError.invalid(
            "Usage records can only be created for subscription items whose price is a legacy metered price "
            "(`usage_type=metered` without a meter).",
        )
    return item


@ROUTER.post("/v1/subscription_items/{id}/usage_records", params=UsageRecordCreateParams)
def create_usage_record(ctx: Ctx) -> dict[str, Any]:
    item = _legacy_item(ctx)
    params = ctx.params
    now = ctx.now
    timestamp = params.get("timestamp", "now")
    timestamp = now if timestamp == "now" else timestamp
    if timestamp > now:
        raise StripeAPIError.invalid("Cannot create usage records with a timestamp in the future.", param="timestamp")
    if timestamp < item["current_period_start"]:
        # Stripe's wording: once a period has renewed (its invoice exists) it takes no more usage.
        raise StripeAPIError.invalid(
            "Cannot create the usage record with this timestamp because timestamps must be after the "
            "subscription's last invoice period (or current period start time).",
            param="timestamp",
        )
    if timestamp >= item["current_period_end"]:
        raise StripeAPIError.invalid(
            "Cannot create the usage record with this timestamp because timestamps must be after the subscription's "
            "current period start and before its current period end.",
            param="timestamp",
        )
    if params["quantity"] < 0:
        raise StripeAPIError.invalid("Invalid quantity: must be non-negative", param="quantity")
    record = UsageRecord(
        id=new_id("mbur"),
        subscription_item=item["id"],
        quantity=params["quantity"],
        timestamp=timestamp,
        action=params.get("action", "increment"),
        received_at=now,
    )
    ctx.state.usage_records.append(record)
    return {
        "id": record.id,
        "object": "usage_record",
        "livemode": False,
        "quantity": record.quantity,
        "subscription_item": record.subscription_item,
        "timestamp": record.timestamp,
    }


def legacy_usage_total(state: FakeState, item_id: str, start: int, end: int) -> int:
    """Total legacy usage for ``item_id`` in ``[start, end)``: increments add up, ``set`` replaces the
    quantity recorded at that same timestamp."""
    per_timestamp: dict[int, int] = {}
    for record in state.usage_records:
        if record.subscription_item != item_id or not start <= record.timestamp < end:
            continue
        if record.action == "set":
            per_timestamp[record.timestamp] = record.quantity
        else:
            per_timestamp[record.timestamp] = per_timestamp.get(record.timestamp, 0) + record.quantity
    return sum(per_timestamp.values())


@ROUTER.get("/v1/subscription_items/{id}/usage_record_summaries", params=UsageRecordSummaryListParams)
def list_usage_record_summaries(ctx: Ctx) -> dict[str, Any]:
    item = _legacy_item(ctx)
    start, end = item["current_period_start"], item["current_period_end"]
    summary = {
        "id": f"sis_{item['id'][3:]}_{start}",
        "object": "usage_record_summary",
        "invoice": None,
        "livemode": False,
        "period": {"start": start, "end": end},
        "subscription_item": item["id"],
        "total_usage": legacy_usage_total(ctx.state, item["id"], start, end),
    }
    return paginate(ctx, [summary], f"/v1/subscription_items/{item['id']}/usage_record_summaries", filter_created=False)
