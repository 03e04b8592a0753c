"""Stripe invoicing end to end, through the real SDK against the fake Stripe, on SQLite and
PostgreSQL: the seed invoice in Stripe with the right amounts and tax codes, draft updates diffed,
Stripe Tax and the tax_location_required state, payment webhooks both ways, crashes during a sync
resumed without duplicates, and forged webhooks rejected."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import stripe

from fakestripe import FakeStripeServer
from fakestripe.webhooks import redeliver
from tallybook.clock import FixedClock
from tallybook.config import Settings
from tallybook.runtime import Runtime
from tallybook.stripe.invoices import SYNC_JOB
from tallybook.webhooks.service import ChannelInput, RuleInput
from tests.billing_helpers import (
    SEED_METERS,
    a_month_of_events,
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
from tests.conftest import LiveServer
from tests.test_webhook_helpers import reset_database

WEBHOOK_SECRET = "whsec_test_invoicing_secret"
INVOICE_WEBHOOK_EVENTS = [
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "invoice.marked_uncollectible",
    "invoice.finalization_failed",
]


@dataclass
class Env:
    rt: Runtime
    api: httpx.Client
    fake: FakeStripeServer
    clock: FixedClock

    @property
    def stripe(self) -> stripe.StripeClient:
        return self.fake.client()

    def sync(self) -> dict[str, Any]:
        job = next(j for j in self.rt.jobs.jobs if j.name == SYNC_JOB)
        result = self.rt.jobs.run_job(job, force=True)
        assert result.error is None, result.error
        return result.result  # type: ignore[no-any-return]

    def invoice(self, invoice_id: str) -> dict[str, Any]:
        return ok(self.api.get(f"/api/v1/billing/invoices/{invoice_id}"))  # type: ignore[no-any-return]

    def stripe_invoices(self) -> list[Any]:
        return list(self.stripe.v1.invoices.list({"limit": 100}).auto_paging_iter())

    def items_of(self, stripe_invoice_id: str) -> list[Any]:
        listing = self.stripe.v1.invoice_items.list({"invoice": stripe_invoice_id, "limit": 100})
        return sorted(listing.auto_paging_iter(), key=lambda i: i.metadata["tallybook_line_key"])

    def tax_code(self, item_id: str) -> str:
        return str(self.fake.state.internal["invoice_items"][item_id]["tax_code"])


def settings_for(database_url: str, fake: FakeStripeServer, **stripe_extra: Any) -> Settings:
    return Settings.model_validate(
        {
            "database": {"url": database_url},
            "webhooks": {"scheduler": {"run_in_server": False}},
            "meters": {"definitions": SEED_METERS},
            "stripe": {
                "enabled": True,
                "api_key": fake.api_key,
                "webhook_secret": WEBHOOK_SECRET,
                "api_base": fake.url,
                "requests_per_second": 1000,
                "max_network_retries": 0,
                "timeout_seconds": 5.0,
                **stripe_extra,
            },
        }
    )


def route_events(rt: Runtime, types: list[str]) -> None:
    """Tallybook webhooks of these types into the outbox (a channel nobody listens on)."""
    channel = rt.webhooks.create_channel(ChannelInput(name="billing", url="http://127.0.0.1:9/hook"))
    for event_type in types:
        rt.webhooks.create_rule(RuleInput(type=event_type, name=event_type, channels=[channel.id]))


def stripe_profile(api: httpx.Client, **workflow: Any) -> dict[str, Any]:
    """An API-created default profile whose app is Stripe (approval needed unless autoAdvance)."""
    body = {
        "name": "Stripe",
        "default": True,
        "supplier": {"name": "Tallybook Demo Ltd"},
        "workflow": {
            "invoicing": {"autoAdvance": False},
            "tax": {"enabled": False},
            **workflow,
        },
        "apps": {"tax": "stripe", "invoicing": "stripe", "payment": "stripe"},
    }
    return ok(api.post("/api/v1/billing/profiles", json=body), 201)  # type: ignore[no-any-return]


@pytest.fixture
def fake() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        server.clock.set(utc(2026, 2, 1, 1).timestamp())
        yield server
    assert not server.state.server_errors, "\n".join(server.state.server_errors)


def make_env(database_url: str, fake: FakeStripeServer, **stripe_extra: Any) -> Env:
    reset_database(database_url)
    clock = FixedClock(utc(2026, 1, 1))
    rt = Runtime.build(settings_for(database_url, fake, **stripe_extra), clock=clock)
    rt.start()
    return Env(rt, client_for(rt), fake, clock)


@pytest.fixture
def env(database_url: str, fake: FakeStripeServer) -> Iterator[Env]:
    e = make_env(database_url, fake)
    try:
        yield e
    finally:
        e.api.close()
        e.rt.stop()


def seed(env: Env, plan: bool = True, **customer: Any) -> tuple[str, str]:
    """The seed plan from 1 January, a month of events, acme's invoices drafted: (opening, period)."""
    if plan:
        create_plan(env.api)
    create_customer(env.api, **customer)
    subscribe(env.api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    run_billing(env.rt)
    env.clock.set(utc(2026, 2, 1, 0, 30))
    send(env.api, a_month_of_events())
    env.clock.set(utc(2026, 2, 1, 1, 0))
    run_billing(env.rt)
    acme = ok(env.api.get("/api/v1/customers/acme"))["id"]
    found = ok(env.api.get("/api/v1/billing/invoices", params={"limit": 100, "customerId": acme}))["items"]
    by_kind = {i["kind"]: i["id"] for i in found}
    return by_kind["opening"], by_kind["period"]


def issue(env: Env, invoice_id: str) -> dict[str, Any]:
    return ok(env.api.post(f"/api/v1/billing/invoices/{invoice_id}/approve"))  # type: ignore[no-any-return]


def test_seed_invoice_reaches_stripe_with_amounts_periods_and_tax_codes(env: Env) -> None:
    stripe_profile(env.api)
    opening, period = seed(env)
    assert env.sync()["synced"] == 2  # both drafts are mirrored as Stripe drafts
    drafts = {i.metadata["tallybook_invoice_id"]: i for i in env.stripe_invoices()}
    assert set(drafts) == {opening, period}
    assert {i.status for i in drafts.values()} == {"draft"}
    s_period = drafts[period]
    assert s_period.collection_method == "charge_automatically" and s_period.auto_advance is False
    assert s_period.automatic_tax.enabled is False

    issue(env, period)
    assert env.sync() == {"due": 1, "synced": 1}
    s_invoice = env.stripe.v1.invoices.retrieve(s_period.id)
    assert s_invoice.status == "open" and s_invoice.number == "TB-0001"
    assert s_invoice.auto_advance is True  # Stripe collects from here (auto_collect)
    assert s_invoice.total == 9157 and s_invoice.amount_due == 9157  # $49 + 31.00 + 0.41 + 11.16
    items = {i.metadata["tallybook_rate_card"]: i for i in env.items_of(s_invoice.id)}
    assert {k: i.amount for k, i in items.items()} == {
        "platform": 4900,
        "api_calls": 3100,
        "storage": 41,
        "compute": 1116,
    }
    assert items["api_calls"].description == "API calls (31000 \u00d7 0.001 USD)"
    assert items["storage"].description == "Storage (GB, peak) (41 \u00d7 0.01 USD)"
    assert items["compute"].description == "Compute seconds (111600 \u00d7 0.0001 USD)"
    assert items["platform"].description.startswith("Platform fee")
    assert env.tax_code(items["compute"].id) == "txcd_10000000"
    assert env.tax_code(items["api_calls"].id) == "txcd_10103001"  # the default tax code
    jan = (int(utc(2026, 1, 1).timestamp()), int(utc(2026, 2, 1).timestamp()))
    assert (items["api_calls"].period.start, items["api_calls"].period.end) == jan
    # The platform fee is February's, billed in advance.
    assert items["platform"].period.start == jan[1]
    assert items["api_calls"].metadata["tallybook_invoice_id"] == period
    assert items["api_calls"].metadata["tallybook_line_kind"] == "usage"

    body = env.invoice(period)
    assert body["number"] == "TB-0001"
    assert body["externalIds"] == {"invoicing": s_invoice.id, "payment": s_invoice.id}
    assert body["sync"]["status"] == "synced" and body["sync"]["externalStatus"] == "open"
    assert body["sync"]["hostedInvoiceUrl"].startswith("https://invoice.stripe.com/")
    page = env.api.get(f"/api/v1/billing/invoices/{period}/html").text
    assert "TB-0001" in page
    # Nothing left to do: a second run finds nothing due and sends nothing to Stripe.
    posts = len([r for r in env.fake.requests if r.method == "POST"])
    assert env.sync() == {"due": 0}
    assert len([r for r in env.fake.requests if r.method == "POST"]) == posts


def test_draft_updates_are_diffed_against_stripe(env: Env) -> None:
    stripe_profile(env.api)
    _, period = seed(env)
    env.sync()
    s_id = env.invoice(period)["externalIds"]["invoicing"]
    before = {i.metadata["tallybook_rate_card"]: i.id for i in env.items_of(s_id)}
    # A late event for January: only the API calls line changes, so only its item is updated.
    env.clock.set(utc(2026, 2, 1, 2))
    send(env.api, [("api.calls", "acme", utc(2026, 1, 31, 23), {"value": 500})])
    run_billing(env.rt)
    posts_before = {r.path for r in env.fake.requests if r.method in ("POST", "DELETE")}
    outcome = env.rt.invoice_sync.sync(period)
    assert outcome is not None
    assert (outcome.created_items, outcome.updated_items, outcome.deleted_items) == (0, 1, 0)
    after = {i.metadata["tallybook_rate_card"]: i for i in env.items_of(s_id)}
    assert {k: i.id for k, i in after.items()} == before  # same items, updated in place
    assert after["api_calls"].amount == 3150
    assert not any(p.endswith("/finalize") for p in posts_before)
    assert env.stripe.v1.invoices.retrieve(s_id).subtotal == 9207


def test_send_invoice_collection_and_webhook_only_profiles(database_url: str, fake: FakeStripeServer) -> None:
    env = make_env(database_url, fake)
    try:
        stripe_profile(
            env.api,
            payment={"collectionMethod": "send_invoice", "autoCollect": False},
            invoicing={"autoAdvance": False, "dueAfter": "P14D"},
        )
        # Another customer stays on a webhook-only profile: nothing of theirs goes to Stripe.
        webhook_only = ok(
            env.api.post(
                "/api/v1/billing/profiles",
                json={
                    "name": "Webhooks",
                    "default": False,
                    "supplier": {"name": "Tallybook Demo Ltd"},
                    "workflow": {},
                    "apps": {"tax": "custom_invoicing", "invoicing": "custom_invoicing", "payment": "custom_invoicing"},
                },
            ),
            201,
        )
        create_plan(env.api)
        create_customer(env.api, "other")
        ok(env.api.put("/api/v1/billing/customers/other", json={"billingProfileId": webhook_only["id"]}))
        subscribe(env.api, "other", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
        _, period = seed(env, plan=False)
        env.sync()
        issue(env, period)
        env.sync()
        s_invoice = env.stripe.v1.invoices.retrieve(env.invoice(period)["externalIds"]["invoicing"])
        assert s_invoice.collection_method == "send_invoice" and s_invoice.auto_advance is False
        assert s_invoice.due_date == s_invoice.created + 14 * 86_400
        customers = {i.metadata["tallybook_customer_id"] for i in env.stripe_invoices()}
        other_id = ok(env.api.get("/api/v1/customers/other"))["id"]
        assert other_id not in customers and len(customers) == 1
    finally:
        env.api.close()
        env.rt.stop()


def test_stripe_tax_waits_for_a_customer_location(env: Env) -> None:
    stripe_profile(env.api, tax={"enabled": True})
    route_events(env.rt, ["invoice.sync_failed"])
    _, period = seed(env)
    issue(env, period)
    result = env.sync()
    assert result["tax_location_required"] == 1
    body = env.invoice(period)
    assert body["sync"]["status"] == "tax_location_required"
    assert "billingAddress" in body["sync"]["error"]["message"]
    assert body["status"] == "issued" and "number" not in body
    failed = outbox(env.rt, "invoice.sync_failed")
    assert len(failed) == 1 and failed[0]["body"]["invoice"]["sync"]["status"] == "tax_location_required"
    # Still no location: retrying changes nothing and does not notify again.
    env.rt.invoice_sync.sync_now(period)
    assert len(outbox(env.rt, "invoice.sync_failed")) == 1

    customer = ok(env.api.get("/api/v1/customers/acme"))
    customer["billingAddress"] = {"country": "DE", "postalCode": "10115", "city": "Berlin"}
    for readonly in ("id", "createdAt", "updatedAt"):
        customer.pop(readonly, None)
    ok(env.api.put("/api/v1/customers/acme", json=customer))
    synced = ok(env.api.post(f"/api/v1/billing/invoices/{period}/sync"))
    assert synced["sync"]["status"] == "synced" and synced["sync"]["taxStatus"] == "complete"
    # German VAT at 19 % on each line, rounded per line: 9.31 + 5.89 + 0.08 + 2.12.
    assert synced["sync"]["tax"] == "17.40" and synced["sync"]["totalWithTax"] == "108.97"
    assert synced["number"].startswith("TB-")
    s_invoice = env.stripe.v1.invoices.retrieve(synced["externalIds"]["invoicing"])
    assert s_invoice.automatic_tax.status == "complete" and s_invoice.total == 10897
    assert env.stripe.v1.customers.retrieve(s_invoice.customer).address.country == "DE"
    assert "Total with tax" in env.api.get(f"/api/v1/billing/invoices/{period}/html").text


def test_crash_during_sync_resumes_without_duplicates(database_url: str, fake: FakeStripeServer) -> None:
    # Lost answers are dropped connections, not timeouts: at once, whatever the machine's load.
    env = make_env(database_url, fake)
    try:
        stripe_profile(env.api)
        _, period = seed(env)
        ok(env.api.post(f"/api/v1/billing/invoices/{seed_opening(env)}/void"))
        issue(env, period)
        # 1. Stripe creates the invoice but the answer never arrives.
        fake.faults.drop("/v1/invoices", method="POST", after_processing=True)
        assert env.rt.invoice_sync.sync(period).status == "pending"  # type: ignore[union-attr]
        assert len(env.stripe_invoices()) == 1
        assert env.invoice(period)["sync"]["status"] == "pending"
        # 2. The next run gets the same invoice back (idempotency key); the second item fails.
        fake.faults.server_error("/v1/invoiceitems", method="POST", times=1, skip=1)
        outcome = env.rt.invoice_sync.sync(period)
        assert outcome is not None and outcome.status == "pending"
        (s_invoice,) = env.stripe_invoices()
        assert 0 < len(env.items_of(s_invoice.id)) < 4
        # 3. An item is created but its answer is lost.
        fake.faults.drop("/v1/invoiceitems", method="POST", after_processing=True)
        outcome = env.rt.invoice_sync.sync(period)
        assert outcome is not None and outcome.status == "pending"
        assert len(env.items_of(s_invoice.id)) < 4
        # 4. A clean run completes the draft and finalizes it: one invoice, four items, no duplicates.
        outcome = env.rt.invoice_sync.sync(period)
        assert outcome is not None and outcome.status == "synced", outcome
        assert [i.id for i in env.stripe_invoices()] == [s_invoice.id]
        items = env.items_of(s_invoice.id)
        assert len(items) == 4 and len({i.metadata["tallybook_line_key"] for i in items}) == 4
        final = env.stripe.v1.invoices.retrieve(s_invoice.id)
        assert final.status == "open" and final.total == 9157
    finally:
        env.api.close()
        env.rt.stop()


def seed_opening(env: Env) -> str:
    found = ok(env.api.get("/api/v1/billing/invoices", params={"limit": 100}))["items"]
    return next(i["id"] for i in found if i["kind"] == "opening")


def test_lost_invoice_id_is_found_by_metadata_after_the_idempotency_window(
    database_url: str, fake: FakeStripeServer
) -> None:
    env = make_env(database_url, fake)
    try:
        stripe_profile(env.api)
        _, period = seed(env)
        fake.faults.drop("/v1/invoices", method="POST", after_processing=True)
        assert env.rt.invoice_sync.sync(period).status == "pending"  # type: ignore[union-attr]
        fake.clock.advance(25 * 3600)  # the idempotency key has expired at Stripe
        outcome = env.rt.invoice_sync.sync(period)
        assert outcome is not None and outcome.status == "synced"
        mine = [i for i in env.stripe_invoices() if i.metadata["tallybook_invoice_id"] == period]
        assert len(mine) == 1
    finally:
        env.api.close()
        env.rt.stop()


def test_tallybook_transitions_reach_stripe(env: Env) -> None:
    stripe_profile(env.api)
    opening, period = seed(env)
    env.sync()
    opening_stripe = env.invoice(opening)["externalIds"]["invoicing"]
    # Voiding a draft deletes the Stripe draft.
    ok(env.api.post(f"/api/v1/billing/invoices/{opening}/void"))
    env.sync()
    assert env.invoice(opening)["sync"]["status"] == "done"
    with pytest.raises(stripe.InvalidRequestError):
        env.stripe.v1.invoices.retrieve(opening_stripe)
    # Marking an issued invoice paid in Tallybook pays it out of band in Stripe.
    issue(env, period)
    env.sync()
    ok(env.api.post(f"/api/v1/billing/invoices/{period}/mark-paid"))
    env.sync()
    s_invoice = env.stripe.v1.invoices.retrieve(env.invoice(period)["externalIds"]["invoicing"])
    assert s_invoice.status == "paid"
    assert s_invoice.payments.data[0].payment.type == "out_of_band_payment"
    assert env.invoice(period)["sync"]["status"] == "done"


@pytest.fixture
def live(env: Env) -> Iterator[tuple[Env, LiveServer]]:
    with LiveServer(env.rt) as server:
        endpoint = env.fake.add_webhook_endpoint(f"{server.url}/api/v1/stripe/webhook", INVOICE_WEBHOOK_EVENTS)
        env.rt.stripe.settings = env.rt.stripe.settings.model_copy(update={"webhook_secret": endpoint["secret"]})
        yield env, server


def deliver(env: Env) -> None:
    deliveries = env.fake.deliver_webhooks()
    assert deliveries and all(d.status == 200 for d in deliveries), deliveries


def test_payment_webhooks_update_the_invoice_and_send_tallybook_webhooks(live: tuple[Env, LiveServer]) -> None:
    env, _ = live
    stripe_profile(env.api)
    route_events(env.rt, ["invoice.paid", "invoice.payment_failed", "invoice.voided", "invoice.uncollectible"])
    _, period = seed(env)
    issue(env, period)
    env.sync()
    s_id = env.invoice(period)["externalIds"]["invoicing"]
    s_customer = env.stripe.v1.invoices.retrieve(s_id).customer
    env.stripe.v1.customers.update(s_customer, {"invoice_settings": {"default_payment_method": "pm_card_visa"}})

    # A declined card: the invoice stays issued, its payment status says failed, a webhook goes out.
    env.fake.fail_next_invoice_payment()
    with pytest.raises(stripe.CardError):
        env.stripe.v1.invoices.pay(s_id)
    deliver(env)
    body = env.invoice(period)
    assert body["status"] == "issued" and body["sync"]["paymentStatus"] == "failed"
    assert body["sync"]["paymentError"]["attemptCount"] == 1
    failed = outbox(env.rt, "invoice.payment_failed")
    assert len(failed) == 1 and failed[0]["body"]["invoice"]["number"] == body["number"]

    # Stripe retries and the payment goes through.
    env.stripe.v1.invoices.pay(s_id)
    deliver(env)
    body = env.invoice(period)
    assert body["status"] == "paid" and body["sync"]["paymentStatus"] == "paid"
    assert body["sync"]["status"] == "done"
    paid = outbox(env.rt, "invoice.paid")
    assert len(paid) == 1 and paid[0]["body"]["invoice"]["status"] == "paid"
    # The same event delivered again changes nothing.
    paid_event = env.fake.state.events_of_type("invoice.paid")[-1]["id"]
    last = [d for d in env.fake.state.webhook_deliveries if d.event_id == paid_event][-1]
    again = redeliver(env.fake.state, last.event_id, last.endpoint_id)
    assert again.status == 200
    assert env.invoice(period)["revision"] == body["revision"]
    assert len(outbox(env.rt, "invoice.paid")) == 1


def test_stripe_void_and_uncollectible_reach_tallybook(live: tuple[Env, LiveServer]) -> None:
    env, _ = live
    stripe_profile(env.api)
    opening, period = seed(env)
    for invoice_id in (opening, period):
        issue(env, invoice_id)
    env.sync()
    opening_s = env.invoice(opening)["externalIds"]["invoicing"]
    period_s = env.invoice(period)["externalIds"]["invoicing"]
    env.stripe.v1.invoices.void_invoice(opening_s)
    env.stripe.v1.invoices.mark_uncollectible(period_s)
    deliver(env)
    assert env.invoice(opening)["status"] == "void"
    assert env.invoice(period)["status"] == "uncollectible"
    # Written off, then paid after all.
    env.stripe.v1.invoices.pay(period_s, {"paid_out_of_band": True})
    deliver(env)
    assert env.invoice(period)["status"] == "paid"


def test_missed_webhooks_are_caught_up_by_the_next_sync(env: Env) -> None:
    stripe_profile(env.api)
    _, period = seed(env)
    issue(env, period)
    env.sync()
    s_id = env.invoice(period)["externalIds"]["invoicing"]
    env.stripe.v1.invoices.pay(s_id, {"paid_out_of_band": True})  # no webhook endpoint: nothing delivered
    assert env.invoice(period)["status"] == "issued"
    ok(env.api.post(f"/api/v1/billing/invoices/{period}/sync"))
    body = env.invoice(period)
    assert body["status"] == "paid" and body["sync"]["paymentStatus"] == "paid"
    assert body["sync"]["status"] == "done"


def test_forged_invoice_webhooks_are_rejected(live: tuple[Env, LiveServer]) -> None:
    env, server = live
    stripe_profile(env.api)
    _, period = seed(env)
    issue(env, period)
    env.sync()
    s_id = env.invoice(period)["externalIds"]["invoicing"]
    forged = (
        '{"id": "evt_forged", "object": "event", "type": "invoice.paid", '
        f'"data": {{"object": {{"id": "{s_id}", "object": "invoice", "status": "paid"}}}}}}'
    )
    url = f"{server.url}/api/v1/stripe/webhook"
    timestamp = int(datetime.now(UTC).timestamp())
    for headers in (
        {},
        {"Stripe-Signature": f"t={timestamp},v1={'0' * 64}"},
        {"Stripe-Signature": _sign(forged, "whsec_not_the_secret", timestamp)},
    ):
        response = httpx.post(url, content=forged, headers={"Content-Type": "application/json", **headers})
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("invalid-stripe-signature")
    assert env.invoice(period)["status"] == "issued"


def _sign(payload: str, secret: str, timestamp: int) -> str:
    import hashlib
    import hmac

    digest = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def test_sync_endpoint_problems(env: Env) -> None:
    missing = env.api.post("/api/v1/billing/invoices/nope/sync")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    _, period = seed(env)  # the default profile is webhook-only
    other = env.api.post(f"/api/v1/billing/invoices/{period}/sync")
    assert other.status_code == 404 and "billing profile" in other.json()["detail"]


def test_a_sync_racing_another_on_finalize_converges(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    stripe_profile(env.api)
    route_events(env.rt, ["invoice.sync_failed"])
    _, period = seed(env)
    env.sync()
    issue(env, period)
    s_id = env.invoice(period)["externalIds"]["invoicing"]
    invoices = env.rt.stripe.client().v1.invoices
    real_finalize = invoices.finalize_invoice

    def finalized_first_elsewhere(invoice_id: str, params: Any = None) -> Any:
        env.stripe.v1.invoices.finalize_invoice(invoice_id)  # the other sync wins the race
        return real_finalize(invoice_id, params)  # Stripe: 400, it is not a draft any more

    monkeypatch.setattr(invoices, "finalize_invoice", finalized_first_elsewhere)
    outcome = env.rt.invoice_sync.sync(period)
    assert outcome is not None and outcome.status == "synced", outcome
    assert env.invoice(period)["number"] == env.stripe.v1.invoices.retrieve(s_id).number
    assert outbox(env.rt, "invoice.sync_failed") == []
