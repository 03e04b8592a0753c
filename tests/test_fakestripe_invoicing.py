"""Invoice items, invoices (totals, automatic tax, lifecycle), invoice events and signed webhooks,
and setup-mode Checkout on the fake Stripe server, driven through the real stripe-python SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import stripe

from fakestripe import FakeStripeServer, StripeAPIError
from fakestripe.testing import WebhookReceiver, error_body

DE = {"country": "DE", "postal_code": "10115", "line1": "Invalidenstr. 1", "city": "Berlin"}
HU = {"country": "HU", "postal_code": "1051", "city": "Budapest"}
US_CA = {"country": "US", "postal_code": "94107", "line1": "1 Main St", "state": "CA"}
US_MT_NO_TAX = {"country": "US", "postal_code": "59001", "state": "MT"}


@pytest.fixture
def fake() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        yield server
    assert not server.state.server_errors


@pytest.fixture
def client(fake: FakeStripeServer) -> stripe.StripeClient:
    return fake.client()


def _customer(client: stripe.StripeClient, address: dict[str, str] | None = None, **extra: Any) -> Any:
    params: dict[str, Any] = {"email": "billing@example.com", "name": "Example Co", **extra}
    if address is not None:
        params["address"] = address
    return client.v1.customers.create(params)  # type: ignore[arg-type]


def _draft(client: stripe.StripeClient, customer_id: str, **params: Any) -> Any:
    return client.v1.invoices.create({"customer": customer_id, **params})  # type: ignore[arg-type]


def _item(client: stripe.StripeClient, invoice: Any, amount: int, **params: Any) -> Any:
    return client.v1.invoice_items.create(
        {"customer": invoice.customer, "invoice": invoice.id, "amount": amount, "currency": "eur", **params}  # type: ignore[arg-type]
    )


# -- invoice items ----------------------------------------------------------------------------------


def test_invoice_item_crud_list_and_pricing(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    customer = _customer(client)
    price = client.v1.prices.create(
        {"currency": "usd", "product_data": {"name": "Seats"}, "unit_amount_decimal": Decimal("12.5")}
    )
    priced = client.v1.invoice_items.create(
        {
            "customer": customer.id,
            "pricing": {"price": price.id},
            "quantity_decimal": Decimal("3.5"),
            "period": {"start": 1_700_000_000, "end": 1_700_086_400},
            "tax_code": "txcd_10103001",
            "description": "Seats",
            "metadata": {"k": "v"},
        }
    )
    assert priced.id.startswith("ii_") and priced.object == "invoiceitem"
    assert priced.amount == 44  # 12.5 x 3.5 = 43.75, rounded half up
    assert priced.currency == "usd" and priced.invoice is None
    assert priced.quantity_decimal == Decimal("3.5")
    assert priced.pricing is not None and priced.pricing.price_details is not None
    assert priced.pricing.price_details.price == price.id
    assert priced.period.start == 1_700_000_000 and priced.period.end == 1_700_086_400

    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.invoice_items.create({"customer": customer.id, "amount": 100, "currency": "usd", "quantity": 2})
    assert err.value.param == "quantity"
    credit = client.v1.invoice_items.create({"customer": customer.id, "amount": -500, "currency": "usd"})
    assert credit.amount == -500
    assert client.v1.invoice_items.retrieve(credit.id).amount == -500

    updated = client.v1.invoice_items.update(priced.id, {"quantity": 2, "metadata": {"k": "", "x": "y"}})
    assert updated.amount == 25 and updated.quantity == 2
    assert updated.metadata is not None and updated.metadata.to_dict() == {"x": "y"}
    [event] = fake.state.events_of_type("invoiceitem.updated")
    assert event["data"]["previous_attributes"]["amount"] == 44

    other = _customer(client)
    client.v1.invoice_items.create({"customer": other.id, "amount": 100, "currency": "usd"})
    listed = client.v1.invoice_items.list({"customer": customer.id})
    assert [i.id for i in listed.data] == [credit.id, priced.id]
    assert len(client.v1.invoice_items.list({"pending": True}).data) == 3

    deleted = client.v1.invoice_items.delete(credit.id)
    assert deleted.deleted is True
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.invoice_items.retrieve(credit.id)
    assert err.value.http_status == 404


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({"amount": 100}, "currency", "parameter_missing"),
        ({"currency": "usd"}, "amount", "parameter_missing"),
        ({"amount": 100, "currency": "usd", "pricing": {"price": "price_x"}}, "pricing", None),
        ({"amount": 100, "currency": "usd", "tax_behavior": "sometimes"}, "tax_behavior", None),
        ({"amount": 100, "currency": "usd", "colour": "red"}, "colour", "parameter_unknown"),
        ({"amount": 100, "currency": "usd", "period": {"start": 5}}, "period[end]", "parameter_missing"),
    ],
)
def test_invoice_item_validation(client: stripe.StripeClient, params: dict[str, Any], param: str, code: str) -> None:
    customer = _customer(client)
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.invoice_items.create({"customer": customer.id, **params})  # type: ignore[arg-type]
    assert err.value.http_status == 400
    assert (err.value.param, err.value.code) == (param, code)


def test_recurring_price_is_refused_for_invoice_items(client: stripe.StripeClient) -> None:
    customer = _customer(client)
    price = client.v1.prices.create(
        {"currency": "usd", "product_data": {"name": "Plan"}, "unit_amount": 100, "recurring": {"interval": "month"}}
    )
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.invoice_items.create({"customer": customer.id, "pricing": {"price": price.id}})
    assert err.value.param == "pricing[price]"


# -- invoices: drafts and totals --------------------------------------------------------------------


def test_invoice_create_retrieve_update_list_and_lines(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    customer = _customer(client)
    invoice = _draft(client, customer.id, currency="eur", metadata={"tenant": "t-1"})
    assert invoice.id.startswith("in_") and invoice.status == "draft" and invoice.number is None
    assert invoice.auto_advance is False and invoice.collection_method == "charge_automatically"
    assert (invoice.subtotal, invoice.total, invoice.amount_due) == (0, 0, 0)
    assert [e["data"]["object"]["id"] for e in fake.state.events_of_type("invoice.created")] == [invoice.id]

    _item(client, invoice, 1999, description="API calls")
    _item(client, invoice, 1, description="rounding")
    _item(client, invoice, -250, description="credit")
    fetched = client.v1.invoices.retrieve(invoice.id)
    assert (fetched.subtotal, fetched.total, fetched.amount_due, fetched.amount_remaining) == (1750, 1750, 1750, 1750)
    assert [line.amount for line in fetched.lines.data] == [1999, 1, -250]
    assert fetched.lines.data[0].parent is not None
    lines = client.v1.invoices.line_items.list(invoice.id, {"limit": 2})
    assert [line.amount for line in lines.data] == [1999, 1] and lines.has_more
    assert all(line.object == "line_item" and line.invoice == invoice.id for line in lines.data)

    updated = client.v1.invoices.update(
        invoice.id, {"description": "November usage", "collection_method": "send_invoice", "days_until_due": 14}
    )
    assert updated.description == "November usage" and updated.collection_method == "send_invoice"
    assert updated.due_date == invoice.created + 14 * 86_400
    [event] = fake.state.events_of_type("invoice.updated")
    assert event["data"]["previous_attributes"]["collection_method"] == "charge_automatically"

    other = _draft(client, _customer(client).id)
    assert [i.id for i in client.v1.invoices.list({"customer": customer.id}).data] == [invoice.id]
    assert [i.id for i in client.v1.invoices.list().data] == [other.id, invoice.id]
    client.v1.invoices.finalize_invoice(other.id)
    assert [i.id for i in client.v1.invoices.list({"status": "draft"}).data] == [invoice.id]


def test_send_invoice_needs_days_until_due(client: stripe.StripeClient) -> None:
    customer = _customer(client)
    with pytest.raises(stripe.InvalidRequestError) as err:
        _draft(client, customer.id, collection_method="send_invoice")
    assert (err.value.param, err.value.code) == ("days_until_due", "parameter_missing")
    with pytest.raises(stripe.InvalidRequestError) as err:
        _draft(client, customer.id, days_until_due=30)
    assert err.value.param == "days_until_due"
    invoice = _draft(client, customer.id, collection_method="send_invoice", days_until_due=30)
    assert invoice.due_date == invoice.created + 30 * 86_400


def test_pending_items_behaviour(client: stripe.StripeClient) -> None:
    customer = _customer(client)
    pending = client.v1.invoice_items.create({"customer": customer.id, "amount": 700, "currency": "usd"})
    excluded = _draft(client, customer.id)
    assert excluded.lines.data == [] and client.v1.invoice_items.retrieve(pending.id).invoice is None
    included = _draft(client, customer.id, pending_invoice_items_behavior="include")
    assert [line.amount for line in included.lines.data] == [700] and included.total == 700
    assert client.v1.invoice_items.retrieve(pending.id).invoice == included.id


def test_draft_only_rules(client: stripe.StripeClient) -> None:
    customer = _customer(client)
    invoice = _draft(client, customer.id, currency="eur")
    item = _item(client, invoice, 1000)
    client.v1.invoices.finalize_invoice(invoice.id)

    refused = [
        lambda: client.v1.invoice_items.update(item.id, {"amount": 5}),
        lambda: client.v1.invoice_items.delete(item.id),
        lambda: _item(client, invoice, 100),
        lambda: client.v1.invoices.update(invoice.id, {"description": "late"}),
        lambda: client.v1.invoices.delete(invoice.id),
    ]
    for call in refused:
        with pytest.raises(stripe.InvalidRequestError) as err:
            call()
        assert (err.value.http_status, err.value.code) == (400, "invoice_not_editable")
    assert client.v1.invoices.retrieve(invoice.id).total == 1000
    assert client.v1.invoice_items.retrieve(item.id).amount == 1000
    # metadata stays editable after finalization
    tagged = client.v1.invoices.update(invoice.id, {"metadata": {"a": "b"}})
    assert tagged.metadata is not None and tagged.metadata.to_dict() == {"a": "b"}

    draft = _draft(client, customer.id, currency="eur")
    draft_item = _item(client, draft, 300)
    assert client.v1.invoices.delete(draft.id).deleted is True
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoice_items.retrieve(draft_item.id)


def test_items_must_match_invoice_currency_and_customer(client: stripe.StripeClient) -> None:
    customer = _customer(client)
    invoice = _draft(client, customer.id, currency="eur")
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.invoice_items.create({"invoice": invoice.id, "amount": 100, "currency": "usd"})
    assert err.value.param == "currency"
    other = _customer(client)
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.invoice_items.create({"customer": other.id, "invoice": invoice.id, "amount": 100})
    assert err.value.param == "invoice"
    attached = client.v1.invoice_items.create({"invoice": invoice.id, "amount": 100})
    assert attached.customer == customer.id and attached.currency == "eur"


# -- finalization and tax ---------------------------------------------------------------------------


def test_finalize_numbers_invoices_and_replays_idempotently(
    fake: FakeStripeServer, client: stripe.StripeClient
) -> None:
    customer = _customer(client)
    first = _draft(client, customer.id, currency="eur")
    _item(client, first, 500)
    second = _draft(client, customer.id, currency="eur")
    _item(client, second, 700)

    done = client.v1.invoices.finalize_invoice(second.id, options={"idempotency_key": "fin-1"})
    replay = client.v1.invoices.finalize_invoice(second.id, options={"idempotency_key": "fin-1"})
    assert done.status == "open" and done.number == "TB-0001"
    assert replay.number == "TB-0001" and replay.last_response is not None
    assert replay.last_response.headers.get("Idempotent-Replayed") == "true"
    assert done.status_transitions.finalized_at == fake.clock.now()
    assert len(fake.state.events_of_type("invoice.finalized")) == 1
    assert client.v1.invoices.finalize_invoice(first.id).number == "TB-0002"
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.invoices.finalize_invoice(first.id)
    assert err.value.http_status == 400 and "open" in str(err.value.user_message)


@pytest.mark.parametrize(
    ("address", "behavior", "amounts", "tax", "total"),
    [
        (DE, "exclusive", [1000, 333], 253, 1586),  # 190 + 63.27 -> 63
        (HU, "exclusive", [1000], 270, 1270),
        (US_CA, "exclusive", [10_000], 725, 10_725),
        (US_MT_NO_TAX, "exclusive", [10_000], 0, 10_000),
        (DE, "inclusive", [1190, 100], 190 + 16, 1290),  # 100 incl. 19 %: 84.03 net -> 84, tax 16
    ],
)
def test_automatic_tax_complete(
    client: stripe.StripeClient,
    address: dict[str, str],
    behavior: str,
    amounts: list[int],
    tax: int,
    total: int,
) -> None:
    customer = _customer(client, address)
    invoice = _draft(client, customer.id, currency="eur", automatic_tax={"enabled": True})
    for amount in amounts:
        _item(client, invoice, amount, tax_behavior=behavior, tax_code="txcd_10103001")
    final = client.v1.invoices.finalize_invoice(invoice.id)
    assert final.automatic_tax.status == "complete" and final.status == "open"
    assert final.subtotal == sum(amounts)
    assert sum(t.amount for t in final.total_taxes or []) == tax
    assert sum(t.amount for line in final.lines.data for t in line.taxes or []) == tax
    assert final.total == total and final.amount_due == total
    expected_excluding = sum(amounts) - (tax if behavior == "inclusive" else 0)
    assert final.total_excluding_tax == expected_excluding
    assert all((line.taxes or [])[0].tax_behavior == behavior for line in final.lines.data)


def test_requires_location_inputs_refuses_finalization(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    for address in (None, {"country": "US", "line1": "no zip"}):
        customer = _customer(client, address)
        invoice = _draft(client, customer.id, currency="usd", automatic_tax={"enabled": True})
        _item(client, invoice, 1000, currency="usd", tax_behavior="exclusive")
        with pytest.raises(stripe.InvalidRequestError) as err:
            client.v1.invoices.finalize_invoice(invoice.id)
        assert err.value.code == "customer_tax_location_invalid"
        after = client.v1.invoices.retrieve(invoice.id)
        assert after.status == "draft" and after.number is None
        assert after.automatic_tax.status == "requires_location_inputs"
        assert after.last_finalization_error is not None
        assert after.last_finalization_error.code == "customer_tax_location_invalid"
    assert len(fake.state.events_of_type("invoice.finalization_failed")) == 2

    # once the address is complete, finalization succeeds
    client.v1.customers.update(customer.id, {"address": US_CA})  # type: ignore[arg-type]
    final = client.v1.invoices.finalize_invoice(invoice.id)
    assert final.automatic_tax.status == "complete" and final.total == 1073
    assert final.last_finalization_error is None


@pytest.mark.parametrize(("amount", "behavior"), [(-100, "exclusive"), (1000, None)])
def test_automatic_tax_fails_on_negative_or_unspecified_items(
    fake: FakeStripeServer, client: stripe.StripeClient, amount: int, behavior: str | None
) -> None:
    customer = _customer(client, DE)
    invoice = _draft(client, customer.id, currency="eur", automatic_tax={"enabled": True})
    _item(client, invoice, 2000, tax_behavior="exclusive")
    _item(client, invoice, amount, **({"tax_behavior": behavior} if behavior else {}))
    with pytest.raises(stripe.InvalidRequestError) as err:
        client.v1.invoices.finalize_invoice(invoice.id)
    assert err.value.code == "taxes_calculation_failed"
    after = client.v1.invoices.retrieve(invoice.id)
    assert after.status == "draft" and after.automatic_tax.status == "failed"
    [event] = fake.state.events_of_type("invoice.finalization_failed")
    assert event["data"]["object"]["automatic_tax"]["status"] == "failed"


def test_price_tax_behavior_is_inherited(client: stripe.StripeClient) -> None:
    customer = _customer(client, HU)
    price = client.v1.prices.create(
        {"currency": "eur", "product_data": {"name": "Pack"}, "unit_amount": 1000, "tax_behavior": "exclusive"}
    )
    invoice = _draft(client, customer.id, currency="eur", automatic_tax={"enabled": True})
    client.v1.invoice_items.create({"invoice": invoice.id, "pricing": {"price": price.id}, "quantity": 3})
    final = client.v1.invoices.finalize_invoice(invoice.id)
    assert (final.subtotal, final.total) == (3000, 3810)


# -- lifecycle ----------------------------------------------------------------------------------------


def _open_invoice(client: stripe.StripeClient, amount: int = 1500, **customer_extra: Any) -> Any:
    customer = _customer(client, **customer_extra)
    invoice = _draft(client, customer.id, currency="eur")
    _item(client, invoice, amount)
    return client.v1.invoices.finalize_invoice(invoice.id)


def test_pay_records_a_payment(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    invoice = _open_invoice(client, invoice_settings={"default_payment_method": "pm_card_visa"})
    paid = client.v1.invoices.pay(invoice.id)
    assert paid.status == "paid" and paid.amount_paid == 1500 and paid.amount_remaining == 0
    assert paid.attempt_count == 1 and paid.status_transitions.paid_at == fake.clock.now()
    assert paid.payments is not None
    [payment] = paid.payments.data
    assert payment.amount_paid == 1500 and payment.status == "paid" and payment.payment.type == "payment_intent"
    [event] = fake.state.events_of_type("invoice.paid")
    assert event["data"]["object"]["status"] == "paid"
    for refused in (client.v1.invoices.pay, client.v1.invoices.void_invoice, client.v1.invoices.mark_uncollectible):
        with pytest.raises(stripe.InvalidRequestError) as err:
            refused(invoice.id)
        assert err.value.http_status == 400 and "is paid" in str(err.value.user_message)
    assert client.v1.invoices.retrieve(invoice.id).status == "paid"


def test_pay_without_payment_method_and_out_of_band(client: stripe.StripeClient) -> None:
    invoice = _open_invoice(client)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.pay(invoice.id)
    assert client.v1.invoices.retrieve(invoice.id).status == "open"
    paid = client.v1.invoices.pay(invoice.id, {"paid_out_of_band": True})
    assert paid.status == "paid" and paid.amount_paid == 1500
    assert paid.payments is not None and paid.payments.data[0].payment.type == "out_of_band_payment"


def test_payment_failure_control(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    invoice = _open_invoice(client)
    fake.fail_next_invoice_payment("insufficient_funds")
    with pytest.raises(stripe.CardError) as err:
        client.v1.invoices.pay(invoice.id, {"payment_method": "pm_card_visa"})
    assert err.value.http_status == 402 and err.value.code == "card_declined"
    assert error_body(err.value)["decline_code"] == "insufficient_funds"
    after = client.v1.invoices.retrieve(invoice.id)
    assert after.status == "open" and after.attempt_count == 1 and after.amount_paid == 0
    [event] = fake.state.events_of_type("invoice.payment_failed")
    assert event["data"]["object"]["attempt_count"] == 1

    httpx.post(f"{fake.url}/_fake/invoices/fail_next_payment", data={"decline_code": "expired_card"})
    with pytest.raises(stripe.CardError):
        client.v1.invoices.pay(invoice.id, {"payment_method": "pm_card_visa"})
    assert client.v1.invoices.pay(invoice.id, {"payment_method": "pm_card_visa"}).status == "paid"
    assert len(fake.state.events_of_type("invoice.payment_failed")) == 2


def test_void_and_uncollectible_transitions(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    draft = _draft(client, _customer(client).id)
    for refused in (client.v1.invoices.pay, client.v1.invoices.void_invoice, client.v1.invoices.mark_uncollectible):
        with pytest.raises(stripe.InvalidRequestError) as err:
            refused(draft.id)
        assert err.value.http_status == 400 and "is draft" in str(err.value.user_message)

    voided = client.v1.invoices.void_invoice(_open_invoice(client).id)
    assert voided.status == "void" and voided.status_transitions.voided_at is not None
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.pay(voided.id, {"paid_out_of_band": True})

    bad_debt = client.v1.invoices.mark_uncollectible(_open_invoice(client).id)
    assert bad_debt.status == "uncollectible"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.mark_uncollectible(bad_debt.id)
    recovered = client.v1.invoices.pay(bad_debt.id, {"paid_out_of_band": True})
    assert recovered.status == "paid"
    assert [len(fake.state.events_of_type(t)) for t in ("invoice.voided", "invoice.marked_uncollectible")] == [1, 1]


def test_zero_total_invoice_is_paid_on_finalization(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    final = client.v1.invoices.finalize_invoice(_draft(client, _customer(client).id).id)
    assert final.status == "paid" and final.amount_due == 0
    assert len(fake.state.events_of_type("invoice.paid")) == 1


# -- events and signed webhooks -------------------------------------------------------------------------


def test_invoice_events_are_delivered_signed(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    with WebhookReceiver() as receiver:
        endpoint = client.v1.webhook_endpoints.create(
            {
                "url": receiver.url,
                "enabled_events": [
                    "invoice.created",
                    "invoice.finalized",
                    "invoice.payment_failed",
                    "invoice.paid",
                    "invoice.voided",
                    "invoice.marked_uncollectible",
                    "invoice.finalization_failed",
                ],
            }
        )
        secret = endpoint.secret
        assert secret is not None
        failing = _draft(client, _customer(client).id, currency="eur", automatic_tax={"enabled": True})
        _item(client, failing, 100, tax_behavior="exclusive")
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.invoices.finalize_invoice(failing.id)
        invoice = _open_invoice(client, invoice_settings={"default_payment_method": "pm_card_visa"})
        fake.fail_next_invoice_payment()
        with pytest.raises(stripe.CardError):
            client.v1.invoices.pay(invoice.id)
        client.v1.invoices.pay(invoice.id)
        client.v1.invoices.void_invoice(_open_invoice(client).id)
        client.v1.invoices.mark_uncollectible(_open_invoice(client).id)

        deliveries = fake.deliver_webhooks()
        assert deliveries and all(d.status == 200 for d in deliveries)
        types = []
        for hook in receiver.received:
            event = stripe.Webhook.construct_event(hook.body, hook.headers["Stripe-Signature"], secret)
            types.append(event.type)
            assert json.loads(hook.body)["data"]["object"]["object"] == "invoice"
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(
                receiver.received[0].body, receiver.received[0].headers["Stripe-Signature"], "whsec_wrong"
            )
    assert types.count("invoice.created") == 4
    assert types.count("invoice.finalized") == 3
    for expected in ("invoice.finalization_failed", "invoice.payment_failed", "invoice.paid", "invoice.voided"):
        assert types.count(expected) == 1, expected
    assert types.count("invoice.marked_uncollectible") == 1
    assert types.index("invoice.payment_failed") < types.index("invoice.paid")


# -- checkout (setup mode) and setup intents ---------------------------------------------------------------


def test_checkout_setup_session_validation(client: stripe.StripeClient) -> None:
    customer = _customer(client)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"mode": "setup", "customer": customer.id, "success_url": "https://x.test/ok"}, "currency"),
        ({"mode": "setup", "customer": customer.id, "currency": "eur"}, "success_url"),
        ({"mode": "setup", "currency": "eur", "ui_mode": "embedded_page"}, "return_url"),
        (
            {"mode": "setup", "currency": "eur", "ui_mode": "embedded_page", "success_url": "https://x.test"},
            "success_url",
        ),
        ({"mode": "setup", "currency": "eur", "success_url": "https://x.test", "customer": "cus_nope"}, "customer"),
        ({"mode": "subscription", "currency": "eur", "success_url": "https://x.test"}, "mode"),
        ({"mode": "setup", "currency": "eur", "success_url": "https://x.test", "colour": "red"}, "colour"),
    ]
    for params, param in cases:
        with pytest.raises(stripe.InvalidRequestError) as err:
            client.v1.checkout.sessions.create(params)  # type: ignore[arg-type]
        assert err.value.param == param, params
    typed = client.v1.checkout.sessions.create(
        {"mode": "setup", "allowed_payment_method_types": ["card"], "success_url": "https://x.test/ok"}
    )
    assert typed.currency is None and typed.payment_method_types == ["card"]


def test_checkout_completion_flow(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    customer = _customer(client, DE)
    hosted = client.v1.checkout.sessions.create(
        {"mode": "setup", "customer": customer.id, "currency": "eur", "success_url": "https://app.test/done"}
    )
    assert hosted.id.startswith("cs_test_") and hosted.status == "open" and hosted.mode == "setup"
    assert hosted.url is not None and hosted.url.endswith(hosted.id)
    # As on Stripe, a setup-mode session has its SetupIntent from the start, waiting for a method.
    assert isinstance(hosted.setup_intent, str) and hosted.setup_intent.startswith("seti_")
    pending = client.v1.setup_intents.retrieve(hosted.setup_intent)
    assert (pending.status, pending.customer, pending.payment_method) == ("requires_payment_method", customer.id, None)
    assert pending.usage == "off_session" and pending.metadata.to_dict() == {}
    embedded = client.v1.checkout.sessions.create(
        {"mode": "setup", "currency": "eur", "ui_mode": "embedded_page", "return_url": "https://app.test/r"}
    )
    assert embedded.url is None and embedded.client_secret is not None

    with WebhookReceiver() as receiver:
        endpoint = fake.add_webhook_endpoint(receiver.url, ["checkout.session.completed", "setup_intent.succeeded"])
        completed = fake.complete_checkout_session(hosted.id)
        assert completed["status"] == "complete"
        session = client.v1.checkout.sessions.retrieve(hosted.id)
        intent_id = session.setup_intent
        assert session.status == "complete" and intent_id == hosted.setup_intent
        intent = client.v1.setup_intents.retrieve(intent_id)
        assert intent.status == "succeeded" and intent.customer == customer.id
        pm = intent.payment_method
        assert isinstance(pm, str) and pm.startswith("pm_")
        fake.deliver_webhooks()
        events = [
            stripe.Webhook.construct_event(h.body, h.headers["Stripe-Signature"], endpoint["secret"])
            for h in receiver.received
        ]
    assert [e.type for e in events] == ["setup_intent.succeeded", "checkout.session.completed"]
    assert events[1].data.object["setup_intent"] == intent.id

    updated = client.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": pm}})
    assert updated.invoice_settings is not None and updated.invoice_settings.default_payment_method == pm
    invoice = _draft(client, customer.id, currency="eur")
    _item(client, invoice, 990)
    client.v1.invoices.finalize_invoice(invoice.id)
    assert client.v1.invoices.pay(invoice.id).status == "paid"

    with pytest.raises(StripeAPIError):
        fake.complete_checkout_session(hosted.id)

    # over the control endpoint, with a chosen payment method; expired sessions cannot complete
    answer = httpx.post(f"{fake.url}/_fake/checkout/sessions/{embedded.id}/complete", data={"payment_method": "pm_x"})
    assert answer.status_code == 200 and answer.json()["status"] == "complete"
    late = client.v1.checkout.sessions.create(
        {"mode": "setup", "currency": "eur", "success_url": "https://app.test/done"}
    )
    fake.clock.advance(24 * 3600)
    assert client.v1.checkout.sessions.retrieve(late.id).status == "expired"
    refused = httpx.post(f"{fake.url}/_fake/checkout/sessions/{late.id}/complete")
    assert refused.status_code == 400


def test_refused_finalization_is_replayed_not_rerun(fake: FakeStripeServer, client: stripe.StripeClient) -> None:
    customer = _customer(client)
    invoice = _draft(client, customer.id, currency="eur", automatic_tax={"enabled": True})
    _item(client, invoice, 1000, tax_behavior="exclusive")
    for _ in range(2):
        with pytest.raises(stripe.InvalidRequestError) as err:
            client.v1.invoices.finalize_invoice(invoice.id, options={"idempotency_key": "fin-located"})
        assert err.value.code == "customer_tax_location_invalid"
    assert len(fake.state.events_of_type("invoice.finalization_failed")) == 1
    # the address is fixed, but the key still answers with the saved refusal; a new key finalizes
    client.v1.customers.update(customer.id, {"address": DE})  # type: ignore[arg-type]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.finalize_invoice(invoice.id, options={"idempotency_key": "fin-located"})
    final = client.v1.invoices.finalize_invoice(invoice.id, options={"idempotency_key": "fin-located-2"})
    assert (final.status, final.total) == ("open", 1190)
