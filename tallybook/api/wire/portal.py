"""The consumer portal: tokens (OpenMeter's PortalToken) and what a token holder reads."""

from __future__ import annotations

from pydantic import Field

from tallybook.api.wire.base import DATE_TIME, Period, Wire
from tallybook.api.wire.billing import Invoice


class PortalToken(Wire):
    id: str
    subject: str
    customerId: str | None = None
    expiresAt: str = Field(json_schema_extra=DATE_TIME)
    expired: bool
    createdAt: str = Field(json_schema_extra=DATE_TIME)
    allowedMeterSlugs: list[str] | None = None
    invalidatedAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    token: str | None = Field(None, description="the secret, shown once when the token is created")


class PortalCustomer(Wire):
    id: str
    name: str


class PortalMeter(Wire):
    slug: str
    name: str | None
    description: str | None
    aggregation: str
    groupBy: list[str]


class PortalHolderInfo(Wire):
    subject: str
    customer: PortalCustomer | None
    expiresAt: str = Field(json_schema_extra=DATE_TIME)
    timeZone: str
    currentPeriod: Period
    periodSource: str = Field(description="`subscription` (the billing period) or `calendar_month`")
    meters: list[PortalMeter]


class EstimatedInvoice(Invoice):
    # True when the token may read only some meters and lines were withheld (totals are of what is shown).
    partial: bool | None = None


class InvoiceEstimate(Wire):
    items: list[EstimatedInvoice]


__all__ = ["InvoiceEstimate", "PortalHolderInfo", "PortalToken"]
