"""Credit notes of invoices Stripe collects become Stripe credit notes, through the real SDK against
the fake Stripe, on SQLite and PostgreSQL: the line credited, before and after payment, waiting for
a finalized Stripe invoice, idempotent after a lost answer, voided with the invoice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fakestripe import FakeStripeServer
from tallybook.stripe.credit_notes import SYNC_JOB
from tests.billing_helpers import ok, utc
from tests.test_stripe_invoicing import Env, issue, make_env, seed, stripe_profile


@pytest.fixture
def fake() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        server.clock.set(utc(2026, 2, 1, 1).timestamp())
        yield server
    assert not server.state.server_errors, "\n".join(server.state.server_errors)


@pytest.fixture
def env(database_url: str, fake: FakeStripeServer) -> Iterator[Env]:
    e = make_env(database_url, fake)
    try:
        yield e
    finally:
        e.api.close()
        e.rt.stop()


def sync_credit_notes(env: Env) -> dict[str, Any]:
    job = next(j for j in env.rt.jobs.jobs if j.name == SYNC_JOB)
    result = env.rt.jobs.run_job(job, force=True)
    assert result.error is None, result.error
    return result.result  # type: ignore[no-any-return]


def cancel(env: Env, when: Any) -> dict[str, Any]:
    env.clock.set(when)
    subscription = ok(env.api.get("/api/v1/subscriptions"))["items"][0]
    ok(env.api.post(f"/api/v1/subscriptions/{subscription['id']}/cancel"))
    (note,) = ok(env.api.get("/api/v1/billing/credit-notes"))["items"]
    return note  # type: ignore[no-any-return]


def test_a_cancel_credit_note_reaches_stripe_on_the_fee_line(env: Env) -> None:
    stripe_profile(env.api)
    _, period = seed(env)
    issue(env, period)  # January's usage and February's fee, in advance
    env.sync()
    s_invoice_id = env.invoice(period)["externalIds"]["invoicing"]
    note = cancel(env, utc(2026, 2, 11))
    # February has 28 days; 10 used: 49 * 10/28 = 17.50, 31.50 back.
    assert note["invoiceId"] == period and note["totals"]["total"] == "31.50"
    assert sync_credit_notes(env) == {"due": 1, "done": 1}
    (s_note,) = env.stripe.v1.credit_notes.list({"invoice": s_invoice_id}).data
    assert s_note.total == 3150 and s_note.reason == "order_change" and s_note.type == "pre_payment"
    assert s_note.memo.startswith("CN-000001")
    assert s_note.metadata["tallybook_credit_note_id"] == note["id"]
    fee_line = next(
        ln
        for ln in env.stripe.v1.invoices.line_items.list(s_invoice_id).data
        if ln.metadata["tallybook_rate_card"] == "platform"
    )
    (credited,) = s_note.lines.data
    assert (credited.type, credited.invoice_line_item, credited.amount) == ("invoice_line_item", fee_line.id, 3150)
    assert env.stripe.v1.invoices.retrieve(s_invoice_id).amount_remaining == 9157 - 3150
    shown = ok(env.api.get(f"/api/v1/billing/credit-notes/{note['id']}"))
    assert shown["externalIds"] == {"invoicing": s_note.id}
    assert shown["sync"]["status"] == "done" and shown["sync"]["number"] == s_note.number
    # Nothing left to do: the next run sends nothing.
    posts = len([r for r in env.fake.requests if r.method == "POST"])
    assert sync_credit_notes(env) == {"due": 0}
    assert len([r for r in env.fake.requests if r.method == "POST"]) == posts
    # Voiding the invoice voids its credit note, in Stripe too.
    env.clock.set(utc(2026, 2, 12))
    ok(env.api.post(f"/api/v1/billing/invoices/{period}/void"))
    assert sync_credit_notes(env) == {"due": 1, "done": 1}
    assert env.stripe.v1.credit_notes.retrieve(s_note.id).status == "void"
    assert sync_credit_notes(env) == {"due": 0}


def test_after_payment_the_credit_goes_to_the_customer_balance(env: Env) -> None:
    stripe_profile(env.api)
    _, period = seed(env)
    issue(env, period)
    env.sync()
    s_invoice_id = env.invoice(period)["externalIds"]["invoicing"]
    env.stripe.v1.invoices.pay(s_invoice_id, {"paid_out_of_band": True})
    cancel(env, utc(2026, 2, 11))
    assert sync_credit_notes(env) == {"due": 1, "done": 1}
    (s_note,) = env.stripe.v1.credit_notes.list({"invoice": s_invoice_id}).data
    assert (s_note.pre_payment_amount, s_note.post_payment_amount) == (0, 3150)
    assert env.stripe.v1.customers.retrieve(str(s_note.customer)).balance == -3150


def test_a_credit_note_waits_for_its_stripe_invoice_to_be_finalized(env: Env) -> None:
    stripe_profile(env.api)
    _, period = seed(env)
    issue(env, period)  # issued in Tallybook, not synced yet: Stripe holds nothing
    note = cancel(env, utc(2026, 2, 11))
    assert sync_credit_notes(env) == {"due": 0}  # its invoice is not in Stripe yet
    env.sync()  # the invoice reaches Stripe, finalized
    assert sync_credit_notes(env) == {"due": 1, "done": 1}
    assert len(env.stripe.v1.credit_notes.list({"limit": 100}).data) == 1
    assert ok(env.api.get(f"/api/v1/billing/credit-notes/{note['id']}"))["sync"]["status"] == "done"


def test_a_draft_stripe_invoice_is_waited_for(env: Env) -> None:
    stripe_profile(env.api)
    _, period = seed(env)
    env.sync()  # a Stripe draft
    issue(env, period)  # issued in Tallybook; its Stripe draft is finalized at the next invoice sync
    note = cancel(env, utc(2026, 2, 11))
    assert sync_credit_notes(env) == {"due": 1, "pending": 1}
    waiting = ok(env.api.get(f"/api/v1/billing/credit-notes/{note['id']}"))["sync"]
    assert waiting["status"] == "pending" and "to be finalized" in waiting["error"]["message"]
    env.sync()
    env.clock.set(utc(2026, 2, 12))  # past the retry time
    assert sync_credit_notes(env) == {"due": 1, "done": 1}


def test_a_lost_answer_does_not_create_a_second_credit_note(env: Env) -> None:
    stripe_profile(env.api)
    _, period = seed(env)
    issue(env, period)
    env.sync()
    note = cancel(env, utc(2026, 2, 11))
    env.fake.faults.drop("/v1/credit_notes", method="POST", after_processing=True)
    assert sync_credit_notes(env) == {"due": 1, "pending": 1}
    env.clock.set(utc(2026, 2, 12))
    assert sync_credit_notes(env) == {"due": 1, "done": 1}
    (s_note,) = env.stripe.v1.credit_notes.list({"limit": 100}).data
    assert ok(env.api.get(f"/api/v1/billing/credit-notes/{note['id']}"))["externalIds"] == {"invoicing": s_note.id}
