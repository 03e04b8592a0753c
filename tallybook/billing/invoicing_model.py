"""Invoicing's model: invoices, their lines and totals, the statuses and the errors.

Plain frozen dataclasses and pure functions (no storage): the services in invoicing*.py build and
change them, `invoicing_sql.py` stores them as rows (`record_of`, `values_of`, `invoice_from_record`
are the mapping), and `export.py` writes them as JSON and HTML. See tallybook/billing/invoicing.py
for what each line kind means and the lifecycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from tallybook.billing.currency import round_money
from tallybook.billing.invoicing_ports import InvoiceRecord
from tallybook.billing.models import FlatPrice, PaymentTerm, RateCard
from tallybook.billing.periods import Period, zone
from tallybook.billing.rating import prorate
from tallybook.billing.settings import BillingSettings
from tallybook.clock import from_micros, to_micros
from tallybook.errors import DomainError
from tallybook.exact import exact, whole_seconds
from tallybook.webhooks.settings import INVOICE_CREATED, INVOICE_ISSUED, INVOICE_UPDATED, INVOICE_VOIDED

DRAFT, ISSUED, PAID, VOID, UNCOLLECTIBLE = "draft", "issued", "paid", "void", "uncollectible"
STATUSES = (DRAFT, ISSUED, PAID, VOID, UNCOLLECTIBLE)
BILLED = (ISSUED, PAID, UNCOLLECTIBLE)  # statuses whose lines count as billed
INVOICE_EVENT_TYPES = (INVOICE_CREATED, INVOICE_ISSUED, INVOICE_UPDATED, INVOICE_VOIDED)
# Which transitions are allowed: target status -> statuses it may come from.
TRANSITIONS = {
    ISSUED: (DRAFT,),
    PAID: (ISSUED, UNCOLLECTIBLE),
    UNCOLLECTIBLE: (ISSUED,),
    VOID: (DRAFT, ISSUED, UNCOLLECTIBLE),
}
ZERO = Decimal(0)
PERIOD, OPENING = "period", "opening"
CORRECTION = "correction"  # late usage of ended subscriptions (final_corrections.py)


def billable_quantity(measured: Decimal) -> tuple[Decimal, str | None]:
    """The quantity a usage line rates, and a warning when it is not the measured total.

    A negative total (a SUM of negative events) bills as 0: rating refuses negative quantities and
    a credit is not a price. Never silent: the warning goes on the line.
    """
    if measured < 0:
        return ZERO, f"usage total was {measured}; billed as 0"
    return measured, None


class InvoiceError(DomainError):
    status = 400
    code = "invalid-invoice"


class InvoiceNotFound(InvoiceError):
    status = 404
    code = "invoice-not-found"


class InvoiceConflict(InvoiceError):
    status = 409
    code = "invoice-conflict"


@dataclass(frozen=True, slots=True)
class Line:
    kind: str  # flat_fee | usage | commitment | correction
    name: str
    period: Period
    amount: Decimal  # rounded to the currency's minor unit
    subscription_id: str | None = None
    rate_card_key: str | None = None
    meter: str | None = None
    quantity: Decimal | None = None
    unit_price: Decimal | None = None
    tax_code: str | None = None
    description: str | None = None
    corrects_invoice_id: str | None = None
    detail: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "subscription_id": self.subscription_id,
            "rate_card_key": self.rate_card_key,
            "meter": self.meter,
            "period_start_us": to_micros(self.period.start),
            "period_end_us": to_micros(self.period.end),
            "quantity": None if self.quantity is None else str(self.quantity),
            "unit_price": None if self.unit_price is None else str(self.unit_price),
            "amount": str(self.amount),
            "tax_code": self.tax_code,
            "description": self.description,
            "corrects_invoice_id": self.corrects_invoice_id,
            "detail": self.detail,
        }


def line_from_row(row: dict[str, Any]) -> Line:
    return Line(
        kind=row["kind"],
        name=row["name"],
        period=Period(from_micros(row["period_start_us"]), from_micros(row["period_end_us"])),
        amount=Decimal(row["amount"]),
        subscription_id=row["subscription_id"],
        rate_card_key=row["rate_card_key"],
        meter=row["meter"],
        quantity=None if row["quantity"] is None else Decimal(row["quantity"]),
        unit_price=None if row["unit_price"] is None else Decimal(row["unit_price"]),
        tax_code=row["tax_code"],
        description=row["description"],
        corrects_invoice_id=row["corrects_invoice_id"],
        detail=row["detail"],
    )


@dataclass(frozen=True, slots=True)
class Totals:
    subtotal: Decimal
    commitments: Decimal
    total: Decimal


def totals_of(lines: Iterable[Line], currency: str, settings: BillingSettings) -> Totals:
    """Sums of the rounded lines, exact (however many digits), written with the currency's decimals."""
    zero = round_money(ZERO, currency, settings.rounding)
    lines = list(lines)
    with exact():
        subtotal = sum((ln.amount for ln in lines if ln.kind != "commitment"), zero)
        commitments = sum((ln.amount for ln in lines if ln.kind == "commitment"), zero)
        return Totals(subtotal, commitments, subtotal + commitments)


@dataclass(frozen=True, slots=True)
class Invoice:
    id: str
    customer_id: str
    customer: dict[str, Any]
    currency: str
    status: str
    period: Period
    lines: list[Line]
    totals: Totals
    as_of: datetime | None  # None: a preview counting everything ingested so far
    revision: int
    created_at: datetime
    updated_at: datetime
    issued_at: datetime | None = None
    paid_at: datetime | None = None
    voided_at: datetime | None = None
    uncollectible_at: datetime | None = None
    kind: str = "period"  # period | opening (see InvoiceKey)
    number: str | None = None  # given when issued (tallybook/billing/documents.py)
    seller: dict[str, Any] | None = None  # the profile's supplier, zone, locale and due date when issued
    as_of_seq: int | None = None  # with as_of, the ingest cutoff (tallybook/billing/cutoff.py)


def _opt(us: int | None) -> datetime | None:
    return None if us is None else from_micros(us)


def invoice_from_record(record: InvoiceRecord) -> Invoice:
    r = record.row
    return Invoice(
        id=r["id"],
        customer_id=r["customer_id"],
        customer=dict(r["customer"]),
        currency=r["currency"],
        status=r["status"],
        period=Period(from_micros(r["period_start_us"]), from_micros(r["period_end_us"])),
        lines=[line_from_row(line) for line in record.lines],
        totals=Totals(Decimal(r["subtotal"]), Decimal(r["commitments"]), Decimal(r["total"])),
        as_of=from_micros(r["as_of_us"]),
        revision=int(r["revision"]),
        created_at=from_micros(r["created_us"]),
        updated_at=from_micros(r["updated_us"]),
        issued_at=_opt(r["issued_us"]),
        paid_at=_opt(r["paid_us"]),
        voided_at=_opt(r["voided_us"]),
        uncollectible_at=_opt(r["uncollectible_us"]),
        kind=r.get("kind") or PERIOD,
        number=r.get("number"),
        seller=r.get("seller"),
        as_of_seq=r.get("as_of_seq"),
    )


# customer id, currency, period, kind. A `period` invoice is drafted when its billing period ends:
# that period's usage, in-arrears fees and credits, plus the in-advance fees of the next period. An
# `opening` invoice is drafted when a subscription starts: its period runs from the start to the end
# of the first billing period, and it holds that span's in-advance fees.
InvoiceKey = tuple[str, str, Period, str]
UsageKey = tuple[str, datetime, datetime]  # meter slug, from, to


FEE, GIVEN_BACK = "fee", "credit"  # Charge kinds


@dataclass(frozen=True, slots=True)
class Charge:
    """An in-advance fee already charged (a fee line on an invoice that is not void), or what was
    given back of one (a `credit` line on such an invoice, or an issued credit note's line)."""

    invoice_id: str  # the document holding it: an invoice, or a credit note
    period: Period  # the time the fee pays for (a credit: the time given back)
    amount: Decimal  # a fee > 0, a credit < 0
    kind: str = FEE
    invoice_kind: str = "period"
    invoice_period_end: datetime | None = None
    invoice_status: str = "issued"


Charged = dict[tuple[str, str], list[Charge]]  # (subscription, rate card) -> its charges and credits


def flat_share(price: FlatPrice, covered: Period, period: Period) -> tuple[Decimal, dict[str, Any]]:
    """A flat fee's unrounded share for `covered` of `period`, by whole seconds (see
    tallybook/exact.py), and the line's detail (payment term, proration when partial)."""
    covered_s = whole_seconds(covered.start, covered.end)
    period_s = whole_seconds(period.start, period.end)
    raw = prorate(price.amount, Decimal(covered_s), Decimal(period_s))
    detail: dict[str, Any] = {"paymentTerm": price.payment_term.value}
    if covered_s != period_s:
        detail["proration"] = {"coveredSeconds": str(covered_s), "periodSeconds": str(period_s)}
    return raw, detail


def in_advance_credit_here(line: Line) -> bool:
    """A credit for a fee on the same invoice (see InvoicingService._unused_here)."""
    return bool((line.detail or {}).get("sameInvoice"))


def billed_in_advance(rc: RateCard) -> bool:
    return isinstance(rc.price, FlatPrice) and rc.price.payment_term is PaymentTerm.IN_ADVANCE


def key_of(invoice: Invoice) -> InvoiceKey:
    return (invoice.customer_id, invoice.currency, invoice.period, invoice.kind)


def in_advance_line(line: Line) -> bool:
    """A line billed in advance (an in-advance fee or its rate-card commitment): fixed once drafted."""
    return line.kind in ("flat_fee", "commitment") and (line.detail or {}).get("paymentTerm") == "in_advance"


def same_lines(a: Sequence[Line], b: Sequence[Line]) -> bool:
    return [ln.row() for ln in a] == [ln.row() for ln in b]


def record_of(invoice: Invoice) -> InvoiceRecord:
    row = {"id": invoice.id, **values_of(invoice)}
    row.update(
        customer_id=invoice.customer_id,
        currency=invoice.currency,
        kind=invoice.kind,
        period_start_us=to_micros(invoice.period.start),
        period_end_us=to_micros(invoice.period.end),
        revision=invoice.revision,
        created_us=to_micros(invoice.created_at),
    )
    return InvoiceRecord(row, [ln.row() for ln in invoice.lines])


def values_of(invoice: Invoice) -> dict[str, Any]:
    """The columns an update writes (revision is bumped by the store)."""
    assert invoice.as_of is not None
    return {
        "status": invoice.status,
        "customer": invoice.customer,
        "subtotal": str(invoice.totals.subtotal),
        "commitments": str(invoice.totals.commitments),
        "total": str(invoice.totals.total),
        "as_of_us": to_micros(invoice.as_of),
        "updated_us": to_micros(invoice.updated_at),
        "issued_us": None if invoice.issued_at is None else to_micros(invoice.issued_at),
        "paid_us": None if invoice.paid_at is None else to_micros(invoice.paid_at),
        "voided_us": None if invoice.voided_at is None else to_micros(invoice.voided_at),
        "uncollectible_us": None if invoice.uncollectible_at is None else to_micros(invoice.uncollectible_at),
        "number": invoice.number,
        "seller": invoice.seller,
        "as_of_seq": invoice.as_of_seq,
    }


def customer_snapshot(row: dict[str, Any] | None, customer_id: str, customer: Any = None) -> dict[str, Any]:
    if customer is not None:
        address = None
        if customer.billing_address is not None:
            address = {k: v for k, v in vars_of(customer.billing_address).items() if v is not None}
        return {
            "id": customer.id,
            "key": customer.key,
            "name": customer.name,
            "primaryEmail": customer.primary_email,
            "billingAddress": address,
            "timezone": customer.timezone or "UTC",
        }
    if row is None:
        return {"id": customer_id, "name": customer_id, "timezone": "UTC"}
    return {
        "id": row["id"],
        "key": row["key"],
        "name": row["name"],
        "primaryEmail": row["primary_email"],
        "billingAddress": row["billing_address"],
        "timezone": row["timezone"] or "UTC",
    }


def vars_of(value: Any) -> dict[str, Any]:
    wire = {"postal_code": "postalCode", "phone_number": "phoneNumber"}
    return {wire.get(k, k): v for k, v in asdict(value).items()}


def period_label(period: Period, tz_name: str) -> str:
    tz = zone(tz_name)
    start = period.start.astimezone(tz)
    end = period.end.astimezone(tz)
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} {tz_name}"


__all__ = [
    "BILLED",
    "CORRECTION",
    "DRAFT",
    "INVOICE_EVENT_TYPES",
    "ISSUED",
    "OPENING",
    "PAID",
    "PERIOD",
    "STATUSES",
    "UNCOLLECTIBLE",
    "VOID",
    "Charge",
    "Charged",
    "Invoice",
    "InvoiceConflict",
    "InvoiceError",
    "InvoiceKey",
    "InvoiceNotFound",
    "Line",
    "Totals",
    "UsageKey",
    "billable_quantity",
    "customer_snapshot",
    "flat_share",
    "invoice_from_record",
    "key_of",
    "line_from_row",
    "period_label",
    "record_of",
    "same_lines",
    "totals_of",
    "values_of",
]
