"""The seed scenario from the pricing issue: its meters and its plan, as API bodies.

$49/month platform fee (in advance), API calls at $0.001 each, storage at $0.01 per GB of the
month's peak (a MAX meter), compute at $0.0001 per second. The tests invoice it end to end
(tests/billing) and benchmarks/billing_run.py and benchmarks/stripe_invoices.py invoice it at scale,
so all of them bill exactly the same plan. (It was tallybook/billing/seed.py: test data does not
belong in the package; the demo has its own plan in tallybook/demo.py.)
"""

from __future__ import annotations

from typing import Any

SEED_METERS: list[dict[str, Any]] = [
    {"slug": "api_calls", "eventType": "api.calls", "aggregation": "SUM", "valueProperty": "$.value"},
    {"slug": "storage_gb", "eventType": "storage.gb", "aggregation": "MAX", "valueProperty": "$.value"},
    {"slug": "compute_seconds", "eventType": "compute", "aggregation": "SUM", "valueProperty": "$.seconds"},
]

SEED_PLAN: dict[str, Any] = {
    "key": "pro",
    "name": "Pro",
    "currency": "USD",
    "billingCadence": "P1M",
    "rateCards": [
        {"type": "flat_fee", "key": "platform", "name": "Platform fee", "price": {"type": "flat", "amount": "49"}},
        {
            "type": "usage_based",
            "key": "api_calls",
            "name": "API calls",
            "meterSlug": "api_calls",
            "price": {"type": "unit", "amount": "0.001"},
        },
        {
            "type": "usage_based",
            "key": "storage",
            "name": "Storage (GB, peak)",
            "meterSlug": "storage_gb",
            "price": {"type": "unit", "amount": "0.01"},
        },
        {
            "type": "usage_based",
            "key": "compute",
            "name": "Compute seconds",
            "meterSlug": "compute_seconds",
            "price": {"type": "unit", "amount": "0.0001"},
            "taxConfig": {"stripe": {"code": "txcd_10000000"}},
        },
    ],
}

__all__ = ["SEED_METERS", "SEED_PLAN"]
