"""What the customers service needs from storage: one repository of customer rows and their subjects.

Two adapters: `sql.SqlCustomerRepository` (SQLite and PostgreSQL) and `memory.MemoryCustomerRepository`
(unit tests). Both keep the attribution invariants themselves, because only storage can check them
atomically: a live customer's key is unique, and a subject belongs to at most one customer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tallybook.customers.model import CustomerRow, CustomerSearch


class CustomerRepository(Protocol):
    # -- writes: each is one transaction --------------------------------------------------------------
    def insert(self, row: CustomerRow) -> None:
        """Store a customer and its subjects. Raises KeyTaken, SubjectTaken or WriteContended."""
        ...

    def replace(self, row: CustomerRow) -> bool:
        """Replace a live customer's fields and whole subject set; False when it is not live."""
        ...

    def soft_delete(self, customer_id: str, deleted_us: int) -> bool:
        """Mark a live customer deleted and free its key and subjects; False when it was not live."""
        ...

    # -- reads -----------------------------------------------------------------------------------------
    def by_id(self, customer_id: str) -> CustomerRow | None:
        """The customer with this id, deleted or not."""
        ...

    def live_by_key(self, key: str) -> CustomerRow | None: ...

    def search(self, query: CustomerSearch) -> tuple[list[CustomerRow], int]:
        """One page of matching customers, and how many match in all."""
        ...

    def live_ids(self, customer_ids: Sequence[str]) -> set[str]: ...

    def subjects_of(self, customer_ids: Sequence[str]) -> dict[str, list[str]]:
        """Customer id -> its attributed subjects (listed and key), sorted; ids without any left out."""
        ...

    def owners_of(self, subjects: Sequence[str]) -> dict[str, str]:
        """Subject -> owning customer id, for the attributed subjects."""
        ...

    def seen_subjects(
        self, event_types: Sequence[str] | None = None, from_us: int | None = None, to_us: int | None = None
    ) -> list[tuple[str, str | None]]:
        """Distinct subjects of stored events (type and time bounds inclusive), sorted, with their owner."""
        ...
