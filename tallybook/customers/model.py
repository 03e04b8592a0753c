"""Customers as the rest of Tallybook sees them: values, the rows a repository keeps, and errors.

A customer is who usage is billed to. Its `key` and the subjects listed in
usageAttribution.subjectKeys are its *subjects*: events with those subjects are its usage. The
errors subclass DomainError, so the API answers each as a problem with its own status and type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from tallybook.errors import DomainError

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


# -- what a repository stores (ports.py) -------------------------------------------------------------
OrderBy = Literal["id", "name", "created"]


@dataclass(frozen=True, slots=True)
class CustomerRow:
    id: str
    key: str | None
    name: str
    description: str | None
    primary_email: str | None
    currency: str | None
    timezone: str | None
    billing_address: dict[str, Any] | None
    metadata: dict[str, Any] | None
    created_us: int
    updated_us: int
    deleted_us: int | None
    subject_keys: tuple[str, ...]  # the explicit subjects, sorted

    def attributed_subjects(self) -> set[str]:
        """Every subject that gets a customer_subjects row: the listed ones and the key."""
        subjects = set(self.subject_keys)
        if self.key is not None:
            subjects.add(self.key)
        return subjects


@dataclass(frozen=True, slots=True)
class CustomerSearch:
    """Filters are case-insensitive substring matches; `subject` matches any attributed subject."""

    key: str | None = None
    name: str | None = None
    primary_email: str | None = None
    subject: str | None = None
    include_deleted: bool = False
    order_by: OrderBy = "id"
    descending: bool = False
    offset: int = 0
    limit: int = 100


class KeyTaken(Exception):
    """A live customer already has the key (a repository refusal; the service words it)."""

    def __init__(self, key: str, owner_id: str) -> None:
        super().__init__(f"key {key!r} belongs to live customer {owner_id}")
        self.key = key
        self.owner_id = owner_id


class SubjectTaken(Exception):
    """A subject already belongs to another customer (a repository refusal)."""

    def __init__(self, subject: str, owner_id: str, owner_key: str | None) -> None:
        super().__init__(f"subject {subject!r} is attributed to customer {owner_id}")
        self.subject = subject
        self.owner_id = owner_id
        self.owner_key = owner_key


class WriteContended(Exception):
    """A write kept losing uniqueness races to transactions that did not commit."""


# -- errors ---------------------------------------------------------------------------------------------
class CustomerError(DomainError):
    code = "customer-error"


class CustomerNotFound(CustomerError):
    status = 404
    code = "customer-not-found"

    def __init__(self, id_or_key: str, detail: str | None = None) -> None:
        super().__init__(detail or f"no customer has the id or key {id_or_key!r}", customerIdOrKey=id_or_key)
        self.id_or_key = id_or_key


class InvalidCustomer(CustomerError):
    """Bad customer input. `field` is the JSON path to fix; `errors` lists every problem found."""

    code = "invalid-customer"

    def __init__(self, field: str, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        self.errors = errors or [(field, message)]
        super().__init__(
            "; ".join(f"{f}: {m}" for f, m in self.errors),
            errors=[{"field": f, "message": m} for f, m in self.errors],
        )
        self.field = field
        self.message = message


class SubjectConflict(CustomerError):
    """A subject (listed, or the customer's key) is already attributed to another live customer."""

    status = 409
    code = "subject-conflict"

    def __init__(self, subject: str, owner_customer_id: str, detail: str | None = None) -> None:
        super().__init__(
            detail or f"subject {subject!r} is already attributed to customer {owner_customer_id}",
            subject=subject,
            customerId=owner_customer_id,
        )
        self.subject = subject
        self.owner_customer_id = owner_customer_id


class CustomerKeyConflict(CustomerError):
    """Another live customer already has this key."""

    status = 409
    code = "customer-key-conflict"

    def __init__(self, key: str, owner_customer_id: str) -> None:
        super().__init__(
            f"customer {owner_customer_id} already has the key {key!r}; keys are unique among live customers",
            key=key,
            customerId=owner_customer_id,
        )
        self.key = key
        self.owner_customer_id = owner_customer_id


class ConcurrentChange(CustomerError):
    """The write kept colliding with concurrent writes; retrying the request is safe."""

    status = 409
    code = "concurrent-change"
