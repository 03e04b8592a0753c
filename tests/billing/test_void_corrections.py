"""A void is a change to the invoices it touches (both engines): a draft invoice is recomputed, and
an issued invoice stays as issued while the customer's next invoice carries a (negative) correction
line. The webhook side is in tests/test_voids_corrections.py."""

from __future__ import annotations

from typing import Any

import httpx

from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tests.billing_helpers import (
    a_month_of_events,
    create_customer,
    create_plan,
    ok,
    outbox,
    route_invoice_events,
    run_billing,
    send,
    subscribe,
    utc,
)


def void(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    return ok(client.post("/api/v1/events/void", json=body), 201)  # type: ignore[no-any-return]


def period_invoice(client: httpx.Client, status: str) -> dict[str, Any]:
    found = ok(client.get("/api/v1/billing/invoices", params={"limit": 1000, "status": status}))["items"]
    period = [i for i in found if i["kind"] == "period"]
    assert len(period) == 1, found
    return period[0]  # type: ignore[no-any-return]


def api_calls_line(invoice: dict[str, Any]) -> dict[str, Any]:
    return next(ln for ln in invoice["lines"] if ln["rateCardKey"] == "api_calls" and ln["type"] != "correction")


def seed(rt: Runtime, client: httpx.Client, clock: FixedClock) -> dict[str, Any]:
    route_invoice_events(rt)
    create_plan(client)
    create_customer(client)
    subscribe(client, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    run_billing(rt)
    clock.set(utc(2026, 2, 1, 0, 30))
    send(client, a_month_of_events())
    clock.set(utc(2026, 2, 1, 1, 0))
    run_billing(rt)
    draft = period_invoice(client, "draft")
    assert api_calls_line(draft)["quantity"] == "31000"
    assert draft["totals"]["total"] == "91.57"
    return draft


def test_a_void_updates_a_draft_invoice(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    draft = seed(rt, api, clock)
    clock.set(utc(2026, 2, 1, 2, 0))
    void(
        api,
        {
            "filter": {
                "subject": "acme",
                "type": "api.calls",
                "from": "2026-01-31T00:00:00Z",
                "to": "2026-02-01T00:00:00Z",
            },
            "reason": "the 31st was a load test",
        },
    )
    assert run_billing(rt)["updated"] == 1
    updated = ok(api.get(f"/api/v1/billing/invoices/{draft['id']}"))
    assert api_calls_line(updated)["quantity"] == "30000"
    assert updated["totals"]["total"] == "90.57"
    assert outbox(rt, "invoice.updated")[-1]["body"]["invoice"]["totals"]["total"] == "90.57"


def test_a_void_after_issue_leaves_the_invoice_and_corrects_the_next_one(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    draft = seed(rt, api, clock)
    clock.set(utc(2026, 2, 2, 9, 0))
    issued = ok(api.post(f"/api/v1/billing/invoices/{draft['id']}/approve"))
    assert issued["status"] == "issued"

    clock.set(utc(2026, 2, 3))
    record = void(
        api,
        {
            "filter": {
                "subject": "acme",
                "type": "api.calls",
                "from": "2026-01-20T00:00:00Z",
                "to": "2026-01-21T00:00:00Z",
            },
            "reason": "duplicate import",
        },
    )
    assert record["eventCount"] == 1
    run_billing(rt)
    # The issued invoice does not move, and recomputing it as of its asOf (before the void) gives
    # the same lines to the cent.
    again = ok(api.get(f"/api/v1/billing/invoices/{draft['id']}"))
    assert again["lines"] == issued["lines"] and again["totals"] == issued["totals"]
    assert [ln.row() for ln in rt.invoicing.recompute(draft["id"])] == [
        ln.row() for ln in rt.invoicing.get(draft["id"]).lines
    ]

    # The next invoice gives the voided usage back as a correction line.
    clock.set(utc(2026, 3, 1, 1, 0))
    run_billing(rt)
    february = period_invoice(api, "draft")
    corrections = [ln for ln in february["lines"] if ln["type"] == "correction"]
    assert len(corrections) == 1
    correction = corrections[0]
    assert correction["correctsInvoiceId"] == draft["id"]
    assert correction["quantity"] == "-1000"
    assert correction["previousQuantity"] == "31000"
    assert correction["amount"] == "-1.00"
    assert february["totals"]["total"] == "48.00"  # February's $49 platform fee minus $1.00
