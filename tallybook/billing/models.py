"""The catalog's shapes: prices, rate cards and plans. Plain frozen dataclasses, no I/O.

These are the contract between the catalog (plans API, versioning), rating (pure functions that
turn a quantity into money) and invoicing (subscriptions, periods, invoices). Amounts are Decimal
in the currency's major unit (dollars, not cents); rounding to minor units happens once per
invoice line, in invoicing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any


class PaymentTerm(StrEnum):
    IN_ADVANCE = "in_advance"  # a flat fee charged at the start of the period it covers
    IN_ARREARS = "in_arrears"  # charged at the end


class TierMode(StrEnum):
    GRADUATED = "graduated"  # each unit is priced by the tier it falls in
    VOLUME = "volume"  # every unit is priced by the tier the total falls in


class RoundingMode(StrEnum):
    HALF_EVEN = "half_even"
    HALF_UP = "half_up"


class BillingCadence(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    QUARTERLY = "quarterly"
    YEARLY = "yearly"
    EVERY_N_DAYS = "every_n_days"  # with `Cadence.days`


@dataclass(frozen=True)
class Cadence:
    kind: BillingCadence
    days: int | None = None  # only for EVERY_N_DAYS (e.g. 30-day periods)


@dataclass(frozen=True)
class FlatPrice:
    """A fixed amount per billing period."""

    amount: Decimal
    payment_term: PaymentTerm = PaymentTerm.IN_ADVANCE


@dataclass(frozen=True)
class UnitPrice:
    """`amount` per unit of usage."""

    amount: Decimal


@dataclass(frozen=True)
class PackagePrice:
    """`amount` per started package of `quantity_per_package` units (partial packages round up)."""

    amount: Decimal
    quantity_per_package: Decimal


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None  # inclusive upper bound of the tier; None = open last tier
    unit_amount: Decimal = Decimal(0)
    flat_amount: Decimal = Decimal(0)


@dataclass(frozen=True)
class TieredPrice:
    mode: TierMode
    tiers: tuple[Tier, ...]


UsagePrice = UnitPrice | PackagePrice | TieredPrice


@dataclass(frozen=True)
class Commitments:
    """Spend bounds for one rate card (or a whole invoice): the charge is lifted to `minimum` and
    capped at `maximum`."""

    minimum: Decimal | None = None
    maximum: Decimal | None = None


@dataclass(frozen=True)
class RateCard:
    """One line of a plan: a flat fee (price is FlatPrice, meter None) or usage on a meter."""

    key: str
    name: str
    price: FlatPrice | UsagePrice
    meter: str | None = None  # meter slug, for usage-based rate cards
    tax_code: str | None = None  # Stripe tax code, e.g. txcd_10103001; None → settings default
    commitments: Commitments = field(default_factory=Commitments)
    description: str | None = None  # shown on invoices under the name (added by the catalog)
    # Entitlements (tallybook/entitlements): the feature this card entitles to, and OpenMeter's
    # `entitlementTemplate` ({"type": "metered" | "boolean" | "static", ...}) a subscription creates.
    feature_key: str | None = None
    entitlement_template: dict[str, Any] | None = None


@dataclass(frozen=True)
class PlanVersion:
    """A published version is immutable; a change is a new version."""

    plan_key: str
    version: int
    name: str
    currency: str  # ISO 4217
    cadence: Cadence
    rate_cards: tuple[RateCard, ...]
    commitments: Commitments = field(default_factory=Commitments)  # per invoice
    status: str = "draft"  # draft | published | archived
