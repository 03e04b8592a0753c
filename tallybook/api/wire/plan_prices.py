"""Prices in OpenMeter's JSON shape (unit, package, tiered, flat), read and written.

Amounts are decimal strings on the wire ("0.001"): a JSON number is accepted, but every amount
and quantity is checked against the bounds that keep rating exact (`catalog_model.AMOUNT_LIMIT`,
`MAX_DECIMAL_PLACES`). Readers collect every problem as (JSON path, message) and the caller
raises one `InvalidPlan` naming them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from tallybook.billing.catalog_model import (
    AMOUNT_LIMIT,
    MAX_DECIMAL_PLACES,
    MAX_TIERS,
    FieldErrors,
    InvalidPlan,
    plain,
)
from tallybook.billing.models import (
    Commitments,
    FlatPrice,
    PackagePrice,
    PaymentTerm,
    Tier,
    TieredPrice,
    TierMode,
    UnitPrice,
)


# -- JSON → model ----------------------------------------------------------------------------------
def read_decimal(value: Any, name: str, errors: FieldErrors, *, positive: bool = False) -> Decimal | None:
    """A non-negative (or positive) decimal from a JSON string or number; records an error instead."""
    if value is None:
        errors.append((name, 'is required: a decimal number written as a string, e.g. "0.001"'))
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        errors.append((name, 'must be a decimal number written as a string, e.g. "0.001"'))
        return None
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        errors.append((name, f"{value!r} is not a decimal number"))
        return None
    if not number.is_finite():
        errors.append((name, f"{value!r} is not a finite number"))
        return None
    if number < 0 or (positive and number == 0):
        errors.append((name, "must be greater than 0" if positive else "must not be negative"))
        return None
    if number >= AMOUNT_LIMIT:
        errors.append((name, f"must be less than {plain(AMOUNT_LIMIT)}"))
        return None
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_DECIMAL_PLACES:
        errors.append((name, f"has more than {MAX_DECIMAL_PLACES} decimal places"))
        return None
    if isinstance(exponent, int) and exponent > 0:
        number = number.quantize(Decimal(1))
    return number


def read_commitments(body: Mapping[str, Any], path: str, errors: FieldErrors) -> Commitments:
    before = len(errors)
    minimum = maximum = None
    if body.get("minimumAmount") is not None:
        minimum = read_decimal(body["minimumAmount"], f"{path}minimumAmount", errors)
    if body.get("maximumAmount") is not None:
        maximum = read_decimal(body["maximumAmount"], f"{path}maximumAmount", errors)
    if len(errors) == before and minimum is not None and maximum is not None and minimum > maximum:
        errors.append((f"{path}minimumAmount", f"must not be greater than maximumAmount ({plain(maximum)})"))
    return Commitments(minimum=minimum, maximum=maximum)


def _tiers(value: Any, path: str, errors: FieldErrors) -> tuple[Tier, ...]:
    if not isinstance(value, list) or not value:
        errors.append((path, "must be a list of at least one tier"))
        return ()
    if len(value) > MAX_TIERS:
        errors.append((path, f"must have at most {MAX_TIERS} tiers"))
        return ()
    tiers: list[Tier] = []
    previous: Decimal | None = None
    for index, raw in enumerate(value):
        here = f"{path}[{index}]"
        if not isinstance(raw, dict):
            errors.append((here, "must be an object with upToAmount, unitPrice and flatPrice"))
            continue
        last = index == len(value) - 1
        up_to: Decimal | None = None
        if raw.get("upToAmount") is None:
            if not last:
                errors.append((f"{here}.upToAmount", "is required: only the last tier may be open-ended"))
        else:
            up_to = read_decimal(raw["upToAmount"], f"{here}.upToAmount", errors, positive=True)
            if last:
                errors.append((f"{here}.upToAmount", "must be left out: the last tier is open-ended"))
            elif up_to is not None and previous is not None and up_to <= previous:
                errors.append((f"{here}.upToAmount", f"must be greater than the previous tier's ({plain(previous)})"))
            if up_to is not None:
                previous = up_to
        components: dict[str, Decimal] = {}
        for component, kind in (("unitPrice", "unit"), ("flatPrice", "flat")):
            part = raw.get(component)
            if part is None:
                continue
            if not isinstance(part, dict):
                errors.append((f"{here}.{component}", f'must be an object like {{"type": "{kind}", "amount": "1"}}'))
                continue
            if part.get("type", kind) != kind:
                errors.append((f"{here}.{component}.type", f"must be {kind!r}"))
            amount = read_decimal(part.get("amount"), f"{here}.{component}.amount", errors)
            if amount is not None:
                components[component] = amount
        if raw.get("unitPrice") is None and raw.get("flatPrice") is None:
            errors.append((here, "needs a unitPrice, a flatPrice or both"))
        tiers.append(
            Tier(
                up_to=up_to,
                unit_amount=components.get("unitPrice", Decimal(0)),
                flat_amount=components.get("flatPrice", Decimal(0)),
            )
        )
    return tuple(tiers)


def read_usage_price(
    raw: Mapping[str, Any], path: str, errors: FieldErrors
) -> tuple[UnitPrice | PackagePrice | TieredPrice | None, Commitments]:
    kind = raw.get("type")
    commitments = read_commitments(raw, f"{path}.", errors)
    if kind == "unit":
        amount = read_decimal(raw.get("amount"), f"{path}.amount", errors)
        return (UnitPrice(amount) if amount is not None else None), commitments
    if kind == "package":
        amount = read_decimal(raw.get("amount"), f"{path}.amount", errors)
        size = read_decimal(raw.get("quantityPerPackage"), f"{path}.quantityPerPackage", errors, positive=True)
        if amount is None or size is None:
            return None, commitments
        return PackagePrice(amount, size), commitments
    if kind == "tiered":
        mode = raw.get("mode")
        if mode not in ("graduated", "volume"):
            errors.append((f"{path}.mode", "must be 'graduated' or 'volume'"))
        tiers = _tiers(raw.get("tiers"), f"{path}.tiers", errors)
        if mode not in ("graduated", "volume"):
            return None, commitments
        return TieredPrice(TierMode(mode), tiers), commitments
    if kind == "flat":
        errors.append(
            (
                f"{path}.type",
                "a usage_based rate card needs a unit, package or tiered price; "
                "charge a fixed fee with a flat_fee rate card",
            )
        )
    elif kind == "dynamic":
        errors.append((f"{path}.type", "dynamic prices are not supported; use unit, package or tiered"))
    else:
        errors.append((f"{path}.type", "must be one of unit, package, tiered"))
    return None, commitments


def parse_usage_price(raw: Any, path: str = "price") -> tuple[UnitPrice | PackagePrice | TieredPrice, Commitments]:
    """A usage price in OpenMeter's shape → the model and its spend commitments (InvalidPlan if bad)."""
    errors: FieldErrors = []
    if not isinstance(raw, dict):
        raise InvalidPlan([(path, "must be an object with a type")])
    price, commitments = read_usage_price(raw, path, errors)
    if errors or price is None:
        raise InvalidPlan(errors or [(path, "is not a valid price")])
    return price, commitments


def read_flat_price(raw: Mapping[str, Any], path: str, errors: FieldErrors) -> FlatPrice | None:
    if raw.get("type") != "flat":
        errors.append((f"{path}.type", "a flat_fee rate card's price must have type 'flat'"))
        return None
    for extra in ("minimumAmount", "maximumAmount"):
        if raw.get(extra) is not None:
            errors.append((f"{path}.{extra}", "spend commitments apply to usage-based prices only"))
    term_text = raw.get("paymentTerm", PaymentTerm.IN_ADVANCE.value)
    term: PaymentTerm | None = None
    if term_text in (PaymentTerm.IN_ADVANCE.value, PaymentTerm.IN_ARREARS.value):
        term = PaymentTerm(term_text)
    else:
        errors.append((f"{path}.paymentTerm", "must be 'in_advance' or 'in_arrears'"))
    amount = read_decimal(raw.get("amount"), f"{path}.amount", errors)
    if amount is None or term is None:
        return None
    return FlatPrice(amount, term)


# -- model → JSON ----------------------------------------------------------------------------------
def commitments_json(commitments: Commitments) -> dict[str, str]:
    body: dict[str, str] = {}
    if commitments.minimum is not None:
        body["minimumAmount"] = plain(commitments.minimum)
    if commitments.maximum is not None:
        body["maximumAmount"] = plain(commitments.maximum)
    return body


def price_json(price: Any, commitments: Commitments | None = None) -> dict[str, Any]:
    """A price in OpenMeter's shape (amounts as decimal strings)."""
    if isinstance(price, FlatPrice):
        return {"type": "flat", "amount": plain(price.amount), "paymentTerm": price.payment_term.value}
    body: dict[str, Any]
    if isinstance(price, UnitPrice):
        body = {"type": "unit", "amount": plain(price.amount)}
    elif isinstance(price, PackagePrice):
        body = {
            "type": "package",
            "amount": plain(price.amount),
            "quantityPerPackage": plain(price.quantity_per_package),
        }
    elif isinstance(price, TieredPrice):
        tiers = []
        for tier in price.tiers:
            entry: dict[str, Any] = {}
            if tier.up_to is not None:
                entry["upToAmount"] = plain(tier.up_to)
            show_unit = tier.unit_amount != 0 or tier.flat_amount == 0
            entry["unitPrice"] = {"type": "unit", "amount": plain(tier.unit_amount)} if show_unit else None
            entry["flatPrice"] = {"type": "flat", "amount": plain(tier.flat_amount)} if tier.flat_amount != 0 else None
            tiers.append(entry)
        body = {"type": "tiered", "mode": price.mode.value, "tiers": tiers}
    else:
        raise TypeError(f"{type(price).__name__} is not a price")
    if commitments is not None:
        body.update(commitments_json(commitments))
    return body


__all__ = [
    "commitments_json",
    "parse_usage_price",
    "price_json",
    "read_commitments",
    "read_decimal",
    "read_flat_price",
    "read_usage_price",
]
