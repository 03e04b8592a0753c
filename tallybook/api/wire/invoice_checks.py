"""Invoice verification (POST /api/v1/billing/invoices/{id}/verify): the invoice recomputed at its
ingest cutoff, the lines that differ and why, and what changed since the cutoff."""

from __future__ import annotations

from pydantic import Field

from tallybook.api.wire.base import DATE_TIME, Period, Wire
from tallybook.api.wire.billing import InvoiceLine


class Cutoff(Wire):
    asOf: str | None = Field(json_schema_extra=DATE_TIME, description="voids and ingest times counted up to this")
    asOfSeq: int | None = Field(description="events stored with seq <= this; null for invoices counted before")


class LineDifference(Wire):
    stored: InvoiceLine | None = Field(description="the invoice's line; null: the recomputation has an extra line")
    recomputed: InvoiceLine | None = Field(description="the line computed again; null: it is gone")
    reason: str


class CorrectionRef(Wire):
    invoiceId: str
    status: str
    quantity: str


class ChangeSinceCutoff(Wire):
    name: str
    rateCardKey: str | None
    meter: str | None
    period: Period
    billedQuantity: str = Field(description="what the invoice billed, counted at its cutoff")
    currentQuantity: str = Field(description="the same usage counted now")
    lateEvents: int = Field(description="events stored after the cutoff that count now")
    voidedEvents: int = Field(description="events counted at the cutoff and voided since")
    corrections: list[CorrectionRef] = Field(description="later invoices' correction lines for this line")
    uncorrectedQuantity: str = Field(description="currentQuantity - billedQuantity - what issued corrections billed")


class InvoiceVerification(Wire):
    invoiceId: str
    number: str | None = None
    status: str
    result: str = Field(description='"reproduced exactly" or "differs"')
    reproduced: bool
    cutoff: Cutoff
    checkedAt: Cutoff = Field(description="the cutoff the current figures (sinceCutoff) were counted at")
    totals: dict[str, str] = Field(description="stored and recomputed totals")
    differences: list[LineDifference]
    sinceCutoff: list[ChangeSinceCutoff]
