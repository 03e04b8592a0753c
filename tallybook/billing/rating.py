"""Rating: pure functions that turn a quantity of usage into money. No I/O, no floats.

Every amount here is an unrounded Decimal in the currency's major unit; invoicing rounds each line
once with `tallybook.billing.currency.round_money`. The rules (docs/pricing.md has worked examples):

- **unit**: quantity * amount.
- **package**: packages = ⌈quantity / quantity_per_package⌉ (a started package is a whole one),
  charge = packages * amount. Zero usage is zero packages.
- **tiered, graduated**: tier *i* covers the quantities above the previous tier's `up_to` up to
  and including its own `up_to` (the last tier may be open). The units in each tier are priced at
  that tier's unit amount, and the flat amount of every tier the quantity reaches into is added.
- **tiered, volume**: the whole quantity is priced at the unit amount of the one tier the total
  falls in (`quantity ≤ up_to`, first match), plus that tier's flat amount.
- Zero usage reaches into no tier, so a tiered price charges nothing for it (no flat amounts).
- Negative quantities are refused: usage never goes below zero, and a credit is not a price.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, localcontext
from enum import StrEnum

from tallybook.billing.models import Commitments, PackagePrice, TieredPrice, TierMode, UnitPrice, UsagePrice
from tallybook.exact import PRECISION

# Significant digits for intermediate arithmetic: far more than any meter value times any price
# needs, so products and sums are exact and only the final per-line rounding loses digits.
_PRECISION = PRECISION
ZERO = Decimal(0)


@dataclass(frozen=True)
class TierLine:
    """The part of a tiered charge that one tier contributes."""

    tier_index: int  # 0-based position in TieredPrice.tiers
    quantity: Decimal  # units priced in this tier (volume: the whole quantity)
    unit_amount: Decimal
    flat_amount: Decimal
    amount: Decimal  # quantity * unit_amount + flat_amount


@dataclass(frozen=True)
class RatedUsage:
    amount: Decimal  # unrounded
    unit_price: Decimal | None  # the one price every unit got (unit, volume); None otherwise
    tiers: tuple[TierLine, ...] = ()  # tiered prices: one line per tier that charged something
    packages: Decimal | None = None  # package prices: the number of (started) packages


class CommitmentReason(StrEnum):
    MINIMUM_SPEND = "minimum_spend"  # lifted up to the minimum commitment
    MAXIMUM_SPEND = "maximum_spend"  # capped at the maximum commitment


@dataclass(frozen=True)
class CommittedAmount:
    amount: Decimal  # what is charged after the commitments
    adjustment: Decimal  # amount - the original: > 0 lifted to the minimum, < 0 capped, else 0
    reason: CommitmentReason | None  # None when no commitment applied


def _require_decimal(value: Decimal, name: str) -> None:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{name} must be a finite Decimal, got {value!r}")


def rate_usage(price: UsagePrice, quantity: Decimal) -> RatedUsage:
    """Charge `quantity` units under `price` (unrounded; see the module docs for the rules)."""
    _require_decimal(quantity, "quantity")
    if quantity < 0:
        raise ValueError(f"quantity must not be negative, got {quantity}; usage is never below zero")
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        if isinstance(price, UnitPrice):
            _require_decimal(price.amount, "unit price amount")
            return RatedUsage(amount=quantity * price.amount, unit_price=price.amount)
        if isinstance(price, PackagePrice):
            return _rate_package(price, quantity)
        if isinstance(price, TieredPrice):
            if price.mode is TierMode.GRADUATED:
                return _rate_graduated(price, quantity)
            if price.mode is TierMode.VOLUME:
                return _rate_volume(price, quantity)
            raise ValueError(f"unknown tier mode {price.mode!r}")
    raise ValueError(f"{type(price).__name__} is not a usage price (unit, package or tiered)")


def _rate_package(price: PackagePrice, quantity: Decimal) -> RatedUsage:
    _require_decimal(price.amount, "package price amount")
    _require_decimal(price.quantity_per_package, "quantity per package")
    if price.quantity_per_package <= 0:
        raise ValueError(f"quantity per package must be positive, got {price.quantity_per_package}")
    packages = (quantity / price.quantity_per_package).to_integral_value(rounding=ROUND_CEILING)
    return RatedUsage(amount=packages * price.amount, unit_price=None, packages=packages)


def _check_tiers(price: TieredPrice) -> None:
    if not price.tiers:
        raise ValueError("a tiered price needs at least one tier")
    previous = ZERO
    for index, tier in enumerate(price.tiers):
        _require_decimal(tier.unit_amount, f"tiers[{index}].unit_amount")
        _require_decimal(tier.flat_amount, f"tiers[{index}].flat_amount")
        if tier.up_to is None:
            if index != len(price.tiers) - 1:
                raise ValueError(f"tiers[{index}] is open (no up_to) but only the last tier may be")
            continue
        _require_decimal(tier.up_to, f"tiers[{index}].up_to")
        if tier.up_to <= previous:
            raise ValueError(f"tiers[{index}].up_to must be greater than {previous}, got {tier.up_to}")
        previous = tier.up_to


def _beyond_last_tier(price: TieredPrice, quantity: Decimal) -> ValueError:
    last = price.tiers[-1].up_to
    return ValueError(f"quantity {quantity} is above the last tier's up_to ({last}) and that tier is not open")


def _rate_graduated(price: TieredPrice, quantity: Decimal) -> RatedUsage:
    _check_tiers(price)
    lines: list[TierLine] = []
    lower = ZERO  # quantities above this bound belong to the current tier or later ones
    for index, tier in enumerate(price.tiers):
        if quantity <= lower:
            break
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        in_tier = upper - lower
        amount = in_tier * tier.unit_amount + tier.flat_amount
        lines.append(TierLine(index, in_tier, tier.unit_amount, tier.flat_amount, amount))
        if tier.up_to is None:
            lower = quantity
            break
        lower = tier.up_to
    if quantity > lower:
        raise _beyond_last_tier(price, quantity)
    total = sum((line.amount for line in lines), ZERO)
    return RatedUsage(amount=total, unit_price=None, tiers=tuple(lines))


def _rate_volume(price: TieredPrice, quantity: Decimal) -> RatedUsage:
    _check_tiers(price)
    if quantity == 0:
        return RatedUsage(amount=ZERO, unit_price=None, tiers=())
    for index, tier in enumerate(price.tiers):
        if tier.up_to is None or quantity <= tier.up_to:
            amount = quantity * tier.unit_amount + tier.flat_amount
            line = TierLine(index, quantity, tier.unit_amount, tier.flat_amount, amount)
            return RatedUsage(amount=amount, unit_price=tier.unit_amount, tiers=(line,))
    raise _beyond_last_tier(price, quantity)


def apply_commitments(amount: Decimal, commitments: Commitments) -> CommittedAmount:
    """Lift `amount` to the minimum spend or cap it at the maximum spend.

    Both bounds are optional. A minimum applies even when nothing was used (that is what a
    commitment is); the adjustment is what invoicing shows as its own line.
    """
    _require_decimal(amount, "amount")
    minimum, maximum = commitments.minimum, commitments.maximum
    if minimum is not None:
        _require_decimal(minimum, "minimum commitment")
    if maximum is not None:
        _require_decimal(maximum, "maximum commitment")
    if minimum is not None and maximum is not None and minimum > maximum:
        raise ValueError(f"minimum commitment {minimum} is greater than the maximum {maximum}")
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        if minimum is not None and amount < minimum:
            return CommittedAmount(minimum, minimum - amount, CommitmentReason.MINIMUM_SPEND)
        if maximum is not None and amount > maximum:
            return CommittedAmount(maximum, maximum - amount, CommitmentReason.MAXIMUM_SPEND)
    return CommittedAmount(amount, ZERO, None)


def prorate(amount: Decimal, covered_seconds: Decimal, period_seconds: Decimal) -> Decimal:
    """The share of a period's flat `amount` for `covered_seconds` of its `period_seconds`.

    amount * covered / period, unrounded (invoicing rounds the line). Seconds are exact: a period
    is measured in real elapsed seconds, so a 28-day February and a 31-day March each cost the
    full amount when fully covered, and half of February is 14 days' worth of it.
    """
    _require_decimal(amount, "amount")
    _require_decimal(covered_seconds, "covered_seconds")
    _require_decimal(period_seconds, "period_seconds")
    if period_seconds <= 0:
        raise ValueError(f"period_seconds must be positive, got {period_seconds}")
    if covered_seconds < 0:
        raise ValueError(f"covered_seconds must not be negative, got {covered_seconds}")
    if covered_seconds > period_seconds:
        raise ValueError(f"covered_seconds ({covered_seconds}) is longer than the period ({period_seconds})")
    if covered_seconds == period_seconds:
        return amount
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return amount * covered_seconds / period_seconds
