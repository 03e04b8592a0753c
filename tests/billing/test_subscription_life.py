"""A subscription's life after the invoice: plan changes "now" with a clock that moves, credits
for unused in-advance time given when the cancel happens (a credit note against an issued invoice,
a credit line on a draft), late usage of an ended subscription billed on a final correction invoice
(or credited), proration by whole seconds, and figures beyond 28 digits billed exactly."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import func, select

from tallybook.billing.currency import round_money
from tallybook.billing.models import RoundingMode
from tallybook.billing.subscriptions import SubscriptionConflict
from tallybook.clock import FixedClock, to_micros
from tallybook.exact import CONTEXT
from tallybook.meters.materializer_sql import insert_usage
from tallybook.meters.ports import UsageRecord
from tallybook.runtime import Runtime
from tallybook.store.schema import events
from tallybook.webhooks.service import ChannelInput, RuleInput
from tallybook.webhooks.settings import INVOICE_CREDIT_NOTE_CREATED
from tests.billing_helpers import (
    SEED_PLAN,
    client_for,
    create_customer,
    create_plan,
    ok,
    outbox,
    run_billing,
    send,
    subscribe,
    utc,
)
from tests.billing_helpers import build as build_runtime


class TickingClock(FixedClock):
    """A clock that moves on by a microsecond each time it is read, as a real one does."""

    def now(self) -> datetime:
        current = super().now()
        self.advance(timedelta(microseconds=1))
        return current


def usd(value: Decimal) -> str:
    return str(round_money(value, "USD", RoundingMode.HALF_EVEN))


def invoices(api: httpx.Client, kind: str | None = None) -> list[dict[str, Any]]:
    found = ok(api.get("/api/v1/billing/invoices", params={"limit": 1000}))["items"]
    return sorted((i for i in found if kind is None or i["kind"] == kind), key=lambda i: (i["createdAt"], i["id"]))


def credit_notes(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    return ok(api.get("/api/v1/billing/credit-notes", params={"limit": 1000, **params}))["items"]  # type: ignore[no-any-return]


def approve(api: httpx.Client, invoice: dict[str, Any]) -> dict[str, Any]:
    return ok(api.post(f"/api/v1/billing/invoices/{invoice['id']}/approve"))  # type: ignore[no-any-return]


def plan_variant(key: str, fee: str, calls_price: str | None = None) -> dict[str, Any]:
    body = copy.deepcopy(SEED_PLAN)
    body["key"], body["name"] = key, key.title()
    body["rateCards"][0]["price"]["amount"] = fee
    if calls_price is not None:
        body["rateCards"][1]["price"]["amount"] = calls_price
    return body


def route(rt: Runtime, *types: str) -> None:
    channel = rt.webhooks.create_channel(ChannelInput(name="billing", url="http://127.0.0.1:9/hook"))
    for event_type in types:
        rt.webhooks.create_rule(RuleInput(type=event_type, name=event_type, channels=[channel.id]))


# -- 1. a plan change "now" -------------------------------------------------------------------------


def test_plan_change_now_with_a_clock_that_moves(database_url: str) -> None:
    """`immediate` (or no timing) is the instant of the request, not checked against a later reading."""
    clock = TickingClock(utc(2026, 1, 1))
    rt = build_runtime(database_url, clock)
    api = client_for(rt)
    try:
        create_plan(api)
        create_plan(api, plan_variant("team", "99"))
        create_plan(api, plan_variant("scale", "199"))
        create_customer(api)
        sub = subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
        clock.set(utc(2026, 1, 10, 9, 30))
        changed = ok(api.post(f"/api/v1/subscriptions/{sub['id']}/change", json={"plan": {"key": "team"}}))
        assert changed["current"]["activeTo"] == changed["next"]["activeFrom"]
        assert changed["next"]["activeFrom"].startswith("2026-01-10T09:30:00")
        again = ok(
            api.post(
                f"/api/v1/subscriptions/{changed['next']['id']}/change",
                json={"plan": {"key": "scale"}, "timing": "immediate"},
            )
        )
        assert again["next"]["plan"] == {"key": "scale", "version": 1}
        assert again["current"]["activeTo"] == again["next"]["activeFrom"]
        # A date in the past is still refused, naming what to fix.
        late = api.post(
            f"/api/v1/subscriptions/{again['next']['id']}/change",
            json={"plan": {"key": "pro"}, "timing": "2026-01-01T00:00:00Z"},
        )
        assert late.status_code == 400 and late.json()["detail"] == "timing must not be in the past"
        # Cancel "now" works the same way.
        canceled = ok(api.post(f"/api/v1/subscriptions/{again['next']['id']}/cancel"))
        assert canceled["status"] == "inactive"
    finally:
        api.close()
        rt.stop()


def subscribed_with_an_issued_opening_invoice(rt: Runtime, api: httpx.Client) -> tuple[dict[str, Any], dict[str, Any]]:
    """Acme on the seed plan from 1 January (calendar periods), its opening invoice (January's
    in-advance fee, 49.00) issued, so a credit for unused time is a credit note against it."""
    create_plan(api)
    create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    run_billing(rt)
    (opening,) = invoices(api, "opening")
    approve(api, opening)
    return sub, opening


# -- 5. credits at the cancel ------------------------------------------------------------------------


def test_cancel_credits_an_issued_fee_with_a_credit_note_at_once(rt: Runtime, api: httpx.Client, clock) -> None:
    route(rt, INVOICE_CREDIT_NOTE_CREATED)
    create_plan(api)
    create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    run_billing(rt)
    (opening,) = invoices(api, "opening")
    approve(api, opening)  # issued: it is never edited again
    clock.set(utc(2026, 1, 11))
    ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel"))
    (note,) = credit_notes(api)
    # Paid 49.00 for January, used 10 days: 49 * 10/31 = 15.81, so 33.19 comes back now.
    assert note["number"] == "CN-000001" and note["status"] == "issued"
    assert note["invoiceId"] == opening["id"] and note["reason"] == "cancellation"
    assert note["totals"] == {"total": usd(49 - Decimal(49) * 10 / 31)} == {"total": "33.19"}
    (line,) = note["lines"]
    assert line["type"] == "credit" and line["name"] == "Credit: Platform fee (unused time)"
    assert line["period"] == {"from": "2026-01-11T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
    assert (line["charged"], line["used"]) == ("49.00", "15.81")
    assert note["issuedAt"] == "2026-01-11T00:00:00Z"
    # The issued invoice is unchanged; the webhook carries the credit note.
    assert ok(api.get(f"/api/v1/billing/invoices/{opening['id']}"))["revision"] == opening["revision"] + 1
    (event,) = outbox(rt, INVOICE_CREDIT_NOTE_CREATED)
    assert event["body"]["type"] == INVOICE_CREDIT_NOTE_CREATED
    assert event["body"]["creditNote"]["id"] == note["id"]
    assert event["body"]["creditNote"]["totals"]["total"] == "33.19"
    # One credit note by id, as JSON and as a page; filters by invoice and customer (id or key).
    assert ok(api.get(f"/api/v1/billing/credit-notes/{note['id']}")) == note
    page = api.get(f"/api/v1/billing/credit-notes/{note['id']}/html")
    assert page.headers["content-type"].startswith("text/html")
    assert "CN-000001" in page.text and "33.19" in page.text and "Acme Inc." in page.text
    assert api.get(f"/api/v1/billing/credit-notes/{note['id']}", headers={"Accept": "text/html"}).text == page.text
    assert credit_notes(api, invoiceId=opening["id"]) == [note] == credit_notes(api, customerId="acme")
    assert credit_notes(api, invoiceId="01KDVDNA00SRATMZQTTT4XN6MR") == []
    assert api.get("/api/v1/billing/credit-notes/nope").status_code == 404
    assert api.get("/api/v1/billing/credit-notes", params={"customerId": "nobody"}).status_code == 404
    assert api.get("/api/v1/billing/credit-notes", params={"status": "draft"}).status_code == 400
    # U+0000 can be in no id: refused alike on both engines (tallybook/api/guards.py).
    assert api.get("/api/v1/billing/credit-notes/a%00b").status_code == 400
    assert api.get("/api/v1/billing/credit-notes?customerId=a%00b").status_code == 400
    assert api.get("/api/v1/billing/credit-notes?invoiceId=a%00b").status_code == 400
    # The period's invoice bills January's usage and gives nothing back twice.
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    (period,) = invoices(api, "period")
    assert [ln for ln in period["lines"] if ln["type"] in ("credit", "flat_fee")] == []


def test_a_change_after_a_dated_cancel_credits_only_the_difference(rt: Runtime, api: httpx.Client, clock) -> None:
    """The end moves twice (a cancel for the 21st, then a plan change on the 11th): each credit is
    what is still owed, so charged minus all credits is the fee for the time used."""
    create_plan(api)
    create_plan(api, plan_variant("team", "99"))
    create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    run_billing(rt)
    (opening,) = invoices(api, "opening")
    approve(api, opening)
    clock.set(utc(2026, 1, 5))
    ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", json={"timing": "2026-01-21T00:00:00Z"}))
    clock.set(utc(2026, 1, 11))
    ok(api.post(f"/api/v1/subscriptions/{sub['id']}/change", json={"plan": {"key": "team"}}))
    first, second = sorted(credit_notes(api), key=lambda n: n["number"])
    assert (first["reason"], second["reason"]) == ("cancellation", "plan_change")
    # To the 21st: 49 * 20/31 = 31.61 used, 17.39 back. Then to the 11th: 15.81 used, 15.80 more.
    assert first["totals"]["total"] == usd(49 - Decimal(49) * 20 / 31) == "17.39"
    assert second["totals"]["total"] == "15.80"
    assert (second["lines"][0]["charged"], second["lines"][0]["used"]) == ("49.00", "15.81")
    used = Decimal(usd(Decimal(49) * 10 / 31))
    assert Decimal("49.00") - Decimal(first["totals"]["total"]) - Decimal(second["totals"]["total"]) == used


def test_a_second_change_during_the_first_is_refused_and_the_unused_time_is_credited_once(
    rt: Runtime, api: httpx.Client, clock, monkeypatch
) -> None:
    """Two changes of one subscription at once. The second arrives when the first has read what
    was charged and not yet issued its credit: had it gone through, both would credit the same
    unused time (33.19 + 17.39 against a 49.00 fee). It is refused with 409 and changes nothing; the
    unused time comes back once, and the next change, after the first, credits only what is owed."""
    sub, opening = subscribed_with_an_issued_opening_invoice(rt, api)
    clock.set(utc(2026, 1, 11))
    refused: list[SubscriptionConflict] = []
    tried: list[bool] = []
    issue = rt.credit_notes.issue

    def second_change_before_the_credit_is_issued(request: Any) -> Any:
        if not tried:
            tried.append(True)
            try:
                rt.subscriptions.cancel(sub["id"], "immediate")
            except SubscriptionConflict as exc:
                refused.append(exc)
        return issue(request)

    monkeypatch.setattr(rt.credit_notes, "issue", second_change_before_the_credit_is_issued)
    ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", json={"timing": "2026-01-21T00:00:00Z"}))
    (conflict,) = refused
    assert conflict.status == 409 and "being changed by another request" in conflict.detail
    assert ok(api.get(f"/api/v1/subscriptions/{sub['id']}"))["activeTo"] == "2026-01-21T00:00:00Z"
    (note,) = credit_notes(api)
    assert note["invoiceId"] == opening["id"]
    assert note["totals"]["total"] == usd(49 - Decimal(49) * 20 / 31) == "17.39"
    monkeypatch.undo()
    ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel"))
    assert sorted(n["totals"]["total"] for n in credit_notes(api)) == ["15.80", "17.39"]


def test_voiding_an_invoice_voids_its_credit_notes(rt: Runtime, api: httpx.Client, clock) -> None:
    sub, opening = subscribed_with_an_issued_opening_invoice(rt, api)
    clock.set(utc(2026, 1, 11))
    ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel"))
    clock.set(utc(2026, 1, 12))
    ok(api.post(f"/api/v1/billing/invoices/{opening['id']}/void"))
    (note,) = credit_notes(api)
    assert note["status"] == "void" and note["voidedAt"] == "2026-01-12T00:00:00Z"
    assert credit_notes(api, status="issued") == []


# -- 2. late usage of an ended subscription ----------------------------------------------------------


def test_late_usage_of_an_ended_subscription_is_billed_then_credited(rt: Runtime, api: httpx.Client, clock) -> None:
    """5,000 late calls worth $42.10 for a canceled subscription whose last invoice was issued: on a
    final correction invoice (in the preview first); a void of some of them later: a credit note."""
    route(rt, INVOICE_CREDIT_NOTE_CREATED, "invoice.created")
    create_plan(api, plan_variant("metered", "0", calls_price="0.00842"))
    create_customer(api)
    sub = subscribe(api, "acme", plan="metered", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 20))
    send(api, [("api.calls", "acme", utc(2026, 1, 10), {"value": 1000})])
    ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel"))
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    (january,) = invoices(api, "period")
    january = approve(api, january)
    assert january["totals"]["total"] == "8.42"
    # Late events for January arrive after the last invoice was issued.
    clock.set(utc(2026, 2, 3))
    send(api, [("api.calls", "acme", utc(2026, 1, 15, h), {"value": 1000}) for h in range(5)])
    (preview,) = ok(api.get("/api/v1/billing/customers/acme/invoices/simulate"))["items"]
    assert preview["kind"] == "correction" and preview["status"] == "preview"
    (line,) = preview["lines"]
    assert line["type"] == "correction" and line["amount"] == "42.10" and line["quantity"] == "5000"
    assert line["correctsInvoiceId"] == january["id"] and line["previousQuantity"] == "1000"
    assert run_billing(rt)["created"] == 1
    (final,) = invoices(api, "correction")
    assert final["status"] == "draft" and final["totals"]["total"] == "42.10"
    assert final["period"]["from"] == "2026-01-01T00:00:00Z" and final["period"]["to"] == "2026-02-03T00:00:00Z"
    assert [ln["description"] for ln in final["lines"]] == [
        f"usage that arrived after invoice {january['id']} was issued, for 2026-01-01 00:00 to 2026-01-20 00:00 UTC"
    ]
    # More late usage while it is a draft refreshes it; issued, it is billed once.
    clock.set(utc(2026, 2, 3, 1))
    send(api, [("api.calls", "acme", utc(2026, 1, 16), {"value": 100})])
    assert run_billing(rt)["updated"] == 1
    final = approve(api, invoices(api, "correction")[0])
    assert final["totals"]["total"] == usd(Decimal(5100) * Decimal("0.00842")) == "42.94"
    clock.set(utc(2026, 2, 4))
    assert run_billing(rt).get("created", 0) == 0
    assert ok(api.get("/api/v1/billing/customers/acme/invoices/simulate"))["items"] == []
    # A void takes 2,000 calls off: a credit note at the next run.
    window = {"from": "2026-01-15T00:00:00Z", "to": "2026-01-15T02:00:00Z"}
    body = {"filter": {"subject": "acme", "type": "api.calls", **window}, "reason": "double counted"}
    ok(api.post("/api/v1/events/void", json=body), 201)
    (preview,) = ok(api.get("/api/v1/billing/customers/acme/invoices/simulate"))["items"]
    assert [(ln["quantity"], ln["amount"]) for ln in preview["lines"]] == [("-2000", "-16.84")]
    result = run_billing(rt)
    assert result.get("creditNotes") == 1, result
    # Against the invoice that billed those units (the correction invoice), naming whose usage it was.
    (note,) = credit_notes(api)
    assert note["invoiceId"] == final["id"] and note["reason"] == "usage_correction"
    (credit,) = note["lines"]
    assert (credit["type"], credit["quantity"], credit["amount"]) == ("correction", "2000", "16.84")
    assert credit["correctsInvoiceId"] == january["id"]
    assert (credit["previousQuantity"], credit["newQuantity"]) == ("6100", "4100")
    assert len(outbox(rt, INVOICE_CREDIT_NOTE_CREATED)) == 1
    # Settled: nothing pending, nothing more drafted or credited.
    clock.set(utc(2026, 2, 5))
    result = run_billing(rt)
    assert result.get("created", 0) == 0 and "creditNotes" not in result
    # Billed over the three documents: 8.42 + 42.94 - 16.84 = 34.52 for the 4,100 calls that stand.
    billed = Decimal(january["totals"]["total"]) + Decimal(final["totals"]["total"]) - Decimal("16.84")
    assert billed == Decimal(usd(Decimal(4100) * Decimal("0.00842"))) == Decimal("34.52")


def test_a_correction_waits_for_the_grace_after_the_last_issue(rt: Runtime, api: httpx.Client, clock) -> None:
    create_plan(api, plan_variant("metered", "0"))
    create_customer(api)
    sub = subscribe(api, "acme", plan="metered", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 20))
    ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel"))
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    approve(api, invoices(api, "period")[0])
    clock.set(utc(2026, 2, 1, 1, 30))
    send(api, [("api.calls", "acme", utc(2026, 1, 15), {"value": 500})])
    assert run_billing(rt)["created"] == 0  # issued 30 minutes ago: late events may still come
    clock.set(utc(2026, 2, 1, 2))
    assert run_billing(rt)["created"] == 1


def test_another_subscription_carries_late_usage_instead(rt: Runtime, api: httpx.Client, clock) -> None:
    """A customer still subscribed in that currency gets the correction on its next period invoice."""
    create_plan(api)
    create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 20))
    ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel"))
    subscribe(api, "acme", activeFrom="2026-01-25T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    for invoice in invoices(api):
        if invoice["status"] == "draft":
            approve(api, invoice)
    clock.set(utc(2026, 2, 10))
    send(api, [("api.calls", "acme", utc(2026, 1, 15), {"value": 500})])
    run_billing(rt)
    assert invoices(api, "correction") == []
    clock.set(utc(2026, 3, 1, 1))
    run_billing(rt)
    february = next(i for i in invoices(api, "period") if i["period"]["from"] == "2026-02-01T00:00:00Z")
    assert [(ln["type"], ln["quantity"]) for ln in february["lines"] if ln["type"] == "correction"] == [
        ("correction", "500")
    ]


# -- 4. proration by the second ----------------------------------------------------------------------


def test_proration_counts_whole_seconds(rt: Runtime, api: httpx.Client, clock) -> None:
    create_plan(api)
    create_customer(api)
    subscribe(api, "acme", activeFrom="2026-01-16T00:00:00.805429Z", alignment="calendar")
    clock.set(utc(2026, 1, 16, 1))
    run_billing(rt)
    (opening,) = invoices(api, "opening")
    (fee,) = [ln for ln in opening["lines"] if ln["type"] == "flat_fee"]
    # The start's second counts whole: 16 days, not 16 days less 0.805429 s.
    assert fee["proration"] == {"coveredSeconds": str(16 * 86400), "periodSeconds": str(31 * 86400)}
    assert fee["amount"] == usd(Decimal(49) * 16 / 31) == "25.29"


def test_a_split_by_a_plan_change_adds_up_to_the_whole_period(rt: Runtime, api: httpx.Client, clock) -> None:
    """A change at an instant with microseconds: both parts count whole seconds and add up to the month."""
    create_plan(api)
    create_plan(api, plan_variant("same", "49"))
    create_customer(api)
    sub = subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 1, 0, 0, 1))
    run_billing(rt)
    clock.set(datetime.fromisoformat("2026-01-26T00:23:26.805429+00:00"))
    ok(api.post(f"/api/v1/subscriptions/{sub['id']}/change", json={"plan": {"key": "same"}}))
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    (opening,) = invoices(api, "opening")
    (period,) = invoices(api, "period")
    credit = next(ln for ln in opening["lines"] if ln["type"] == "credit")
    new_fee = next(
        ln for ln in period["lines"] if ln["type"] == "flat_fee" and ln["period"]["to"].startswith("2026-02")
    )
    assert new_fee["proration"]["coveredSeconds"] == str(6 * 86400 - 23 * 60 - 26)  # from 00:23:26 to 1 February
    used_old = Decimal(49) * (25 * 86400 + 23 * 60 + 26) / (31 * 86400)
    assert Decimal(credit["amount"]) == Decimal(usd(used_old)) - 49
    # Same fee both sides: January costs 49.00 give or take the two roundings.
    january = Decimal("49.00") + Decimal(credit["amount"]) + Decimal(new_fee["amount"])
    assert abs(january - Decimal("49.00")) <= Decimal("0.01")


# -- 3. figures beyond 28 digits ---------------------------------------------------------------------


def test_a_31_digit_quantity_is_billed_exactly(rt: Runtime, api: httpx.Client, clock) -> None:
    """A meter total of 31 significant digits (the sum of more events than a test can send: written
    as the materializer writes usage rows) rates to the cent and totals keep their decimals."""
    body = plan_variant("bulk", "0", calls_price="1")
    body["rateCards"] = body["rateCards"][:2]
    create_plan(api, body)
    create_customer(api)
    subscribe(api, "acme", plan="bulk", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 10))
    send(api, [("api.calls", "acme", utc(2026, 1, 9), {"value": "999999999999.999999"})])
    quantity = Decimal("12345678901234567890123456789.12")
    meter = rt.meters.get("api_calls")
    rt.meters.catch_up()
    with rt.store.write() as conn:
        # Under the ingest watermark (invoices count usage of events stored up to it), at another
        # instant than the real event's row.
        stored_seq = conn.execute(select(func.max(events.c.seq))).scalar_one()
        insert_usage(
            conn,
            [
                UsageRecord(
                    meter_key=meter.key,
                    event_seq=stored_seq,
                    subject="acme",
                    time_us=to_micros(utc(2026, 1, 9, 12)),
                    ingested_us=to_micros(clock.now()),
                    num=CONTEXT.subtract(quantity, Decimal("999999999999.999999")),  # exactly
                    ukey=None,
                    groups=None,
                    error=None,
                )
            ],
        )
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    (invoice,) = invoices(api, "period")
    (line,) = [ln for ln in invoice["lines"] if ln["type"] == "usage_based"]
    assert line["quantity"] == "12345678901234567890123456789.120000"  # every digit (events have 6 decimals)
    assert line["amount"] == "12345678901234567890123456789.12"
    assert invoice["totals"] == {
        "amount": "12345678901234567890123456789.12",
        "commitments": "0.00",
        "total": "12345678901234567890123456789.12",
    }
    usage = ok(api.get("/api/v1/billing/customers/acme/usage", params={"at": "2026-01-20T00:00:00Z"}))["usage"]
    assert [u["quantity"] for u in usage] == ["12345678901234567890123456789.120000"]


def test_one_customer_failing_leaves_the_others_final_corrections(
    rt: Runtime, api: httpx.Client, clock, monkeypatch
) -> None:
    """Three customers whose subscriptions ended: acme's late usage is billed although globex's usage
    cannot be read and initech's credit note cannot be written; both are recorded and retried."""
    from tallybook.billing.wiring import INVOICE_JOB

    create_plan(api, plan_variant("metered", "0", calls_price="0.01"))
    ids, subs = {}, {}
    for key in ("acme", "globex", "initech"):
        ids[key] = create_customer(api, key)["id"]
        subs[key] = subscribe(api, key, plan="metered", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    clock.set(utc(2026, 1, 20))
    send(api, [("api.calls", key, utc(2026, 1, 10), {"value": 1000}) for key in ids])
    for sub in subs.values():
        ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel"))
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    for invoice in invoices(api, "period"):
        approve(api, invoice)
    clock.set(utc(2026, 2, 3))
    send(api, [("api.calls", key, utc(2026, 1, 12), {"value": 500}) for key in ("acme", "globex")])
    ok(api.post("/api/v1/events/void", json={"filter": {"subject": "initech"}, "reason": "test traffic"}), 201)
    real_query, real_issue = rt.meters.query, rt.credit_notes.issue

    def query(q: Any) -> Any:
        if ids["globex"] in (q.customer_ids or ()):
            raise RuntimeError("disk read error in the usage of globex")
        return real_query(q)

    def issue(request: Any) -> Any:
        raise RuntimeError("credit note table is locked")

    monkeypatch.setattr(rt.meters, "query", query)
    monkeypatch.setattr(rt.credit_notes, "issue", issue)
    job = next(j for j in rt.jobs.jobs if j.name == INVOICE_JOB)
    result = rt.jobs.run_job(job, force=True)
    assert (result.error, result.status, result.result["failedItems"]) == (None, "partial", 2)
    (acme,) = invoices(api, "correction")
    assert acme["customer"]["key"] == "acme" and acme["totals"]["total"] == "5.00"
    initech_invoice = next(i["id"] for i in invoices(api, "period") if i["customer"]["key"] == "initech")
    failures = ok(api.get("/api/v1/jobs/failures"))["items"]
    failed = {(f["itemKind"], f["context"].get("customerId") or f["context"].get("invoiceId")) for f in failures}
    assert failed == {("invoice", ids["globex"]), ("credit_note", initech_invoice)}
    assert credit_notes(api) == []
    # Fixed: the next run bills globex and credits initech; the failures are gone.
    monkeypatch.setattr(rt.meters, "query", real_query)
    monkeypatch.setattr(rt.credit_notes, "issue", real_issue)
    result = rt.jobs.run_job(job, force=True)
    assert (result.status, result.result["created"], result.result["creditNotes"]) == ("ok", 1, 1)
    assert sorted(i["customer"]["key"] for i in invoices(api, "correction")) == ["acme", "globex"]
    (note,) = credit_notes(api)
    assert note["customer"]["key"] == "initech" and note["totals"]["total"] == "10.00"
    assert ok(api.get("/api/v1/jobs/failures"))["items"] == []
