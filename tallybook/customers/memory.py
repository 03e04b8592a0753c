"""The customers port in memory, for unit tests of the service and of code built on it.

It keeps the same invariants as the SQL adapter (a live key is unique; a subject belongs to at most
one customer; a replace swaps the subject set whole) and answers the same refusals, so the contract
tests in tests/test_customer_repository.py run one set of cases against both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from tallybook.customers.model import CustomerRow, CustomerSearch, KeyTaken, SubjectTaken


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """What seen_subjects reads of an event."""

    subject: str
    type: str
    time_us: int


@dataclass
class MemoryCustomerRepository:
    rows: dict[str, CustomerRow] = field(default_factory=dict)
    events: list[StoredEvent] = field(default_factory=list)

    # -- writes -----------------------------------------------------------------------------------------
    def insert(self, row: CustomerRow) -> None:
        self._check_free(row)
        self.rows[row.id] = row

    def replace(self, row: CustomerRow) -> bool:
        current = self.rows.get(row.id)
        if current is None or current.deleted_us is not None:
            return False
        self._check_free(row)
        self.rows[row.id] = replace(row, created_us=current.created_us, deleted_us=None)
        return True

    def soft_delete(self, customer_id: str, deleted_us: int) -> bool:
        current = self.rows.get(customer_id)
        if current is None or current.deleted_us is not None:
            return False
        self.rows[customer_id] = replace(current, deleted_us=deleted_us, updated_us=deleted_us)
        return True

    def _check_free(self, row: CustomerRow) -> None:
        live = [r for r in self.rows.values() if r.deleted_us is None and r.id != row.id]
        if row.key is not None:
            for other in live:
                if other.key == row.key:
                    raise KeyTaken(row.key, other.id)
        owners = {subject: other for other in live for subject in other.attributed_subjects()}
        for subject in sorted(row.attributed_subjects()):
            if subject in owners:
                raise SubjectTaken(subject, owners[subject].id, owners[subject].key)

    # -- reads ------------------------------------------------------------------------------------------
    def by_id(self, customer_id: str) -> CustomerRow | None:
        return self.rows.get(customer_id)

    def live_by_key(self, key: str) -> CustomerRow | None:
        return next((r for r in self.rows.values() if r.key == key and r.deleted_us is None), None)

    def search(self, query: CustomerSearch) -> tuple[list[CustomerRow], int]:
        def contains(value: str | None, part: str | None) -> bool:
            return part is None or (value is not None and part.lower() in value.lower())

        found = [
            r
            for r in self.rows.values()
            if (query.include_deleted or r.deleted_us is None)
            and contains(r.key, query.key)
            and contains(r.name, query.name)
            and contains(r.primary_email, query.primary_email)
            and (
                query.subject is None
                or (r.deleted_us is None and any(contains(s, query.subject) for s in r.attributed_subjects()))
            )
        ]
        if query.order_by == "name":
            found.sort(key=lambda r: (r.name.lower(), r.name, r.id), reverse=query.descending)
        elif query.order_by == "created":
            found.sort(key=lambda r: (r.created_us, r.id), reverse=query.descending)
        else:
            found.sort(key=lambda r: r.id, reverse=query.descending)
        return found[query.offset : query.offset + query.limit], len(found)

    def live_ids(self, customer_ids: Sequence[str]) -> set[str]:
        return {i for i in customer_ids if i in self.rows and self.rows[i].deleted_us is None}

    def subjects_of(self, customer_ids: Sequence[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for customer_id in dict.fromkeys(customer_ids):
            row = self.rows.get(customer_id)
            if row is not None and row.deleted_us is None and row.attributed_subjects():
                found[customer_id] = sorted(row.attributed_subjects())
        return found

    def owners_of(self, subjects: Sequence[str]) -> dict[str, str]:
        owners = self._owners()
        return {s: owners[s] for s in dict.fromkeys(subjects) if s in owners}

    def seen_subjects(
        self, event_types: Sequence[str] | None = None, from_us: int | None = None, to_us: int | None = None
    ) -> list[tuple[str, str | None]]:
        owners = self._owners()
        seen = {
            e.subject
            for e in self.events
            if (event_types is None or e.type in event_types)
            and (from_us is None or e.time_us >= from_us)
            and (to_us is None or e.time_us <= to_us)
        }
        return [(subject, owners.get(subject)) for subject in sorted(seen)]

    def _owners(self) -> dict[str, str]:
        return {s: r.id for r in self.rows.values() if r.deleted_us is None for s in r.attributed_subjects()}
