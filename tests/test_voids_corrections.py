"""A void is a change to the periods it touches, on SQLite and PostgreSQL: a period whose
aggregation webhook was sent gets `aggregation.corrected` with the lower figures, a draft invoice is
recomputed, and an issued invoice stays as issued while the customer's next invoice carries a
(negative) correction line."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tallybook import jsonutil
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
from tests.billing_helpers import build as build_billing_runtime
from tests.test_webhook_helpers import SECRET, Receiver, api, build_runtime

HOURLY_METERS = [{"slug": "api_calls", "eventType": "api.calls", "aggregation": "SUM", "valueProperty": "$.value"}]


def void(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    return ok(client.post("/api/v1/events/void", json=body), 201)  # type: ignore[no-any-return]


def run_jobs(client: httpx.Client) -> dict[str, Any]:
    response = client.post("/api/v1/jobs/run")
    assert response.status_code == 200, response.text
    return {job["name"]: job for job in response.json()["jobs"]}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_voiding_an_event_of_a_sent_period_sends_aggregation_corrected(database_url: str, receiver: Receiver) -> None:
    clock = FixedClock(datetime(2026, 1, 12, 10, 15, tzinfo=UTC))
    runtime = build_runtime(
        database_url,
        clock,
        meters=HOURLY_METERS,
        endpoints=[{"url": receiver.url, "secret": SECRET, "enabled": True}],
        periods=["hourly"],
    )
    client = api(runtime)
    try:
        events = [
            {
                "specversion": "1.0",
                "id": f"call-{n}",
                "source": "app",
                "type": "api.calls",
                "subject": "cust_1",
                "time": f"2026-01-12T10:{10 + n:02d}:00Z",
                "data": {"value": value},
            }
            for n, value in ((1, 5), (2, 7))
        ]
        response = client.post(
            "/api/v1/events", json=events, headers={"Content-Type": "application/cloudevents-batch+json"}
        )
        assert response.status_code == 204, response.text
        clock.set(datetime(2026, 1, 12, 12, 0, tzinfo=UTC))
        run_jobs(client)
        [completed] = receiver.wait_for(1)
        assert jsonutil.loads(completed.body)["data"]["events"] == {"api.calls": 12}

        clock.set(datetime(2026, 1, 12, 12, 30, tzinfo=UTC))
        void(client, {"events": [{"source": "app", "id": "call-2"}], "reason": "sent twice by a retry bug"})
        clock.set(datetime(2026, 1, 12, 12, 33, tzinfo=UTC))
        jobs = run_jobs(client)
        assert jobs["aggregation.close"]["result"]["corrected"] == 1
        corrected = jsonutil.loads(receiver.wait_for(2)[1].body)
        assert corrected["type"] == "aggregation.corrected"
        assert corrected["customerId"] == "cust_1"
        assert corrected["data"]["periodStart"] == "2026-01-12T10:00:00.000Z"
        assert corrected["data"]["events"] == {"api.calls": 5}
        assert corrected["data"]["eventCount"] == 1
        assert corrected["previous"] == {"events": {"api.calls": 12}, "eventCount": 2}

        # Nothing changed since: no second correction.
        clock.advance(timedelta(minutes=10))
        run_jobs(client)
        assert len(receiver.requests) == 2
    finally:
        client.close()
        runtime.stop()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(utc(2026, 1, 1))


@pytest.fixture
def rt(database_url: str, clock: FixedClock) -> Iterator[Runtime]:
    runtime = build_billing_runtime(database_url, clock)
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
def billing_api(rt: Runtime) -> Iterator[httpx.Client]:
    client = api(rt)
    try:
        yield client
    finally:
        client.close()


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


def test_a_void_updates_a_draft_invoice(rt: Runtime, billing_api: httpx.Client, clock: FixedClock) -> None:
    draft = seed(rt, billing_api, clock)
    clock.set(utc(2026, 2, 1, 2, 0))
    void(
        billing_api,
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
    updated = ok(billing_api.get(f"/api/v1/billing/invoices/{draft['id']}"))
    assert api_calls_line(updated)["quantity"] == "30000"
    assert updated["totals"]["total"] == "90.57"
    assert outbox(rt, "invoice.updated")[-1]["body"]["invoice"]["totals"]["total"] == "90.57"


def test_a_void_after_issue_leaves_the_invoice_and_corrects_the_next_one(
    rt: Runtime, billing_api: httpx.Client, clock: FixedClock
) -> None:
    draft = seed(rt, billing_api, clock)
    clock.set(utc(2026, 2, 2, 9, 0))
    issued = ok(billing_api.post(f"/api/v1/billing/invoices/{draft['id']}/approve"))
    assert issued["status"] == "issued"

    clock.set(utc(2026, 2, 3))
    record = void(
        billing_api,
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
    again = ok(billing_api.get(f"/api/v1/billing/invoices/{draft['id']}"))
    assert again["lines"] == issued["lines"] and again["totals"] == issued["totals"]
    assert [ln.row() for ln in rt.invoicing.recompute(draft["id"])] == [
        ln.row() for ln in rt.invoicing.get(draft["id"]).lines
    ]

    # The next invoice gives the voided usage back as a correction line.
    clock.set(utc(2026, 3, 1, 1, 0))
    run_billing(rt)
    february = period_invoice(billing_api, "draft")
    corrections = [ln for ln in february["lines"] if ln["type"] == "correction"]
    assert len(corrections) == 1
    correction = corrections[0]
    assert correction["correctsInvoiceId"] == draft["id"]
    assert correction["quantity"] == "-1000"
    assert correction["previousQuantity"] == "31000"
    assert correction["amount"] == "-1.00"
    assert february["totals"]["total"] == "48.00"  # February's $49 platform fee minus $1.00
