"""Stripe: the usage-report ledger, webhook receipts and checkout sessions."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tallybook.api.wire.base import DATE_TIME, StringMap, Wire


class ReportAttempt(Wire):
    attemptedAt: str = Field(json_schema_extra=DATE_TIME)
    outcome: str
    httpStatus: int | None
    response: Any = None
    error: str | None


class StripeReport(Wire):
    id: str
    meter: str
    customerId: str
    stripeCustomerId: str | None
    windowStart: str = Field(json_schema_extra=DATE_TIME)
    windowEnd: str = Field(json_schema_extra=DATE_TIME)
    kind: str
    version: int
    identifier: str
    value: Any
    target: Any = None
    cancels: Any = None
    cancelled: Any = None
    carried: Any = Field(None, description="usage records: usage of earlier billing periods included in value")
    timestamp: str = Field(json_schema_extra=DATE_TIME)
    status: str
    attempts: int
    nextAttemptAt: str | None = Field(json_schema_extra=DATE_TIME)
    request: Any = None
    response: Any = None
    error: str | None
    createdAt: str = Field(json_schema_extra=DATE_TIME)
    updatedAt: str = Field(json_schema_extra=DATE_TIME)
    sentAt: str | None = Field(json_schema_extra=DATE_TIME)
    attemptLog: list[ReportAttempt]


class StripeReportPage(Wire):
    totalCount: int
    page: int
    pageSize: int
    items: list[StripeReport]


class WebhookReceipt(Wire):
    received: bool = True
    type: str
    handled: bool | None = None


class CheckoutSession(Wire):
    """OpenMeter's CreateStripeCheckoutSessionResult."""

    customerId: str
    stripeCustomerId: str
    sessionId: str
    setupIntentId: str | None
    clientSecret: str | None = None
    clientReferenceId: str | None = None
    customerEmail: str | None = None
    currency: str | None = None
    createdAt: str = Field(json_schema_extra=DATE_TIME)
    expiresAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    metadata: StringMap
    status: str | None = None
    url: str | None = None
