"""Data for the export and verify tests: events with exact decimals, a meter, an invoice with lines."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tallybook.clock import to_micros
from tallybook.runtime import Runtime
from tallybook.store.billing import invoice_lines, invoices
from tests.test_meters_helpers import add_customer, event, ingest, meter, utc

# The most digits a metered value may carry (12 before the point, 6 after: docs/refusals.md).
BIG = Decimal("123456789012.123456")


def seed(rt: Runtime) -> dict[str, Any]:
    """Three January events and one in February; a SUM meter over them; one issued invoice."""
    meter(rt, "tokens", "SUM", value_property="$.tokens", group_by={"model": "$.model"})
    ingest(
        rt,
        event(id="e1", subject="a", time=utc(2026, 1, 5, 10), data={"tokens": Decimal("0.1"), "model": "x"}),
        event(id="e2", subject="b", time=utc(2026, 1, 6, 11, 30), data={"tokens": BIG, "model": "y"}),
        event(id="e3", type="other", subject="a", time=utc(2026, 1, 7), data=None),
        event(id="e4", subject="a", time=utc(2026, 2, 1, 0, 0, 1), data={"tokens": 3, "model": "x"}),
    )
    rt.meters.catch_up()
    add_customer(rt, "cust_acme", "acme", ["a"])
    insert_invoice(rt, "inv_1", "cust_acme", utc(2026, 1, 1), utc(2026, 2, 1), ["49.00", "0.10", "5.90"])
    return {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}


def insert_invoice(
    rt: Runtime, invoice_id: str, customer_id: str, start: Any, end: Any, amounts: list[str], status: str = "issued"
) -> None:
    total = str(sum((Decimal(a) for a in amounts), Decimal("0.00")))
    now = to_micros(rt.clock.now())
    with rt.store.write() as conn:
        conn.execute(
            invoices.insert().values(
                id=invoice_id,
                customer_id=customer_id,
                currency="USD",
                kind="period",
                period_start_us=to_micros(start),
                period_end_us=to_micros(end),
                status=status,
                customer={"id": customer_id, "key": "acme", "name": "Acme, Inc."},
                subtotal=total,
                commitments="0.00",
                total=total,
                as_of_us=now,
                revision=1,
                created_us=now,
                updated_us=now,
                issued_us=now if status != "draft" else None,
            )
        )
        for position, amount in enumerate(amounts):
            conn.execute(
                invoice_lines.insert().values(
                    invoice_id=invoice_id,
                    position=position,
                    kind="usage" if position else "flat_fee",
                    name=f"line {position}",
                    meter="tokens" if position else None,
                    period_start_us=to_micros(start),
                    period_end_us=to_micros(end),
                    quantity="1",
                    unit_price=amount,
                    amount=amount,
                )
            )
