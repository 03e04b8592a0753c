"""Credit notes: what lowers an issued invoice (tallybook/creditnotes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tallybook.api.wire.base import DATE_TIME, Period, Wire
from tallybook.api.wire.billing import MONEY


class CreditNoteLine(Wire):
    type: Literal["credit", "correction"] = Field(
        description="credit: in-advance time not used after a cancel or plan change; correction: usage that went down"
    )
    name: str
    period: Period
    amount: str = Field(json_schema_extra=MONEY, description="what is credited (positive)")
    description: str | None = None
    subscriptionId: str | None = None
    rateCardKey: str | None = None
    meter: str | None = None
    quantity: str | None = Field(None, description="correction: the units taken off what was billed")
    unitPrice: str | None = None
    taxCode: str | None = None
    correctsInvoiceId: str | None = Field(
        None, description="correction: the invoice whose usage line the units were billed for"
    )
    charged: str | None = Field(None, json_schema_extra=MONEY, description="credit: the fee charged in advance")
    used: str | None = Field(None, json_schema_extra=MONEY, description="credit: the fee for the time used")
    previousQuantity: str | None = Field(None, description="correction: the quantity billed before")
    newQuantity: str | None = Field(None, description="correction: the quantity now")


class CreditNoteTotals(Wire):
    total: str = Field(json_schema_extra=MONEY)


class CreditNote(Wire):
    """A credit note against an issued invoice. `externalIds` and `sync`: where Stripe holds it."""

    id: str
    number: str = Field(description="CN-000001: one sequence for the whole install")
    invoiceId: str
    status: Literal["issued", "void"]
    reason: Literal["cancellation", "plan_change", "usage_correction"]
    currency: str
    customer: dict[str, Any]
    lines: list[CreditNoteLine]
    totals: CreditNoteTotals
    memo: str | None = None
    issuedAt: str = Field(json_schema_extra=DATE_TIME)
    voidedAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    externalIds: dict[str, Any] | None = None
    sync: dict[str, Any] | None = None


class CreditNotePage(Wire):
    totalCount: int
    limit: int
    offset: int
    items: list[CreditNote]
