"""Checkout onboarding: POST /api/v1/stripe/checkout/sessions (OpenMeter's createStripeCheckoutSession)
against the fake Stripe, and the signed checkout webhooks that store the collected payment method as
the customer's default, in Tallybook and in Stripe."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import stripe
from fastapi.testclient import TestClient

from fakestripe.webhooks import redeliver
from tallybook.api.app import create_app
from tallybook.customers.model import Address, CustomerInput, CustomerListQuery
from tallybook.stripe.checkout import CHECKOUT_EVENTS
from tests.conftest import LiveServer
from tests.test_stripe_support import NOW, StripeEnv, fake_fixture, stripe_env_fixture  # noqa: F401  (fixtures)

URL = "/api/v1/stripe/checkout/sessions"
SUCCESS = "https://app.example.com/billing/done?session={CHECKOUT_SESSION_ID}"


@pytest.fixture
def env(stripe_env: StripeEnv) -> StripeEnv:
    return stripe_env


@pytest.fixture
def api(env: StripeEnv) -> Iterator[tuple[TestClient, dict[str, str]]]:
    key = env.runtime.keys.create("admin", "admin").plaintext
    with TestClient(create_app(env.runtime, manage_runtime=False), raise_server_exceptions=False) as client:
        yield client, {"Authorization": f"Bearer {key}"}


def stripe_customers(env: StripeEnv) -> list[dict[str, Any]]:
    return env.fake.state.all("customer")


def posts(env: StripeEnv, path: str) -> int:
    return len([r for r in env.fake.requests if r.method == "POST" and r.path == path])


def new_customer_body(**options: Any) -> dict[str, Any]:
    return {
        "customer": {
            "name": "ACME, Inc.",
            "primaryEmail": "billing@acme.example",
            "currency": "EUR",
            "billingAddress": {"country": "DE", "postalCode": "10115", "city": "Berlin", "line1": "Unter den Linden 1"},
            "usageAttribution": {"subjectKeys": ["acme-prod", "acme-staging"]},
        },
        "options": {"currency": "USD", "successURL": SUCCESS, **options},
    }


# -- creating sessions ------------------------------------------------------------------------------------


def test_session_for_a_new_customer(env: StripeEnv, api: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = api
    body = new_customer_body(
        cancelURL="https://app.example.com/billing",
        billingAddressCollection="required",
        taxIdCollection={"enabled": True, "required": "if_supported"},
        customerUpdate={"name": "auto", "address": "auto"},
        clientReferenceID="order-42",
        locale="de",
        metadata={"plan": "pro"},
        expiresAt=int(NOW.timestamp()) + 3600,
    )
    answer = client.post(URL, headers=auth, json=body)
    assert answer.status_code == 201, answer.text
    result = answer.json()

    customer = env.runtime.customers.resolve(result["customerId"])
    assert customer.name == "ACME, Inc." and customer.key is None
    assert customer.subjects == ("acme-prod", "acme-staging")
    [stripe_customer] = stripe_customers(env)
    assert stripe_customer["id"] == result["stripeCustomerId"]
    assert stripe_customer["metadata"] == {"tallybook_customer_id": customer.id}
    assert stripe_customer["email"] == "billing@acme.example" and stripe_customer["name"] == "ACME, Inc."
    assert stripe_customer["address"]["country"] == "DE" and stripe_customer["address"]["postal_code"] == "10115"
    link = env.service.db.get_customer(customer.id)
    assert link is not None and link.stripe_customer_id == stripe_customer["id"]

    session = env.fake.state.get("checkout.session", result["sessionId"])
    assert result == {
        "customerId": customer.id,
        "stripeCustomerId": stripe_customer["id"],
        "sessionId": session["id"],
        "setupIntentId": session["setup_intent"],
        "clientReferenceId": "order-42",
        "customerEmail": "billing@acme.example",
        "currency": "USD",
        "createdAt": "2026-03-10T12:00:00Z",
        "expiresAt": "2026-03-10T13:00:00Z",
        "metadata": {"plan": "pro", "tallybook_customer_id": customer.id},
        "status": "open",
        "url": f"https://checkout.stripe.com/c/pay/{session['id']}",
        "mode": "setup",
        "cancelURL": "https://app.example.com/billing",
        "successURL": SUCCESS,
    }
    # What Tallybook asked Stripe for.
    assert session["mode"] == "setup" and session["currency"] == "usd" and session["ui_mode"] == "hosted_page"
    assert session["customer"] == stripe_customer["id"] and session["locale"] == "de"
    assert session["billing_address_collection"] == "required"
    [request] = [r for r in env.fake.requests if r.path == "/v1/checkout/sessions"]
    form = request.body.decode()
    for part in ("tax_id_collection[enabled]=true", "customer_update[name]=auto", "setup_intent_data[metadata]"):
        assert part in form, form
    intent = env.fake.state.get("setup_intent", result["setupIntentId"])
    assert intent["status"] == "requires_payment_method" and intent["customer"] == stripe_customer["id"]
    assert intent["metadata"] == {"tallybook_customer_id": customer.id}

    # The same request again (a retry): the same customers, a new session, no second Stripe customer.
    again = client.post(URL, headers=auth, json=body)
    assert again.status_code == 201, again.text
    assert again.json()["customerId"] == customer.id
    assert again.json()["stripeCustomerId"] == stripe_customer["id"]
    assert again.json()["sessionId"] != result["sessionId"]
    assert len(stripe_customers(env)) == 1 and posts(env, "/v1/customers") == 1
    assert env.runtime.customers.list_customers(CustomerListQuery()).total_count == 1


def test_session_for_existing_customers(env: StripeEnv, api: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = api
    # A customer created with a key is reused by that key when the request describes it again.
    created = client.post(
        URL,
        headers=auth,
        json={
            "customer": {"name": "Globex", "key": "globex", "currency": "EUR"},
            "options": {"successURL": SUCCESS},
        },
    )
    assert created.status_code == 201, created.text
    globex = created.json()
    assert globex["currency"] == "EUR"  # the customer's currency when options.currency is left out
    described = client.post(
        URL,
        headers=auth,
        json={
            "customer": {"name": "Globex Corp", "key": "globex"},
            "options": {"currency": "eur", "successURL": SUCCESS},
        },
    )
    assert described.status_code == 201
    assert described.json()["customerId"] == globex["customerId"]
    assert env.runtime.customers.resolve("globex").name == "Globex"  # reused as it is, not updated

    by_key = client.post(URL, headers=auth, json={"customer": {"key": "globex"}, "options": {"successURL": SUCCESS}})
    by_id = client.post(
        URL, headers=auth, json={"customer": {"id": globex["customerId"]}, "options": {"successURL": SUCCESS}}
    )
    for answer in (by_key, by_id):
        assert answer.status_code == 201, answer.text
        assert (answer.json()["customerId"], answer.json()["stripeCustomerId"]) == (
            globex["customerId"],
            globex["stripeCustomerId"],
        )
    assert len(stripe_customers(env)) == 1

    # An existing Tallybook customer without a link gets a Stripe customer; a given one is used and linked.
    initech = env.runtime.customers.create(CustomerInput(name="Initech", key="initech", currency="USD"))
    own = env.fake.client().v1.customers.create({"name": "Initech (from the CRM)"})
    given = client.post(
        URL,
        headers=auth,
        json={"customer": {"key": "initech"}, "stripeCustomerId": own.id, "options": {"successURL": SUCCESS}},
    )
    assert given.status_code == 201, given.text
    assert given.json()["stripeCustomerId"] == own.id and given.json()["currency"] == "USD"
    assert env.service.db.get_customer(initech.id).stripe_customer_id == own.id  # type: ignore[union-attr]
    assert env.fake.state.get("checkout.session", given.json()["sessionId"])["customer"] == own.id
    assert len(stripe_customers(env)) == 2

    # A Stripe customer belongs to one Tallybook customer.
    taken = client.post(
        URL,
        headers=auth,
        json={"customer": {"key": "globex"}, "stripeCustomerId": own.id, "options": {"successURL": SUCCESS}},
    )
    assert taken.status_code == 400 and "already linked" in taken.json()["detail"]
    missing = client.post(
        URL, headers=auth, json={"customer": {"key": "nobody"}, "options": {"currency": "USD", "successURL": SUCCESS}}
    )
    assert missing.status_code == 404 and missing.json()["type"].endswith("customer-not-found")
    unknown_id = client.post(
        URL, headers=auth, json={"customer": {"id": "01G65Z755AFWAKHE12NY0CQ9FH"}, "options": {"successURL": SUCCESS}}
    )
    assert unknown_id.status_code == 404


def test_a_retry_after_a_crash_never_makes_a_second_stripe_customer(
    env: StripeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer = env.runtime.customers.create(
        CustomerInput(
            name="Hooli",
            key="hooli",
            primary_email="ap@hooli.example",
            billing_address=Address(country="US", postal_code="94043", phone_number="+1 650 555 0100"),
        )
    )
    request = {"customer": {"id": customer.id}, "options": {"currency": "USD", "successURL": SUCCESS}}
    real_put = env.service.db.put_customer
    crashes = iter([RuntimeError("crashed before linking")])

    def crash_once(*args: Any) -> Any:
        error = next(crashes, None)
        if error is not None:
            raise error
        return real_put(*args)

    monkeypatch.setattr(env.service.db, "put_customer", crash_once)
    with pytest.raises(RuntimeError):
        env.runtime.checkout.create_session(request)
    assert env.service.db.get_customer(customer.id) is None
    result = env.runtime.checkout.create_session(request)
    [stripe_customer] = stripe_customers(env)
    assert result["stripeCustomerId"] == stripe_customer["id"]
    assert stripe_customer["phone"] == "+1 650 555 0100" and stripe_customer["address"]["postal_code"] == "94043"
    creates = [r for r in env.fake.requests if r.method == "POST" and r.path == "/v1/customers"]
    assert len(creates) == 2 and creates[1].outcome == "replayed"
    assert creates[0].idempotency_key == creates[1].idempotency_key


def test_embedded_session(env: StripeEnv, api: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = api
    answer = client.post(
        URL,
        headers=auth,
        json={
            "customer": {"name": "Umbrella", "key": "umbrella"},
            "options": {
                "currency": "GBP",
                "uiMode": "embedded",
                "returnURL": "https://app.example.com/return",
                "paymentMethodTypes": ["card", "sepa_debit"],
                "consentCollection": {"paymentMethodReuseAgreement": {"position": "hidden"}},
                "customText": {"submit": {"message": "We charge this card monthly for usage."}},
            },
        },
    )
    assert answer.status_code == 201, answer.text
    result = answer.json()
    assert result["clientSecret"].startswith(result["sessionId"]) and "url" not in result
    assert result["returnURL"] == "https://app.example.com/return" and "successURL" not in result
    session = env.fake.state.get("checkout.session", result["sessionId"])
    assert session["ui_mode"] == "embedded_page" and session["payment_method_types"] == ["card", "sepa_debit"]
    no_redirect = client.post(
        URL,
        headers=auth,
        json={
            "customer": {"key": "umbrella"},
            "options": {"currency": "GBP", "uiMode": "embedded", "redirectOnCompletion": "never"},
        },
    )
    assert no_redirect.status_code == 201, no_redirect.text


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"customer": {"key": "x"}}, ["options: required"]),
        ({"options": {"currency": "USD", "successURL": SUCCESS}}, ["customer: required"]),
        (
            {"customer": {"key": "x"}, "options": {"currency": "USD", "successURL": SUCCESS}, "colour": "red"},
            ["colour: unknown field"],
        ),
        (
            {"customer": {"key": "x"}, "options": {"currency": "USD", "successURL": SUCCESS, "shippingRates": []}},
            ["options.shippingRates: unknown field"],
        ),
        ({"customer": {"key": "x"}, "options": {"currency": "US Dollar", "successURL": SUCCESS}}, ["options.currency"]),
        ({"customer": {"key": "x"}, "options": {"currency": "USD"}}, ["options.successURL: required"]),
        (
            {"customer": {"key": "x"}, "options": {"currency": "USD", "successURL": "/relative"}},
            ["options.successURL: '/relative' is not an absolute"],
        ),
        (
            {"customer": {"key": "x"}, "options": {"currency": "USD", "uiMode": "embedded", "successURL": SUCCESS}},
            ["options.successURL: not allowed with uiMode embedded", "options.returnURL: required"],
        ),
        (
            {"customer": {"key": "x"}, "options": {"currency": "USD", "uiMode": "popup", "successURL": SUCCESS}},
            ["options.uiMode: 'popup' is not one of hosted, embedded"],
        ),
        (
            {
                "customer": {"key": "x"},
                "options": {"currency": "USD", "successURL": SUCCESS, "billingAddressCollection": "always"},
            },
            ["options.billingAddressCollection"],
        ),
        (
            {"customer": {"key": "x"}, "options": {"currency": "USD", "successURL": SUCCESS, "expiresAt": 1}},
            ["options.expiresAt: 1 is outside what Stripe allows"],
        ),
        (
            {
                "customer": {"key": "x"},
                "options": {"currency": "USD", "successURL": SUCCESS, "metadata": {"tallybook_customer_id": "y"}},
            },
            ["options.metadata.tallybook_customer_id: reserved"],
        ),
        (
            {
                "customer": {"key": "x"},
                "options": {"currency": "USD", "successURL": SUCCESS, "taxIdCollection": {"required": "never"}},
            },
            ["options.taxIdCollection.enabled: required"],
        ),
        (
            {
                "customer": {"key": "x"},
                "options": {"currency": "USD", "successURL": SUCCESS, "customerUpdate": {"email": "auto"}},
            },
            ["options.customerUpdate.email: unknown field"],
        ),
        (
            {
                "customer": {"key": "x"},
                "stripeCustomerId": "acct_1",
                "options": {"currency": "USD", "successURL": SUCCESS},
            },
            ["stripeCustomerId: 'acct_1' is not a Stripe customer id"],
        ),
        ({"customer": {"id": "42"}, "options": {"currency": "USD", "successURL": SUCCESS}}, ["customer.id: '42'"]),
        (
            {"customer": {"id": "01G65Z755AFWAKHE12NY0CQ9FH", "key": "x"}, "options": {"successURL": SUCCESS}},
            ["customer: give either id or key, not both"],
        ),
        (
            {"customer": {"key": "x", "usageAttribution": {"subjectKeys": ["x"]}}, "options": {"successURL": SUCCESS}},
            ["customer.name: required to create a customer"],
        ),
        (
            {"customer": {"name": "No subjects"}, "options": {"currency": "USD", "successURL": SUCCESS}},
            ["customer.key: give the customer a key or at least one usageAttribution.subjectKeys"],
        ),
        (
            {
                "customer": {"name": "Z", "key": "z", "colour": "red"},
                "options": {"currency": "USD", "successURL": SUCCESS},
            },
            ["customer.colour: unknown field"],
        ),
        (
            {"customer": {"name": "No currency", "key": "nc"}, "options": {"successURL": SUCCESS}},
            ["options.currency: required"],
        ),
        (  # two spellings of one field: OpenMeter would keep the last one silently
            {"customer": {"key": "x"}, "options": {"currency": "USD", "successURL": SUCCESS, "successUrl": SUCCESS}},
            ["options.successURL: given twice, as 'successURL' and 'successUrl'; send it once"],
        ),
        (
            {"customer": {"key": "x"}, "options": {"currency": "USD", "successUrl": SUCCESS, "cancelUrl": "/x"}},
            ["options.cancelURL: '/x' is not an absolute"],
        ),
        (  # found by the fuzz job: an object here was a 500 (unhashable in the mode lookup)
            {"customer": {"name": "Odd mode", "key": "om"}, "options": {"currency": "USD", "uiMode": {}}},
            ["options.uiMode: {} is not one of"],
        ),
    ],
)
def test_invalid_requests_are_refused_before_anything_is_created(
    env: StripeEnv, api: tuple[TestClient, dict[str, str]], body: dict[str, Any], fields: list[str]
) -> None:
    client, auth = api
    answer = client.post(URL, headers=auth, json=body)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    for text in fields:
        assert text in answer.json()["detail"], answer.json()["detail"]
    assert env.runtime.customers.list_customers(CustomerListQuery()).total_count == 0
    assert not [r for r in env.fake.requests if r.method == "POST"]


def test_field_names_are_matched_without_case_as_openmeter_does(
    env: StripeEnv, api: tuple[TestClient, dict[str, str]]
) -> None:
    """OpenMeter decodes with Go's encoding/json, which ignores case in field names: its docs send
    `successUrl`, and `clientReferenceId`, `cancelUrl`, `StripeCustomerID` work there too."""
    client, auth = api
    env.runtime.customers.create(CustomerInput(name="Globex", key="globex"))
    body = {
        "Customer": {"key": "globex"},
        "options": {
            "currency": "USD",
            "successUrl": SUCCESS,
            "cancelUrl": "https://app.example.com/billing",
            "clientReferenceId": "order-7",
            "UIMode": "hosted",
            "taxIdCollection": {"Enabled": True},
        },
    }
    answer = client.post(URL, headers=auth, json=body)
    assert answer.status_code == 201, answer.text
    result = answer.json()
    assert result["successURL"] == SUCCESS and result["cancelURL"] == "https://app.example.com/billing"
    assert result["clientReferenceId"] == "order-7"
    session = env.fake.state.get("checkout.session", result["sessionId"])
    assert session["success_url"] == SUCCESS and session["client_reference_id"] == "order-7"
    [request] = [r for r in env.fake.requests if r.path == "/v1/checkout/sessions"]
    assert "tax_id_collection[enabled]=true" in request.body.decode()


def test_request_envelope_and_auth(env: StripeEnv, api: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = api
    body = new_customer_body()
    assert client.post(URL, json=body).status_code == 401
    reader = env.runtime.keys.create("reader", "read").plaintext
    assert client.post(URL, json=body, headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    text = client.post(URL, headers={**auth, "Content-Type": "text/plain"}, content=json.dumps(body))
    assert text.status_code == 415
    broken = client.post(URL, headers={**auth, "Content-Type": "application/json"}, content=b"{nope")
    assert broken.status_code == 400
    assert client.post(URL, headers=auth, json=[body]).status_code == 400


def test_stripe_refusals_and_outages_say_what_to_fix(
    env: StripeEnv, api: tuple[TestClient, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, auth = api
    env.runtime.customers.create(CustomerInput(name="Stark", key="stark"))

    def create(**options: Any) -> httpx.Response:
        body = {"customer": {"key": "stark"}, "options": {"currency": "USD", "successURL": SUCCESS, **options}}
        return client.post(URL, headers=auth, json=body)

    pigeon = create(paymentMethodTypes=["carrier_pigeon"])
    assert pigeon.status_code == 400 and pigeon.json()["type"].endswith("stripe-rejected")
    assert "Stripe refused to create the checkout session" in pigeon.json()["detail"]
    assert "options.paymentMethodTypes[0]" in pigeon.json()["detail"]
    locale = create(locale="klingon")
    assert locale.status_code == 400 and "options.locale" in locale.json()["detail"]
    ghost = client.post(
        URL,
        headers=auth,
        json={
            "customer": {"key": "stark"},
            "stripeCustomerId": "cus_ghost",
            "options": {"currency": "USD", "successURL": SUCCESS},
        },
    )
    assert ghost.status_code == 400 and "No such customer" in ghost.json()["detail"]
    assert "fix stripeCustomerId" in ghost.json()["detail"]
    assert env.service.db.get_customer(env.runtime.customers.resolve("stark").id).stripe_customer_id != "cus_ghost"  # type: ignore[union-attr]

    env.fake.faults.server_error("/v1/checkout/sessions", status=500, times=3)
    down = create()
    assert down.status_code == 502 and down.json()["type"].endswith("stripe-error")
    env.fake.faults.rate_limit("/v1/checkout/sessions", times=1)
    limited = create()
    assert limited.status_code == 503 and "retry" in limited.json()["detail"]
    assert create().status_code == 201  # faults used up

    env.fake.state.api_keys = {"sk_test_someone_else"}
    refused = create()
    assert refused.status_code == 502 and "STRIPE_API_KEY" in refused.json()["detail"]
    env.fake.state.api_keys = None

    env.reconfigure(api_base="http://127.0.0.1:9", max_network_retries=0)
    unreachable = create()
    assert unreachable.status_code == 503 and unreachable.json()["type"].endswith("stripe-unreachable")

    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    env.reconfigure(api_key=None)
    disabled = create()
    assert disabled.status_code == 409 and disabled.json()["type"].endswith("stripe-not-configured")


# -- the webhooks -------------------------------------------------------------------------------------------


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def test_onboarding_end_to_end_over_http(env: StripeEnv) -> None:
    admin = {"Authorization": f"Bearer {env.runtime.keys.create('admin', 'admin').plaintext}"}
    with LiveServer(env.runtime) as server, httpx.Client(base_url=server.url, headers=admin) as http:
        endpoint = env.fake.add_webhook_endpoint(f"{server.url}/api/v1/stripe/webhook", list(CHECKOUT_EVENTS))
        env.reconfigure(webhook_secret=endpoint["secret"])

        created = http.post(URL, json=new_customer_body())
        assert created.status_code == 201, created.text
        result = created.json()
        customer_id, stripe_id = result["customerId"], result["stripeCustomerId"]
        link_url = f"/api/v1/customers/{customer_id}/stripe"
        assert http.get(link_url).json() == {"type": "stripe", "stripeCustomerId": stripe_id}

        env.fake.complete_checkout_session(result["sessionId"], payment_method="pm_card_first")
        deliveries = env.fake.deliver_webhooks()
        assert [d.status for d in deliveries] == [200, 200], deliveries
        answers = [json.loads(d.payload)["type"] for d in deliveries]
        assert answers == ["setup_intent.succeeded", "checkout.session.completed"]

        linked = http.get(link_url).json()
        assert linked == {
            "type": "stripe",
            "stripeCustomerId": stripe_id,
            "stripeDefaultPaymentMethodId": "pm_card_first",
        }
        stripe_customer = env.fake.client().v1.customers.retrieve(stripe_id)
        assert stripe_customer.invoice_settings.default_payment_method == "pm_card_first"  # type: ignore[union-attr]
        assert stripe_customer.metadata["tallybook_default_setup_intent"] == result["setupIntentId"]  # type: ignore[index]
        # The second event of the same setup found everything in place: one update at Stripe.
        assert posts(env, f"/v1/customers/{stripe_id}") == 1

        # Replays (Stripe delivers at least once) change nothing.
        before = len(env.fake.requests)
        for delivery in deliveries:
            again = redeliver(env.fake.state, delivery.event_id, endpoint["id"])
            assert again.status == 200
        assert posts(env, f"/v1/customers/{stripe_id}") == 1
        assert all(r.method == "GET" for r in env.fake.requests[before:])
        assert http.get(link_url).json()["stripeDefaultPaymentMethodId"] == "pm_card_first"

        # Forged webhooks are refused and change nothing.
        event = json.loads(deliveries[0].payload)
        event["data"]["object"]["payment_method"] = "pm_attacker"
        forged_body = json.dumps(event).encode()
        tampered_header = deliveries[0].signature_header  # a genuine signature, for another body
        forgeries = {
            "wrong secret": {"Stripe-Signature": sign(forged_body, "whsec_not_the_secret")},
            "tampered body": {"Stripe-Signature": tampered_header},
            "missing header": {},
            "stale timestamp": {"Stripe-Signature": sign(forged_body, endpoint["secret"], int(time.time()) - 3600)},
        }
        before = len(env.fake.requests)
        for name, headers in forgeries.items():
            answer = httpx.post(f"{server.url}/api/v1/stripe/webhook", content=forged_body, headers=headers)
            assert answer.status_code == 400, name
            assert answer.headers["content-type"] == "application/problem+json", name
            assert answer.json()["type"].endswith("invalid-stripe-signature"), name
        assert len(env.fake.requests) == before
        assert http.get(link_url).json()["stripeDefaultPaymentMethodId"] == "pm_card_first"
        stripe_customer = env.fake.client().v1.customers.retrieve(stripe_id)
        assert stripe_customer.invoice_settings.default_payment_method == "pm_card_first"  # type: ignore[union-attr]

        # A later setup replaces the default; the old setup's events, replayed afterwards, do not undo it.
        env.advance(timedelta(minutes=10))
        second = http.post(URL, json={"customer": {"id": customer_id}, "options": {"successURL": SUCCESS}})
        assert second.status_code == 201 and second.json()["stripeCustomerId"] == stripe_id
        env.fake.complete_checkout_session(second.json()["sessionId"], payment_method="pm_card_second")
        assert [d.status for d in env.fake.deliver_webhooks()] == [200, 200]
        old = redeliver(env.fake.state, deliveries[1].event_id, endpoint["id"])
        assert old.status == 200
        assert http.get(link_url).json()["stripeDefaultPaymentMethodId"] == "pm_card_second"
        stripe_customer = env.fake.client().v1.customers.retrieve(stripe_id)
        assert stripe_customer.invoice_settings.default_payment_method == "pm_card_second"  # type: ignore[union-attr]

        # Stripe can now charge invoices automatically.
        client = env.fake.client()
        invoice = client.v1.invoices.create({"customer": stripe_id, "currency": "usd"})
        client.v1.invoice_items.create({"customer": stripe_id, "invoice": invoice.id, "amount": 500, "currency": "usd"})
        client.v1.invoices.finalize_invoice(invoice.id)
        assert client.v1.invoices.pay(invoice.id).status == "paid"


def _event(type_: str, obj: dict[str, Any]) -> stripe.Event:
    return stripe.Event.construct_from(
        {"id": "evt_test", "object": "event", "type": type_, "data": {"object": obj}}, "sk_test_x"
    )


def test_events_in_any_order_and_the_ones_that_are_not_handled(env: StripeEnv) -> None:
    checkout = env.runtime.checkout
    customer = env.runtime.customers.create(CustomerInput(name="Wayne", key="wayne", currency="USD"))
    result = checkout.create_session({"customer": {"key": "wayne"}, "options": {"successURL": SUCCESS}})
    stripe_id = result["stripeCustomerId"]
    env.fake.complete_checkout_session(result["sessionId"], payment_method="pm_wayne")
    intent_event, session_event = (
        env.fake.state.events_of_type("setup_intent.succeeded")[-1],
        env.fake.state.events_of_type("checkout.session.completed")[-1],
    )
    # The session's event first this time (it reads the setup intent from Stripe), then the intent's.
    first = checkout.handle_event(_event(session_event["type"], session_event["data"]["object"]))
    assert first == {
        "handled": True,
        "customerId": customer.id,
        "stripeCustomerId": stripe_id,
        "setupIntentId": result["setupIntentId"],
        "paymentMethodId": "pm_wayne",
    }
    assert checkout.handle_event(_event(intent_event["type"], intent_event["data"]["object"]))["handled"] is True
    assert posts(env, f"/v1/customers/{stripe_id}") == 1
    assert env.service.get_customer_stripe("wayne").stripe_default_payment_method_id == "pm_wayne"

    unlinked = env.fake.client().v1.customers.create({"name": "not ours"})
    stray = dict(intent_event["data"]["object"], customer=unlinked.id)
    answer = checkout.handle_event(_event("setup_intent.succeeded", stray))
    assert answer["handled"] is False and "not linked" in answer["reason"]
    payment = dict(session_event["data"]["object"], mode="payment")
    assert checkout.handle_event(_event("checkout.session.completed", payment))["handled"] is False
    pending = dict(intent_event["data"]["object"], status="requires_payment_method", payment_method=None)
    assert checkout.handle_event(_event("setup_intent.succeeded", pending))["handled"] is False
    assert env.service.get_customer_stripe("wayne").stripe_default_payment_method_id == "pm_wayne"


def test_unlinked_customer_webhook_is_acknowledged(env: StripeEnv) -> None:
    with LiveServer(env.runtime) as server:
        endpoint = env.fake.add_webhook_endpoint(f"{server.url}/api/v1/stripe/webhook", list(CHECKOUT_EVENTS))
        env.reconfigure(webhook_secret=endpoint["secret"])
        # A session Tallybook did not make, for a Stripe customer it does not know.
        client = env.fake.client()
        someone = client.v1.customers.create({"name": "someone"})
        session = client.v1.checkout.sessions.create(
            {"mode": "setup", "customer": someone.id, "currency": "usd", "success_url": SUCCESS}
        )
        env.fake.complete_checkout_session(session.id)
        deliveries = env.fake.deliver_webhooks()
        assert [d.status for d in deliveries] == [200, 200]
        answer = httpx.post(
            f"{server.url}/api/v1/stripe/webhook",
            content=deliveries[0].payload,
            headers={"Stripe-Signature": sign(deliveries[0].payload, endpoint["secret"])},
        )
        assert answer.status_code == 200
        assert answer.json()["received"] is True and answer.json()["handled"] is False
        assert "not linked" in answer.json()["reason"]
    assert client.v1.customers.retrieve(someone.id).invoice_settings.default_payment_method is None  # type: ignore[union-attr]
