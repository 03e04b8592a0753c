"""One customer cannot stop invoicing for the others (issue 12, item 2), on SQLite and PostgreSQL.

- A customer whose SUM usage for a billed meter is negative used to make the whole `billing.invoice`
  run fail ("quantity must not be negative") and its simulate answer 500. Now the line bills 0
  units with a warning that names the measured total, and everyone is invoiced.
- An invoice that fails (its usage cannot be read, its write fails inside SQL, its subscription row
  is broken) is recorded at GET /api/v1/jobs/failures, counted in
  `tallybook_job_item_failures_total`, and skipped; the other customers' invoices are drafted, the
  run finishes as `partial`, and the next run tries the failed one again (and clears it once it
  succeeds).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tallybook.billing import invoicing_sql as billing_store
from tallybook.billing.wiring import INVOICE_JOB
from tallybook.clock import FixedClock, to_micros
from tallybook.runtime import Runtime
from tests.billing_helpers import create_customer, create_plan, ok, send, subscribe, utc


def setup_two_customers(rt: Runtime, api: httpx.Client, clock: FixedClock, globex_calls: int) -> dict[str, str]:
    """acme and globex on the seed plan from 1 January; acme made 100 API calls, globex `globex_calls`.
    Returns their customer ids."""
    create_plan(api)
    ids = {}
    for key in ("acme", "globex"):
        ids[key] = create_customer(api, key)["id"]
        subscribe(api, key, activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 20))
    send(
        api,
        [
            ("api.calls", "acme", utc(2026, 1, 5), {"value": 100}),
            ("api.calls", "globex", utc(2026, 1, 6), {"value": 40}),
            ("api.calls", "globex", utc(2026, 1, 7), {"value": globex_calls - 40}),
        ],
    )
    clock.set(utc(2026, 2, 1, 2, 0))  # January ended, and its grace hour has passed
    return ids


def run_invoice_job(rt: Runtime) -> Any:
    job = next(j for j in rt.jobs.jobs if j.name == INVOICE_JOB)
    return rt.jobs.run_job(job, force=True)


def period_invoice(api: httpx.Client, customer: str) -> dict[str, Any] | None:
    found = ok(api.get("/api/v1/billing/invoices", params={"customerId": customer}))["items"]
    period = [i for i in found if i["kind"] == "period"]
    assert len(period) <= 1, period
    return period[0] if period else None


def line(invoice: dict[str, Any], rate_card: str) -> dict[str, Any]:
    return next(ln for ln in invoice["lines"] if ln.get("rateCardKey") == rate_card and ln["type"] == "usage_based")


def failure_metric(api: httpx.Client, job: str, kind: str) -> float:
    wanted = f'tallybook_job_item_failures_total{{job="{job}",kind="{kind}"}}'
    for row in api.get("/metrics").text.splitlines():
        if row.startswith(wanted):
            return float(row.split()[-1])
    return 0.0


def test_negative_usage_bills_zero_with_a_warning_and_everyone_is_invoiced(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    setup_two_customers(rt, api, clock, globex_calls=-5)
    result = run_invoice_job(rt)
    assert (result.error, result.status) == (None, "ok"), result
    acme, globex = period_invoice(api, "acme"), period_invoice(api, "globex")
    assert acme is not None and globex is not None
    assert (line(acme, "api_calls")["quantity"], line(acme, "api_calls")["amount"]) == ("100", "0.10")
    negative = line(globex, "api_calls")
    assert (negative["quantity"], negative["amount"]) == ("0", "0.00")
    assert negative["usageTotal"] == "-5"
    assert negative["warnings"] == ["usage total was -5; billed as 0"]
    assert "warnings" not in line(acme, "api_calls")
    # Globex pays February's platform fee in advance and nothing for API calls.
    assert globex["totals"]["total"] == "49.00"
    html = api.get(f"/api/v1/billing/invoices/{globex['id']}", params={"format": "html"}).text
    assert "usage total was -5; billed as 0" in html
    # The preview says the same, and no longer answers 500.
    simulated = api.get("/api/v1/billing/customers/globex/invoices/simulate", params={"at": "2026-01-15T00:00:00Z"})
    assert simulated.status_code == 200, simulated.text
    [preview] = simulated.json()["items"]
    assert line(preview, "api_calls")["warnings"] == ["usage total was -5; billed as 0"]
    usage = ok(api.get("/api/v1/billing/customers/globex/usage", params={"at": "2026-01-15T00:00:00Z"}))
    assert {u["rateCardKey"]: u["quantity"] for u in usage["usage"]}["api_calls"] == "0"
    assert ok(api.get("/api/v1/jobs/failures"))["items"] == []


def test_issued_negative_usage_then_late_positive_events_correct_from_zero(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    """The billed quantity of a negative total is 0: a later correction bills what rises above 0."""
    setup_two_customers(rt, api, clock, globex_calls=-5)
    run_invoice_job(rt)
    globex = period_invoice(api, "globex")
    assert globex is not None
    ok(api.post(f"/api/v1/billing/invoices/{globex['id']}/approve"))
    assert rt.invoicing.recompute(globex["id"]) == rt.invoicing.get(globex["id"]).lines  # reproducible
    clock.set(utc(2026, 2, 3))
    send(api, [("api.calls", "globex", utc(2026, 1, 30), {"value": 12})])  # total now -5 + 12 = 7
    clock.set(utc(2026, 3, 1, 2, 0))
    assert run_invoice_job(rt).error is None
    march = [
        i
        for i in ok(api.get("/api/v1/billing/invoices", params={"customerId": "globex"}))["items"]
        if i["period"]["from"] == "2026-02-01T00:00:00Z"
    ]
    [correction] = [ln for ln in march[0]["lines"] if ln["type"] == "correction"]
    assert (correction["quantity"], correction["amount"], correction["previousQuantity"]) == ("7", "0.01", "0")


def test_a_customer_whose_usage_cannot_be_read_is_skipped_recorded_and_retried(
    rt: Runtime, api: httpx.Client, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = setup_two_customers(rt, api, clock, globex_calls=50)
    real_query = rt.meters.query

    def query(q: Any) -> Any:
        if ids["globex"] in (q.customer_ids or ()):
            raise RuntimeError("disk read error in the usage of globex")
        return real_query(q)

    monkeypatch.setattr(rt.meters, "query", query)
    result = run_invoice_job(rt)
    assert (result.error, result.status, result.result["failedItems"]) == (None, "partial", 1)
    assert period_invoice(api, "acme") is not None
    assert period_invoice(api, "globex") is None
    failures = ok(api.get("/api/v1/jobs/failures"))
    assert failures["totalCount"] == 1
    [failure] = failures["items"]
    assert failure["job"] == "billing.invoice" and failure["itemKind"] == "invoice"
    assert failure["context"]["customerId"] == ids["globex"]
    assert failure["context"]["periodStart"] == "2026-01-01T00:00:00Z"
    assert failure["error"] == "RuntimeError: disk read error in the usage of globex"
    assert failure["count"] == 1
    assert failure_metric(api, "billing.invoice", "invoice") == 1.0
    jobs = {j["name"]: j for j in ok(api.get("/api/v1/jobs"))["items"]}
    assert (jobs["billing.invoice"]["lastStatus"], jobs["billing.invoice"]["lastFailedItems"]) == ("partial", 1)
    assert jobs["billing.invoice"]["lastError"] is None
    # Its subscription was not marked billed: the next run tries again (and fails again, counted).
    assert run_invoice_job(rt).result["failedItems"] == 1
    assert ok(api.get("/api/v1/jobs/failures"))["items"][0]["count"] == 2
    # Fixed: the invoice is drafted and the failure is gone.
    monkeypatch.setattr(rt.meters, "query", real_query)
    result = run_invoice_job(rt)
    assert (result.status, result.result["created"]) == ("ok", 1)
    globex = period_invoice(api, "globex")
    assert globex is not None and line(globex, "api_calls")["quantity"] == "50"
    assert ok(api.get("/api/v1/jobs/failures"))["items"] == []
    jobs = {j["name"]: j for j in ok(api.get("/api/v1/jobs"))["items"]}
    assert (jobs["billing.invoice"]["lastStatus"], jobs["billing.invoice"]["lastFailedItems"]) == ("ok", 0)


def test_a_write_failing_inside_sql_rolls_back_only_that_invoice(
    rt: Runtime, api: httpx.Client, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer drafts globex's invoice between the run's read and its write: the insert
    breaks the invoices' unique period key inside the database (on PostgreSQL that aborts the
    transaction). Only globex's invoice is rolled back (its savepoint); acme's is stored."""
    ids = setup_two_customers(rt, api, clock, globex_calls=50)
    real_existing = billing_store.existing_invoice_keys
    start_us, end_us = to_micros(utc(2026, 1, 1)), to_micros(utc(2026, 2, 1))

    def existing_then_a_concurrent_draft(conn: Any, ends: Any) -> Any:
        found = real_existing(conn, ends)
        with rt.store.write() as other:
            other.execute(
                billing_store.invoices.insert().values(
                    id="01CONCURRENTWRITER0000000",
                    customer_id=ids["globex"],
                    currency="USD",
                    kind="period",
                    period_start_us=start_us,
                    period_end_us=end_us,
                    status="void",
                    customer={"id": ids["globex"]},
                    subtotal="0",
                    commitments="0",
                    total="0",
                    as_of_us=end_us,
                    revision=1,
                    created_us=end_us,
                    updated_us=end_us,
                )
            )
        return found

    monkeypatch.setattr(billing_store, "existing_invoice_keys", existing_then_a_concurrent_draft)
    result = run_invoice_job(rt)
    assert (result.error, result.status, result.result["failedItems"]) == (None, "partial", 1), result
    assert result.result["created"] == 3  # both opening invoices and acme's January
    acme = period_invoice(api, "acme")
    assert acme is not None and line(acme, "api_calls")["quantity"] == "100"
    [failure] = ok(api.get("/api/v1/jobs/failures"))["items"]
    assert failure["context"]["customerId"] == ids["globex"]
    assert failure["error"].startswith("IntegrityError")
    with rt.store.read() as conn:
        billed = dict(conn.execute(text("SELECT customer_id, billed_through_us FROM subscriptions")).all())
    assert billed[ids["acme"]] == end_us
    assert billed[ids["globex"]] is None  # not marked billed: retried on the next run


def test_a_broken_subscription_row_does_not_stop_the_others(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    """A subscription whose stored row cannot be read (a time zone no release knows) is recorded
    and skipped; acme is invoiced."""
    ids = setup_two_customers(rt, api, clock, globex_calls=50)
    with rt.store.write() as conn:
        conn.execute(
            text("UPDATE subscriptions SET timezone = 'Mars/Olympus_Mons' WHERE customer_id = :c"), {"c": ids["globex"]}
        )
    result = run_invoice_job(rt)
    assert (result.error, result.status) == (None, "partial"), result
    assert period_invoice(api, "acme") is not None
    [failure] = ok(api.get("/api/v1/jobs/failures", params={"job": "billing.invoice"}))["items"]
    assert failure["itemKind"] == "subscription" and failure["context"]["customerId"] == ids["globex"]
    assert "Mars/Olympus_Mons" in failure["error"]
    assert ok(api.get("/api/v1/jobs/failures", params={"job": "stripe.report"}))["totalCount"] == 0
