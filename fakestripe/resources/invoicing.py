"""Invoice items and invoices: drafts, totals in minor units, automatic tax from a fake rate table,
finalization (numbering), payment (with an injectable failure), void and mark-uncollectible."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import stripe.params as p

from ..errors import StripeAPIError
from ..routes import ROUTER, Ctx, atomic, changed, merge_metadata, paginate
from ..state import FakeState, deep_copy, new_id
from .catalog import decimal_text

# Fake Stripe Tax: percentage by customer country. The US has no national rate; a state rate is
# picked by the first three digits of the ZIP code (inclusive ranges).
COUNTRY_RATES: dict[str, Decimal] = {"DE": Decimal(19), "HU": Decimal(27), "FR": Decimal(20), "GB": Decimal(20)}
US_ZIP_RATES: list[tuple[int, int, str, Decimal]] = [
    (100, 149, "NY", Decimal(4)),
    (750, 799, "TX", Decimal("6.25")),
    (900, 961, "CA", Decimal("7.25")),
    (970, 979, "OR", Decimal(0)),
]
# Countries where the fake needs more than the country to place the customer.
_NEEDS_POSTAL_CODE = {"US", "CA"}

_ITEM_KIND = "invoiceitem"
_INVOICE_KIND = "invoice"


def _round(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _meta(state: FakeState, item_id: str) -> dict[str, Any]:
    """Per-item data Stripe does not show on the invoice item (tax behaviour, tax code, line id)."""
    return state.internal.setdefault("invoice_items", {}).setdefault(item_id, {})


def tax_location(customer: dict[str, Any] | None) -> tuple[str, str | None, Decimal] | None:
    """``(country, state, percentage)`` for the customer's address, or None if it is not usable."""
    address = (customer or {}).get("address") or {}
    country = (address.get("country") or "").upper()
    if not country:
        return None
    postal = (address.get("postal_code") or "").strip()
    if country in _NEEDS_POSTAL_CODE and not postal:
        return None
    if country == "US":
        if len(postal) < 5 or not postal[:5].isdigit():
            return None
        prefix = int(postal[:3])
        for low, high, us_state, rate in US_ZIP_RATES:
            if low <= prefix <= high:
                return country, us_state, rate
        return country, None, Decimal(0)
    return country, None, COUNTRY_RATES.get(country, Decimal(0))


# -- invoice items ----------------------------------------------------------------------------------


def _draft_invoice(state: FakeState, invoice_id: str, param: str) -> dict[str, Any]:
    invoice = state.get(_INVOICE_KIND, invoice_id, label="invoice", param=param)
    if invoice["status"] != "draft":
        raise StripeAPIError.invalid(
            f"Invoice {invoice_id} is {invoice['status']}; invoice items can only be added to or changed on "
            "draft invoices.",
            param=param,
            code="invoice_not_editable",
        )
    return invoice


def _amount_and_pricing(state: FakeState, params: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    """The item's ``amount``, ``pricing``, ``quantity`` and ``currency`` from create/update params."""
    if "price_data" in params:
        raise StripeAPIError.invalid("`price_data` on invoice items is not supported by the fake.", param="price_data")
    given = [k for k in ("amount", "pricing", "unit_amount_decimal") if k in params]
    if len(given) > 1:
        raise StripeAPIError.invalid(
            "You may only specify one of these parameters: " + ", ".join(given) + ".", param=given[1]
        )
    if "quantity" in params and "quantity_decimal" in params:
        raise StripeAPIError.invalid(
            "You may only specify one of these parameters: quantity, quantity_decimal.", param="quantity"
        )
    out: dict[str, Any] = {}
    if current is not None:
        out = {k: current[k] for k in ("amount", "pricing", "quantity", "currency")}
        out["quantity_decimal"] = current.get("quantity_decimal")
    quantity: Decimal | None = None
    if "quantity" in params:
        quantity = Decimal(params["quantity"])
    elif "quantity_decimal" in params:
        quantity = Decimal(params["quantity_decimal"])
    if quantity is not None and quantity < 0:
        raise StripeAPIError.invalid("Quantity must be non-negative.", param="quantity")
    unit: Decimal | None = None
    if "pricing" in params:
        price_id = (params["pricing"] or {}).get("price")
        if not price_id:
            raise StripeAPIError.invalid(
                "Missing required param: pricing[price].", param="pricing[price]", code="parameter_missing"
            )
        price = state.get("price", price_id, label="price", param="pricing[price]")
        if price["type"] != "one_time":
            raise StripeAPIError.invalid(
                f"The price specified ({price_id}) is set to `type=recurring` but this field only accepts prices "
                "with `type=one_time`.",
                param="pricing[price]",
            )
        if price["billing_scheme"] != "per_unit" or price["unit_amount_decimal"] is None:
            raise StripeAPIError.invalid("Only per-unit prices are supported by the fake.", param="pricing[price]")
        if "currency" in params and params["currency"].lower() != price["currency"]:
            raise StripeAPIError.invalid("The currency must match the price's currency.", param="currency")
        unit = Decimal(price["unit_amount_decimal"])
        out["pricing"] = {
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"],
        }
        out["currency"] = price["currency"]
    elif "unit_amount_decimal" in params:
        unit = Decimal(params["unit_amount_decimal"])
        out["pricing"] = {"price_details": None, "type": "price_details", "unit_amount_decimal": decimal_text(unit)}
    elif "amount" in params:
        out["amount"] = int(params["amount"])
        out["pricing"] = None
        out["quantity"], out["quantity_decimal"] = 1, None
    elif current is not None and current["pricing"] is not None and quantity is not None:
        unit = Decimal(current["pricing"]["unit_amount_decimal"])
    if unit is not None:
        qty = quantity if quantity is not None else Decimal(out.get("quantity_decimal") or out.get("quantity") or 1)
        out["amount"] = _round(unit * qty)
        out["quantity"] = int(qty) if qty == int(qty) else None
        out["quantity_decimal"] = decimal_text(qty)
    elif quantity is not None:
        raise StripeAPIError.invalid(
            "`quantity` needs a unit price (`pricing[price]` or `unit_amount_decimal`); `amount` is a total.",
            param="quantity",
        )
    if "amount" not in out:
        raise StripeAPIError.invalid(
            "Missing required param: amount (or pricing[price]).", param="amount", code="parameter_missing"
        )
    return out


@ROUTER.post("/v1/invoiceitems", params=p.InvoiceItemCreateParams)
def create_invoice_item(ctx: Ctx) -> dict[str, Any]:
    state, params = ctx.state, ctx.params
    for unsupported in ("subscription", "discounts", "tax_rates", "customer_account"):
        if unsupported in params:
            raise StripeAPIError.invalid(f"`{unsupported}` is not supported by the fake.", param=unsupported)
    invoice = _draft_invoice(state, params["invoice"], "invoice") if "invoice" in params else None
    if "customer" not in params and invoice is None:
        raise StripeAPIError.invalid("Missing required param: customer.", param="customer", code="parameter_missing")
    customer_id = str(params.get("customer") or (invoice or {}).get("customer"))
    state.get("customer", customer_id, label="customer", param="customer")
    if invoice is not None and invoice["customer"] != customer_id:
        raise StripeAPIError.invalid(
            "The invoice belongs to a different customer than the invoice item.", param="invoice"
        )
    priced = _amount_and_pricing(state, params, None)
    currency = params.get("currency", priced.get("currency") or (invoice or {}).get("currency"))
    if currency is None:
        raise StripeAPIError.invalid("Missing required param: currency.", param="currency", code="parameter_missing")
    currency = currency.lower()
    if invoice is not None and currency != invoice["currency"]:
        raise StripeAPIError.invalid(
            f"The currency of the invoice item ({currency}) must match the invoice's ({invoice['currency']}).",
            param="currency",
        )
    period = params.get("period") or {"start": ctx.now, "end": ctx.now}
    if period["end"] < period["start"]:
        raise StripeAPIError.invalid("The period end must not be before its start.", param="period[end]")
    price_behavior = None
    if priced["pricing"] and priced["pricing"]["price_details"]:
        price_behavior = state.get("price", priced["pricing"]["price_details"]["price"])["tax_behavior"]
    item = state.base_object(
        "ii",
        "invoiceitem",
        amount=priced["amount"],
        currency=currency,
        customer=customer_id,
        customer_account=None,
        date=ctx.now,
        description=params.get("description"),
        discountable=params.get("discountable", priced["amount"] >= 0),
        discounts=[],
        invoice=invoice["id"] if invoice is not None else None,
        metadata=merge_metadata({}, params.get("metadata")),
        net_amount=priced["amount"],
        parent=None,
        period={"start": period["start"], "end": period["end"]},
        pricing=priced["pricing"],
        proration=False,
        quantity=priced["quantity"] if priced["quantity"] is not None else 1,
        quantity_decimal=priced.get("quantity_decimal"),
        tax_rates=[],
        test_clock=None,
    )
    with atomic(state, _ITEM_KIND, _INVOICE_KIND):
        state.insert(_ITEM_KIND, item)
        meta = _meta(state, item["id"])
        meta["tax_behavior"] = params.get("tax_behavior") or price_behavior or "unspecified"
        meta["tax_code"] = params.get("tax_code")
        meta["line_id"] = new_id("il")
        if invoice is not None:
            recompute(state, invoice)
    ctx.event("invoiceitem.created", item)
    return item


@ROUTER.get("/v1/invoiceitems/{id}", params=p.InvoiceItemRetrieveParams)
def retrieve_invoice_item(ctx: Ctx) -> dict[str, Any]:
    return ctx.state.get(_ITEM_KIND, ctx.path_params["id"], label="invoiceitem")


def _editable_item(ctx: Ctx) -> dict[str, Any]:
    item = ctx.state.get(_ITEM_KIND, ctx.path_params["id"], label="invoiceitem")
    if item["invoice"] is not None:
        invoice = ctx.state.get(_INVOICE_KIND, item["invoice"])
        if invoice["status"] != "draft":
            raise StripeAPIError.invalid(
                f"Invoice item {item['id']} is on invoice {invoice['id']}, which is {invoice['status']}; only items "
                "on draft invoices (or not yet invoiced) can be changed.",
                code="invoice_not_editable",
            )
    return item


@ROUTER.post("/v1/invoiceitems/{id}", params=p.InvoiceItemUpdateParams)
def update_invoice_item(ctx: Ctx) -> dict[str, Any]:
    item = _editable_item(ctx)
    params, state = ctx.params, ctx.state
    for unsupported in ("discounts", "tax_rates", "invoicing_rules"):
        if unsupported in params:
            raise StripeAPIError.invalid(f"`{unsupported}` is not supported by the fake.", param=unsupported)
    before = deep_copy(item)
    with atomic(state, _ITEM_KIND, _INVOICE_KIND):
        if any(k in params for k in ("amount", "pricing", "unit_amount_decimal", "quantity", "quantity_decimal")):
            priced = _amount_and_pricing(state, params, item)
            if priced["currency"] != item["currency"]:
                raise StripeAPIError.invalid("The currency of an invoice item cannot change.", param="pricing")
            item["amount"] = item["net_amount"] = priced["amount"]
            item["pricing"] = priced["pricing"]
            item["quantity"] = priced["quantity"] if priced["quantity"] is not None else 1
            item["quantity_decimal"] = priced.get("quantity_decimal")
        if "description" in params:
            item["description"] = params["description"] or None
        if "discountable" in params:
            item["discountable"] = params["discountable"]
        if "period" in params:
            item["period"] = {"start": params["period"]["start"], "end": params["period"]["end"]}
        if "metadata" in params:
            item["metadata"] = merge_metadata(item["metadata"], params["metadata"])
        meta = _meta(state, item["id"])
        if "tax_behavior" in params:
            meta["tax_behavior"] = params["tax_behavior"]
        if "tax_code" in params:
            meta["tax_code"] = params["tax_code"] or None
        if item["invoice"] is not None:
            recompute(state, state.get(_INVOICE_KIND, item["invoice"]))
    previous = changed(before, item)
    if previous:
        ctx.event("invoiceitem.updated", item, previous)
    return item


@ROUTER.delete("/v1/invoiceitems/{id}", params=p.InvoiceItemDeleteParams)
def delete_invoice_item(ctx: Ctx) -> dict[str, Any]:
    item = _editable_item(ctx)
    del ctx.state.table(_ITEM_KIND)[item["id"]]
    if item["invoice"] is not None:
        recompute(ctx.state, ctx.state.get(_INVOICE_KIND, item["invoice"]))
    ctx.event("invoiceitem.deleted", item)
    return {"id": item["id"], "object": "invoiceitem", "deleted": True}


@ROUTER.get("/v1/invoiceitems", params=p.InvoiceItemListParams)
def list_invoice_items(ctx: Ctx) -> dict[str, Any]:
    items = ctx.state.all(_ITEM_KIND)
    params = ctx.params
    if "customer" in params:
        items = [i for i in items if i["customer"] == params["customer"]]
    if "invoice" in params:
        items = [i for i in items if i["invoice"] == params["invoice"]]
    if "pending" in params:
        items = [i for i in items if (i["invoice"] is None) == params["pending"]]
    return paginate(ctx, items, "/v1/invoiceitems")


# -- totals and tax ---------------------------------------------------------------------------------


def items_of(state: FakeState, invoice_id: str) -> list[dict[str, Any]]:
    """The invoice's items in the order they were added."""
    return [i for i in state.table(_ITEM_KIND).values() if i["invoice"] == invoice_id]


def _line(state: FakeState, invoice: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": _meta(state, item["id"])["line_id"],
        "object": "line_item",
        "amount": item["amount"],
        "currency": item["currency"],
        "description": item["description"],
        "discount_amounts": [],
        "discountable": item["discountable"],
        "discounts": [],
        "invoice": invoice["id"],
        "livemode": False,
        "metadata": dict(item["metadata"]),
        "parent": {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": item["id"],
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
            "subscription_item_details": None,
        },
        "period": dict(item["period"]),
        "pretax_credit_amounts": [],
        "pricing": deep_copy(item["pricing"]),
        "quantity": item["quantity"],
        "quantity_decimal": item["quantity_decimal"],
        "subscription": None,
        "subtotal": item["amount"],
        "taxes": [],
    }


def recompute(state: FakeState, invoice: dict[str, Any], *, tax: dict[str, Any] | None = None) -> None:
    """Rebuild ``lines`` and every total from the invoice's items (exact integers, minor units).

    ``tax`` (from :func:`compute_tax`) maps line ids to their tax entries; without it lines carry none.
    """
    lines = [_line(state, invoice, item) for item in items_of(state, invoice["id"])]
    inclusive_tax = exclusive_tax = 0
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for line in lines:
        entry = (tax or {}).get(line["id"])
        if entry is None:
            continue
        line["taxes"] = [entry]
        if entry["tax_behavior"] == "inclusive":
            inclusive_tax += entry["amount"]
        else:
            exclusive_tax += entry["amount"]
        key = (entry["tax_rate_details"]["tax_rate"], entry["tax_behavior"])
        agg = totals.setdefault(key, {**deep_copy(entry), "amount": 0, "taxable_amount": 0})
        agg["amount"] += entry["amount"]
        agg["taxable_amount"] += entry["taxable_amount"]
    subtotal = sum(line["amount"] for line in lines)
    total = subtotal + exclusive_tax
    invoice["lines"] = {
        "object": "list",
        "data": lines,
        "has_more": False,
        "total_count": len(lines),
        "url": f"/v1/invoices/{invoice['id']}/lines",
    }
    invoice["subtotal"] = subtotal
    invoice["subtotal_excluding_tax"] = subtotal - inclusive_tax
    invoice["total_excluding_tax"] = subtotal - inclusive_tax
    invoice["total_taxes"] = list(totals.values())
    invoice["total"] = total
    invoice["amount_due"] = max(total, 0)
    invoice["amount_remaining"] = max(total, 0) - invoice["amount_paid"]


def compute_tax(state: FakeState, invoice: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
    """Fake Stripe Tax: ``(status, tax entries by line id, error message)``."""
    customer = state.find("customer", invoice["customer"])
    location = tax_location(customer)
    if location is None:
        return (
            "requires_location_inputs",
            {},
            "The customer's address is missing or not precise enough to calculate tax (a country is required; "
            "a postal code too for the US and Canada).",
        )
    country, region, rate = location
    entries: dict[str, Any] = {}
    for item in items_of(state, invoice["id"]):
        meta = _meta(state, item["id"])
        if item["amount"] < 0:
            return "failed", {}, f"Invoice item {item['id']} has a negative amount; automatic tax cannot apply to it."
        if meta.get("tax_behavior", "unspecified") == "unspecified":
            return (
                "failed",
                {},
                f"Invoice item {item['id']} has tax_behavior `unspecified`; automatic tax needs `inclusive` or "
                "`exclusive`.",
            )
        amount = item["amount"]
        if meta["tax_behavior"] == "exclusive":
            taxable = amount
            tax_amount = _round(amount * rate / 100)
        else:
            taxable = _round(amount * 100 / (100 + rate))
            tax_amount = amount - taxable
        jurisdiction = f"{country}-{region}" if region else country
        entries[meta["line_id"]] = {
            "amount": tax_amount,
            "tax_behavior": meta["tax_behavior"],
            "tax_rate_details": {"tax_rate": f"txr_fake_{jurisdiction}_{decimal_text(rate)}".replace(".", "_")},
            "taxability_reason": "standard_rated" if rate else "not_collecting",
            "taxable_amount": taxable,
            "type": "tax_rate_details",
        }
    return "complete", entries, None


# -- invoices ---------------------------------------------------------------------------------------


def _collection(params: dict[str, Any], current: dict[str, Any] | None, now: int) -> tuple[str, int | None]:
    method = params.get("collection_method") or (current or {}).get("collection_method") or "charge_automatically"
    days = params.get("days_until_due")
    if days is None and current is not None and "collection_method" not in params:
        days = current.get("_days_until_due")
    if method == "send_invoice" and days is None and "due_date" not in params:
        raise StripeAPIError.invalid(
            "Missing required param: days_until_due (or due_date) when collection_method is send_invoice.",
            param="days_until_due",
            code="parameter_missing",
        )
    if method == "charge_automatically" and ("days_until_due" in params or "due_date" in params):
        raise StripeAPIError.invalid(
            "`days_until_due` and `due_date` can only be set when collection_method is send_invoice.",
            param="days_until_due",
        )
    return method, days


def _check_unsupported(params: dict[str, Any]) -> None:
    for key in ("discounts", "default_tax_rates", "subscription", "from_invoice", "shipping_cost", "customer_account"):
        if key in params:
            raise StripeAPIError.invalid(f"`{key}` is not supported by the fake.", param=key)


@ROUTER.post("/v1/invoices", params=p.InvoiceCreateParams)
def create_invoice(ctx: Ctx) -> dict[str, Any]:
    state, params = ctx.state, ctx.params
    _check_unsupported(params)
    if "customer" not in params:
        raise StripeAPIError.invalid("Missing required param: customer.", param="customer", code="parameter_missing")
    customer = state.get("customer", params["customer"], label="customer", param="customer")
    method, days = _collection(params, None, ctx.now)
    currency = (params.get("currency") or customer.get("currency") or "usd").lower()
    due_date = params.get("due_date")
    if method == "send_invoice" and due_date is None:
        due_date = ctx.now + int(days or 0) * 86_400
    invoice = state.base_object(
        "in",
        "invoice",
        account_country="US",
        account_name="Tallybook (fake Stripe)",
        account_tax_ids=None,
        amount_due=0,
        amount_overpaid=0,
        amount_paid=0,
        amount_remaining=0,
        amount_shipping=0,
        application=None,
        attempt_count=0,
        attempted=False,
        auto_advance=params.get("auto_advance", False),
        automatic_tax={
            "disabled_reason": None,
            "enabled": bool((params.get("automatic_tax") or {}).get("enabled", False)),
            "liability": None,
            "provider": None,
            "status": None,
        },
        automatically_finalizes_at=None,
        billing_reason="manual",
        collection_method=method,
        currency=currency,
        custom_fields=None,
        customer=customer["id"],
        customer_address=deep_copy(customer.get("address")),
        customer_email=customer.get("email"),
        customer_name=customer.get("name"),
        customer_phone=customer.get("phone"),
        customer_shipping=None,
        customer_tax_exempt=customer.get("tax_exempt"),
        customer_tax_ids=[],
        default_payment_method=params.get("default_payment_method"),
        default_source=None,
        default_tax_rates=[],
        description=params.get("description"),
        discounts=[],
        due_date=due_date,
        effective_at=None,
        ending_balance=None,
        footer=params.get("footer"),
        from_invoice=None,
        hosted_invoice_url=None,
        invoice_pdf=None,
        issuer={"type": "self"},
        last_finalization_error=None,
        latest_revision=None,
        metadata=merge_metadata({}, params.get("metadata")),
        next_payment_attempt=None,
        number=None,
        on_behalf_of=None,
        parent=None,
        payments={"object": "list", "data": [], "has_more": False, "url": "/v1/invoice_payments"},
        period_end=ctx.now,
        period_start=ctx.now,
        post_payment_credit_notes_amount=0,
        pre_payment_credit_notes_amount=0,
        receipt_number=None,
        rendering=None,
        shipping_cost=None,
        shipping_details=None,
        starting_balance=customer.get("balance", 0),
        statement_descriptor=params.get("statement_descriptor"),
        status="draft",
        status_details=None,
        status_transitions={"finalized_at": None, "marked_uncollectible_at": None, "paid_at": None, "voided_at": None},
        subtotal=0,
        subtotal_excluding_tax=0,
        test_clock=None,
        threshold_reason=None,
        total=0,
        total_discount_amounts=[],
        total_excluding_tax=0,
        total_pretax_credit_amounts=[],
        total_taxes=[],
        webhooks_delivered_at=None,
    )
    with atomic(state, _INVOICE_KIND, _ITEM_KIND):
        state.insert(_INVOICE_KIND, invoice)
        state.internal.setdefault("invoices", {})[invoice["id"]] = {"days_until_due": days}
        if params.get("pending_invoice_items_behavior", "exclude") == "include":
            for item in state.table(_ITEM_KIND).values():
                if item["customer"] == customer["id"] and item["invoice"] is None and item["currency"] == currency:
                    item["invoice"] = invoice["id"]
        recompute(state, invoice)
    ctx.event("invoice.created", invoice)
    return invoice


@ROUTER.get("/v1/invoices/{id}", params=p.InvoiceRetrieveParams)
def retrieve_invoice(ctx: Ctx) -> dict[str, Any]:
    return ctx.state.get(_INVOICE_KIND, ctx.path_params["id"], label="invoice")


_DRAFT_FIELDS = ("auto_advance", "description", "footer", "statement_descriptor", "default_payment_method")


@ROUTER.post("/v1/invoices/{id}", params=p.InvoiceUpdateParams)
def update_invoice(ctx: Ctx) -> dict[str, Any]:
    state, params = ctx.state, ctx.params
    invoice = state.get(_INVOICE_KIND, ctx.path_params["id"], label="invoice")
    _check_unsupported(params)
    draft_only = [k for k in params if k not in ("metadata", "expand")]
    if draft_only and invoice["status"] != "draft":
        raise StripeAPIError.invalid(
            f"Invoice {invoice['id']} is {invoice['status']}; only `metadata` can be updated once an invoice is "
            f"finalized (got {', '.join(sorted(draft_only))}).",
            param=sorted(draft_only)[0],
            code="invoice_not_editable",
        )
    before = deep_copy(invoice)
    extra = state.internal.setdefault("invoices", {}).setdefault(invoice["id"], {})
    with atomic(state, _INVOICE_KIND):
        for key in _DRAFT_FIELDS:
            if key in params:
                invoice[key] = params[key] if params[key] != "" else None
        if "collection_method" in params or "days_until_due" in params or "due_date" in params:
            method, days = _collection(params, {**invoice, "_days_until_due": extra.get("days_until_due")}, ctx.now)
            invoice["collection_method"] = method
            extra["days_until_due"] = days if method == "send_invoice" else None
            if method == "send_invoice":
                invoice["due_date"] = params.get("due_date") or invoice["created"] + int(days or 0) * 86_400
            else:
                invoice["due_date"] = None
        if "automatic_tax" in params:
            invoice["automatic_tax"]["enabled"] = bool(params["automatic_tax"].get("enabled"))
            invoice["automatic_tax"]["status"] = None
        if "metadata" in params:
            invoice["metadata"] = merge_metadata(invoice["metadata"], params["metadata"])
    previous = changed(before, invoice)
    if previous:
        ctx.event("invoice.updated", invoice, previous)
    return invoice


@ROUTER.delete("/v1/invoices/{id}", params=p.InvoiceDeleteParams)
def delete_invoice(ctx: Ctx) -> dict[str, Any]:
    invoice = ctx.state.get(_INVOICE_KIND, ctx.path_params["id"], label="invoice")
    if invoice["status"] != "draft":
        raise StripeAPIError.invalid(
            f"Invoice {invoice['id']} is {invoice['status']}; only draft invoices can be deleted (void it instead).",
            code="invoice_not_editable",
        )
    for item in items_of(ctx.state, invoice["id"]):
        del ctx.state.table(_ITEM_KIND)[item["id"]]
    del ctx.state.table(_INVOICE_KIND)[invoice["id"]]
    ctx.event("invoice.deleted", invoice)
    return {"id": invoice["id"], "object": "invoice", "deleted": True}


@ROUTER.get("/v1/invoices", params=p.InvoiceListParams)
def list_invoices(ctx: Ctx) -> dict[str, Any]:
    items = ctx.state.all(_INVOICE_KIND)
    params = ctx.params
    for key in ("customer", "status", "collection_method"):
        if key in params:
            items = [i for i in items if i[key] == params[key]]
    return paginate(ctx, items, "/v1/invoices")


@ROUTER.get("/v1/invoices/{id}/lines", params=p.InvoiceLineItemListParams)
def list_invoice_lines(ctx: Ctx) -> dict[str, Any]:
    invoice = ctx.state.get(_INVOICE_KIND, ctx.path_params["id"], label="invoice")
    return paginate(ctx, list(invoice["lines"]["data"]), f"/v1/invoices/{invoice['id']}/lines", filter_created=False)


def _refuse_transition(invoice: dict[str, Any], action: str, allowed: tuple[str, ...]) -> None:
    if invoice["status"] not in allowed:
        raise StripeAPIError.invalid(
            f"You can only {action} an invoice whose status is {' or '.join(allowed)}; invoice {invoice['id']} is "
            f"{invoice['status']}.",
        )


def _finalization_failed(ctx: Ctx, invoice: dict[str, Any], code: str, message: str) -> StripeAPIError:
    invoice["last_finalization_error"] = {"code": code, "message": message, "type": "invalid_request_error"}
    ctx.event("invoice.finalization_failed", invoice)
    return StripeAPIError.business(message, code=code)


@ROUTER.post("/v1/invoices/{id}/finalize", params=p.InvoiceFinalizeInvoiceParams)
def finalize_invoice(ctx: Ctx) -> dict[str, Any]:
    state = ctx.state
    invoice = state.get(_INVOICE_KIND, ctx.path_params["id"], label="invoice")
    _refuse_transition(invoice, "finalize", ("draft",))
    tax: dict[str, Any] | None = None
    if invoice["automatic_tax"]["enabled"]:
        status, tax, message = compute_tax(state, invoice)
        invoice["automatic_tax"]["provider"] = "stripe"
        invoice["automatic_tax"]["status"] = status
        if status == "requires_location_inputs":
            raise _finalization_failed(ctx, invoice, "customer_tax_location_invalid", message or "")
        if status == "failed":
            raise _finalization_failed(ctx, invoice, "taxes_calculation_failed", message or "")
    customer = state.find("customer", invoice["customer"]) or {}
    counter = state.internal.setdefault("invoice_counter", {"next": 1})
    invoice["number"] = f"{state.invoice_prefix}-{counter['next']:04d}"
    counter["next"] += 1
    if "auto_advance" in ctx.params:
        invoice["auto_advance"] = ctx.params["auto_advance"]
    invoice["customer_address"] = deep_copy(customer.get("address"))
    invoice["customer_email"] = customer.get("email")
    invoice["customer_name"] = customer.get("name")
    recompute(state, invoice, tax=tax)
    invoice["last_finalization_error"] = None
    invoice["status"] = "open"
    invoice["effective_at"] = ctx.now
    invoice["status_transitions"]["finalized_at"] = ctx.now
    invoice["hosted_invoice_url"] = f"https://invoice.stripe.com/i/fake/{invoice['id']}"
    invoice["invoice_pdf"] = f"https://pay.stripe.com/invoice/fake/{invoice['id']}/pdf"
    invoice["ending_balance"] = invoice["starting_balance"]
    ctx.event("invoice.finalized", invoice)
    if invoice["amount_due"] == 0:  # Stripe marks zero-amount invoices paid on finalization
        invoice["status"] = "paid"
        invoice["status_transitions"]["paid_at"] = ctx.now
        ctx.event("invoice.paid", invoice)
    return invoice


def _record_payment(state: FakeState, invoice: dict[str, Any], now: int, out_of_band: bool) -> dict[str, Any]:
    payment = state.base_object(
        "inpay",
        "invoice_payment",
        amount_paid=invoice["amount_remaining"],
        amount_requested=invoice["amount_remaining"],
        currency=invoice["currency"],
        invoice=invoice["id"],
        is_default=True,
        payment={"type": "out_of_band_payment"}
        if out_of_band
        else {"type": "payment_intent", "payment_intent": new_id("pi")},
        status="paid",
        status_transitions={"canceled_at": None, "paid_at": now},
    )
    state.insert("invoice_payment", payment)
    invoice["payments"]["data"].insert(0, payment)
    return payment


@ROUTER.post("/v1/invoices/{id}/pay", params=p.InvoicePayParams)
def pay_invoice(ctx: Ctx) -> dict[str, Any]:
    state, params = ctx.state, ctx.params
    invoice = state.get(_INVOICE_KIND, ctx.path_params["id"], label="invoice")
    _refuse_transition(invoice, "pay", ("open", "uncollectible"))
    for unsupported in ("source", "mandate", "forgive"):
        if unsupported in params:
            raise StripeAPIError.invalid(f"`{unsupported}` is not supported by the fake.", param=unsupported)
    out_of_band = bool(params.get("paid_out_of_band"))
    if not out_of_band:
        customer = state.find("customer", invoice["customer"]) or {}
        method = (
            params.get("payment_method")
            or invoice.get("default_payment_method")
            or (customer.get("invoice_settings") or {}).get("default_payment_method")
        )
        if not method:
            raise StripeAPIError.business(
                f"Cannot charge a customer that has no active payment method (invoice {invoice['id']}); pass "
                "`payment_method`, set the invoice's or the customer's default, or use `paid_out_of_band`."
            )
        if not str(method).startswith("pm_"):
            raise StripeAPIError.missing("PaymentMethod", str(method), param="payment_method")
        failures = state.invoice_payment_failures
        if failures:
            decline = failures.pop(0)
            invoice["attempt_count"] += 1
            invoice["attempted"] = True
            ctx.event("invoice.payment_failed", invoice)
            raise StripeAPIError(
                402,
                "card_error",
                "Your card was declined.",
                code="card_declined",
                extra={"decline_code": decline},
            )
        invoice["attempt_count"] += 1
        invoice["attempted"] = True
    _record_payment(state, invoice, ctx.now, out_of_band)
    invoice["amount_paid"] += invoice["amount_remaining"]
    invoice["amount_remaining"] = 0
    invoice["status"] = "paid"
    invoice["status_transitions"]["paid_at"] = ctx.now
    ctx.event("invoice.paid", invoice)
    return invoice


@ROUTER.post("/v1/invoices/{id}/void", params=p.InvoiceVoidInvoiceParams)
def void_invoice(ctx: Ctx) -> dict[str, Any]:
    invoice = ctx.state.get(_INVOICE_KIND, ctx.path_params["id"], label="invoice")
    _refuse_transition(invoice, "void", ("open", "uncollectible"))
    invoice["status"] = "void"
    invoice["status_transitions"]["voided_at"] = ctx.now
    invoice["amount_remaining"] = 0
    ctx.event("invoice.voided", invoice)
    return invoice


@ROUTER.post("/v1/invoices/{id}/mark_uncollectible", params=p.InvoiceMarkUncollectibleParams)
def mark_uncollectible(ctx: Ctx) -> dict[str, Any]:
    invoice = ctx.state.get(_INVOICE_KIND, ctx.path_params["id"], label="invoice")
    _refuse_transition(invoice, "mark uncollectible", ("open",))
    invoice["status"] = "uncollectible"
    invoice["status_transitions"]["marked_uncollectible_at"] = ctx.now
    ctx.event("invoice.marked_uncollectible", invoice)
    return invoice
