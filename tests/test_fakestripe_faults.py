"""Fault injection on the fake Stripe server and what stripe-python does with each fault."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import stripe

from fakestripe import FakeStripeServer, FastRetryRequestsClient
from fakestripe.faults import Faults
from fakestripe.routes import ROUTER, Ctx, Router
from fakestripe.testing import error_body, metered_setup


@pytest.fixture
def fake() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        yield server
    assert not server.state.server_errors


def _customer_posts(fake: FakeStripeServer) -> list:
    return fake.state.requests_to("POST", "/v1/customers")


def test_sdk_does_not_retry_429(fake: FakeStripeServer) -> None:
    client = fake.client(max_network_retries=3)
    fake.faults.rate_limit("/v1/customers")
    with pytest.raises(stripe.RateLimitError) as err:
        client.v1.customers.create({"email": "a@example.com"})
    assert err.value.http_status == 429
    assert error_body(err.value)["code"] == "rate_limit"  # the SDK does not copy `code` onto RateLimitError
    assert len(_customer_posts(fake)) == 1  # no retry, even with retries enabled
    assert fake.state.all("customer") == []
    # the next request is not faulted
    client.v1.customers.create({"email": "a@example.com"})
    assert len(fake.state.all("customer")) == 1


def test_sdk_retries_429_marked_retryable(fake: FakeStripeServer) -> None:
    client = fake.client(max_network_retries=2)
    fake.faults.rate_limit("/v1/customers", should_retry=True)
    client.v1.customers.create({"email": "a@example.com"})
    posts = _customer_posts(fake)
    assert [r.status for r in posts] == [429, 200]
    assert posts[0].idempotency_key == posts[1].idempotency_key


def test_sdk_retries_500_with_the_same_idempotency_key(fake: FakeStripeServer) -> None:
    client = fake.client(max_network_retries=2)
    fake.faults.server_error("/v1/customers", times=2)
    customer = client.v1.customers.create({"email": "a@example.com"})
    posts = _customer_posts(fake)
    assert [r.status for r in posts] == [500, 500, 200]
    assert len({r.idempotency_key for r in posts}) == 1
    assert [c["id"] for c in fake.state.all("customer")] == [customer.id]
    # GETs are retried as well
    fake.faults.server_error("/v1/customers/*", method="GET", status=503)
    assert client.v1.customers.retrieve(customer.id).id == customer.id


def test_stripe_client_does_not_retry_unless_configured(fake: FakeStripeServer) -> None:
    # stripe.max_network_retries (2) only applies to the global client; a StripeClient built without
    # max_network_retries makes exactly one attempt.
    client = stripe.StripeClient(
        fake.api_key,
        base_addresses=fake.base_addresses,
        http_client=FastRetryRequestsClient(),
    )
    fake.faults.server_error("/v1/customers")
    with pytest.raises(stripe.APIError):
        client.v1.customers.create({})
    assert len(_customer_posts(fake)) == 1
    assert stripe.max_network_retries == 2


def test_without_retries_500_surfaces_as_api_error(fake: FakeStripeServer) -> None:
    client = fake.client()  # StripeClient's default is no retries unless configured
    fake.faults.server_error("/v1/billing/meter_events")
    with pytest.raises(stripe.APIError) as err:
        client.v1.billing.meter_events.create({"event_name": "x", "payload": {"value": "1"}})
    assert err.value.http_status == 500
    assert error_body(err.value)["type"] == "api_error"


def test_saved_500_is_replayed_for_the_same_key(fake: FakeStripeServer) -> None:
    client = fake.client(max_network_retries=2)
    fake.faults.server_error("/v1/customers", saved=True, should_retry=None)
    with pytest.raises(stripe.APIError):
        client.v1.customers.create({"email": "a@example.com"}, {"idempotency_key": "same"})
    posts = _customer_posts(fake)
    assert [(r.status, r.outcome) for r in posts] == [(500, "fault:500"), (500, "replayed"), (500, "replayed")]
    assert fake.state.all("customer") == []
    # Stripe-Should-Retry: false stops the SDK from retrying
    fake.faults.server_error("/v1/customers", should_retry=False)
    with pytest.raises(stripe.APIError):
        client.v1.customers.create({"email": "b@example.com"})
    assert len(_customer_posts(fake)) == 4


# Timeouts: the client gives up after TIMEOUT seconds, the fake hangs for HANG. The margin is wide
# so a busy machine neither answers a normal request too late nor ends a hang too early.
TIMEOUT, HANG = 1.5, 30.0


def test_timeout_before_processing_is_retried(fake: FakeStripeServer) -> None:
    client = fake.client(max_network_retries=1, timeout=TIMEOUT)
    fake.faults.timeout("/v1/customers", seconds=HANG)
    customer = client.v1.customers.create({"email": "a@example.com"})
    posts = _customer_posts(fake)
    assert [r.outcome for r in posts] == ["fault:timeout", "ok"]
    # The retry came when the client gave up, not when the hang ended.
    assert posts[1].received_monotonic - posts[0].received_monotonic < HANG
    assert posts[0].idempotency_key == posts[1].idempotency_key
    assert [c["id"] for c in fake.state.all("customer")] == [customer.id]


def test_timeout_surfaces_as_connection_error_without_retries(fake: FakeStripeServer) -> None:
    client = fake.client(timeout=TIMEOUT)
    fake.faults.timeout("/v1/customers", seconds=HANG)
    with pytest.raises(stripe.APIConnectionError) as err:
        client.v1.customers.create({"email": "a@example.com"})
    assert err.value.should_retry is True
    assert fake.state.all("customer") == []


def test_timeout_after_processing_is_replayed_not_duplicated(fake: FakeStripeServer) -> None:
    client = fake.client(max_network_retries=2, timeout=TIMEOUT)
    fake.faults.timeout("/v1/customers", seconds=HANG, after_processing=True)
    customer = client.v1.customers.create({"email": "a@example.com"})
    posts = _customer_posts(fake)
    assert [r.outcome for r in posts] == ["fault:timeout_after", "replayed"]
    assert [c["id"] for c in fake.state.all("customer")] == [customer.id]
    assert len(fake.state.events_of_type("customer.created")) == 1


def test_dropped_connection_before_processing_changes_nothing(fake: FakeStripeServer) -> None:
    client = fake.client(max_network_retries=2)
    fake.faults.drop("/v1/customers")
    with pytest.raises(stripe.APIConnectionError) as err:
        client.v1.customers.create({"email": "a@example.com"})
    # A broken answer is not one the SDK retries by itself (unlike a timeout).
    assert err.value.should_retry is False
    assert [r.outcome for r in _customer_posts(fake)] == ["fault:drop"]
    assert fake.state.all("customer") == []


def test_dropped_connection_after_processing_is_replayed_with_the_same_key(fake: FakeStripeServer) -> None:
    client = fake.client()
    fake.faults.drop("/v1/customers", after_processing=True)
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create({"email": "a@example.com"}, {"idempotency_key": "k-1"})
    (made,) = fake.state.all("customer")  # Stripe made it; the answer was lost on the way
    again = client.v1.customers.create({"email": "a@example.com"}, {"idempotency_key": "k-1"})
    assert again.id == made["id"]
    assert [r.outcome for r in _customer_posts(fake)] == ["fault:drop_after", "replayed"]
    assert len(fake.state.events_of_type("customer.created")) == 1


def test_a_request_still_running_answers_retries_409_then_replays(fake: FakeStripeServer) -> None:
    client = fake.client(max_network_retries=2)
    setup = metered_setup(client)
    fake.faults.still_running("/v1/billing/meter_events", conflicts=3)
    event = {"event_name": "api_call", "payload": {"stripe_customer_id": setup.customer.id, "value": "5"},
             "identifier": "w-1"}  # fmt: skip
    with pytest.raises(stripe.APIConnectionError):
        client.v1.billing.meter_events.create(event, {"idempotency_key": "k-1"})  # type: ignore[arg-type]
    assert len(fake.state.meter_events) == 1  # Stripe ran it; the answer never arrived
    # The same key while it is "still running": 409, which the SDK retries (2 retries here), then gives up.
    with pytest.raises(stripe.APIError) as err:
        client.v1.billing.meter_events.create(event, {"idempotency_key": "k-1"})  # type: ignore[arg-type]
    assert err.value.http_status == 409 and error_body(err.value)["type"] == "idempotency_error"
    assert "in-progress request" in str(err.value)
    posts = fake.state.requests_to("POST", "/v1/billing/meter_events")
    assert [r.status for r in posts[1:]] == [409, 409, 409]
    # Once it finished, the same key replays its answer; another key meets the identifier.
    replay = client.v1.billing.meter_events.create(event, {"idempotency_key": "k-1"})  # type: ignore[arg-type]
    assert replay.identifier == "w-1" and fake.state.requests[-1].outcome == "replayed"
    with pytest.raises(stripe.InvalidRequestError) as dup:
        client.v1.billing.meter_events.create(event, {"idempotency_key": "k-2"})  # type: ignore[arg-type]
    assert "An event already exists with identifier w-1" in str(dup.value)
    assert len(fake.state.meter_events) == 1


def test_fault_patterns_and_counts(fake: FakeStripeServer) -> None:
    client = fake.client()
    fake.faults.rate_limit("/v1/billing/*", times=2, method="POST")
    client.v1.customers.create({})  # not matched
    for _ in range(2):
        with pytest.raises(stripe.RateLimitError):
            client.v1.billing.meters.create(
                {"display_name": "x", "event_name": "x", "default_aggregation": {"formula": "sum"}}
            )
    client.v1.billing.meters.create({"display_name": "x", "event_name": "x", "default_aggregation": {"formula": "sum"}})
    assert fake.faults.pending() == []


def test_max_rate_per_second_measurement() -> None:
    faults = Faults()
    for t in (0.0, 0.1, 0.2, 0.95, 1.5, 1.6, 3.0):
        faults.arrive("POST", "/v1/billing/meter_events", now=t)
    faults.arrive("GET", "/v1/customers", now=0.5)
    assert faults.max_rate_per_second("/v1/billing/meter_events") == 4  # 0.0 .. 0.95
    assert faults.max_rate_per_second() == 5
    assert faults.max_rate_per_second(method="GET") == 1
    assert faults.max_rate_per_second("/v1/billing/*", window=0.5) == 3


def test_requests_are_measured_and_rate_limit_enforced(fake: FakeStripeServer) -> None:
    client = fake.client()
    for _ in range(6):
        client.v1.customers.list()
    assert 1 <= fake.faults.max_rate_per_second("/v1/customers") <= 6
    fake.faults.reset_measurements()
    fake.faults.enforce_rate_limit(3, "/v1/customers")
    outcomes = []
    started = time.monotonic()
    for _ in range(5):
        try:
            client.v1.customers.list()
            outcomes.append("ok")
        except stripe.RateLimitError:
            outcomes.append("429")
    if time.monotonic() - started < 0.9:  # all five inside one second
        assert outcomes == ["ok", "ok", "ok", "429", "429"]
    assert "429" in outcomes
    fake.faults.enforce_rate_limit(None)
    client.v1.customers.list()


def test_http_control_endpoints(fake: FakeStripeServer) -> None:
    assert httpx.post(f"{fake.url}/_fake/clock", data={"now": "1700000000"}).json() == {"now": 1700000000}
    assert httpx.post(f"{fake.url}/_fake/clock", data={"advance": "60"}).json() == {"now": 1700000060}
    assert fake.clock.now() == 1700000060
    assert httpx.get(f"{fake.url}/_fake/meter_error_reports").json() == {"data": []}


def test_same_idempotency_key_while_in_flight_is_409() -> None:
    router = Router()
    router.routes.extend(ROUTER.routes)
    started, release = threading.Event(), threading.Event()

    @router.post("/v1/slow_things", params=stripe.params.CustomerCreateParams, locked=False)
    def slow(ctx: Ctx) -> dict:
        started.set()
        release.wait(5)
        return {"id": "slow_1", "object": "slow_thing"}

    with FakeStripeServer(router=router) as fake:
        client = fake.client()
        results: list[object] = []
        first = threading.Thread(
            target=lambda: results.append(client.raw_request("post", "/v1/slow_things", idempotency_key="k"))
        )
        first.start()
        assert started.wait(5)
        with pytest.raises(stripe.APIError) as err:
            client.raw_request("post", "/v1/slow_things", idempotency_key="k")
        assert err.value.http_status == 409
        assert error_body(err.value)["type"] == "idempotency_error"
        release.set()
        first.join(5)
        assert len(results) == 1
        replay = client.raw_request("post", "/v1/slow_things", idempotency_key="k")
        assert replay.headers["Idempotent-Replayed"] == "true"
