"""Customers, products, prices, subscriptions and items, events, webhooks, auth and idempotency on
the fake Stripe server, driven through the real stripe-python SDK over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
import stripe

from fakestripe import FakeStripeServer, sign
from fakestripe.routes import ROUTER, Ctx, Router
from fakestripe.testing import ReceivedWebhook, WebhookReceiver, error_body, metered_setup

JAN_31 = int(datetime(2026, 1, 31, 12, 0, tzinfo=UTC).timestamp())


@pytest.fixture
def fake() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        yield server
    assert not server.state.server_errors


@pytest.fixture
def client(fake: FakeStripeServer) -> stripe.StripeClient:
    return fake.client()


def test_customer_crud_and_list(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    created = client.v1.customers.create(
        {
            "email": "billing@example.com",
            "name": "Example Co",
            "address": {"country": "US", "postal_code": "94107", "line1": "1 Main St"},
            "metadata": {"tenant": "t-1", "plan": "pro"},
            "invoice_settings": {"default_payment_method": "pm_card_visa"},
        }
    )
    assert created.id.startswith("cus_")
    assert created.object == "customer" and created.livemode is False
    assert created.address is not None and created.address.postal_code == "94107"
    assert created["invoice_settings"]["default_payment_method"] == "pm_card_visa"
    fetched = client.v1.customers.retrieve(created.id)
    assert fetched["metadata"].to_dict() == {"tenant": "t-1", "plan": "pro"}

    updated = client.v1.customers.update(
        created.id, {"metadata": {"plan": "", "region": "eu"}, "invoice_settings": {"default_payment_method": ""}}
    )
    assert updated["metadata"].to_dict() == {"tenant": "t-1", "region": "eu"}
    assert updated["invoice_settings"]["default_payment_method"] is None
    [event] = fake.state.events_of_type("customer.updated")
    assert event["data"]["previous_attributes"]["metadata"] == {"tenant": "t-1", "plan": "pro"}

    more = [client.v1.customers.create({"email": f"c{i}@example.com"}) for i in range(4)]
    page = client.v1.customers.list({"limit": 2})
    assert [c.id for c in page.data] == [more[3].id, more[2].id] and page.has_more
    everything = [c.id for c in client.v1.customers.list({"limit": 2}).auto_paging_iter()]
    assert everything == [c.id for c in reversed([created, *more])]
    assert [c.id for c in client.v1.customers.list({"email": "c1@example.com"}).data] == [more[1].id]

    deleted = client.v1.customers.delete(more[0].id)
    assert deleted.deleted is True
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.customers.update(more[0].id, {"name": "gone"})
    assert err.value.http_status == 404 and err.value.code == "resource_missing"


def test_unknown_ids_are_404_resource_missing(client: stripe.StripeClient) -> None:
    for call in (
        lambda: client.v1.customers.retrieve("cus_nope"),
        lambda: client.v1.prices.retrieve("price_nope"),
        lambda: client.v1.subscriptions.retrieve("sub_nope"),
        lambda: client.v1.billing.meters.retrieve("mtr_nope"),
    ):
        with pytest.raises(stripe.InvalidRequestError) as err:
            call()
        assert err.value.http_status == 404
        assert err.value.code == "resource_missing"
        assert err.value.param == "id"


def test_payment_method_must_look_like_one(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.customers.create({"invoice_settings": {"default_payment_method": "card_123"}})
    assert err.value.code == "resource_missing"
    assert err.value.param == "invoice_settings[default_payment_method]"


def test_api_key_checks(fake: FakeStripeServer) -> None:
    with pytest.raises(stripe.AuthenticationError) as err:
        fake.client(api_key="sk_live_realkey123").v1.customers.list()
    assert err.value.http_status == 401
    with pytest.raises(stripe.AuthenticationError):
        fake.client(api_key="not-a-key").v1.customers.list()
    response = httpx.get(f"{fake.url}/v1/customers")
    assert response.status_code == 401
    assert "did not provide an API key" in response.json()["error"]["message"]
    fake.state.api_keys = {"sk_test_only_this_one"}
    with pytest.raises(stripe.AuthenticationError):
        fake.client().v1.customers.list()
    assert fake.client(api_key="sk_test_only_this_one").v1.customers.list().data == []


def test_unrecognized_url_is_404(fake: FakeStripeServer) -> None:
    response = httpx.post(f"{fake.url}/v1/frobnicate", headers={"Authorization": f"Bearer {fake.api_key}"})
    assert response.status_code == 404
    assert response.json()["error"]["message"].startswith("Unrecognized request URL (POST: /v1/frobnicate)")


def test_products_and_prices(client: stripe.StripeClient) -> None:
    product = client.v1.products.create({"name": "Compute", "tax_code": "txcd_10103001", "metadata": {"k": "v"}})
    assert product.id.startswith("prod_") and product.active
    product = client.v1.products.update(product.id, {"description": "CPU seconds"})
    assert client.v1.products.retrieve(product.id).description == "CPU seconds"

    flat = client.v1.prices.create(
        {"currency": "usd", "product": product.id, "unit_amount": 1500, "recurring": {"interval": "month"}}
    )
    assert flat.unit_amount == 1500 and str(flat.unit_amount_decimal) == "1500"
    assert flat.recurring is not None and flat.recurring.usage_type == "licensed"

    fractional = client.v1.prices.create(
        {"currency": "eur", "product": product.id, "unit_amount_decimal": Decimal("0.0035")}
    )
    assert fractional.unit_amount is None and str(fractional.unit_amount_decimal) == "0.0035"
    assert fractional.type == "one_time" and fractional.recurring is None

    tiered = client.v1.prices.create(
        {
            "currency": "usd",
            "product": product.id,
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": [
                {"up_to": 1000, "unit_amount_decimal": Decimal("0.5"), "flat_amount": 100},
                {"up_to": "inf", "unit_amount": 0},
            ],
            "recurring": {"interval": "month", "usage_type": "licensed"},
        }
    )
    assert tiered.tiers is not None and tiered.tiers[0].up_to == 1000 and tiered.tiers[1].up_to is None
    assert str(tiered.tiers[0].unit_amount_decimal) == "0.5" and tiered.tiers[0].flat_amount == 100

    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.prices.create(
            {"currency": "usd", "product": product.id, "billing_scheme": "tiered", "tiers_mode": "volume",
             "tiers": [{"up_to": 10, "unit_amount": 1}]}
        )  # fmt: skip
    assert err.value.param == "tiers[0][up_to]"
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.prices.create({"currency": "usd", "product": product.id})
    assert err.value.code == "parameter_missing" and err.value.param == "unit_amount"
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.prices.create({"currency": "usd", "product": "prod_missing", "unit_amount": 1})
    assert err.value.http_status == 404 and err.value.param == "product"

    listed = client.v1.prices.list({"product": product.id, "type": "recurring"})
    assert {p.id for p in listed.data} == {flat.id, tiered.id}
    assert client.v1.prices.update(flat.id, {"active": False}).active is False


def test_metered_prices_need_an_active_meter_from_basil_on(client: stripe.StripeClient) -> None:
    product = client.v1.products.create({"name": "Calls"})
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.prices.create(
            {"currency": "usd", "product": product.id, "unit_amount": 1,
             "recurring": {"interval": "month", "usage_type": "metered"}}
        )  # fmt: skip
    assert err.value.param == "recurring[meter]"
    meter = client.v1.billing.meters.create(
        {"display_name": "Calls", "event_name": "calls", "default_aggregation": {"formula": "count"}}
    )
    client.v1.billing.meters.deactivate(meter.id)
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.prices.create(
            {"currency": "usd", "product": product.id, "unit_amount": 1,
             "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}}
        )  # fmt: skip
    assert "not active" in str(err.value)
    # an account pinned to an older API version may still create legacy metered prices
    legacy = client.v1.prices.create(
        {"currency": "usd", "product": product.id, "unit_amount": 1,
         "recurring": {"interval": "month", "usage_type": "metered"}},
        {"stripe_version": "2025-02-24.acacia"},
    )  # fmt: skip
    assert legacy.recurring is not None and legacy.recurring.meter is None


def test_subscription_lifecycle(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    fake.clock.set(JAN_31)
    setup = metered_setup(client)
    base = client.v1.prices.create(
        {"currency": "usd", "product_data": {"name": "Seat"}, "unit_amount": 2000, "recurring": {"interval": "month"}}
    )
    sub = client.v1.subscriptions.create(
        {"customer": setup.customer.id, "items": [{"price": base.id, "quantity": 3}], "metadata": {"tenant": "t"}}
    )
    assert sub.id.startswith("sub_") and sub.status == "active"
    [item] = sub["items"].data
    assert item.id.startswith("si_") and item.quantity == 3 and item.price.id == base.id
    # Periods live on items; a month from Jan 31 clamps to Feb 28.
    assert item.current_period_start == JAN_31
    assert item.current_period_end == int(datetime(2026, 2, 28, 12, 0, tzinfo=UTC).timestamp())
    assert "current_period_end" not in sub  # basil+ response shape

    # pre-basil responses still carry the period on the subscription
    old = client.v1.subscriptions.retrieve(sub.id, options={"stripe_version": "2025-02-24.acacia"})
    assert old["current_period_end"] == item.current_period_end

    # add a metered item, change quantity, remove nothing
    sub = client.v1.subscriptions.update(
        sub.id,
        {"items": [{"id": item.id, "quantity": 5}, {"price": setup.price.id}], "metadata": {"tenant": "", "x": "1"}},
    )
    assert sorted((i.price.id, i.quantity) for i in sub["items"].data) == sorted([(base.id, 5), (setup.price.id, None)])
    assert sub.metadata.to_dict() == {"x": "1"}
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.subscriptions.update(sub.id, {"items": [{"price": setup.price.id}]})
    assert "same price" in str(err.value)
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.subscriptions.create(
            {"customer": setup.customer.id, "items": [{"price": setup.price.id, "quantity": 2}]}
        )
    assert err.value.param == "items[0][quantity]"
    yearly = client.v1.prices.create(
        {"currency": "usd", "product_data": {"name": "Y"}, "unit_amount": 1, "recurring": {"interval": "year"}}
    )
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscription_items.create({"subscription": sub.id, "price": yearly.id})

    listed = client.v1.subscriptions.list({"customer": setup.customer.id})
    assert {s.id for s in listed.data} == {sub.id, setup.subscription.id}

    canceled = client.v1.subscriptions.cancel(sub.id)
    assert canceled.status == "canceled" and canceled.canceled_at == JAN_31
    assert [s.id for s in client.v1.subscriptions.list({"customer": setup.customer.id}).data] == [setup.subscription.id]
    assert len(client.v1.subscriptions.list({"status": "all"}).data) == 2
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.update(sub.id, {"description": "too late"})
    types = [e["type"] for e in fake.state.events]
    assert types.count("customer.subscription.created") == 2
    assert "customer.subscription.deleted" in types


def test_subscription_items_endpoints(client: stripe.StripeClient) -> None:
    setup = metered_setup(client)
    extra_meter = client.v1.billing.meters.create(
        {"display_name": "Storage", "event_name": "storage", "default_aggregation": {"formula": "last"}}
    )
    price = client.v1.prices.create(
        {"currency": "usd", "product_data": {"name": "GB"}, "unit_amount": 10,
         "recurring": {"interval": "month", "usage_type": "metered", "meter": extra_meter.id}}
    )  # fmt: skip
    item = client.v1.subscription_items.create(
        {"subscription": setup.subscription.id, "price": price.id, "metadata": {"kind": "storage"}}
    )
    assert item.subscription == setup.subscription.id
    assert item.current_period_end == setup.item.current_period_end
    listed = client.v1.subscription_items.list({"subscription": setup.subscription.id})
    assert {i.id for i in listed.data} == {item.id, setup.item.id}
    assert client.v1.subscription_items.update(item.id, {"metadata": {"kind": "disk"}}).metadata["kind"] == "disk"
    assert client.v1.subscription_items.retrieve(item.id).metadata["kind"] == "disk"
    assert client.v1.subscription_items.delete(item.id).deleted is True
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscription_items.delete(setup.item.id)  # the last item cannot go
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.subscription_items.list({})  # type: ignore[typeddict-item]
    assert err.value.code == "parameter_missing" and err.value.param == "subscription"


def test_advancing_a_subscription_period_emits_updated_event(
    fake: FakeStripeServer, client: stripe.StripeClient
) -> None:
    fake.clock.set(JAN_31)
    setup = metered_setup(client)
    first_end = setup.item.current_period_end
    renewed = fake.advance_subscription(setup.subscription.id, move_clock=True)
    [item] = renewed["items"]["data"]
    assert item["current_period_start"] == first_end
    assert item["current_period_end"] == int(datetime(2026, 3, 31, 12, 0, tzinfo=UTC).timestamp())
    assert fake.clock.now() == first_end
    event = fake.state.events_of_type("customer.subscription.updated")[-1]
    assert event["data"]["object"]["id"] == setup.subscription.id
    old_item = event["data"]["previous_attributes"]["items"]["data"][0]
    assert old_item["current_period_end"] == first_end
    assert client.v1.subscription_items.retrieve(setup.item.id).current_period_start == first_end

    # the same control over HTTP, for code that only has the URL
    response = httpx.post(f"{fake.url}/_fake/subscriptions/{setup.subscription.id}/advance")
    assert response.status_code == 200
    assert response.json()["items"]["data"][0]["current_period_start"] == item["current_period_end"]

    # cancel_at_period_end: the renewal ends the subscription instead
    client.v1.subscriptions.update(setup.subscription.id, {"cancel_at_period_end": True})
    ended = fake.advance_subscription(setup.subscription.id)
    assert ended["status"] == "canceled"
    assert fake.state.events[-1]["type"] == "customer.subscription.deleted"


def test_events_are_recorded_and_listable(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    setup = metered_setup(client)
    types = [e["type"] for e in fake.state.events]
    assert types == [
        "customer.created",
        "billing.meter.created",
        "product.created",
        "price.created",
        "customer.subscription.created",
    ]
    event = client.v1.events.list({"type": "customer.subscription.created"}).data[0]
    assert event.id.startswith("evt_") and event.object == "event"
    assert event.data.object["id"] == setup.subscription.id
    assert event.api_version == stripe.api_version
    assert event.request is not None and event.request.idempotency_key is not None
    assert client.v1.events.retrieve(event.id).type == "customer.subscription.created"
    assert len(client.v1.events.list({"type": "customer.*"}).data) == 2  # customer.created + subscription


def test_idempotent_replay_and_conflict(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    first = client.v1.customers.create({"email": "a@example.com"}, {"idempotency_key": "key-1"})
    again = client.v1.customers.create({"email": "a@example.com"}, {"idempotency_key": "key-1"})
    assert again.id == first.id
    assert len(fake.state.all("customer")) == 1
    assert again.last_response is not None
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"
    with pytest.raises(stripe.IdempotencyError) as conflict:
        client.v1.customers.create({"email": "b@example.com"}, {"idempotency_key": "key-1"})
    assert conflict.value.http_status == 400
    assert error_body(conflict.value)["type"] == "idempotency_error"

    # errors raised once the endpoint ran are saved and replayed too, even if the world changed
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.create(
            {"customer": "cus_later", "items": [{"price": "price_x"}]}, {"idempotency_key": "k2"}
        )
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.subscriptions.create(
            {"customer": "cus_later", "items": [{"price": "price_x"}]}, {"idempotency_key": "k2"}
        )
    assert err.value.http_status == 404
    assert err.value.headers is not None and err.value.headers.get("Idempotent-Replayed") == "true"

    # validation failures are not saved: the same key works once the parameters are fixed... for the
    # same parameters (here: retrying a request that failed validation reaches the endpoint again)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.create({"emial": "x"}, {"idempotency_key": "k3"})  # type: ignore[arg-type]
    assert fake.state.idempotency.get((fake.api_key, "k3")) is None

    # keys expire after 24 hours
    fake.clock.advance(24 * 3600 + 1)
    fresh = client.v1.customers.create({"email": "a@example.com"}, {"idempotency_key": "key-1"})
    assert fresh.id != first.id


def test_sdk_sends_idempotency_key_on_every_post_and_pinned_version(
    fake: FakeStripeServer, client: stripe.StripeClient
) -> None:
    client.v1.customers.create({"email": "a@example.com"})
    client.v1.customers.list()
    post, get = fake.requests[-2], fake.requests[-1]
    assert post.method == "POST" and post.idempotency_key
    assert get.method == "GET" and get.idempotency_key is None
    assert post.stripe_version == stripe.api_version == "2026-10-28.endive"
    assert post.headers["content-type"] == "application/x-www-form-urlencoded"


def test_signed_webhook_delivery_verifies_with_the_sdk(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    with WebhookReceiver() as receiver:
        endpoint = client.v1.webhook_endpoints.create(
            {"url": receiver.url, "enabled_events": ["customer.subscription.updated", "customer.created"]}
        )
        assert endpoint.secret is not None and endpoint.secret.startswith("whsec_")
        setup = metered_setup(client)
        fake.advance_subscription(setup.subscription.id)
        deliveries = fake.deliver_webhooks()
        assert [d.status for d in deliveries] == [200, 200]
        assert len(receiver.received) == 2
        events = []
        for hook in receiver.received:
            header = hook.headers["Stripe-Signature"]
            assert header.startswith("t=") and ",v1=" in header
            events.append(stripe.Webhook.construct_event(hook.body, header, endpoint.secret))
        assert [e.type for e in events] == ["customer.created", "customer.subscription.updated"]
        assert events[1].data.object["id"] == setup.subscription.id
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(
                receiver.received[0].body, receiver.received[0].headers["Stripe-Signature"], "whsec_wrong"
            )
        tampered = receiver.received[0].body.replace(b"customer.created", b"customer.deleted")
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(tampered, receiver.received[0].headers["Stripe-Signature"], endpoint.secret)
        assert fake.state.get("event", events[0].id)["pending_webhooks"] == 0


def test_webhook_auto_delivery_and_failures() -> None:
    with WebhookReceiver() as receiver, FakeStripeServer(auto_deliver_webhooks=True) as fake:
        endpoint = fake.add_webhook_endpoint(receiver.url)
        receiver.status = 500
        fake.client().v1.customers.create({"email": "a@example.com"})
    # leaving the server's context waits for the delivery thread
    [delivery] = fake.state.webhook_deliveries
    assert delivery.status == 500 and delivery.error == "HTTP 500"
    event = json.loads(receiver.received[0].body)
    assert event["type"] == "customer.created"
    assert (
        stripe.Webhook.construct_event(
            receiver.received[0].body, receiver.received[0].headers["Stripe-Signature"], endpoint["secret"]
        ).type
        == "customer.created"
    )


def test_sign_matches_the_sdk_verifier_and_fake_clock_timestamps(fake: FakeStripeServer) -> None:
    payload = b'{"id": "evt_1", "object": "event"}'
    header = sign(payload, "whsec_test", 1_700_000_000)
    assert stripe.WebhookSignature.verify_header(payload.decode(), header, "whsec_test", tolerance=None)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(payload.decode(), header, "whsec_test", tolerance=300)
    # signing with the fake clock: the receiver sees the fake time in `t=`
    fake.state.webhook_timestamp_source = "fake"
    fake.clock.set(1_700_000_000)
    with WebhookReceiver() as receiver:
        fake.add_webhook_endpoint(receiver.url, ["customer.created"])
        fake.client().v1.customers.create({})
        [delivery] = fake.deliver_webhooks()
    assert delivery.signature_header.startswith("t=1700000000,v1=")


def test_routes_can_be_added_and_handler_bugs_answer_500() -> None:
    router = Router()
    router.routes.extend(ROUTER.routes)

    @router.post("/v1/widgets", params=stripe.params.CustomerCreateParams)
    def create_widget(ctx: Ctx) -> dict:
        if ctx.params.get("name") == "boom":
            raise RuntimeError("handler bug")
        return ctx.state.insert("widget", ctx.state.base_object("wdg", "widget", name=ctx.params.get("name")))

    with FakeStripeServer(router=router) as fake:
        client = fake.client(max_network_retries=2)
        made = client.deserialize(client.raw_request("post", "/v1/widgets", name="w"), api_mode="V1")
        assert made["id"].startswith("wdg_") and made["name"] == "w"
        with pytest.raises(stripe.InvalidRequestError) as err:
            client.raw_request("post", "/v1/widgets", colour="red")
        assert err.value.code == "parameter_unknown"
        with pytest.raises(stripe.APIError) as bug:
            client.raw_request("post", "/v1/widgets", name="boom")
        assert bug.value.http_status == 500
        assert len(fake.state.requests_to("POST", "/v1/widgets")) == 3  # Stripe-Should-Retry: false
        [trace] = fake.state.server_errors
        assert "RuntimeError: handler bug" in trace
        assert client.v1.customers.create({}).id.startswith("cus_")  # the stock routes still answer


def test_failed_requests_leave_no_partial_changes(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    setup = metered_setup(client)
    events_before = len(fake.state.events)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.update(
            setup.customer.id, {"name": "Renamed", "invoice_settings": {"default_payment_method": "card_1"}}
        )
    assert client.v1.customers.retrieve(setup.customer.id).name == "Example Co"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.update(
            setup.subscription.id,
            {"metadata": {"changed": "yes"}, "items": [{"id": setup.item.id, "deleted": True}]},
        )
    sub = client.v1.subscriptions.retrieve(setup.subscription.id)
    assert sub["metadata"].to_dict() == {}
    assert [i.id for i in sub["items"].data] == [setup.item.id]
    products = len(fake.state.all("product"))
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.prices.create(
            {"currency": "usd", "product_data": {"name": "X"}, "billing_scheme": "tiered", "tiers_mode": "volume",
             "tiers": [{"up_to": 5, "unit_amount": 1}]}
        )  # fmt: skip
    assert len(fake.state.all("product")) == products
    assert len(fake.state.events) == events_before


def test_basic_auth_is_accepted(fake: FakeStripeServer) -> None:
    response = httpx.get(f"{fake.url}/v1/customers", auth=(fake.api_key, ""))
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": [], "has_more": False, "url": "/v1/customers"}


def test_webhook_receiver_may_call_the_fake_back_during_delivery(
    fake: FakeStripeServer, client: stripe.StripeClient
) -> None:
    fetched: list[str] = []

    def handle(hook: ReceivedWebhook) -> None:
        event = json.loads(hook.body)
        fetched.append(client.v1.customers.retrieve(event["data"]["object"]["id"]).id)

    with WebhookReceiver(on_receive=handle) as receiver:
        fake.add_webhook_endpoint(receiver.url, ["customer.created"])
        customer = client.v1.customers.create({})
        response = httpx.post(f"{fake.url}/_fake/webhooks/deliver", timeout=10)
    assert response.json()["deliveries"][0]["status"] == 200
    assert fetched == [customer.id]
