"""Tallybook invoice lines as Stripe invoice items: keys, amounts, descriptions, parameters.

What the planner compares (`planner.DesiredItem`) is computed here from billing's `Invoice`, so the
planner itself never reads billing types.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from tallybook.billing.currency import minor_units
from tallybook.billing.invoicing import Invoice, Line
from tallybook.billing.profiles import BillingProfile
from tallybook.clock import to_micros
from tallybook.stripe.planner import DesiredItem

TIMES = "\u00d7"  # the multiplication sign, as in "API calls (1200 \u00d7 0.001 USD)"


def line_keys(lines: Sequence[Line]) -> list[str]:
    """A key per line that survives recomputation: what the line is (kind, subscription, rate card,
    service period, corrected invoice), not where it sits or what it costs. Lines with the same
    identity (rare) are told apart by their order."""
    seen: dict[str, int] = {}
    keys = []
    for line in lines:
        identity = "|".join(
            str(part)
            for part in (
                line.kind,
                line.subscription_id,
                line.rate_card_key,
                line.meter,
                to_micros(line.period.start),
                to_micros(line.period.end),
                line.corrects_invoice_id,
                (line.detail or {}).get("reason"),
            )
        )
        digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
        n = seen.get(digest, 0)
        seen[digest] = n + 1
        keys.append(digest if n == 0 else f"{digest}-{n}")
    return keys


def to_minor(amount: Decimal, currency: str) -> int:
    """Major units (already rounded to the currency's minor unit) to Stripe's integer amount."""
    scaled = amount.scaleb(minor_units(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {currency} is not rounded to the currency's minor unit")
    return int(scaled)


def from_minor(amount: int, currency: str) -> Decimal:
    return Decimal(amount).scaleb(-minor_units(currency))


def describe(line: Line, currency: str) -> str:
    """What the Stripe line says: the name, then "(quantity TIMES unit price)" for priced usage."""
    if line.quantity is not None and line.unit_price is not None:
        quantity, unit = f"{line.quantity.normalize():f}", f"{line.unit_price.normalize():f}"
        return f"{line.name} ({quantity} {TIMES} {unit} {currency.upper()})"
    if line.quantity is not None:
        return f"{line.name} ({line.quantity.normalize():f} units)"
    return line.name


def desired_items(invoice: Invoice, profile: BillingProfile, default_tax_code: str) -> tuple[list[DesiredItem], int]:
    """The Stripe items for the invoice's lines, and their total in minor units."""
    items = []
    total = 0
    for line, key in zip(invoice.lines, line_keys(invoice.lines), strict=True):
        amount = to_minor(line.amount, invoice.currency)
        total += amount
        tax_code = line.tax_code or default_tax_code
        metadata = {
            "tallybook_invoice_id": invoice.id,
            "tallybook_line_key": key,
            "tallybook_line_kind": line.kind,
            "tallybook_tax_code": tax_code,
        }
        if line.rate_card_key:
            metadata["tallybook_rate_card"] = line.rate_card_key
        if line.subscription_id:
            metadata["tallybook_subscription_id"] = line.subscription_id
        params: dict[str, Any] = {
            "amount": amount,
            "currency": invoice.currency.lower(),
            "description": describe(line, invoice.currency)[:500],
            "period": {"start": int(line.period.start.timestamp()), "end": int(line.period.end.timestamp())},
            "tax_code": tax_code,
            "metadata": metadata,
        }
        if profile.tax_enabled:
            params["tax_behavior"] = profile.tax_behavior
        fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        params["metadata"]["tallybook_fingerprint"] = fingerprint
        items.append(DesiredItem(key, fingerprint, params))
    return items, total


def collection(profile: BillingProfile) -> dict[str, Any]:
    """The Stripe invoice's collection parameters for the profile."""
    if profile.collection_method == "send_invoice":
        return {"collection_method": "send_invoice", "days_until_due": profile.days_until_due}
    return {"collection_method": "charge_automatically"}


__all__ = ["collection", "describe", "desired_items", "from_minor", "line_keys", "to_minor"]
