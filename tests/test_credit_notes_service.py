"""The credit note service on its in-memory store: which invoices take credit notes, the limit of
an invoice's total, rounding, numbering and what invoicing reads back (no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tallybook.billing.periods import Period
from tallybook.clock import FixedClock
from tallybook.creditnotes.memory import MemoryCreditNotes
from tallybook.creditnotes.model import (
    CANCELLATION,
    CORRECTION,
    CREDIT,
    USAGE_CORRECTION,
    CreditedInvoice,
    CreditNoteConflict,
    CreditNoteError,
    CreditNoteLine,
    CreditNoteNotFound,
    CreditNoteQuery,
    CreditNoteRequest,
)
from tallybook.creditnotes.service import CreditNoteService

JANUARY = Period(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))


def service(status: str = "issued", total: str = "49.00", currency: str = "USD") -> CreditNoteService:
    store = MemoryCreditNotes()
    store.invoices["inv_1"] = CreditedInvoice(
        "inv_1", "cus_1", {"id": "cus_1", "name": "Acme"}, currency, status, Decimal(total)
    )
    return CreditNoteService(store, store, FixedClock(datetime(2026, 1, 11, tzinfo=UTC)))


def fee_credit(amount: str) -> CreditNoteLine:
    return CreditNoteLine(CREDIT, "Credit: Platform fee (unused time)", JANUARY, Decimal(amount), "sub_1", "platform")


def test_issue_numbers_and_notifies() -> None:
    notes = service()
    first = notes.issue(CreditNoteRequest("inv_1", CANCELLATION, (fee_credit("33.19"),)))
    second = notes.issue(CreditNoteRequest("inv_1", CANCELLATION, (fee_credit("0.81"),)))
    assert (first.number, second.number) == ("CN-000001", "CN-000002")
    assert first.total == Decimal("33.19") and first.customer_id == "cus_1" and first.status == "issued"
    assert first.issued_at == datetime(2026, 1, 11, tzinfo=UTC)
    store = notes.store
    assert isinstance(store, MemoryCreditNotes)
    assert [n.id for n in store.notified] == [first.id, second.id]
    assert notes.credited_totals(["inv_1"]) == {"inv_1": Decimal("34.00")}
    assert [c.amount for c in notes.fee_credits(["sub_1"])] == [Decimal("33.19"), Decimal("0.81")]
    total, found = notes.search(CreditNoteQuery(invoice_id="inv_1"))
    assert total == 2 and [n.number for n in found] == ["CN-000002", "CN-000001"]
    assert notes.get(first.id) == first


def test_an_invoice_is_never_credited_beyond_its_total() -> None:
    notes = service(total="49.00")
    notes.issue(CreditNoteRequest("inv_1", CANCELLATION, (fee_credit("40.00"),)))
    with pytest.raises(CreditNoteConflict) as refused:
        notes.issue(CreditNoteRequest("inv_1", CANCELLATION, (fee_credit("9.01"),)))
    assert "cannot take 9.01 more" in refused.value.detail
    notes.issue(CreditNoteRequest("inv_1", CANCELLATION, (fee_credit("9.00"),)))


@pytest.mark.parametrize("status", ["draft", "void"])
def test_only_issued_invoices_take_credit_notes(status: str) -> None:
    with pytest.raises(CreditNoteConflict) as refused:
        service(status=status).issue(CreditNoteRequest("inv_1", CANCELLATION, (fee_credit("1.00"),)))
    assert refused.value.extra == {"invoiceStatus": status}


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (CreditNoteRequest("inv_1", "goodwill", (fee_credit("1.00"),)), "reason must be one of"),
        (CreditNoteRequest("inv_1", CANCELLATION, ()), "at least one line"),
        (CreditNoteRequest("inv_1", CANCELLATION, (fee_credit("-1.00"),)), "must be positive"),
        (CreditNoteRequest("inv_1", CANCELLATION, (fee_credit("1.005"),)), "not rounded to USD"),
    ],
)
def test_bad_requests_say_what_to_fix(request_: CreditNoteRequest, message: str) -> None:
    with pytest.raises(CreditNoteError) as refused:
        service().issue(request_)
    assert message in refused.value.detail


def test_unknown_invoice_and_credit_note() -> None:
    notes = service()
    with pytest.raises(CreditNoteNotFound):
        notes.issue(CreditNoteRequest("inv_2", CANCELLATION, (fee_credit("1.00"),)))
    with pytest.raises(CreditNoteNotFound):
        notes.get("cn_missing")


def test_usage_credits_name_the_invoice_whose_usage_they_correct() -> None:
    notes = service(total="42.94")
    line = CreditNoteLine(
        CORRECTION,
        "Correction: API calls",
        JANUARY,
        Decimal("16.84"),
        "sub_1",
        "api_calls",
        "api_calls",
        quantity=Decimal(2000),
        corrects_invoice_id="inv_0",
    )
    notes.issue(CreditNoteRequest("inv_1", USAGE_CORRECTION, (line,)))
    (credit,) = notes.usage_credits(["inv_0"])
    assert (credit.invoice_id, credit.quantity) == ("inv_0", Decimal(2000))
    assert notes.usage_credits(["inv_1"]) == []
    assert notes.fee_credits(["sub_1"]) == []  # a usage correction gives back no fee


def test_zero_decimal_currencies_round_to_whole_units() -> None:
    notes = service(total="5000", currency="JPY")
    with pytest.raises(CreditNoteError):
        notes.issue(CreditNoteRequest("inv_1", CANCELLATION, (fee_credit("10.5"),)))
    assert notes.issue(CreditNoteRequest("inv_1", CANCELLATION, (fee_credit("11"),))).total == Decimal(11)
