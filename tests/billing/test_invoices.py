"""Invoices end to end through the API, on SQLite and PostgreSQL: the seed scenario, late events
updating drafts, issuing with frozen quantities (asOf), corrections on the next invoice, the
lifecycle, webhooks in the outbox, previews and the HTML export."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy

from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tests.billing_helpers import (
    SEED_PLAN,
    a_month_of_events,
    attach,
    client_for,
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
from tests.billing_helpers import build as build_runtime


def lines_by_key(invoice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {line["rateCardKey"]: line for line in invoice["lines"] if line["type"] != "correction"}


def only_invoice(rt: Runtime, api: httpx.Client, kind: str = "period", **params: Any) -> dict[str, Any]:
    """The one invoice of this kind (period: drafted at a period end; opening: at a subscription start)."""
    found = ok(api.get("/api/v1/billing/invoices", params={"limit": 1000, **params}))["items"]
    matching = [i for i in found if rt.invoicing.get(i["id"]).kind == kind]
    assert len(matching) == 1, found
    return matching[0]  # type: ignore[no-any-return]


def seed(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    """The seed plan from 1 January (calendar months); the job runs at the start, which drafts the
    opening invoice with January's $49 in-advance platform fee; then a month of events."""
    create_plan(api)
    create_customer(api)
    subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    assert run_billing(rt)["created"] == 1
    clock.set(utc(2026, 2, 1, 0, 30))
    send(api, a_month_of_events())


def test_seed_scenario_invoice_for_a_month_of_events(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    route_invoice_events(rt)
    seed(rt, api, clock)
    assert run_billing(rt)["created"] == 0  # the period ended, but the grace hour has not passed
    clock.set(utc(2026, 2, 1, 1, 0))
    # One new invoice; the opening draft is not recomputed (it reads no usage, events cannot change it).
    assert run_billing(rt) == {"created": 1, "updated": 0, "issued": 0, "computed": 1, "drafts": 1}
    opening = only_invoice(rt, api, kind="opening")
    assert opening["period"] == {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
    assert [(ln["rateCardKey"], ln["amount"], ln["paymentTerm"]) for ln in opening["lines"]] == [
        ("platform", "49.00", "in_advance")
    ]
    assert opening["lines"][0]["period"] == opening["period"]
    assert opening["totals"]["total"] == "49.00"
    invoice = only_invoice(rt, api)
    assert invoice["status"] == "draft"
    assert invoice["period"] == {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
    lines = lines_by_key(invoice)
    # January's usage, and February's platform fee in advance.
    assert (lines["platform"]["quantity"], lines["platform"]["unitPrice"], lines["platform"]["amount"]) == (
        "1",
        "49",
        "49.00",
    )
    assert lines["platform"]["period"] == {"from": "2026-02-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}
    assert lines["api_calls"]["period"] == invoice["period"]
    assert (lines["api_calls"]["quantity"], lines["api_calls"]["amount"]) == ("31000", "31.00")
    assert (lines["storage"]["quantity"], lines["storage"]["amount"]) == ("41", "0.41")  # MAX over the month
    assert (lines["compute"]["quantity"], lines["compute"]["amount"]) == ("111600", "11.16")
    assert lines["compute"]["taxCode"] == "txcd_10000000"
    assert lines["api_calls"]["taxCode"] == "txcd_10103001"  # the settings default
    # The total is unchanged from when the fee was billed in arrears: February's $49 in advance
    # replaces January's (which the opening invoice carries): 49.00 + 31.00 + 0.41 + 11.16 = 91.57.
    assert invoice["totals"] == {"amount": "91.57", "commitments": "0.00", "total": "91.57"}
    assert invoice["customer"]["name"] == "Acme Inc."
    created = outbox(rt, "invoice.created")
    assert len(created) == 2
    assert created[0]["body"]["invoice"]["totals"]["total"] == "49.00"
    assert created[1]["body"]["invoice"]["totals"]["total"] == "91.57"
    assert created[1]["body"]["invoice"]["lines"] == invoice["lines"]
    # Running again changes nothing and sends nothing (no new events: the drafts are not even recomputed).
    assert run_billing(rt) == {"created": 0, "updated": 0, "issued": 0, "computed": 0, "drafts": 2}
    assert len(outbox(rt)) == 2


def test_late_events_update_the_draft_then_issue_freezes_it(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    route_invoice_events(rt)
    seed(rt, api, clock)
    clock.set(utc(2026, 2, 1, 1, 0))
    run_billing(rt)
    draft = only_invoice(rt, api)

    clock.set(utc(2026, 2, 1, 2, 0))
    send(api, [("api.calls", "acme", utc(2026, 1, 31, 23, 59), {"value": 500})])
    assert run_billing(rt)["updated"] == 1
    updated = ok(api.get(f"/api/v1/billing/invoices/{draft['id']}"))
    assert lines_by_key(updated)["api_calls"]["quantity"] == "31500"
    assert updated["totals"]["total"] == "92.07"
    assert updated["revision"] == draft["revision"] + 1
    assert outbox(rt, "invoice.updated")[-1]["body"]["invoice"]["totals"]["total"] == "92.07"

    clock.set(utc(2026, 2, 2, 9, 0))
    issued = ok(api.post(f"/api/v1/billing/invoices/{draft['id']}/approve"))
    assert issued["status"] == "issued"
    assert issued["issuedAt"] == issued["asOf"] == "2026-02-02T09:00:00Z"
    assert outbox(rt, "invoice.issued")[0]["body"]["invoice"]["id"] == draft["id"]
    assert rt.meters.get("api_calls").locked_at is not None  # billed meters are locked

    # A late event for January after the issue: the issued invoice does not move...
    clock.set(utc(2026, 2, 3))
    send(api, [("api.calls", "acme", utc(2026, 1, 20), {"value": 2000})])
    run_billing(rt)
    again = ok(api.get(f"/api/v1/billing/invoices/{draft['id']}"))
    assert again["lines"] == issued["lines"] and again["totals"] == issued["totals"]
    # ...and recomputing it from the events as of its asOf gives the same lines to the cent.
    recomputed = rt.invoicing.recompute(draft["id"])
    stored = rt.invoicing.get(draft["id"]).lines
    assert [ln.row() for ln in recomputed] == [ln.row() for ln in stored]

    # The next invoice carries the late usage as a labelled correction line.
    clock.set(utc(2026, 3, 1, 1, 0))
    run_billing(rt)
    february = only_invoice(rt, api, status="draft")
    assert february["period"] == {"from": "2026-02-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}
    corrections = [line for line in february["lines"] if line["type"] == "correction"]
    assert len(corrections) == 1
    correction = corrections[0]
    assert correction["correctsInvoiceId"] == draft["id"]
    assert correction["name"] == "Correction: API calls"
    assert correction["quantity"] == "2000"
    assert correction["previousQuantity"] == "31500"
    assert correction["amount"] == "2.00"
    assert correction["period"] == {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
    assert "after invoice" in correction["description"]
    # February itself: the flat fee, no usage (storage's MAX of nothing is 0).
    feb_lines = lines_by_key(february)
    assert feb_lines["platform"]["amount"] == "49.00"
    assert feb_lines["api_calls"]["quantity"] == "0"
    assert february["totals"]["total"] == "51.00"

    # Issuing February settles the correction: the March invoice does not repeat it.
    clock.set(utc(2026, 3, 1, 2, 0))
    ok(api.post(f"/api/v1/billing/invoices/{february['id']}/advance"))
    clock.set(utc(2026, 4, 1, 1, 0))
    run_billing(rt)
    march = only_invoice(rt, api, status="draft")
    assert [line for line in march["lines"] if line["type"] == "correction"] == []


def test_lifecycle_transitions_and_conflicts(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    route_invoice_events(rt)
    seed(rt, api, clock)
    clock.set(utc(2026, 2, 1, 1, 0))
    run_billing(rt)
    invoice_id = only_invoice(rt, api)["id"]

    refused = api.post(f"/api/v1/billing/invoices/{invoice_id}/mark-paid")
    assert refused.status_code == 409
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"] == "urn:tallybook:problem:invoice-conflict"

    clock.set(utc(2026, 2, 1, 2, 0))
    ok(api.post(f"/api/v1/billing/invoices/{invoice_id}/advance"))
    assert api.post(f"/api/v1/billing/invoices/{invoice_id}/advance").status_code == 409
    clock.set(utc(2026, 2, 1, 3, 0))
    uncollectible = ok(api.post(f"/api/v1/billing/invoices/{invoice_id}/mark-uncollectible"))
    assert uncollectible["status"] == "uncollectible"
    clock.set(utc(2026, 2, 1, 4, 0))
    paid = ok(api.post(f"/api/v1/billing/invoices/{invoice_id}/mark-paid"))
    assert paid["status"] == "paid" and "paidAt" in paid
    assert api.post(f"/api/v1/billing/invoices/{invoice_id}/void").status_code == 409

    types = [e["type"] for e in outbox(rt)]
    # The opening invoice's created event first (drafted at the subscription start).
    assert types == ["invoice.created", "invoice.created", "invoice.issued", "invoice.updated", "invoice.updated"]
    assert api.get("/api/v1/billing/invoices/01KDVDNA00M322QF7VSW00Y76P").status_code == 404
    assert api.get("/api/v1/billing/invoices", params={"status": "bogus"}).status_code == 400


def test_void_is_final_and_sends_invoice_voided(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    route_invoice_events(rt)
    seed(rt, api, clock)
    clock.set(utc(2026, 2, 1, 1, 0))
    run_billing(rt)
    invoice_id = only_invoice(rt, api)["id"]
    voided = ok(api.post(f"/api/v1/billing/invoices/{invoice_id}/void"))
    assert voided["status"] == "void" and "voidedAt" in voided
    assert outbox(rt, "invoice.voided")[0]["body"]["invoice"]["status"] == "void"
    clock.set(utc(2026, 2, 2))
    assert run_billing(rt)["created"] == 0  # the period is not drafted again
    assert ok(api.get("/api/v1/billing/invoices"))["totalCount"] == 2  # it and the opening invoice


def test_auto_issue(database_url: str) -> None:
    clock = FixedClock(utc(2026, 1, 1))
    runtime = build_runtime(database_url, clock, auto_issue=True, auto_issue_after="1d")
    client = client_for(runtime)
    try:
        route_invoice_events(runtime)
        seed(runtime, client, clock)
        clock.set(utc(2026, 2, 1, 1, 0))
        # January's invoice is drafted (issued a day later); the opening one, a month old, is issued.
        assert run_billing(runtime)["issued"] == 1
        assert only_invoice(runtime, client, kind="opening")["status"] == "issued"
        clock.set(utc(2026, 2, 2, 1, 0))
        assert run_billing(runtime)["issued"] == 1
        invoice = only_invoice(runtime, client)
        assert invoice["status"] == "issued" and invoice["asOf"] == "2026-02-02T01:00:00Z"
        assert invoice["totals"]["total"] == "91.57"
        # Opening: created 1 January, issued 1 February; January's: created 1 February, issued 2 February.
        events = [(e["type"], e["body"]["invoice"]["id"]) for e in outbox(runtime)]
        opening_id = only_invoice(runtime, client, kind="opening")["id"]
        assert sorted(events) == sorted(
            [
                ("invoice.created", opening_id),
                ("invoice.issued", opening_id),
                ("invoice.created", invoice["id"]),
                ("invoice.issued", invoice["id"]),
            ]
        )
        assert events[-1] == ("invoice.issued", invoice["id"])
    finally:
        client.close()
        runtime.stop()


def test_preview_and_current_usage(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    create_customer(api)
    subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 16))
    send(api, [e for e in a_month_of_events() if e[2] < clock.now()])
    preview = ok(api.get("/api/v1/billing/customers/acme/invoices/simulate"))["items"]
    assert len(preview) == 1
    assert preview[0]["status"] == "preview" and "id" not in preview[0]
    assert lines_by_key(preview[0])["api_calls"]["quantity"] == "15000"
    assert preview[0]["totals"]["total"] == str(Decimal("49.00") + Decimal("15.00") + Decimal("0.25") + Decimal("5.40"))
    usage = ok(api.get("/api/v1/billing/customers/acme/usage"))
    assert usage["periods"] == [{"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}]
    assert {u["meter"]: u["quantity"] for u in usage["usage"]} == {
        "api_calls": "15000",
        "storage_gb": "25",
        "compute_seconds": "54000",
    }
    assert ok(api.get("/api/v1/billing/invoices"))["totalCount"] == 0  # nothing stored
    missing = api.get("/api/v1/billing/customers/nobody/usage")
    assert missing.status_code == 404 and missing.json()["type"] == "urn:tallybook:problem:customer-not-found"
    naive = api.get("/api/v1/billing/customers/acme/usage", params={"at": "2026-01-05T00:00:00"})
    assert naive.status_code == 400


def test_html_and_json_export(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    create_customer(
        api, billingAddress={"line1": "1 Main St", "city": "Springfield", "country": "US"}, name="<Acme & Co>"
    )
    subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 2, 1, 0, 30))
    send(api, a_month_of_events())
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    invoice = only_invoice(rt, api)
    page = api.get(f"/api/v1/billing/invoices/{invoice['id']}/html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "&lt;Acme &amp; Co&gt;" in html and "<Acme" not in html  # escaped
    assert "91.57" in html and "Platform fee" in html and "1 Main St" in html and "txcd_10000000" in html
    assert api.get(f"/api/v1/billing/invoices/{invoice['id']}", params={"format": "html"}).text == html
    as_json = api.get(f"/api/v1/billing/invoices/{invoice['id']}", headers={"Accept": "application/json"})
    assert as_json.json() == invoice


def test_customer_time_zone_decides_which_invoice_usage_lands_on(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    create_plan(api)
    create_customer(api, timezone="Europe/Berlin")
    subscribe(api, "acme", activeFrom="2025-12-31T23:00:00Z", alignment="calendar")
    clock.set(utc(2026, 2, 1, 0, 30))
    send(
        api,
        [
            ("api.calls", "acme", utc(2025, 12, 31, 23, 30), {"value": 1000}),  # 1 Jan 00:30 in Berlin
            ("api.calls", "acme", utc(2026, 1, 31, 23, 30), {"value": 7000}),  # 1 Feb 00:30 in Berlin: February
        ],
    )
    clock.set(utc(2026, 2, 1, 1))  # 02:00 in Berlin: the period ended at 00:00 Berlin, plus the grace hour
    run_billing(rt)
    invoice = only_invoice(rt, api)
    assert invoice["period"] == {"from": "2025-12-31T23:00:00Z", "to": "2026-01-31T23:00:00Z"}
    assert lines_by_key(invoice)["api_calls"]["quantity"] == "1000"
    assert invoice["customer"]["timezone"] == "Europe/Berlin"


def test_scheduler_runs_billing_and_a_deleted_customer_does_not_block_others(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    create_plan(api)
    create_customer(api)
    gone = create_customer(api, key="gone")
    subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    subscribe(api, "gone", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 20))
    send(
        api,
        [("api.calls", "acme", utc(2026, 1, 5), {"value": 10}), ("api.calls", "gone", utc(2026, 1, 5), {"value": 7})],
    )
    ok(api.delete(f"/api/v1/customers/{gone['id']}"), 204)
    clock.set(utc(2026, 2, 1, 1))
    jobs = {j["name"]: j for j in ok(api.post("/api/v1/jobs/run"))["jobs"]}
    assert jobs["billing.invoice"]["result"]["created"] == 4  # an opening and a January invoice each
    found = [i for i in ok(api.get("/api/v1/billing/invoices"))["items"] if rt.invoicing.get(i["id"]).kind == "period"]
    calls = {i["customer"]["key"]: lines_by_key(i)["api_calls"]["quantity"] for i in found}
    assert calls == {"acme": "10", "gone": "0"}  # a deleted customer's subjects are no longer its own


def test_in_advance_fee_at_each_period_start_and_in_arrears_fee_at_its_end(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    body = {**SEED_PLAN, "key": "mixed", "name": "Mixed"}
    body["rateCards"] = [
        *SEED_PLAN["rateCards"][:2],
        {
            "type": "flat_fee",
            "key": "support",
            "name": "Support",
            "price": {"type": "flat", "amount": "20", "paymentTerm": "in_arrears"},
        },
    ]
    create_plan(api, body)
    create_customer(api)
    subscribe(api, "acme", plan="mixed", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    assert run_billing(rt)["created"] == 1
    opening = only_invoice(rt, api, kind="opening")
    # At the start: January's $49 in advance, nothing in arrears yet.
    assert [(ln["rateCardKey"], ln["amount"], ln["period"]["from"]) for ln in opening["lines"]] == [
        ("platform", "49.00", "2026-01-01T00:00:00Z")
    ]
    assert opening["createdAt"] == "2026-01-01T00:00:00Z"
    clock.set(utc(2026, 1, 15))
    send(api, [("api.calls", "acme", utc(2026, 1, 10), {"value": 2000})])
    for month in (2, 3):
        clock.set(utc(2026, month, 1, 1))
        assert run_billing(rt)["created"] == 1
    invoices = sorted(
        (i for i in ok(api.get("/api/v1/billing/invoices"))["items"] if rt.invoicing.get(i["id"]).kind == "period"),
        key=lambda i: i["period"]["from"],
    )
    summary = [
        [(ln["rateCardKey"], ln["amount"], ln["period"]["from"][:10], ln.get("paymentTerm")) for ln in i["lines"]]
        for i in invoices
    ]
    assert summary == [
        [  # January's invoice: January's usage and in-arrears fee, February's in-advance fee
            ("api_calls", "2.00", "2026-01-01", None),
            ("support", "20.00", "2026-01-01", "in_arrears"),
            ("platform", "49.00", "2026-02-01", "in_advance"),
        ],
        [
            ("api_calls", "0.00", "2026-02-01", None),
            ("support", "20.00", "2026-02-01", "in_arrears"),
            ("platform", "49.00", "2026-03-01", "in_advance"),
        ],
    ]
    assert [i["totals"]["total"] for i in invoices] == ["71.00", "69.00"]


def test_no_opening_invoice_without_in_advance_fees(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    body = {**SEED_PLAN, "key": "arrears", "name": "Arrears"}
    body["rateCards"] = [
        {**SEED_PLAN["rateCards"][0], "price": {"type": "flat", "amount": "49", "paymentTerm": "in_arrears"}},
        *SEED_PLAN["rateCards"][1:],
    ]
    create_plan(api, body)
    create_customer(api)
    subscribe(api, "acme", plan="arrears", activeFrom="2026-01-16T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 16))
    assert run_billing(rt)["created"] == 0
    clock.set(utc(2026, 2, 1, 1))
    assert run_billing(rt)["created"] == 1
    invoice = only_invoice(rt, api)
    fee = lines_by_key(invoice)["platform"]
    # In arrears, as before: the covered part of January, on January's invoice.
    assert (fee["amount"], fee["period"]["from"], fee["paymentTerm"]) == ("25.29", "2026-01-16T00:00:00Z", "in_arrears")


def test_the_opening_invoice_is_drafted_once_across_processes(
    rt: Runtime, api: httpx.Client, clock: FixedClock, database_url: str
) -> None:
    route_invoice_events(rt)
    create_plan(api)
    create_customer(api)
    subscribe(api, "acme", activeFrom="2026-01-10T00:00:00Z", alignment="calendar")
    assert run_billing(rt)["created"] == 0  # scheduled: nothing before the start
    clock.set(utc(2026, 1, 10))
    other = attach(database_url, clock)
    try:
        assert run_billing(rt)["created"] == 1
        assert run_billing(other)["created"] == 0  # another process finds the key taken
        assert run_billing(rt)["created"] == 0
        assert rt.invoicing.run(utc(2026, 1, 20))["created"] == 0
    finally:
        other.stop()
    opening = only_invoice(rt, api, kind="opening")
    assert opening["period"] == {"from": "2026-01-10T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
    assert [ln["amount"] for ln in opening["lines"]] == ["34.77"]  # 49 * 22/31
    assert len(outbox(rt, "invoice.created")) == 1
    # The unique key is the backstop if two runs ever raced: a second opening row is refused.
    from tallybook.billing import invoicing_sql as billing_store

    stored = rt.invoicing.get(opening["id"])
    with pytest.raises(sqlalchemy.exc.IntegrityError), rt.store.write() as conn:
        from tallybook.billing.invoicing_model import record_of as _record

        billing_store.insert_invoices(conn, [_record(replace(stored, id="01KDVDNA00DUPL1CATE0PEN1NG"))])
    # February's period invoice carries February's fee; the opening one is not repeated.
    clock.set(utc(2026, 2, 1, 1))
    assert run_billing(rt)["created"] == 1
    assert len(ok(api.get("/api/v1/billing/invoices"))["items"]) == 2
