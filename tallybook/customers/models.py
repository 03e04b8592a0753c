"""Customer values as the rest of Tallybook sees them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

CustomerOrder = Literal["id", "name", "createdAt"]


@dataclass(frozen=True, slots=True)
class Address:
    country: str | None = None  # ISO 3166-1 alpha-2
    postal_code: str | None = None
    state: str | None = None
    city: str | None = None
    line1: str | None = None
    line2: str | None = None
    phone_number: str | None = None


@dataclass(frozen=True, slots=True)
class CustomerInput:
    """What a client sets on a customer (create, or full replace)."""

    name: str
    key: str | None = None
    description: str | None = None
    primary_email: str | None = None
    currency: str | None = None
    timezone: str | None = None
    billing_address: Address | None = None
    metadata: dict[str, str] | None = None
    subject_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    name: str
    key: str | None
    description: str | None
    primary_email: str | None
    currency: str | None
    timezone: str | None
    billing_address: Address | None
    metadata: dict[str, str] | None
    subject_keys: tuple[str, ...]  # as listed in usageAttribution.subjectKeys, sorted
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def subjects(self) -> tuple[str, ...]:
        """Every subject whose usage is this customer's: the listed ones and the key (none once deleted)."""
        if self.deleted:
            return ()
        subjects = set(self.subject_keys)
        if self.key is not None:
            subjects.add(self.key)
        return tuple(sorted(subjects))


@dataclass(frozen=True, slots=True)
class CustomerListQuery:
    """Filters are case-insensitive substring matches, as OpenMeter's."""

    page: int = 1  # 1-based
    page_size: int = 100
    order_by: CustomerOrder = "id"
    descending: bool = False
    include_deleted: bool = False
    key: str | None = None
    name: str | None = None
    primary_email: str | None = None
    subject: str | None = None  # matches any attributed subject, the key included


@dataclass(frozen=True, slots=True)
class CustomerPage:
    items: list[Customer]
    total_count: int
    page: int
    page_size: int


@dataclass(frozen=True, slots=True)
class SeenSubject:
    """A subject that appears in stored events, and the customer it is attributed to, if any."""

    key: str
    customer_id: str | None = field(default=None)
