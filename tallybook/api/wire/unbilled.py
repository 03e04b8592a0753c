"""The unbilled-usage report (GET /api/v1/billing/unbilled, and the `billing.unbilled_usage`
webhook's `report`): usage no invoice will ever carry, with the reason."""

from __future__ import annotations

from pydantic import Field

from tallybook.api.wire.base import DATE_TIME, Period, Wire


class UnbilledCustomer(Wire):
    id: str
    key: str | None
    name: str
    timezone: str = Field(description="the customer's months are in this zone")


class UnbilledRow(Wire):
    reason: str = Field(description="subject_without_customer, no_subscription or meter_not_priced")
    subject: str | None = Field(None, description="subject_without_customer: the subject")
    customer: UnbilledCustomer | None = Field(None, description="the other reasons: the customer")
    meter: str
    period: Period = Field(description="the span the quantity is the meter's aggregate over")
    quantity: str
    detail: str


class UnbilledReport(Wire):
    from_: str = Field(alias="from", json_schema_extra=DATE_TIME)
    to: str = Field(json_schema_extra=DATE_TIME)
    asOf: str | None = Field(json_schema_extra=DATE_TIME, description="null: counted as of generatedAt")
    generatedAt: str = Field(json_schema_extra=DATE_TIME)
    totalCount: int
    items: list[UnbilledRow]
