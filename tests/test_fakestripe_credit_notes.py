"""Credit notes on the fake Stripe server, through the real stripe-python SDK: pre- and post-payment
amounts, line limits, what custom lines may do, list, lines and void."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from fakestripe import FakeStripeServer


@pytest.fixture
def fake() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        yield server
    assert not server.state.server_errors


@pytest.fixture
def client(fake: FakeStripeServer) -> stripe.StripeClient:
    return fake.client()


def finalized(client: stripe.StripeClient, amounts: list[int], **params: Any) -> Any:
    customer = client.v1.customers.create({"email": "billing@example.com", "name": "Example Co"})
    invoice = client.v1.invoices.create({"customer": customer.id, **params})  # type: ignore[arg-type]
    for amount in amounts:
        client.v1.invoice_items.create(
            {"customer": customer.id, "invoice": invoice.id, "amount": amount, "currency": "usd"}
        )
    return client.v1.invoices.finalize_invoice(invoice.id)


def error_of(call: Any) -> stripe.StripeError:
    with pytest.raises(stripe.StripeError) as caught:
        call()
    return caught.value


def test_a_credit_note_lowers_what_is_due_on_an_open_invoice(
    fake: FakeStripeServer, client: stripe.StripeClient
) -> None:
    invoice = finalized(client, [4900, 3100])
    fee_line = next(ln for ln in invoice.lines.data if ln.amount == 4900)
    note = client.v1.credit_notes.create(
        {
            "invoice": invoice.id,
            "lines": [{"type": "invoice_line_item", "invoice_line_item": fee_line.id, "amount": 3319}],
            "reason": "order_change",
            "memo": "unused time",
            "metadata": {"tallybook_credit_note_id": "01ABC"},
        }
    )
    assert note.object == "credit_note" and note.id.startswith("cn_") and note.status == "issued"
    assert (note.total, note.pre_payment_amount, note.post_payment_amount, note.type) == (3319, 3319, 0, "pre_payment")
    assert note.number == f"{invoice.number}-CN-01" and note.reason == "order_change"
    assert note.lines.data[0].invoice_line_item == fee_line.id
    after = client.v1.invoices.retrieve(invoice.id)
    assert (after.amount_remaining, after.amount_due, after.pre_payment_credit_notes_amount) == (4681, 4681, 3319)
    assert [n.id for n in client.v1.credit_notes.list({"invoice": invoice.id}).data] == [note.id]
    assert [ln.amount for ln in client.v1.credit_notes.line_items.list(note.id).data] == [3319]
    assert fake.state.events_of_type("credit_note.created")
    # The line cannot be credited beyond its amount, the invoice not beyond its total.
    too_much = error_of(
        lambda: client.v1.credit_notes.create(
            {
                "invoice": invoice.id,
                "lines": [{"type": "invoice_line_item", "invoice_line_item": fee_line.id, "amount": 1582}],
            }
        )
    )
    assert too_much.http_status == 400 and "exceeds its amount" in str(too_much)
    voided = client.v1.credit_notes.void_credit_note(note.id)
    assert voided.status == "void" and voided.voided_at is not None
    assert client.v1.invoices.retrieve(invoice.id).amount_remaining == 8000
    assert "already void" in str(error_of(lambda: client.v1.credit_notes.void_credit_note(note.id)))


def test_after_payment_the_credit_is_allocated(client: stripe.StripeClient) -> None:
    invoice = finalized(client, [5000])
    client.v1.invoices.pay(invoice.id, {"paid_out_of_band": True})
    line = {"type": "custom_line_item", "description": "Late usage credit", "quantity": 1, "unit_amount": 1200}
    unallocated = error_of(lambda: client.v1.credit_notes.create({"invoice": invoice.id, "lines": [line]}))
    assert "must equal the post-payment amount" in str(unallocated)
    note = client.v1.credit_notes.create({"invoice": invoice.id, "lines": [line], "credit_amount": 1200})
    assert (note.pre_payment_amount, note.post_payment_amount, note.type) == (0, 1200, "post_payment")
    assert note.customer_balance_transaction is not None
    assert client.v1.customers.retrieve(str(note.customer)).balance == -1200  # a credit on the next invoice
    assert client.v1.invoices.retrieve(invoice.id).post_payment_credit_notes_amount == 1200
    client.v1.credit_notes.void_credit_note(note.id)
    assert client.v1.customers.retrieve(str(note.customer)).balance == 0


def test_what_stripe_refuses(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create({"email": "billing@example.com"})
    draft = client.v1.invoices.create({"customer": customer.id})
    line = {"type": "custom_line_item", "description": "x", "unit_amount": 100}
    assert "finalized invoices" in str(
        error_of(lambda: client.v1.credit_notes.create({"invoice": draft.id, "lines": [line]}))
    )
    taxed = finalized(client, [1000])
    client.v1.invoices.void_invoice(taxed.id)
    assert "void" in str(error_of(lambda: client.v1.credit_notes.create({"invoice": taxed.id, "lines": [line]})))
    invoice = finalized(client, [1000])
    missing = error_of(lambda: client.v1.credit_notes.create({"invoice": invoice.id}))
    assert missing.code == "parameter_missing"
    over = {"type": "custom_line_item", "description": "x", "unit_amount": 1001}
    assert "exceeds what is left" in str(
        error_of(lambda: client.v1.credit_notes.create({"invoice": invoice.id, "lines": [over]}))
    )
    unknown = error_of(
        lambda: client.v1.credit_notes.create(
            {
                "invoice": invoice.id,
                "lines": [{"type": "invoice_line_item", "invoice_line_item": "il_nope", "amount": 1}],
            }
        )
    )
    assert "is not on invoice" in str(unknown)
    mismatch = error_of(lambda: client.v1.credit_notes.create({"invoice": invoice.id, "amount": 50, "lines": [line]}))
    assert "must equal the sum of its lines" in str(mismatch)
    assert client.v1.credit_notes.create({"invoice": invoice.id, "amount": 250}).total == 250


def test_custom_lines_are_refused_with_automatic_tax(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create(
        {"email": "billing@example.com", "address": {"country": "DE", "postal_code": "10115"}}
    )
    invoice = client.v1.invoices.create(
        {"customer": customer.id, "currency": "eur", "automatic_tax": {"enabled": True}}
    )
    client.v1.invoice_items.create(
        {"customer": customer.id, "invoice": invoice.id, "amount": 1000, "currency": "eur", "tax_behavior": "exclusive"}
    )
    invoice = client.v1.invoices.finalize_invoice(invoice.id)
    custom = {"type": "custom_line_item", "description": "x", "unit_amount": 100}
    refused = error_of(lambda: client.v1.credit_notes.create({"invoice": invoice.id, "lines": [custom]}))
    assert "automatic tax" in str(refused)
    line_id = invoice.lines.data[0].id
    note = client.v1.credit_notes.create(
        {"invoice": invoice.id, "lines": [{"type": "invoice_line_item", "invoice_line_item": line_id, "amount": 100}]}
    )
    assert note.total == 100
