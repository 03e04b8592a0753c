"""Billing: plans (OpenMeter's Plan), subscriptions, invoices and billing profiles."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic.json_schema import JsonDict

from tallybook.api.wire.base import DATE_TIME, Period, StringMap, Wire

MONEY: JsonDict = {"description": "a decimal number as a string, e.g. '12.50'"}


class RateCard(Wire):
    type: Literal["flat_fee", "usage_based"]
    key: str
    name: str
    description: str | None = None
    meterSlug: str | None = None
    billingCadence: str
    price: dict[str, Any]
    taxConfig: dict[str, Any] | None = None


class PlanPhase(Wire):
    key: str
    name: str
    duration: str | None
    rateCards: list[RateCard]


class Plan(Wire):
    id: str
    key: str
    version: int
    name: str
    description: str | None = None
    metadata: StringMap | None = None
    currency: str
    billingCadence: str
    status: Literal["draft", "active", "archived"]
    effectiveFrom: str | None = Field(None, json_schema_extra=DATE_TIME)
    effectiveTo: str | None = Field(None, json_schema_extra=DATE_TIME)
    commitments: dict[str, Any] | None = None
    phases: list[PlanPhase]
    validationErrors: list[Any]
    createdAt: str = Field(json_schema_extra=DATE_TIME)
    updatedAt: str = Field(json_schema_extra=DATE_TIME)
    deletedAt: str | None = Field(None, json_schema_extra=DATE_TIME)


class PlanPage(Wire):
    totalCount: int
    page: int
    pageSize: int
    items: list[Plan]


class PlanReference(Wire):
    key: str
    version: int


class Subscription(Wire):
    id: str
    name: str | None
    customerId: str
    plan: PlanReference
    currency: str
    billingCadence: str
    alignment: Literal["anniversary", "calendar"]
    billingAnchor: str = Field(json_schema_extra=DATE_TIME)
    timezone: str | None
    status: Literal["active", "inactive", "scheduled", "canceled"]
    activeFrom: str = Field(json_schema_extra=DATE_TIME)
    activeTo: str | None = Field(None, json_schema_extra=DATE_TIME)
    canceledAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    billedThrough: str | None = Field(None, json_schema_extra=DATE_TIME)
    currentPeriod: Period | None = None
    previousSubscriptionId: str | None = None
    nextSubscriptionId: str | None = None
    metadata: StringMap | None = None
    createdAt: str = Field(json_schema_extra=DATE_TIME)
    updatedAt: str = Field(json_schema_extra=DATE_TIME)


class SubscriptionList(Wire):
    items: list[Subscription]
    limit: int
    offset: int


class SubscriptionChange(Wire):
    current: Subscription = Field(description="the subscription that ends at the change")
    next: Subscription = Field(description="the subscription that starts there")


class InvoiceLine(Wire):
    type: str
    name: str
    period: Period
    amount: str = Field(json_schema_extra=MONEY)
    description: str | None = None
    subscriptionId: str | None = None
    rateCardKey: str | None = None
    meter: str | None = None
    quantity: str | None = None
    unitPrice: str | None = None
    taxCode: str | None = None
    correctsInvoiceId: str | None = None


class InvoiceTotals(Wire):
    amount: str = Field(json_schema_extra=MONEY)
    commitments: str = Field(json_schema_extra=MONEY)
    total: str = Field(json_schema_extra=MONEY)


class Invoice(Wire):
    """An invoice; a preview (simulate) has no `id`. `externalIds` and `sync` say where Stripe holds it."""

    id: str | None = None
    number: str | None = None
    kind: str
    status: str
    currency: str
    customer: dict[str, Any]
    period: Period
    lines: list[InvoiceLine]
    totals: InvoiceTotals
    revision: int
    asOf: str | None = Field(None, json_schema_extra=DATE_TIME)
    issuedAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    paidAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    voidedAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    uncollectibleAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    externalIds: dict[str, Any] | None = None
    sync: dict[str, Any] | None = None
    createdAt: str = Field(json_schema_extra=DATE_TIME)
    updatedAt: str = Field(json_schema_extra=DATE_TIME)
    quantitySnapshotedAt: str | None = Field(None, json_schema_extra=DATE_TIME, description="the same as asOf")
    asOfSeq: int | None = Field(None, description="the ingest watermark: events stored with seq <= this counted")
    billingProfileId: str | None = Field(None, description="the profile the invoice was issued with")
    supplier: dict[str, Any] | None = Field(None, description="the seller, as the profile said when issued")
    dueAt: str | None = Field(None, json_schema_extra=DATE_TIME)


class InvoicePage(Wire):
    totalCount: int
    limit: int
    offset: int
    items: list[Invoice]


class InvoiceList(Wire):
    items: list[Invoice]


class UsageLine(Wire):
    meter: str | None
    rateCardKey: str | None
    name: str
    subscriptionId: str | None
    from_: str = Field(alias="from", json_schema_extra=DATE_TIME)
    to: str = Field(json_schema_extra=DATE_TIME)
    quantity: str
    amount: str = Field(json_schema_extra=MONEY)
    currency: str


class CustomerUsage(Wire):
    customerId: str
    periods: list[Period]
    usage: list[UsageLine]


class BillingProfile(Wire):
    id: str
    name: str
    description: str | None = None
    metadata: StringMap | None
    default: bool
    source: str
    createdAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    updatedAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    deletedAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    supplier: dict[str, Any]
    workflow: dict[str, Any]
    apps: dict[str, Any]
    invoiceDocument: dict[str, Any] | None = Field(
        None, description="Tallybook extension: numberPrefix, timezone and locale of the profile's invoices"
    )


class BillingProfilePage(Wire):
    totalCount: int
    page: int
    pageSize: int
    items: list[BillingProfile]


class CustomerOverride(Wire):
    customerId: str
    billingProfileId: str
    createdAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    updatedAt: str | None = Field(None, json_schema_extra=DATE_TIME)


class CustomerBillingProfile(Wire):
    customerId: str
    billingProfileId: str
    baseBillingProfileId: str
    customerOverride: CustomerOverride | None = None
    profile: BillingProfile
    customerProfile: dict[str, Any]
