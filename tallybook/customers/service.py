"""Customers: who usage is billed to, and which event subjects are theirs.

Attribution rules (enforced in one transaction per write, on both engines):
- a subject belongs to at most one live customer;
- a customer's key is attributed to it as a subject, as are the subjects it lists;
- a replace swaps the whole subject set atomically; a delete is soft and frees the subjects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TypeVar

from tallybook.clock import Clock, format_rfc3339, from_micros, to_micros
from tallybook.customers.model import (
    Address,
    ConcurrentChange,
    Customer,
    CustomerInput,
    CustomerKeyConflict,
    CustomerListQuery,
    CustomerNotFound,
    CustomerPage,
    CustomerRow,
    CustomerSearch,
    KeyTaken,
    OrderBy,
    SeenSubject,
    SubjectConflict,
    SubjectTaken,
    WriteContended,
)
from tallybook.customers.ports import CustomerRepository
from tallybook.customers.validation import ADDRESS_FIELDS, address_json, validate_customer
from tallybook.ids import looks_like_ulid, new_ulid

_ORDER: dict[str, OrderBy] = {"id": "id", "name": "name", "createdAt": "created"}
T = TypeVar("T")


class CustomerService:
    def __init__(self, repository: CustomerRepository, clock: Clock) -> None:
        self.repository = repository
        self.clock = clock

    # -- managing customers ----------------------------------------------------------------------
    def create(self, data: CustomerInput) -> Customer:
        """Create a customer. Raises InvalidCustomer, CustomerKeyConflict, SubjectConflict."""
        validate_customer(data)
        now = self.clock.now()
        row = _row(new_ulid(now), data, created_us=to_micros(now), updated_us=to_micros(now))
        self._attributing(data, lambda: self.repository.insert(row))
        return _customer(row)

    def get(self, id_or_key: str) -> Customer:
        """A customer by id (deleted ones too, showing deletedAt) or by the key of a live customer."""
        row = self._find(id_or_key)
        if row is None:
            raise CustomerNotFound(id_or_key)
        return _customer(row)

    def resolve(self, id_or_key: str) -> Customer:
        """A live customer by id or key; raises CustomerNotFound, also for deleted customers."""
        row = self._find(id_or_key)
        if row is None:
            raise CustomerNotFound(id_or_key)
        if row.deleted_us is not None:
            deleted = format_rfc3339(from_micros(row.deleted_us))
            raise CustomerNotFound(id_or_key, f"customer {row.id} was deleted at {deleted}")
        return _customer(row)

    def list_customers(self, query: CustomerListQuery) -> CustomerPage:
        search = CustomerSearch(
            key=query.key,
            name=query.name,
            primary_email=query.primary_email,
            subject=query.subject,
            include_deleted=query.include_deleted,
            order_by=_ORDER[query.order_by],
            descending=query.descending,
            offset=(query.page - 1) * query.page_size,
            limit=query.page_size,
        )
        rows, total = self.repository.search(search)
        return CustomerPage([_customer(r) for r in rows], total, query.page, query.page_size)

    def replace(self, id_or_key: str, data: CustomerInput) -> Customer:
        """Replace every writable field of a live customer; fields left out become empty.

        The subject set becomes exactly usageAttribution.subjectKeys plus the (new) key, in one
        transaction: nobody sees the customer with half of its old and half of its new subjects.
        """
        current = self.resolve(id_or_key)
        validate_customer(data)
        row = _row(
            current.id,
            data,
            created_us=to_micros(current.created_at),
            updated_us=to_micros(self.clock.now()),
        )
        if not self._attributing(data, lambda: self.repository.replace(row)):
            raise CustomerNotFound(id_or_key, f"customer {current.id} was deleted while being updated")
        return _customer(row)

    def delete(self, id_or_key: str) -> Customer:
        """Soft-delete a live customer: it stays readable by id, its key and subjects are freed."""
        current = self.resolve(id_or_key)
        deleted_us = to_micros(self.clock.now())
        if not self.repository.soft_delete(current.id, deleted_us):
            raise CustomerNotFound(id_or_key, f"customer {current.id} is already deleted")
        deleted_at = from_micros(deleted_us)
        return replace(current, updated_at=deleted_at, deleted_at=deleted_at)

    # -- attribution, for meters and billing ---------------------------------------------------------
    def subjects_of(self, customer_ids: Sequence[str]) -> dict[str, list[str]]:
        """Customer id -> every subject attributed to it (listed ones and its key), sorted.

        Every id must be a live customer's, or CustomerNotFound names the first that is not.
        """
        live = self.repository.live_ids(customer_ids)
        for customer_id in customer_ids:
            if customer_id not in live:
                raise CustomerNotFound(customer_id)
        found = self.repository.subjects_of(customer_ids)
        return {customer_id: found.get(customer_id, []) for customer_id in customer_ids}

    def customer_of_subjects(self, subjects: Sequence[str]) -> dict[str, str]:
        """Subject -> id of the live customer it is attributed to; unattributed subjects are left out."""
        return self.repository.owners_of(subjects)

    def seen_subjects(
        self, event_type: str | None = None, from_: datetime | None = None, to: datetime | None = None
    ) -> list[SeenSubject]:
        """Distinct subjects of stored events, sorted, each with its customer's id if attributed.

        `event_type` narrows to one event type (a meter's); `from_` and `to` bound the event time,
        both inclusive. Cost: a DISTINCT scan over events (see CustomerRepository.seen_subjects).
        """
        found = self.repository.seen_subjects(
            event_types=None if event_type is None else [event_type],
            from_us=None if from_ is None else to_micros(from_),
            to_us=None if to is None else to_micros(to),
        )
        return [SeenSubject(subject, owner) for subject, owner in found]

    # -- internals ---------------------------------------------------------------------------------
    def _find(self, id_or_key: str) -> CustomerRow | None:
        if looks_like_ulid(id_or_key):
            row = self.repository.by_id(id_or_key.upper())
            if row is not None:
                return row
        return self.repository.live_by_key(id_or_key)

    def _attributing(self, data: CustomerInput, write: Callable[[], T]) -> T:
        """Run a write, turning the store's uniqueness refusals into domain conflicts."""
        try:
            return write()
        except KeyTaken as exc:
            raise CustomerKeyConflict(exc.key, exc.owner_id) from None
        except SubjectTaken as exc:
            raise SubjectConflict(exc.subject, exc.owner_id, _conflict_detail(data, exc)) from None
        except WriteContended:
            raise ConcurrentChange(
                "the customer could not be saved because of concurrent changes to the same keys or "
                "subjects; retry the request"
            ) from None


def _conflict_detail(data: CustomerInput, exc: SubjectTaken) -> str:
    owners_key = exc.owner_key == exc.subject
    owner = exc.owner_id if exc.owner_key is None or owners_key else f"{exc.owner_id} (key {exc.owner_key!r})"
    listed_here = exc.subject in data.subject_keys
    if owners_key:
        claim = f"{exc.subject!r} is the key of customer {owner}, so it is that customer's subject"
    elif listed_here:
        claim = f"subject {exc.subject!r} is already attributed to customer {owner}"
    else:
        claim = f"the key {exc.subject!r} is already a subject of customer {owner}"
    if not listed_here:
        fix = "choose another key, or first remove the subject from that customer's usageAttribution.subjectKeys"
    elif owners_key:
        fix = "remove it from usageAttribution.subjectKeys"
    else:
        fix = "a subject belongs to at most one customer: remove it from usageAttribution.subjectKeys here or there"
    return f"{claim}; {fix}"


def _row(customer_id: str, data: CustomerInput, created_us: int, updated_us: int) -> CustomerRow:
    return CustomerRow(
        id=customer_id,
        key=data.key,
        name=data.name,
        description=data.description,
        primary_email=data.primary_email,
        currency=data.currency,
        timezone=data.timezone,
        billing_address=None if data.billing_address is None else address_json(data.billing_address),
        metadata=None if data.metadata is None else dict(data.metadata),
        created_us=created_us,
        updated_us=updated_us,
        deleted_us=None,
        subject_keys=tuple(sorted(set(data.subject_keys))),
    )


def _customer(row: CustomerRow) -> Customer:
    address = None
    if row.billing_address is not None:
        address = Address(**{attr: row.billing_address.get(wire) for wire, attr in ADDRESS_FIELDS.items()})
    return Customer(
        id=row.id,
        name=row.name,
        key=row.key,
        description=row.description,
        primary_email=row.primary_email,
        currency=row.currency,
        timezone=row.timezone,
        billing_address=address,
        metadata=row.metadata,
        subject_keys=row.subject_keys,
        created_at=from_micros(row.created_us),
        updated_at=from_micros(row.updated_us),
        deleted_at=None if row.deleted_us is None else from_micros(row.deleted_us),
    )
