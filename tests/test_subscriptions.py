"""Subscriptions through the API, and what they put on invoices: proration on mid-period start,
plan change and cancel; anniversary periods from the 31st; N-day cadences; commitments; errors."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tallybook.billing.currency import round_money
from tallybook.billing.models import RoundingMode
from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tests.billing_helpers import (
    SEED_PLAN,
    client_for,
    create_customer,
    create_plan,
    ok,
    run_billing,
    send,
    subscribe,
    utc,
)
from tests.billing_helpers import build as build_runtime


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(utc(2026, 1, 1))


@pytest.fixture
def rt(database_url: str, clock: FixedClock) -> Iterator[Runtime]:
    runtime = build_runtime(database_url, clock)
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
def api(rt: Runtime) -> Iterator[httpx.Client]:
    client = client_for(rt)
    try:
        yield client
    finally:
        client.close()


def usd(value: Decimal) -> str:
    return str(round_money(value, "USD", RoundingMode.HALF_EVEN))


def invoices(api: httpx.Client) -> list[dict[str, Any]]:
    found = ok(api.get("/api/v1/billing/invoices", params={"limit": 1000}))["items"]
    return sorted(found, key=lambda i: i["period"]["from"])


def flat_lines(invoice: dict[str, Any]) -> list[dict[str, Any]]:
    return [line for line in invoice["lines"] if line["type"] == "flat_fee"]


def plan_variant(key: str, fee: str, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(SEED_PLAN)
    body["key"] = key
    body["name"] = key.title()
    body["rateCards"][0]["price"]["amount"] = fee
    body.update(changes)
    return body


def test_create_get_list(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    customer = create_customer(api, timezone="America/New_York")
    created = subscribe(api, "acme", activeFrom="2026-01-15T17:00:00Z")
    assert created["plan"] == {"key": "pro", "version": 1}
    assert created["billingCadence"] == "P1M" and created["currency"] == "USD"
    assert created["timezone"] == "America/New_York" and created["alignment"] == "anniversary"
    assert created["status"] == "scheduled"
    clock.set(utc(2026, 2, 20))
    got = ok(api.get(f"/api/v1/subscriptions/{created['id']}"))
    assert got["status"] == "active"
    assert got["currentPeriod"] == {"from": "2026-02-15T17:00:00Z", "to": "2026-03-15T16:00:00Z"}  # DST in March
    listed = ok(api.get("/api/v1/subscriptions", params={"customerId": customer["id"]}))["items"]
    assert [s["id"] for s in listed] == [created["id"]]
    assert api.get("/api/v1/subscriptions/01KDVDNA002XWHTYXZW6X08GE7").status_code == 404


def test_bad_requests_are_problems(rt: Runtime, api: httpx.Client) -> None:
    create_plan(api)
    create_customer(api)
    cases = [
        ({"customerKey": "acme"}, 400, "invalid-subscription"),
        ({"customerKey": "acme", "plan": {"key": "pro"}, "activeFrom": "2026-01-01T00:00:00"}, 400, None),
        ({"customerKey": "acme", "plan": {"key": "pro"}, "alignment": "lunar"}, 400, None),
        ({"customerKey": "nobody", "plan": {"key": "pro"}}, 404, "customer-not-found"),
        ({"customerKey": "acme", "plan": {"key": "nope"}}, 404, "plan-not-found"),
        (
            {
                "customerKey": "acme",
                "plan": {"key": "pro"},
                "activeFrom": "2026-02-01T00:00:00Z",
                "activeTo": "2026-01-01T00:00:00Z",
            },
            400,
            None,
        ),
    ]
    for body, status, code in cases:
        response = api.post("/api/v1/subscriptions", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        if code:
            assert response.json()["type"] == f"urn:tallybook:problem:{code}"


def test_currency_mismatch_and_overlap_are_refused(rt: Runtime, api: httpx.Client) -> None:
    create_plan(api)
    create_customer(api, currency="EUR")
    wrong = api.post("/api/v1/subscriptions", json={"customerKey": "acme", "plan": {"key": "pro"}})
    assert wrong.status_code == 400 and "EUR" in wrong.json()["detail"]
    create_customer(api, key="globex")
    subscribe(api, "globex", activeFrom="2026-01-01T00:00:00Z")
    overlap = api.post(
        "/api/v1/subscriptions",
        json={"customerKey": "globex", "plan": {"key": "pro"}, "activeFrom": "2026-03-01T00:00:00Z"},
    )
    assert overlap.status_code == 409
    assert overlap.json()["type"] == "urn:tallybook:problem:subscription-conflict"


def test_mid_period_start_prorates_the_flat_fee(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    create_customer(api)
    subscribe(api, "acme", activeFrom="2026-01-16T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 20))
    send(
        api,
        [
            ("api.calls", "acme", utc(2026, 1, 10), {"value": 999}),
            ("api.calls", "acme", utc(2026, 1, 17), {"value": 5}),
        ],
    )
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    (invoice,) = invoices(api)
    (fee,) = flat_lines(invoice)
    assert fee["amount"] == usd(Decimal(49) * 16 / 31) == "25.29"
    assert fee["period"] == {"from": "2026-01-16T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
    assert fee["proration"] == {"coveredSeconds": str(16 * 86400), "periodSeconds": str(31 * 86400)}
    usage = next(line for line in invoice["lines"] if line["rateCardKey"] == "api_calls")
    assert usage["quantity"] == "5"  # usage before the start does not count


def test_anniversary_from_january_31(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    create_customer(api)
    subscribe(api, "acme", activeFrom="2026-01-31T00:00:00Z")
    clock.set(utc(2026, 4, 1))
    run_billing(rt)
    periods = [i["period"] for i in invoices(api)]
    assert periods == [
        {"from": "2026-01-31T00:00:00Z", "to": "2026-02-28T00:00:00Z"},
        {"from": "2026-02-28T00:00:00Z", "to": "2026-03-31T00:00:00Z"},
    ]
    assert all(flat_lines(i)[0]["amount"] == "49.00" for i in invoices(api))  # full periods, full fee


def test_cancel_immediately_prorates_and_stops_billing(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 11, 0, 0))
    send(
        api,
        [
            ("api.calls", "acme", utc(2026, 1, 10), {"value": 100}),
            ("api.calls", "acme", utc(2026, 1, 11, 5), {"value": 1}),
        ],
    )
    canceled = ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", json={"timing": "immediate"}))
    assert canceled["activeTo"] == "2026-01-11T00:00:00Z" and canceled["status"] == "inactive"
    clock.set(utc(2026, 4, 1))
    run_billing(rt)
    (invoice,) = invoices(api)  # nothing after the cancel
    (fee,) = flat_lines(invoice)
    assert fee["amount"] == usd(Decimal(49) * 10 / 31) == "15.81"
    usage = next(line for line in invoice["lines"] if line["rateCardKey"] == "api_calls")
    assert usage["quantity"] == "100"  # the event after the cancel is not billed


def test_cancel_at_period_end(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-01-10T00:00:00Z")
    clock.set(utc(2026, 2, 20))
    canceled = ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", json={"timing": "next_billing_cycle"}))
    assert canceled["activeTo"] == "2026-03-10T00:00:00Z" and canceled["status"] == "canceled"
    clock.set(utc(2026, 6, 1))
    run_billing(rt)
    found = invoices(api)
    assert [i["period"]["to"] for i in found] == ["2026-02-10T00:00:00Z", "2026-03-10T00:00:00Z"]
    assert [flat_lines(i)[0]["amount"] for i in found] == ["49.00", "49.00"]
    again = api.post(f"/api/v1/subscriptions/{sub['id']}/cancel")
    assert again.status_code == 409


def test_plan_change_mid_period_bills_both_parts_on_one_invoice(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    create_plan(api)
    create_plan(api, plan_variant("team", "99"))
    create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-04-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 4, 21))
    send(
        api,
        [
            ("api.calls", "acme", utc(2026, 4, 10), {"value": 3000}),
            ("api.calls", "acme", utc(2026, 4, 20), {"value": 1000}),
        ],
    )
    changed = ok(api.post(f"/api/v1/subscriptions/{sub['id']}/change", json={"plan": {"key": "team"}}))
    assert changed["current"]["activeTo"] == "2026-04-21T00:00:00Z"
    assert changed["next"]["activeFrom"] == "2026-04-21T00:00:00Z"
    assert changed["next"]["previousSubscriptionId"] == sub["id"]
    assert changed["next"]["plan"] == {"key": "team", "version": 1}
    send(api, [("api.calls", "acme", utc(2026, 4, 25), {"value": 500})])
    clock.set(utc(2026, 5, 1, 1))
    run_billing(rt)
    (invoice,) = invoices(api)
    fees = flat_lines(invoice)
    assert [f["amount"] for f in fees] == [usd(Decimal(49) * 20 / 30), usd(Decimal(99) * 10 / 30)] == ["32.67", "33.00"]
    calls = [line["quantity"] for line in invoice["lines"] if line["rateCardKey"] == "api_calls"]
    assert calls == ["4000", "500"]  # each plan bills the usage in its own part of the period


def test_every_30_days(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api, plan_variant("monthly30", "30", billingCadence="P30D"))
    create_customer(api)
    subscribe(api, "acme", plan="monthly30", activeFrom="2026-01-05T12:00:00Z")
    clock.set(utc(2026, 3, 10))
    run_billing(rt)
    assert [i["period"] for i in invoices(api)] == [
        {"from": "2026-01-05T12:00:00Z", "to": "2026-02-04T12:00:00Z"},
        {"from": "2026-02-04T12:00:00Z", "to": "2026-03-06T12:00:00Z"},
    ]


def test_commitments(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    body = plan_variant("committed", "10", commitments={"minimumAmount": "50"})
    body["rateCards"][1]["price"]["maximumAmount"] = "2"  # API calls capped at $2
    create_plan(api, body)
    create_customer(api)
    subscribe(api, "acme", plan="committed", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 20))
    send(api, [("api.calls", "acme", utc(2026, 1, 10), {"value": 5000})])
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    (invoice,) = invoices(api)
    kinds = [(line["type"], line["amount"]) for line in invoice["lines"]]
    assert ("usage_based", "5.00") in kinds
    assert ("commitment", "-3.00") in kinds  # the cap
    # 10 (fee) + 2 (capped calls) = 12, lifted to the 50 minimum.
    assert ("commitment", "38.00") in kinds
    assert invoice["totals"] == {"amount": "15.00", "commitments": "35.00", "total": "50.00"}


def test_tiered_line_shows_its_tiers(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    body = plan_variant("tiered", "0")
    body["rateCards"][1]["price"] = {
        "type": "tiered",
        "mode": "graduated",
        "tiers": [
            {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0"}},
            {"upToAmount": "10000", "unitPrice": {"type": "unit", "amount": "0.002"}},
            {"unitPrice": {"type": "unit", "amount": "0.001"}, "flatPrice": {"type": "flat", "amount": "5"}},
        ],
    }
    create_plan(api, body)
    create_customer(api)
    subscribe(api, "acme", plan="tiered", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 20))
    send(api, [("api.calls", "acme", utc(2026, 1, 10), {"value": 12000})])
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    (invoice,) = invoices(api)
    line = next(line for line in invoice["lines"] if line["rateCardKey"] == "api_calls")
    assert line["quantity"] == "12000" and "unitPrice" not in line
    assert [(t["tier"], t["quantity"], t["amount"]) for t in line["tiers"]] == [
        (1, "1000", "0"),
        (2, "9000", "18.000"),
        (3, "2000", "7.000"),
    ]
    assert line["amount"] == "25.00"
    html = api.get(f"/api/v1/billing/invoices/{invoice['id']}/html").text
    assert "tier 3" in html and "25.00" in html


def test_anniversary_from_january_31_in_a_customer_zone(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    create_customer(api, timezone="America/New_York")
    subscribe(api, "acme", activeFrom="2028-02-01T04:30:00Z")  # 31 January 2028, 23:30 in New York
    clock.set(utc(2028, 5, 2))
    run_billing(rt)
    assert [i["period"]["to"] for i in invoices(api)] == [
        "2028-03-01T04:30:00Z",  # 29 February 23:30 EST (a leap year)
        "2028-04-01T03:30:00Z",  # 31 March 23:30 EDT
        "2028-05-01T03:30:00Z",  # 30 April 23:30 EDT
    ]
