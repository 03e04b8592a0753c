"""Credit notes: what lowers an issued invoice after the fact.

An issued invoice is never edited. When something it billed turns out to be too much, a credit
note against it says by how much and why: in-advance time paid for but not used after a cancel or
a plan change (`credit` lines), or usage that went down after the issue, by voided events or
negative late events, for a subscription that has ended (`correction` lines). Amounts are positive
(what the customer gets back) and rounded to the currency's minor unit, like invoice lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from tallybook.billing.periods import Period
from tallybook.errors import DomainError

ISSUED, VOID = "issued", "void"
STATUSES = (ISSUED, VOID)
CREDITABLE = ("issued", "paid", "uncollectible")  # invoice statuses a credit note may lower
CREDIT, CORRECTION = "credit", "correction"  # line kinds (the invoice line kinds they mirror)
LINE_KINDS = (CREDIT, CORRECTION)
# Why a credit note was issued. Stripe's `reason` for all of them is `order_change`.
CANCELLATION = "cancellation"  # the subscription was canceled: unused in-advance time
PLAN_CHANGE = "plan_change"  # the subscription moved to another plan: the old plan's unused time
USAGE_CORRECTION = "usage_correction"  # usage went down after the invoice was issued
REASONS = (CANCELLATION, PLAN_CHANGE, USAGE_CORRECTION)
NUMBER_PREFIX = "CN-"


class CreditNoteError(DomainError):
    status = 400
    code = "invalid-credit-note"


class CreditNoteNotFound(CreditNoteError):
    status = 404
    code = "credit-note-not-found"


class CreditNoteConflict(CreditNoteError):
    """The invoice cannot take this credit note (not issued, or it would credit more than it billed)."""

    status = 409
    code = "credit-note-conflict"


def number_of(seq: int) -> str:
    """The credit note's number: one sequence for the whole install, never reused (CN-000001)."""
    return f"{NUMBER_PREFIX}{seq:06d}"


@dataclass(frozen=True, slots=True)
class CreditNoteLine:
    kind: str  # credit | correction
    name: str
    period: Period  # the service period credited
    amount: Decimal  # credited, > 0, rounded to the currency's minor unit
    subscription_id: str | None = None
    rate_card_key: str | None = None
    meter: str | None = None
    quantity: Decimal | None = None  # correction: the units taken off what was billed
    unit_price: Decimal | None = None
    tax_code: str | None = None
    description: str | None = None
    # correction: the invoice whose usage line the units were billed for (this credit note's own
    # invoice, or an earlier one whose late usage the credited invoice billed as a correction)
    corrects_invoice_id: str | None = None
    # credit: {"charged", "used"}; correction: {"previousQuantity", "quantity"} (billed before, now)
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CreditNoteRequest:
    """A credit note to issue against `invoice_id`."""

    invoice_id: str
    reason: str
    lines: tuple[CreditNoteLine, ...]
    memo: str | None = None

    def check(self) -> None:
        if self.reason not in REASONS:
            raise CreditNoteError(f"reason must be one of {', '.join(REASONS)}, got {self.reason!r}")
        if not self.lines:
            raise CreditNoteError("a credit note needs at least one line")
        for index, line in enumerate(self.lines):
            if line.kind not in LINE_KINDS:
                raise CreditNoteError(f"lines[{index}].kind must be credit or correction, got {line.kind!r}")
            if not line.amount.is_finite() or line.amount <= 0:
                raise CreditNoteError(f"lines[{index}].amount must be positive (what is credited), got {line.amount}")


@dataclass(frozen=True, slots=True)
class CreditNote:
    id: str
    number: str  # CN-000001; assigned when stored
    invoice_id: str
    customer_id: str
    customer: dict[str, Any]  # the invoice's customer snapshot
    currency: str
    reason: str
    status: str  # issued | void
    lines: tuple[CreditNoteLine, ...]
    total: Decimal  # sum of the lines, > 0
    issued_at: datetime
    memo: str | None = None
    voided_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CreditNoteQuery:
    customer_id: str | None = None
    invoice_id: str | None = None
    statuses: tuple[str, ...] | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True, slots=True)
class CreditedInvoice:
    """What the service needs to know about the invoice a credit note lowers."""

    id: str
    customer_id: str
    customer: dict[str, Any]
    currency: str
    status: str
    total: Decimal


@dataclass(frozen=True, slots=True)
class FeeCredit:
    """A `credit` line of an issued credit note: in-advance time given back (for invoicing's books)."""

    invoice_id: str
    subscription_id: str
    rate_card_key: str
    period: Period
    amount: Decimal  # positive


@dataclass(frozen=True, slots=True)
class UsageCredit:
    """A `correction` line of an issued credit note: units taken off an invoice's usage line."""

    invoice_id: str  # the invoice whose usage line it corrects (CreditNoteLine.corrects_invoice_id)
    subscription_id: str | None
    rate_card_key: str | None
    quantity: Decimal  # positive: the billed quantity went down by this much


__all__ = [
    "CANCELLATION",
    "CORRECTION",
    "CREDIT",
    "CREDITABLE",
    "ISSUED",
    "PLAN_CHANGE",
    "REASONS",
    "STATUSES",
    "USAGE_CORRECTION",
    "VOID",
    "CreditNote",
    "CreditNoteConflict",
    "CreditNoteError",
    "CreditNoteLine",
    "CreditNoteNotFound",
    "CreditNoteQuery",
    "CreditNoteRequest",
    "CreditedInvoice",
    "FeeCredit",
    "UsageCredit",
    "number_of",
]
