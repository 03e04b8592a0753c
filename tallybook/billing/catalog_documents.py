"""The catalog's stored form: a plan version's pricing as one canonical JSON document, and back.

The document is snake_case and one-to-one with `tallybook.billing.models` (amounts as plain
decimal strings, so nothing is lost to floats). It is not the API's shape: that one follows
OpenMeter and lives in `tallybook.api.wire.plans`, so the API can change without a migration of
stored plans.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from tallybook.billing.catalog_model import Plan, parse_cadence, plain
from tallybook.billing.catalog_ports import PlanVersionRow
from tallybook.billing.models import (
    Commitments,
    FlatPrice,
    PackagePrice,
    PaymentTerm,
    PlanVersion,
    RateCard,
    Tier,
    TieredPrice,
    TierMode,
    UnitPrice,
)
from tallybook.clock import from_micros


def _amount_or_none(value: Decimal | None) -> str | None:
    return None if value is None else plain(value)


def _decimal_or_none(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _price_document(price: Any) -> dict[str, Any]:
    if isinstance(price, FlatPrice):
        return {"type": "flat", "amount": plain(price.amount), "payment_term": price.payment_term.value}
    if isinstance(price, UnitPrice):
        return {"type": "unit", "amount": plain(price.amount)}
    if isinstance(price, PackagePrice):
        return {
            "type": "package",
            "amount": plain(price.amount),
            "quantity_per_package": plain(price.quantity_per_package),
        }
    if isinstance(price, TieredPrice):
        return {
            "type": "tiered",
            "mode": price.mode.value,
            "tiers": [
                {
                    "up_to": _amount_or_none(tier.up_to),
                    "unit_amount": plain(tier.unit_amount),
                    "flat_amount": plain(tier.flat_amount),
                }
                for tier in price.tiers
            ],
        }
    raise TypeError(f"{type(price).__name__} is not a price")


def _price_from_document(doc: Mapping[str, Any]) -> FlatPrice | UnitPrice | PackagePrice | TieredPrice:
    kind = doc["type"]
    if kind == "flat":
        return FlatPrice(Decimal(doc["amount"]), PaymentTerm(doc["payment_term"]))
    if kind == "unit":
        return UnitPrice(Decimal(doc["amount"]))
    if kind == "package":
        return PackagePrice(Decimal(doc["amount"]), Decimal(doc["quantity_per_package"]))
    if kind == "tiered":
        tiers = tuple(
            Tier(_decimal_or_none(t["up_to"]), Decimal(t["unit_amount"]), Decimal(t["flat_amount"]))
            for t in doc["tiers"]
        )
        return TieredPrice(TierMode(doc["mode"]), tiers)
    raise ValueError(f"stored price has unknown type {kind!r}")


def _commitments_document(commitments: Commitments) -> dict[str, str | None]:
    return {"minimum": _amount_or_none(commitments.minimum), "maximum": _amount_or_none(commitments.maximum)}


def _commitments_from_document(doc: Mapping[str, Any]) -> Commitments:
    return Commitments(_decimal_or_none(doc.get("minimum")), _decimal_or_none(doc.get("maximum")))


def plan_document(spec: PlanVersion) -> dict[str, Any]:
    """The canonical JSON the store keeps for a version's pricing (rate cards, invoice commitments)."""
    return {
        "rate_cards": [
            {
                "key": card.key,
                "name": card.name,
                "description": card.description,
                "meter": card.meter,
                "tax_code": card.tax_code,
                "price": _price_document(card.price),
                "commitments": _commitments_document(card.commitments),
                **(
                    {"feature_key": card.feature_key, "entitlement": card.entitlement_template}
                    if card.entitlement_template is not None
                    else {}
                ),
            }
            for card in spec.rate_cards
        ],
        "commitments": _commitments_document(spec.commitments),
    }


def spec_from_row(row: PlanVersionRow) -> PlanVersion:
    doc = row.document
    cards = tuple(
        RateCard(
            key=card["key"],
            name=card["name"],
            price=_price_from_document(card["price"]),
            meter=card.get("meter"),
            tax_code=card.get("tax_code"),
            commitments=_commitments_from_document(card.get("commitments") or {}),
            description=card.get("description"),
            feature_key=card.get("feature_key"),
            entitlement_template=card.get("entitlement"),
        )
        for card in doc["rate_cards"]
    )
    return PlanVersion(
        plan_key=row.plan_key,
        version=row.version,
        name=row.name,
        currency=row.currency,
        cadence=parse_cadence(row.billing_cadence),
        rate_cards=cards,
        commitments=_commitments_from_document(doc.get("commitments") or {}),
        status=row.status,
    )


def plan_from_row(row: PlanVersionRow) -> Plan:
    return Plan(
        id=row.id,
        spec=spec_from_row(row),
        description=row.description,
        metadata=row.metadata,
        created_at=from_micros(row.created_us),
        updated_at=from_micros(row.updated_us),
        published_at=from_micros(row.published_us) if row.published_us is not None else None,
        archived_at=from_micros(row.archived_us) if row.archived_us is not None else None,
        deleted_at=from_micros(row.deleted_us) if row.deleted_us is not None else None,
    )


__all__ = ["plan_document", "plan_from_row", "spec_from_row"]
