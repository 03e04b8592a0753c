"""Customers (OpenMeter's Customer) and their Stripe links (CustomerAppData)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tallybook.api.wire.base import DATE_TIME, StringMap, Wire


class Address(Wire):
    country: str | None = None
    postalCode: str | None = None
    state: str | None = None
    city: str | None = None
    line1: str | None = None
    line2: str | None = None
    phoneNumber: str | None = None


class UsageAttribution(Wire):
    subjectKeys: list[str]


class Customer(Wire):
    id: str
    key: str | None = None
    name: str
    description: str | None = None
    primaryEmail: str | None = None
    currency: str | None = None
    timezone: str | None = None
    billingAddress: Address | None = None
    metadata: StringMap | None = None
    usageAttribution: UsageAttribution
    createdAt: str = Field(json_schema_extra=DATE_TIME)
    updatedAt: str = Field(json_schema_extra=DATE_TIME)
    deletedAt: str | None = Field(None, json_schema_extra=DATE_TIME)


class CustomerPage(Wire):
    totalCount: int
    page: int
    pageSize: int
    items: list[Customer]


class Subject(Wire):
    """OpenMeter's Subject reduced to what Tallybook knows: the key, and the customer it belongs to."""

    key: str
    customerId: str | None = None


class StripeCustomerLink(Wire):
    type: Literal["stripe"]
    stripeCustomerId: str
    stripeDefaultPaymentMethodId: str | None = None


class CustomerAppDataPage(Wire):
    """OpenMeter's CustomerAppDataPaginatedResponse (Stripe is the one app type)."""

    items: list[StripeCustomerLink]
    page: int
    pageSize: int
    totalCount: int
