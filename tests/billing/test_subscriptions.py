"""Subscriptions through the API, and what they put on invoices: proration on mid-period start,
plan change and cancel; anniversary periods from the 31st; N-day cadences; commitments; errors."""

from __future__ import annotations

import copy
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def usd(value: Decimal) -> str:
    return str(round_money(value, "USD", RoundingMode.HALF_EVEN))


def invoices(rt: Runtime, api: httpx.Client, kind: str = "period") -> list[dict[str, Any]]:
    """Invoices of one kind (period: drafted at a period end; opening: at a subscription start)."""
    found = ok(api.get("/api/v1/billing/invoices", params={"limit": 1000}))["items"]
    found = [i for i in found if rt.invoicing.get(i["id"]).kind == kind]
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
    # The opening invoice (drafted at the start) bills the rest of January in advance, prorated.
    (opening,) = invoices(rt, api, "opening")
    assert opening["period"] == {"from": "2026-01-16T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
    (fee,) = flat_lines(opening)
    assert fee["amount"] == usd(Decimal(49) * 16 / 31) == "25.29"
    assert fee["period"] == {"from": "2026-01-16T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
    assert fee["proration"] == {"coveredSeconds": str(16 * 86400), "periodSeconds": str(31 * 86400)}
    assert fee["paymentTerm"] == "in_advance"
    # January's invoice: January's usage and all of February's fee.
    (invoice,) = invoices(rt, api)
    (next_fee,) = flat_lines(invoice)
    assert next_fee["amount"] == "49.00" and "proration" not in next_fee
    assert next_fee["period"] == {"from": "2026-02-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}
    usage = next(line for line in invoice["lines"] if line["rateCardKey"] == "api_calls")
    assert usage["quantity"] == "5"  # usage before the start does not count


def test_anniversary_from_january_31(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    create_customer(api)
    subscribe(api, "acme", activeFrom="2026-01-31T00:00:00Z")
    clock.set(utc(2026, 4, 1))
    run_billing(rt)
    periods = [i["period"] for i in invoices(rt, api)]
    assert periods == [
        {"from": "2026-01-31T00:00:00Z", "to": "2026-02-28T00:00:00Z"},
        {"from": "2026-02-28T00:00:00Z", "to": "2026-03-31T00:00:00Z"},
    ]
    assert all(flat_lines(i)[0]["amount"] == "49.00" for i in invoices(rt, api))  # full periods, full fee
    assert [flat_lines(i)[0]["period"]["from"] for i in invoices(rt, api)] == [
        "2026-02-28T00:00:00Z",  # each period's invoice bills the next period's fee
        "2026-03-31T00:00:00Z",
    ]
    (opening,) = invoices(rt, api, "opening")
    assert flat_lines(opening)[0]["period"] == {"from": "2026-01-31T00:00:00Z", "to": "2026-02-28T00:00:00Z"}


def test_cancel_immediately_prorates_and_stops_billing(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    assert run_billing(rt)["created"] == 1  # the opening invoice: all of January's $49 in advance
    (opening,) = invoices(rt, api, "opening")
    assert [f["amount"] for f in flat_lines(opening)] == ["49.00"]
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
    # The opening invoice is still a draft: the credit goes on it at once, next to the fee it gives back.
    (opening,) = invoices(rt, api, "opening")
    (credit,) = [line for line in opening["lines"] if line["type"] == "credit"]
    # Paid 49.00 for January, used 10 days: 49 * 10/31 = 15.81, so 33.19 comes back.
    assert credit["amount"] == usd(Decimal(49) * 10 / 31 - 49) == "-33.19"
    assert credit["period"] == {"from": "2026-01-11T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
    assert credit["name"] == "Credit: Platform fee (unused time)"
    assert credit["paymentTerm"] == "in_advance" and "correctsInvoiceId" not in credit
    assert opening["totals"]["total"] == "15.81" and opening["revision"] == 2
    clock.set(utc(2026, 4, 1))
    run_billing(rt)
    (invoice,) = invoices(rt, api)  # nothing after the cancel
    assert flat_lines(invoice) == []  # no February fee: the subscription ended
    assert [line for line in invoice["lines"] if line["type"] == "credit"] == []  # given back already
    usage = next(line for line in invoice["lines"] if line["rateCardKey"] == "api_calls")
    assert usage["quantity"] == "100"  # the event after the cancel is not billed
    assert invoice["totals"]["total"] == "0.10"
    assert run_billing(rt)["created"] == 0


def test_cancel_before_the_opening_invoice_is_drafted_needs_no_credit(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    create_plan(api)
    create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 11))
    ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", json={"timing": "immediate"}))
    clock.set(utc(2026, 2, 1, 1))
    assert run_billing(rt)["created"] == 2
    (opening,) = invoices(rt, api, "opening")
    assert [f["amount"] for f in flat_lines(opening)] == ["15.81"]  # drafted late: only the time used
    (invoice,) = invoices(rt, api)
    assert [line["type"] for line in invoice["lines"] if line["type"] in ("flat_fee", "credit")] == []


def test_cancel_at_period_end(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-01-10T00:00:00Z")
    clock.set(utc(2026, 2, 20))
    canceled = ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", json={"timing": "next_billing_cycle"}))
    assert canceled["activeTo"] == "2026-03-10T00:00:00Z" and canceled["status"] == "canceled"
    clock.set(utc(2026, 6, 1))
    run_billing(rt)
    found = invoices(rt, api)
    assert [i["period"]["to"] for i in found] == ["2026-02-10T00:00:00Z", "2026-03-10T00:00:00Z"]
    # The first period's fee on the opening invoice, the second's on the first period's invoice,
    # nothing in advance on the last one (the subscription ends with its period).
    assert [[f["amount"] for f in flat_lines(i)] for i in invoices(rt, api, "opening") + found] == [
        ["49.00"],
        ["49.00"],
        [],
    ]
    again = api.post(f"/api/v1/subscriptions/{sub['id']}/cancel")
    assert again.status_code == 409


def test_plan_change_mid_period_bills_both_parts_on_one_invoice(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    create_plan(api)
    create_plan(api, plan_variant("team", "99"))
    create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-04-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 4, 1))
    run_billing(rt)
    (opening,) = invoices(rt, api, "opening")
    assert [f["amount"] for f in flat_lines(opening)] == ["49.00"]
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
    # The old plan's April fee was paid in full on the opening draft: 49 * 20/30 = 32.67 used, 16.33
    # back, on that draft at once.
    (opening,) = invoices(rt, api, "opening")
    (credit,) = [line for line in opening["lines"] if line["type"] == "credit"]
    assert credit["amount"] == usd(Decimal(49) * 20 / 30 - 49) == "-16.33"
    assert credit["subscriptionId"] == sub["id"]
    assert credit["period"] == {"from": "2026-04-21T00:00:00Z", "to": "2026-05-01T00:00:00Z"}
    clock.set(utc(2026, 5, 1, 1))
    run_billing(rt)
    (invoice,) = invoices(rt, api)  # the new plan has no opening invoice of its own
    assert len(invoices(rt, api, "opening")) == 1
    assert [line for line in invoice["lines"] if line["type"] == "credit"] == []
    # The new plan: the rest of April (99 * 10/30) and May in advance.
    fees = [(f["subscriptionId"], f["amount"], f["period"]["from"]) for f in flat_lines(invoice)]
    new_id = changed["next"]["id"]
    assert fees == [
        (new_id, usd(Decimal(99) * 10 / 30), "2026-04-21T00:00:00Z"),
        (new_id, "99.00", "2026-05-01T00:00:00Z"),
    ]
    assert fees[0][1] == "33.00"
    calls = [line["quantity"] for line in invoice["lines"] if line["rateCardKey"] == "api_calls"]
    assert calls == ["4000", "500"]  # each plan bills the usage in its own part of the period
    # Over the two invoices April costs exactly each plan's prorated share.
    april = Decimal(flat_lines(opening)[0]["amount"]) + Decimal(credit["amount"]) + Decimal(fees[0][1])
    assert april == Decimal("32.67") + Decimal("33.00")
    # A late event refreshes the draft: usage changes, the lines billed in advance stay as drafted.
    clock.set(utc(2026, 5, 1, 2))
    send(api, [("api.calls", "acme", utc(2026, 4, 28), {"value": 100})])
    assert run_billing(rt)["updated"] == 1
    (refreshed,) = invoices(rt, api)
    assert flat_lines(refreshed) == flat_lines(invoice)
    assert [line["quantity"] for line in refreshed["lines"] if line["rateCardKey"] == "api_calls"] == ["4000", "600"]
    assert [ln.row() for ln in rt.invoicing.recompute(refreshed["id"])] == [
        ln.row() for ln in rt.invoicing.get(refreshed["id"]).lines
    ]


def test_every_30_days(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api, plan_variant("monthly30", "30", billingCadence="P30D"))
    create_customer(api)
    subscribe(api, "acme", plan="monthly30", activeFrom="2026-01-05T12:00:00Z")
    clock.set(utc(2026, 3, 10))
    run_billing(rt)
    assert [i["period"] for i in invoices(rt, api)] == [
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
    (invoice,) = invoices(rt, api)
    kinds = [(line["type"], line["amount"]) for line in invoice["lines"]]
    assert ("usage_based", "5.00") in kinds
    assert ("commitment", "-3.00") in kinds  # the cap
    # 10 (fee) + 2 (capped calls) = 12, lifted to the 50 minimum.
    assert ("commitment", "38.00") in kinds
    # January's $10 fee (on the opening invoice) counts toward January's minimum; February's $10
    # on this invoice counts toward February's: 5 + 10 (February's fee) - 3 + 38 = 50.
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
    (invoice,) = invoices(rt, api)
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
    assert [i["period"]["to"] for i in invoices(rt, api)] == [
        "2028-03-01T04:30:00Z",  # 29 February 23:30 EST (a leap year)
        "2028-04-01T03:30:00Z",  # 31 March 23:30 EDT
        "2028-05-01T03:30:00Z",  # 30 April 23:30 EDT
    ]


def test_plan_change_at_the_period_end_bills_the_new_fee_in_advance(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    create_plan(api)
    create_plan(api, plan_variant("team", "99"))
    create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-04-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 4, 20))
    changed = ok(
        api.post(
            f"/api/v1/subscriptions/{sub['id']}/change", json={"plan": {"key": "team"}, "timing": "next_billing_cycle"}
        )
    )
    assert changed["next"]["activeFrom"] == "2026-05-01T00:00:00Z"
    clock.set(utc(2026, 5, 1, 1))
    run_billing(rt)
    (april,) = invoices(rt, api)
    # April's invoice: no credit (the old plan ran the whole month), May's $99 for the new plan.
    assert [(f["subscriptionId"], f["amount"], f["period"]["from"]) for f in flat_lines(april)] == [
        (changed["next"]["id"], "99.00", "2026-05-01T00:00:00Z")
    ]
    assert [line for line in april["lines"] if line["type"] == "credit"] == []
    assert [f["amount"] for f in flat_lines(invoices(rt, api, "opening")[0])] == ["49.00"]
    clock.set(utc(2026, 6, 1, 1))
    run_billing(rt)
    may = invoices(rt, api)[1]
    assert [(f["amount"], f["period"]["from"]) for f in flat_lines(may)] == [("99.00", "2026-06-01T00:00:00Z")]


def test_commitment_counts_in_advance_fees_of_the_period_that_ended(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    create_plan(api, plan_variant("committed", "30", commitments={"minimumAmount": "50"}))
    create_customer(api)
    sub = subscribe(api, "acme", plan="committed", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    run_billing(rt)
    clock.set(utc(2026, 1, 16))
    send(api, [("api.calls", "acme", utc(2026, 1, 10), {"value": 4000})])
    ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", json={"timing": "immediate"}))
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    (invoice,) = invoices(rt, api)
    (opening,) = invoices(rt, api, "opening")
    # Paid 30.00 at the start; used 15 days: 30 * 15/31 = 14.52, so 15.48 back, on the opening draft
    # at the cancel. January's spend is 4.00 of usage + 14.52 of fee = 18.52, lifted to the 50
    # minimum by 31.48.
    assert [(line["type"], line["amount"]) for line in opening["lines"]] == [
        ("flat_fee", "30.00"),
        ("credit", "-15.48"),
    ]
    kinds = [(line["type"], line["amount"]) for line in invoice["lines"]]
    assert ("commitment", "31.48") in kinds
    assert invoice["totals"] == {"amount": "4.00", "commitments": "31.48", "total": "35.48"}
    # Opening 14.52 + this 35.48 = 50.00: the customer paid exactly the minimum for January.


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start_minutes=st.integers(min_value=0, max_value=31 * 24 * 60 - 2),
    used_fraction=st.fractions(min_value=0, max_value=1),
)
def test_charged_minus_credit_is_the_fee_for_the_time_used(
    database_url: str, start_minutes: int, used_fraction: Any
) -> None:
    """For any start and cancel instant in a calendar month, the in-advance fee charged at the start
    minus the credit after the cancel is the fee prorated for the time used, to the cent."""
    clock = FixedClock(utc(2025, 12, 1))
    runtime = build_runtime(database_url, clock)
    client = client_for(runtime)
    try:
        create_plan(client, plan_variant("odd", "49.99"))
        create_customer(client)
        start = utc(2026, 1, 1) + timedelta(minutes=start_minutes)
        remaining = (utc(2026, 2, 1) - start) // timedelta(minutes=1)
        cancel_at = start + timedelta(minutes=max(1, min(remaining - 1, int(remaining * used_fraction))))
        sub = subscribe(
            client, "acme", plan="odd", activeFrom=start.isoformat().replace("+00:00", "Z"), alignment="calendar"
        )
        clock.set(start)
        run_billing(runtime)
        (opening,) = invoices(runtime, client, "opening")
        charged = Decimal(flat_lines(opening)[0]["amount"])
        month = Decimal((utc(2026, 2, 1) - utc(2026, 1, 1)) // timedelta(microseconds=1))
        micros = timedelta(microseconds=1)
        assert charged == Decimal(usd(Decimal("49.99") * ((utc(2026, 2, 1) - start) // micros) / month))
        clock.set(cancel_at)
        ok(client.post(f"/api/v1/subscriptions/{sub['id']}/cancel", json={"timing": "immediate"}))
        clock.set(utc(2026, 2, 1, 1))
        run_billing(runtime)
        # The credit is on the opening draft (given at the cancel), none on the period's invoice.
        credits = [
            Decimal(line["amount"])
            for invoice in invoices(runtime, client, "opening") + invoices(runtime, client)
            for line in invoice["lines"]
            if line["type"] == "credit"
        ]
        used = Decimal(usd(Decimal("49.99") * ((cancel_at - start) // micros) / month))
        assert charged + sum(credits, Decimal(0)) == used
        # A credit line only when something comes back (a cancel in the last minute may round to 0).
        assert all(c < 0 for c in credits) and len(credits) == (1 if used < charged else 0)
    finally:
        client.close()
        runtime.stop()


def test_upgrade_from_the_old_timing_bills_the_skipped_fee_once(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    """A subscription whose January invoice was drafted before in-advance timing (January's fee
    on January's invoice, nothing ahead): February's invoice bills February's fee late and
    March's in advance; later invoices are as usual."""
    from tallybook.billing import invoicing_sql
    from tallybook.billing.invoicing import Invoice, Line, Totals
    from tallybook.billing.invoicing_model import record_of as _record
    from tallybook.billing.periods import Period
    from tallybook.store import billing as billing_store

    create_plan(api)
    customer = create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    january = Period(utc(2026, 1, 1), utc(2026, 2, 1))
    fee = Line(
        kind="flat_fee",
        name="Platform fee",
        period=january,
        amount=Decimal("49.00"),
        subscription_id=sub["id"],
        rate_card_key="platform",
        quantity=Decimal(1),
        unit_price=Decimal(49),
        detail={"paymentTerm": "in_advance"},
    )
    issued_at = utc(2026, 2, 1, 2)
    legacy = Invoice(
        id="01KGBBDEM0LEGACY0JANUARY000",
        customer_id=customer["id"],
        customer={"id": customer["id"], "name": "Acme Inc.", "timezone": "UTC"},
        currency="USD",
        status="issued",
        period=january,
        lines=[fee],
        totals=Totals(Decimal("49.00"), Decimal("0.00"), Decimal("49.00")),
        as_of=issued_at,
        revision=2,
        created_at=issued_at,
        updated_at=issued_at,
        issued_at=issued_at,
    )
    with rt.store.write() as conn:
        invoicing_sql.insert_invoices(conn, [_record(legacy)])
        billing_store.set_billed_through(conn, [(sub["id"], 1769904000000000)])  # 1 February
    clock.set(utc(2026, 3, 1, 1))
    assert run_billing(rt)["created"] == 1  # February's; no opening invoice for a billed subscription
    february = invoices(rt, api)[1]
    assert february["period"]["from"] == "2026-02-01T00:00:00Z"
    fees = [(f["amount"], f["period"]["from"], f.get("description")) for f in flat_lines(february)]
    assert fees == [
        ("49.00", "2026-03-01T00:00:00Z", None),
        ("49.00", "2026-02-01T00:00:00Z", "billed late: the previous invoice billed this fee in arrears"),
    ]
    # A refresh keeps both; recomputing gives the stored lines.
    clock.set(utc(2026, 3, 1, 2))
    send(api, [("api.calls", "acme", utc(2026, 2, 10), {"value": 10})])
    assert run_billing(rt)["updated"] == 1
    refreshed = invoices(rt, api)[1]
    assert flat_lines(refreshed) == flat_lines(february)
    assert [ln.row() for ln in rt.invoicing.recompute(february["id"])] == [
        ln.row() for ln in rt.invoicing.get(february["id"]).lines
    ]
    clock.set(utc(2026, 4, 1, 1))
    run_billing(rt)
    march = invoices(rt, api)[2]
    assert [(f["amount"], f["period"]["from"]) for f in flat_lines(march)] == [("49.00", "2026-04-01T00:00:00Z")]
