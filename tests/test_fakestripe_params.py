"""The fake's parameter rules come from stripe-python's typed params, and it enforces them."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qsl

import pytest
import stripe
import stripe.params as p
import stripe.params.billing as pb
from stripe.params.v2.billing import MeterEventStreamCreateParams

from fakestripe import FakeStripeServer, StripeAPIError
from fakestripe.params import decode_form, spec_for, validate
from fakestripe.pytest_plugin import fake_stripe, stripe_client  # noqa: F401 (fixtures)
from fakestripe.testing import error_body


@pytest.fixture
def fake() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        yield server
    assert not server.state.server_errors


def test_spec_comes_from_sdk_typeddicts() -> None:
    meter = spec_for(pb.MeterCreateParams)
    assert meter.required == {"default_aggregation", "display_name", "event_name"}
    assert set(meter.fields) == set(pb.MeterCreateParams.__annotations__) - {
        "api_key",
        "stripe_version",
        "stripe_account",
        "stripe_context",
        "max_network_retries",
        "idempotency_key",
        "content_type",
        "headers",
    }
    formula = meter.fields["default_aggregation"].objects[0].fields["formula"]
    assert formula.enum == {"count", "last", "sum"}
    price = spec_for(p.PriceCreateParams)
    assert price.required == {"currency"}
    recurring = price.fields["recurring"].objects[0]
    assert recurring.required == {"interval"}
    assert recurring.fields["usage_type"].enum == {"licensed", "metered"}
    tiers = price.fields["tiers"].list_item
    assert tiers is not None and tiers.objects[0].fields["up_to"].enum == {"inf"}
    assert "int" in tiers.objects[0].fields["up_to"].scalars
    customer = spec_for(p.CustomerCreateParams)
    assert customer.fields["metadata"].allow_empty and customer.fields["metadata"].map_value is not None
    stream = spec_for(MeterEventStreamCreateParams)
    event = stream.fields["events"].list_item
    assert event is not None and event.objects[0].required == {"event_name", "payload"}


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({"currency": "usd", "unit_amount": "1.5"}, "unit_amount", "parameter_invalid_integer"),
        ({"currency": "usd", "unit_amount_decimal": "abc"}, "unit_amount_decimal", None),
        ({"currency": {"a": "b"}}, "currency", None),
        ({"currency": "usd", "recurring": "month"}, "recurring", None),
        ({"currency": "usd", "active": "yes"}, "active", None),
        ({"currency": "usd", "tiers": {"0": {"up_to": "many"}}}, "tiers[0][up_to]", None),
    ],
)
def test_type_errors_name_the_parameter(params: dict, param: str, code: str | None) -> None:
    with pytest.raises(StripeAPIError) as err:
        validate(params, spec_for(p.PriceCreateParams))
    assert (err.value.status, err.value.param, err.value.code) == (400, param, code)


def test_request_option_keys_are_not_parameters() -> None:
    with pytest.raises(StripeAPIError) as err:
        validate({"idempotency_key": "abc"}, spec_for(p.CustomerCreateParams))
    assert err.value.code == "parameter_unknown"


def test_form_decoding_and_normalisation() -> None:
    form = (
        "currency=usd&product=prod_1&billing_scheme=tiered&tiers_mode=graduated"
        "&tiers[0][up_to]=10&tiers[0][unit_amount_decimal]=1.25&tiers[1][up_to]=inf&tiers[1][unit_amount]=2"
        "&recurring[interval]=month&active=false&expand[]=tiers&expand[]=product"
    )
    params = validate(decode_form(parse_qsl(form)), spec_for(p.PriceCreateParams))
    assert params["tiers"][0]["up_to"] == 10
    assert str(params["tiers"][0]["unit_amount_decimal"]) == "1.25"
    assert params["tiers"][1] == {"up_to": "inf", "unit_amount": 2}
    assert params["active"] is False
    assert params["expand"] == ["tiers", "product"]


@pytest.mark.parametrize(
    ("params", "code", "param"),
    [
        ({"email": "a@example.com", "emial": "typo"}, "parameter_unknown", "emial"),
        ({"address": {"line1": "1 Main St", "zip": "12345"}}, "parameter_unknown", "address[zip]"),
        (
            {"invoice_settings": {"default_payment_method": "pm_1", "x": "y"}},
            "parameter_unknown",
            "invoice_settings[x]",
        ),
    ],
)
def test_customer_create_rejects_unknown_keys(fake: FakeStripeServer, params: dict, code: str, param: str) -> None:
    client = fake.client()
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.customers.create(params)  # type: ignore[arg-type]
    assert err.value.http_status == 400
    assert err.value.code == code
    assert err.value.param == param
    assert error_body(err.value)["type"] == "invalid_request_error"
    assert error_body(err.value)["message"] == f"Received unknown parameter: {param}"
    assert fake.state.all("customer") == []


def test_nested_array_unknown_key_and_missing_required(fake: FakeStripeServer) -> None:
    client = fake.client()
    customer = client.v1.customers.create({})
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.subscriptions.create(
            {"customer": customer.id, "items": [{"price": "price_x", "colour": "red"}]}  # type: ignore[arg-type]
        )
    assert (err.value.code, err.value.param) == ("parameter_unknown", "items[0][colour]")
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.billing.meters.create({"display_name": "x", "event_name": "x"})  # type: ignore[typeddict-item]
    assert (err.value.code, err.value.param) == ("parameter_missing", "default_aggregation")
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.billing.meters.create(
            {"display_name": "x", "event_name": "x", "default_aggregation": {"formula": "max"}}
        )
    assert err.value.param == "default_aggregation[formula]"
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.prices.create({"currency": "usd", "product_data": {"active": True}})  # type: ignore[typeddict-item]
    assert (err.value.code, err.value.param) == ("parameter_missing", "product_data[name]")


def test_query_parameters_of_list_endpoints_are_validated(fake: FakeStripeServer) -> None:
    client = fake.client()
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.customers.list({"limit": 5, "colour": "red"})  # type: ignore[arg-type]
    assert (err.value.code, err.value.param) == ("parameter_unknown", "colour")
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.customers.list({"limit": 500})
    assert err.value.param == "limit"


def test_v2_json_body_is_validated(fake: FakeStripeServer) -> None:
    client = fake.client()
    session = client.v2.billing.meter_event_session.create()
    stream = fake.client(api_key=session.authentication_token)
    with pytest.raises(stripe.InvalidRequestError) as err:
        stream.v2.billing.meter_event_stream.create(
            {"events": [{"event_name": "x", "payload": {"value": "1"}, "colour": "red"}]}  # type: ignore[typeddict-unknown-key]
        )
    assert error_body(err.value)["param"] == "events[0][colour]"


def test_every_stripe_route_takes_its_params_from_the_sdk() -> None:
    from fakestripe.routes import ROUTER

    legacy = {"/v1/subscription_items/{id}/usage_records", "/v1/subscription_items/{id}/usage_record_summaries"}
    for route in ROUTER.routes:
        if route.pattern.startswith("/_fake/"):
            assert route.auth == "none"
            continue
        assert route.params is not None, route.pattern
        if route.pattern in legacy:
            assert route.params.__module__ == "fakestripe.resources.legacy_params"
        else:
            assert route.params.__module__.startswith("stripe.params."), route.pattern


def test_pytest_plugin_fixtures(fake_stripe: FakeStripeServer, stripe_client: stripe.StripeClient) -> None:  # noqa: F811
    customer = stripe_client.v1.customers.create({"email": "plugin@example.com"})
    assert fake_stripe.state.get("customer", customer.id)["email"] == "plugin@example.com"
