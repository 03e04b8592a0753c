"""Issued invoices as documents, on SQLite and PostgreSQL: numbers from the profile's series (none
for drafts, gapless and unique under concurrent issues), the seller snapshot and localized dates on
the page, the PDF download, snapshot-quantities, and verify (reproduced exactly at the cutoff,
whatever arrives or is voided later)."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pypdf

from tallybook.billing.invoicing import InvoiceConflict
from tallybook.clock import FixedClock, to_micros
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

SUPPLIER = {
    "name": "Tallybook Demo Ltd",
    "taxId": {"code": "GB123456789"},
    "addresses": [{"country": "GB", "postalCode": "EC1A 1BB", "city": "London", "line1": "1 Example Street"}],
}


def profile(api: httpx.Client, **document: Any) -> dict[str, Any]:
    body = {
        "name": "Invoices",
        "default": True,
        "supplier": SUPPLIER,
        "workflow": {"invoicing": {"autoAdvance": False}, "payment": {"collectionMethod": "send_invoice"}},
        "apps": {"tax": "custom_invoicing", "invoicing": "custom_invoicing", "payment": "custom_invoicing"},
    }
    if document:
        body["invoiceDocument"] = document
    return ok(api.post("/api/v1/billing/profiles", json=body), 201)  # type: ignore[no-any-return]


def january_drafts(rt: Runtime, api: httpx.Client, clock: FixedClock, customers: tuple[str, ...] = ("acme",)) -> list:
    """Each customer on the seed plan from 1 January with a month of events; the job has drafted
    their opening and January invoices. Returns the January drafts' ids."""
    create_plan(api)
    for key in customers:
        create_customer(api, key)
        subscribe(api, key, activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    run_billing(rt)
    clock.set(utc(2026, 2, 1, 0, 30))
    send(api, [event for key in customers for event in a_month_of_events(key)])
    clock.set(utc(2026, 2, 1, 1, 0))
    run_billing(rt)
    found = ok(api.get("/api/v1/billing/invoices", params={"status": "draft", "limit": 1000}))["items"]
    return sorted(i["id"] for i in found if i["period"]["to"] == "2026-02-01T00:00:00Z" and i["kind"] == "period")


def test_numbers_are_given_on_issue_and_the_page_shows_the_seller(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    route_invoice_events(rt)
    profile(api, numberPrefix="TBK-2026-", timezone="Europe/Berlin", locale="en_GB")
    [january] = january_drafts(rt, api, clock)
    draft = ok(api.get(f"/api/v1/billing/invoices/{january}"))
    assert "number" not in draft and "supplier" not in draft  # drafts have no number (as in Stripe)
    page = api.get(f"/api/v1/billing/invoices/{january}/html").text
    assert "Draft invoice" in page and "Tallybook Demo Ltd" in page  # the profile as it is now

    clock.set(utc(2026, 2, 2, 23, 30))  # 3 February in Berlin
    issued = ok(api.post(f"/api/v1/billing/invoices/{january}/approve"))
    assert issued["number"] == "TBK-2026-0001"
    assert issued["supplier"] == SUPPLIER and issued["billingProfileId"]
    assert issued["dueAt"] == "2026-03-04T23:30:00Z"  # send_invoice, due after P30D
    assert issued["asOfSeq"] >= 93 and issued["quantitySnapshotedAt"] == issued["asOf"]
    assert outbox(rt, "invoice.issued")[-1]["body"]["invoice"]["number"] == "TBK-2026-0001"

    page = api.get(f"/api/v1/billing/invoices/{january}/html").text
    assert "Invoice TBK-2026-0001" in page
    assert "1 Example Street" in page and "GB123456789" in page and "Acme Inc." in page
    assert "3 Feb 2026" in page  # the issue date in the profile's zone and locale
    assert "5 Mar 2026" in page  # due: 2026-03-04T23:30Z is 5 March in Berlin
    assert "1\u2009\u2013\u200931 Jan 2026" in page  # the period (Babel: thin spaces), its last day included
    assert "£" not in page and "US$91.57" in page  # money in the invoice's currency, en_GB style
    assert "2026-02-02T23:30:00Z" not in page and "T00:00:00Z" not in page  # no raw RFC 3339

    # The profile changes later: the issued document keeps its seller; a void keeps the number.
    profiles = ok(api.get("/api/v1/billing/profiles"))["items"]
    mine = next(p for p in profiles if p["name"] == "Invoices")
    body = {k: mine[k] for k in ("name", "supplier", "workflow", "apps", "invoiceDocument")}
    ok(api.put(f"/api/v1/billing/profiles/{mine['id']}", json={**body, "supplier": {"name": "Renamed Ltd"}}))
    assert "Tallybook Demo Ltd" in api.get(f"/api/v1/billing/invoices/{january}/html").text
    voided = ok(api.post(f"/api/v1/billing/invoices/{january}/void"))
    assert voided["number"] == "TBK-2026-0001"


def test_invoice_document_settings_are_checked(rt: Runtime, api: httpx.Client) -> None:
    body = {"name": "Bad", "supplier": {"name": "X"}, "invoiceDocument": {"numberPrefix": "no spaces", "locale": "xx"}}
    refused = api.post(
        "/api/v1/billing/profiles",
        json={**body, "invoiceDocument": {**body["invoiceDocument"], "timezone": "Mars/Base"}},
    )
    assert refused.status_code == 400
    fields = {e["field"] for e in refused.json()["errors"]}
    assert fields == {"invoiceDocument.numberPrefix", "invoiceDocument.locale", "invoiceDocument.timezone"}
    created = profile(api)
    assert created["invoiceDocument"] == {"numberPrefix": "INV-", "locale": "en"}


def test_concurrent_issues_take_gapless_unique_numbers(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    profile(api)
    customers = tuple(f"c{i:02d}" for i in range(8))
    drafts = january_drafts(rt, api, clock, customers)
    assert len(drafts) == len(customers)
    clock.set(utc(2026, 2, 2, 9))
    start = threading.Barrier(len(drafts) + 2)
    outcomes: list[str] = []

    def issue(invoice_id: str) -> str:
        start.wait()
        try:
            return rt.invoicing.issue(invoice_id).number or "(none)"
        except InvoiceConflict:
            return "conflict"  # the same draft issued twice at once: one wins, the other rolls back

    # Every draft once, and two of them twice: the losers' numbers are given back (no gap).
    with ThreadPoolExecutor(max_workers=len(drafts) + 2) as pool:
        outcomes = list(pool.map(issue, [*drafts, drafts[0], drafts[3]]))
    numbers = sorted(n for n in outcomes if n != "conflict")
    assert outcomes.count("conflict") == 2
    assert numbers == [f"INV-{n:04d}" for n in range(1, len(drafts) + 1)]
    stored = sorted(ok(api.get(f"/api/v1/billing/invoices/{i}"))["number"] for i in drafts)
    assert stored == numbers
    # The opening invoices (still drafts) have none; issuing one continues the series.
    opening = next(
        i
        for i in ok(api.get("/api/v1/billing/invoices", params={"status": "draft"}))["items"]
        if i["kind"] == "opening"
    )
    assert ok(api.post(f"/api/v1/billing/invoices/{opening['id']}/approve"))["number"] == f"INV-{len(drafts) + 1:04d}"


def test_the_billing_run_numbers_what_it_issues(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    ok(
        api.post(
            "/api/v1/billing/profiles",
            json={
                "name": "Auto",
                "default": True,
                "supplier": {"name": "Auto Ltd"},
                "workflow": {"invoicing": {"autoAdvance": True}},
                "invoiceDocument": {"numberPrefix": "A-"},
            },
        ),
        201,
    )
    create_plan(api)
    create_customer(api)
    subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    run_billing(rt)  # the opening invoice, issued at once
    clock.set(utc(2026, 2, 1, 0, 30))
    send(api, a_month_of_events())
    clock.set(utc(2026, 2, 1, 1, 0))
    assert run_billing(rt)["issued"] == 1
    numbers = sorted(i["number"] for i in ok(api.get("/api/v1/billing/invoices"))["items"])
    assert numbers == ["A-0001", "A-0002"]


def test_pdf_download_holds_the_number_and_total(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    profile(api)
    [january] = january_drafts(rt, api, clock)
    clock.set(utc(2026, 2, 2, 9))
    issued = ok(api.post(f"/api/v1/billing/invoices/{january}/approve"))
    response = api.get(f"/api/v1/billing/invoices/{january}/pdf")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"] == 'attachment; filename="INV-0001.pdf"'
    assert response.content.startswith(b"%PDF-")
    reader = pypdf.PdfReader(io.BytesIO(response.content))
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert issued["number"] == "INV-0001" and "INV-0001" in text
    assert issued["totals"]["total"] == "91.57" and "$91.57" in text
    assert "Tallybook Demo Ltd" in text and "Acme Inc." in text
    assert api.get("/api/v1/billing/invoices/01KDVDNA00M322QF7VSW00Y76P/pdf").status_code == 404


def test_verify_reproduces_an_issued_invoice_after_late_events_and_voids(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    profile(api)
    [january] = january_drafts(rt, api, clock)
    clock.set(utc(2026, 2, 2, 9))
    issued = ok(api.post(f"/api/v1/billing/invoices/{january}/approve"))
    verified = ok(api.post(f"/api/v1/billing/invoices/{january}/verify"))
    assert verified["result"] == "reproduced exactly" and verified["reproduced"] is True
    assert verified["totals"] == {"stored": "91.57", "recomputed": "91.57"}
    assert verified["cutoff"] == {"asOf": issued["asOf"], "asOfSeq": issued["asOfSeq"]}
    assert verified["differences"] == [] and verified["sinceCutoff"] == []

    # After the cutoff: a late January event, and a void of one counted API-calls event.
    clock.set(utc(2026, 2, 3))
    send(api, [("api.calls", "acme", utc(2026, 1, 20), {"value": 2000})])
    first = f"api.calls-acme-{to_micros(utc(2026, 1, 1, 10))}-0"
    ok(
        api.post("/api/v1/events/void", json={"events": [{"source": "tests", "id": first}], "reason": "test traffic"}),
        201,
    )
    clock.set(utc(2026, 2, 4))
    verified = ok(api.post(f"/api/v1/billing/invoices/{january}/verify"))
    assert verified["result"] == "reproduced exactly"  # at its cutoff, nothing moved
    [change] = verified["sinceCutoff"]
    assert change["rateCardKey"] == "api_calls"
    assert (change["billedQuantity"], change["currentQuantity"]) == ("31000", "32000")
    assert (change["lateEvents"], change["voidedEvents"]) == (1, 1)
    assert change["corrections"] == [] and change["uncorrectedQuantity"] == "1000"

    # February's invoice carries the difference as a correction; once issued, nothing is left over.
    clock.set(utc(2026, 3, 1, 1))
    run_billing(rt)
    february = next(
        i for i in ok(api.get("/api/v1/billing/invoices", params={"status": "draft"}))["items"] if i["kind"] == "period"
    )
    clock.set(utc(2026, 3, 1, 2))
    ok(api.post(f"/api/v1/billing/invoices/{february['id']}/approve"))
    change = ok(api.post(f"/api/v1/billing/invoices/{january}/verify"))["sinceCutoff"][0]
    assert change["corrections"] == [{"invoiceId": february["id"], "status": "issued", "quantity": "1000"}]
    assert change["uncorrectedQuantity"] == "0"
    assert ok(api.post(f"/api/v1/billing/invoices/{february['id']}/verify"))["reproduced"] is True


def test_verify_names_the_lines_that_differ(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    profile(api)
    [january] = january_drafts(rt, api, clock)
    # Usage of a subject no customer has yet: not on the invoice...
    send(api, [("api.calls", "acme-eu", utc(2026, 1, 5), {"value": 7})])
    clock.set(utc(2026, 2, 2, 9))
    ok(api.post(f"/api/v1/billing/invoices/{january}/approve"))
    # ...until the subject is given to the customer after issuing: usage is read for the subjects
    # the customer has now, so the recomputation counts it.
    customer = ok(api.get("/api/v1/customers/acme"))
    body = {k: v for k, v in customer.items() if k not in ("id", "createdAt", "updatedAt")}
    body["usageAttribution"] = {"subjectKeys": ["acme", "acme-eu"]}
    ok(api.put("/api/v1/customers/acme", json=body))
    verified = ok(api.post(f"/api/v1/billing/invoices/{january}/verify"))
    assert verified["result"] == "differs" and verified["reproduced"] is False
    [difference] = verified["differences"]
    assert difference["stored"]["quantity"] == "31000" and difference["recomputed"]["quantity"] == "31007"
    assert "subjects" in difference["reason"]
    assert verified["totals"] == {"stored": "91.57", "recomputed": "91.58"}


def test_snapshot_quantities_counts_a_draft_now(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    profile(api)
    [january] = january_drafts(rt, api, clock)
    before = ok(api.get(f"/api/v1/billing/invoices/{january}"))
    clock.set(utc(2026, 2, 1, 2))
    send(api, [("api.calls", "acme", utc(2026, 1, 31, 22), {"value": 500})])
    snapped = ok(api.post(f"/api/v1/billing/invoices/{january}/snapshot-quantities"))
    assert snapped["status"] == "draft" and "number" not in snapped
    assert snapped["asOf"] == snapped["quantitySnapshotedAt"] == "2026-02-01T02:00:00Z"
    assert snapped["asOfSeq"] > before["asOfSeq"] and snapped["revision"] == before["revision"] + 1
    assert snapped["totals"]["total"] == "92.07"
    assert ok(api.post(f"/api/v1/billing/invoices/{january}/verify"))["reproduced"] is True
    clock.set(utc(2026, 2, 1, 3))
    ok(api.post(f"/api/v1/billing/invoices/{january}/approve"))
    refused = api.post(f"/api/v1/billing/invoices/{january}/snapshot-quantities")
    assert refused.status_code == 409 and "only draft" in refused.json()["detail"]


def test_cli_verifies_and_saves_the_pdf(
    rt: Runtime, api: httpx.Client, clock: FixedClock, database_url: str, tmp_path: Any
) -> None:
    from typer.testing import CliRunner

    from tallybook.cli.main import app

    profile(api)
    [january] = january_drafts(rt, api, clock)
    clock.set(utc(2026, 2, 2, 9))
    ok(api.post(f"/api/v1/billing/invoices/{january}/approve"))
    done = CliRunner().invoke(app, ["invoices", "verify", january, "--database", database_url])
    assert done.exit_code == 0, done.output
    assert done.output.startswith("invoice INV-0001 (issued): reproduced exactly at its cutoff")
    target = tmp_path / "out.pdf"
    saved = CliRunner().invoke(app, ["invoices", "pdf", january, "-o", str(target), "--database", database_url])
    assert saved.exit_code == 0, saved.output
    assert "INV-0001" in pypdf.PdfReader(io.BytesIO(target.read_bytes())).pages[0].extract_text()
    missing = CliRunner().invoke(app, ["invoices", "verify", "01KDVDNA00M322QF7VSW00Y76P", "--database", database_url])
    assert missing.exit_code == 2 and "no invoice has the id" in missing.output
