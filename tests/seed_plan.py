"""The seed scenario from the pricing issue, as an API plan body (test data: it was
tallybook/billing/seed.py, but only the tests and the benchmarks use it, not the demo).

$49/month platform fee (in advance), API calls at $0.001 each, storage at $0.01 per GB of the
month's peak (a MAX meter), compute at $0.0001 per second. The tests invoice it end to end and
benchmarks/billing_run.py invoices it at scale, so both bill exactly the same plan.
"""

from __future__ import annotations

from typing import Any

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
