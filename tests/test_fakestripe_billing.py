"""Billing meters, meter events (v1 and the v2 stream), adjustments, event summaries and legacy
usage records on the fake Stripe server, through the real SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
import stripe

from fakestripe import FakeStripeServer
from fakestripe.testing import error_body, metered_setup

T0 = int(datetime(2026, 3, 10, 0, 0, tzinfo=UTC).timestamp())  # midnight UTC
DAY = 86_400
LEGACY = "2025-02-24.acacia"


@pytest.fixture
def fake() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        server.clock.set(T0 + 2 * DAY)
        yield server
    assert not server.state.server_errors


@pytest.fixture
def client(fake: FakeStripeServer) -> stripe.StripeClient:
    return fake.client()


def _event(client: stripe.StripeClient, customer: str, value: str, ts: int, ident: str, name: str = "api_call") -> None:
    client.v1.billing.meter_events.create(
        {"event_name": name, "payload": {"stripe_customer_id": customer, "value": value}, "timestamp": ts,
         "identifier": ident}
    )  # fmt: skip


def _summaries(
    client: stripe.StripeClient, meter: str, customer: str, start: int, end: int, window: str | None = None
) -> list[tuple[int, int, float]]:
    params: dict = {"customer": customer, "start_time": start, "end_time": end, "limit": 100}
    if window:
        params["value_grouping_window"] = window
    page = client.v1.billing.meters.event_summaries.list(meter, params)  # type: ignore[arg-type]
    return [(s.start_time, s.end_time, s.aggregated_value) for s in page.data]


def test_meter_crud(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    meter = client.v1.billing.meters.create(
        {
            "display_name": "Tokens",
            "event_name": "tokens",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "account", "type": "by_id"},
            "value_settings": {"event_payload_key": "tokens"},
        }
    )
    assert meter.id.startswith("mtr_") and meter.object == "billing.meter" and meter.status == "active"
    assert meter.customer_mapping.event_payload_key == "account"
    assert meter.value_settings.event_payload_key == "tokens"
    default = client.v1.billing.meters.create(
        {"display_name": "Calls", "event_name": "calls", "default_aggregation": {"formula": "count"}}
    )
    assert default.customer_mapping.event_payload_key == "stripe_customer_id"
    assert default.value_settings.event_payload_key == "value"
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.billing.meters.create(
            {"display_name": "Again", "event_name": "tokens", "default_aggregation": {"formula": "sum"}}
        )
    assert err.value.param == "event_name"
    assert client.v1.billing.meters.update(meter.id, {"display_name": "LLM tokens"}).display_name == "LLM tokens"
    off = client.v1.billing.meters.deactivate(meter.id)
    assert off.status == "inactive" and off.status_transitions.deactivated_at == fake.clock.now()
    assert [m.id for m in client.v1.billing.meters.list({"status": "active"}).data] == [default.id]
    assert client.v1.billing.meters.reactivate(meter.id).status == "active"
    assert [m.id for m in client.v1.billing.meters.list().data] == [default.id, meter.id]
    assert [e["type"] for e in fake.state.events].count("billing.meter.deactivated") == 1


def test_meter_event_validation(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    setup = metered_setup(client)
    cus = setup.customer.id
    now = fake.clock.now()
    accepted = client.v1.billing.meter_events.create(
        {"event_name": "api_call", "payload": {"stripe_customer_id": cus, "value": "3"}, "identifier": "e-1"}
    )
    assert accepted.object == "billing.meter_event" and accepted.timestamp == now and accepted.identifier == "e-1"

    cases = [
        ({"event_name": "nope", "payload": {"stripe_customer_id": cus, "value": "1"}}, "no_meter"),
        ({"event_name": "api_call", "payload": {"value": "1"}}, "meter_event_no_customer_defined"),
        ({"event_name": "api_call", "payload": {"stripe_customer_id": "cus_x", "value": "1"}},
         "meter_event_customer_not_found"),
        ({"event_name": "api_call", "payload": {"stripe_customer_id": cus}}, "meter_event_value_not_found"),
        ({"event_name": "api_call", "payload": {"stripe_customer_id": cus, "value": "lots"}},
         "meter_event_invalid_value"),
        ({"event_name": "api_call", "payload": {"stripe_customer_id": cus, "value": "1"},
          "timestamp": now - 35 * DAY - 1}, "timestamp_too_far_in_past"),
        ({"event_name": "api_call", "payload": {"stripe_customer_id": cus, "value": "1"},
          "timestamp": now + 301}, "timestamp_in_future"),
    ]  # fmt: skip
    for params, code in cases:
        with pytest.raises(stripe.InvalidRequestError) as err:
            client.v1.billing.meter_events.create(params)  # type: ignore[arg-type]
        assert err.value.http_status == 400 and err.value.code == code, params
    # A duplicate identifier: Stripe's v1 answer names it in the message, without a code, not retryable.
    again = {"event_name": "api_call", "payload": {"stripe_customer_id": cus, "value": "1"}, "identifier": "e-1"}
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.billing.meter_events.create(again)  # type: ignore[arg-type]
    assert err.value.http_status == 400 and err.value.code is None
    assert error_body(err.value) == {
        "type": "invalid_request_error",
        "message": "An event already exists with identifier e-1.",
    }
    assert err.value.headers is not None and err.value.headers.get("Stripe-Should-Retry") == "false"
    fake.state.duplicate_identifier_code = "duplicate_meter_event"  # the coded variant, when a test wants it
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.billing.meter_events.create(again)  # type: ignore[arg-type]
    assert err.value.code == "duplicate_meter_event" and "already exists" in str(err.value)
    # the edges of the timestamp window are accepted
    _event(client, cus, "1", now - 35 * DAY, "edge-past")
    _event(client, cus, "1", now + 300, "edge-future")
    # identifiers are unique for 24 hours, then may be reused
    fake.clock.advance(DAY)
    _event(client, cus, "1", fake.clock.now(), "e-1")
    # an inactive meter refuses events
    client.v1.billing.meters.deactivate(setup.meter.id)
    with pytest.raises(stripe.InvalidRequestError) as err:
        _event(client, cus, "1", fake.clock.now(), "e-2")
    assert err.value.code == "archived_meter"
    assert len(fake.state.meter_events) == 4


def test_event_summaries_sum_with_exact_decimals(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    setup = metered_setup(client)
    cus, meter = setup.customer.id, setup.meter.id
    other = client.v1.customers.create({})
    _event(client, cus, "0.1", T0 + 10, "a")
    _event(client, cus, "0.2", T0 + 3600 + 5, "b")
    _event(client, cus, "1000000.000000000001", T0 + DAY + 1, "c")
    _event(client, other.id, "7", T0 + 20, "d")
    assert _summaries(client, meter, cus, T0, T0 + 2 * DAY) == [(T0, T0 + 2 * DAY, 1000000.300000000001)]
    assert fake.state.summarize(meter, cus, T0, T0 + 2 * DAY) == Decimal("1000000.300000000001")
    # the JSON number is exact even though the SDK parses it into a float
    raw = httpx.get(
        f"{fake.url}/v1/billing/meters/{meter}/event_summaries",
        params={"customer": cus, "start_time": T0, "end_time": T0 + 2 * DAY},
        headers={"Authorization": f"Bearer {fake.api_key}"},
    )
    assert '"aggregated_value": 1000000.300000000001' in raw.text
    assert json.loads(raw.text, parse_float=Decimal)["data"][0]["aggregated_value"] == Decimal("1000000.300000000001")
    # 0.1 + 0.2 stays 0.3
    hourly = _summaries(client, meter, cus, T0, T0 + 3 * 3600, "hour")
    assert hourly == [(T0, T0 + 3600, 0.1), (T0 + 3600, T0 + 7200, 0.2), (T0 + 7200, T0 + 10800, 0)]
    assert fake.state.summarize(meter, cus, T0, T0 + 7200) == Decimal("0.3")
    daily = _summaries(client, meter, cus, T0, T0 + 2 * DAY, "day")
    assert [v for _, _, v in daily] == [0.3, 1000000.000000000001]
    # end_time is exclusive, start_time inclusive
    assert _summaries(client, meter, cus, T0 + 60, T0 + 3600)[0][2] == 0
    assert _summaries(client, meter, cus, T0, T0 + 60)[0][2] == 0.1


def test_event_summaries_count_and_last(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    counted = metered_setup(client, event_name="logins", formula="count")
    last = metered_setup(client, event_name="seats", formula="last")
    for i, value in enumerate(["5", "9", "2"]):
        _event(client, counted.customer.id, value, T0 + 100 * i, f"l{i}", "logins")
        _event(client, last.customer.id, value, T0 + 100 * (2 - i), f"s{i}", "seats")
    assert _summaries(client, counted.meter.id, counted.customer.id, T0, T0 + 3600)[0][2] == 3
    # "last" is the value with the latest timestamp (not the last received)
    assert _summaries(client, last.meter.id, last.customer.id, T0, T0 + 3600)[0][2] == 5


def test_event_summary_parameter_rules(client: stripe.StripeClient) -> None:
    setup = metered_setup(client)
    meter, cus = setup.meter.id, setup.customer.id
    bad = [
        ({"customer": cus, "start_time": T0 + 1, "end_time": T0 + 60}, "start_time"),
        ({"customer": cus, "start_time": T0, "end_time": T0 + 90}, "end_time"),
        ({"customer": cus, "start_time": T0 + 60, "end_time": T0 + 3600, "value_grouping_window": "hour"},
         "start_time"),
        ({"customer": cus, "start_time": T0, "end_time": T0 + 3600, "value_grouping_window": "day"}, "end_time"),
        ({"customer": cus, "start_time": T0, "end_time": T0 + 60, "value_grouping_window": "week"},
         "value_grouping_window"),
        ({"customer": cus, "start_time": T0 + 60, "end_time": T0}, "start_time"),
    ]  # fmt: skip
    for params, param in bad:
        with pytest.raises(stripe.InvalidRequestError) as err:
            client.v1.billing.meters.event_summaries.list(meter, params)  # type: ignore[arg-type]
        assert err.value.param == param, params
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.billing.meters.event_summaries.list(meter, {"customer": cus, "start_time": T0})  # type: ignore[typeddict-item]
    assert (err.value.code, err.value.param) == ("parameter_missing", "end_time")
    # pagination over hourly buckets
    page = client.v1.billing.meters.event_summaries.list(
        meter, {"customer": cus, "start_time": T0, "end_time": T0 + DAY, "value_grouping_window": "hour"}
    )
    assert len(page.data) == 10 and page.has_more
    assert len(list(page.auto_paging_iter())) == 24


def test_meter_event_adjustments_cancel_within_24_hours(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    setup = metered_setup(client)
    cus, meter = setup.customer.id, setup.meter.id
    now = fake.clock.now()
    _event(client, cus, "10", now - 60, "keep")
    _event(client, cus, "5", now - 60, "drop")
    adjustment = client.v1.billing.meter_event_adjustments.create(
        {"event_name": "api_call", "type": "cancel", "cancel": {"identifier": "drop"}}
    )
    assert adjustment.object == "billing.meter_event_adjustment" and adjustment.type == "cancel"
    assert adjustment.cancel is not None and adjustment.cancel.identifier == "drop"
    assert fake.state.summarize(meter, cus, 0, now + 60) == Decimal(10)
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": "api_call", "type": "cancel", "cancel": {"identifier": "drop"}}
        )
    assert err.value.code == "meter_event_already_cancelled"
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": "api_call", "type": "cancel", "cancel": {"identifier": "unknown"}}
        )
    assert err.value.param == "cancel[identifier]"
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.billing.meter_event_adjustments.create({"event_name": "api_call", "type": "cancel"})
    assert err.value.code == "parameter_missing"
    fake.clock.advance(DAY)
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": "api_call", "type": "cancel", "cancel": {"identifier": "keep"}}
        )
    assert err.value.code == "meter_event_adjustment_too_late"


def test_v2_meter_event_stream(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    setup = metered_setup(client)
    cus = setup.customer.id
    session = client.v2.billing.meter_event_session.create()
    assert session.object == "v2.billing.meter_event_session"
    created = datetime.fromisoformat(session.created.replace("Z", "+00:00"))
    expires = datetime.fromisoformat(session.expires_at.replace("Z", "+00:00"))
    assert (expires - created).total_seconds() == 15 * 60
    stream = fake.client(api_key=session.authentication_token)
    iso = datetime.fromtimestamp(fake.clock.now() - 30, UTC).isoformat().replace("+00:00", "Z")
    stream.v2.billing.meter_event_stream.create(
        {
            "events": [
                {"event_name": "api_call", "payload": {"stripe_customer_id": cus, "value": "2"}, "timestamp": iso,
                 "identifier": "s-1"},
                {"event_name": "api_call", "payload": {"stripe_customer_id": cus, "value": "3"}},
                # invalid events are accepted by the request and reported asynchronously
                {"event_name": "api_call", "payload": {"stripe_customer_id": cus}},
                {"event_name": "missing_meter", "payload": {"stripe_customer_id": cus, "value": "1"}},
            ]
        }
    )  # fmt: skip
    request = fake.requests[-1]
    assert request.path == "/v2/billing/meter_event_stream"
    assert request.headers["authorization"] == f"Bearer {session.authentication_token}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body)["events"][0]["timestamp"] == iso
    assert fake.state.summarize(setup.meter.id, cus, 0, 2**40) == Decimal(5)
    assert [r["code"] for r in fake.state.meter_error_reports] == ["meter_event_value_not_found", "no_meter"]
    assert fake.state.recent_identifier("s-1") is not None

    with pytest.raises(stripe.InvalidRequestError):
        stream.v2.billing.meter_event_stream.create(
            {"events": [{"event_name": "api_call", "payload": {"stripe_customer_id": cus, "value": "1"}}] * 101}
        )
    with pytest.raises(stripe.InvalidRequestError) as err:
        stream.v2.billing.meter_event_stream.create(
            {"events": [{"event_name": "api_call", "payload": {"value": "1"}, "timestamp": "1741564800"}]}
        )
    assert "ISO 8601" in str(err.value)
    # a session token is not an API key, and an API key is not a session token
    with pytest.raises(stripe.AuthenticationError):
        stream.v1.customers.list()
    with pytest.raises(stripe.AuthenticationError):
        client.v2.billing.meter_event_stream.create(
            {"events": [{"event_name": "api_call", "payload": {"stripe_customer_id": cus, "value": "1"}}]}
        )
    # after 15 minutes (fake clock) the token is refused like Stripe does
    fake.clock.advance(15 * 60)
    with pytest.raises(stripe.TemporarySessionExpiredError) as expired:
        stream.v2.billing.meter_event_stream.create(
            {"events": [{"event_name": "api_call", "payload": {"stripe_customer_id": cus, "value": "1"}}]}
        )
    assert expired.value.http_status == 401
    assert expired.value.code == "billing_meter_event_session_expired"
    renewed = client.v2.billing.meter_event_session.create()
    fake.client(api_key=renewed.authentication_token).v2.billing.meter_event_stream.create(
        {"events": [{"event_name": "api_call", "payload": {"stripe_customer_id": cus, "value": "1"}}]}
    )
    assert fake.state.summarize(setup.meter.id, cus, 0, 2**40) == Decimal(6)


def test_v2_meter_events_and_adjustments(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    setup = metered_setup(client)
    event = client.v2.billing.meter_events.create(
        {"event_name": "api_call", "payload": {"stripe_customer_id": setup.customer.id, "value": "4"},
         "identifier": "v2-1"}
    )  # fmt: skip
    assert event.object == "v2.billing.meter_event" and event.identifier == "v2-1"
    with pytest.raises(stripe.InvalidRequestError):
        client.v2.billing.meter_events.create(
            {"event_name": "api_call", "payload": {"stripe_customer_id": setup.customer.id, "value": "4"},
             "identifier": "v2-1"}
        )  # fmt: skip
    client.v2.billing.meter_event_adjustments.create(
        {"event_name": "api_call", "type": "cancel", "cancel": {"identifier": "v2-1"}}
    )
    assert fake.state.summarize(setup.meter.id, setup.customer.id, 0, 2**40) == 0


def _legacy_setup(client: stripe.StripeClient) -> tuple[str, int, int]:
    legacy = {"stripe_version": LEGACY}
    customer = client.v1.customers.create({}, legacy)  # type: ignore[arg-type]
    price = client.v1.prices.create(
        {"currency": "usd", "product_data": {"name": "Calls"}, "unit_amount": 2,
         "recurring": {"interval": "month", "usage_type": "metered"}},
        legacy,  # type: ignore[arg-type]
    )  # fmt: skip
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]}, legacy)  # type: ignore[arg-type]
    item = sub["items"].data[0]
    return item.id, item.current_period_start, item.current_period_end


def test_legacy_usage_records_through_raw_request(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    item_id, start, end = _legacy_setup(client)
    now = fake.clock.advance(3600)
    url = f"/v1/subscription_items/{item_id}/usage_records"
    response = client.raw_request("post", url, quantity=7, timestamp=now, action="increment", stripe_version=LEGACY)
    record = client.deserialize(response, api_mode="V1")
    assert record["id"].startswith("mbur_") and record["object"] == "usage_record" and record["quantity"] == 7
    assert fake.requests[-1].stripe_version == LEGACY
    assert fake.requests[-1].idempotency_key  # raw_request POSTs get an idempotency key too
    client.raw_request("post", url, quantity=3, timestamp=now, stripe_version=LEGACY)
    client.raw_request("post", url, quantity=1, timestamp=now - 10, stripe_version=LEGACY)
    summary = client.deserialize(
        client.raw_request("get", f"/v1/subscription_items/{item_id}/usage_record_summaries", stripe_version=LEGACY),
        api_mode="V1",
    )
    assert summary["data"][0]["total_usage"] == 11
    assert (summary["data"][0]["period"]["start"], summary["data"][0]["period"]["end"]) == (start, end)
    client.raw_request("post", url, quantity=2, timestamp=now, action="set", stripe_version=LEGACY)
    summary = client.deserialize(
        client.raw_request("get", f"/v1/subscription_items/{item_id}/usage_record_summaries", stripe_version=LEGACY),
        api_mode="V1",
    )
    assert summary["data"][0]["total_usage"] == 3  # "set" replaced the 10 recorded at `now`

    # timestamps must be inside the current period and not in the future
    for ts in (now + 1, start - 1):
        with pytest.raises(stripe.InvalidRequestError) as err:
            client.raw_request("post", url, quantity=1, timestamp=ts, stripe_version=LEGACY)
        assert err.value.param == "timestamp"
    # Once the period renewed, the ended one takes no more usage (Stripe's own wording).
    sub_id = fake.state.get("subscription_item", item_id)["subscription"]
    fake.advance_subscription(sub_id, move_clock=True)
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.raw_request("post", url, quantity=1, timestamp=end - 60, stripe_version=LEGACY)
    assert "must be after the subscription's last invoice period (or current period start time)" in str(err.value)
    client.raw_request("post", url, quantity=4, timestamp=end, stripe_version=LEGACY)
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.raw_request("post", url, quantity=1, action="decrement", stripe_version=LEGACY)
    assert err.value.param == "action"
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.raw_request("post", url, timestamp=now, stripe_version=LEGACY)
    assert err.value.code == "parameter_missing" and err.value.param == "quantity"


def test_usage_records_refused_from_basil_on(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    item_id, _, _ = _legacy_setup(client)
    url = f"/v1/subscription_items/{item_id}/usage_records"
    for version in (None, "2025-03-31.basil"):
        kwargs = {"stripe_version": version} if version else {}
        with pytest.raises(stripe.InvalidRequestError) as err:
            client.raw_request("post", url, quantity=1, **kwargs)
        assert err.value.http_status == 400
        assert "removed in 2025-03-31.basil" in str(err.value)
    assert fake.requests[-2].stripe_version == stripe.api_version
    # and a legacy metered price cannot be attached to a subscription on a current version
    legacy_price = fake.state.get("subscription_item", item_id)["price"]["id"]
    customer = client.v1.customers.create({})
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": legacy_price}]})
    assert err.value.param == "items[0][price]"
