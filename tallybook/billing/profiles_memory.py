"""An in-memory adapter of the billing profiles port, for unit tests.

Held to the SQL adapter by tests/test_profile_storage.py. Writers are serial (the SQL adapter's
profiles lock), and a write that raises leaves nothing behind. Which customers are live is the
customers room's: `live_customers` answers it (the SQL adapter joins the customers table).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tallybook.billing.profiles_ports import ProfileRow


@dataclass
class _Tables:
    profiles: dict[str, ProfileRow] = field(default_factory=dict)
    assignments: dict[str, dict[str, Any]] = field(default_factory=dict)  # by customer id


class MemoryProfileTransaction:
    def __init__(self, tables: _Tables, is_live_customer: Callable[[str], bool]) -> None:
        self.tables = tables
        self.is_live_customer = is_live_customer

    # -- profiles ---------------------------------------------------------------------------------------
    def profile_rows(self, include_deleted: bool = False) -> list[ProfileRow]:
        rows = [r for r in self.tables.profiles.values() if include_deleted or r["deleted_us"] is None]
        return [copy.deepcopy(r) for r in sorted(rows, key=lambda r: (r["created_us"], r["id"]))]

    def get_profile(self, profile_id: str) -> ProfileRow | None:
        row = self.tables.profiles.get(profile_id)
        return None if row is None else copy.deepcopy(row)

    def live_api_default(self) -> str | None:
        found = [
            r
            for r in self.tables.profiles.values()
            if r["is_default"] and r["source"] == "api" and r["deleted_us"] is None
        ]
        return max(found, key=lambda r: (r["updated_us"], r["id"]))["id"] if found else None

    def insert_profile(self, row: ProfileRow) -> None:
        if row["id"] in self.tables.profiles:
            raise ValueError(f"billing profile {row['id']} exists")
        self.tables.profiles[row["id"]] = {"is_default": False, **copy.deepcopy(row)}

    def update_profile(self, profile_id: str, values: dict[str, Any]) -> bool:
        row = self.tables.profiles.get(profile_id)
        if row is None:
            return False
        row.update(copy.deepcopy(values))
        return True

    def clear_defaults(self, except_id: str | None = None) -> None:
        for row in self.tables.profiles.values():
            if row["id"] != except_id:
                row["is_default"] = False

    # -- customer assignments ---------------------------------------------------------------------------
    def assignments_of(self, customer_ids: Sequence[str]) -> dict[str, str]:
        found = (self.tables.assignments.get(c) for c in dict.fromkeys(customer_ids))
        return {a["customer_id"]: a["profile_id"] for a in found if a is not None}

    def get_assignment(self, customer_id: str) -> dict[str, Any] | None:
        row = self.tables.assignments.get(customer_id)
        return None if row is None else dict(row)

    def put_assignment(self, customer_id: str, profile_id: str, now_us: int) -> None:
        row = self.tables.assignments.get(customer_id)
        if row is None:
            self.tables.assignments[customer_id] = {
                "customer_id": customer_id,
                "profile_id": profile_id,
                "created_us": now_us,
                "updated_us": now_us,
            }
        else:
            row.update(profile_id=profile_id, updated_us=now_us)

    def delete_assignment(self, customer_id: str) -> bool:
        return self.tables.assignments.pop(customer_id, None) is not None

    def live_customers_on(self, profile_id: str, sample: int = 5) -> tuple[int, list[str]]:
        ids = sorted(
            c for c, a in self.tables.assignments.items() if a["profile_id"] == profile_id and self.is_live_customer(c)
        )
        return len(ids), ids[:sample]

    def delete_assignments_to(self, profile_id: str) -> int:
        gone = [c for c, a in self.tables.assignments.items() if a["profile_id"] == profile_id]
        for customer_id in gone:
            del self.tables.assignments[customer_id]
        return len(gone)


class MemoryProfileStorage:
    def __init__(self, live_customers: Callable[[str], bool] = lambda customer_id: True) -> None:
        self.tables = _Tables()
        self.live_customers = live_customers
        self._writer = threading.Lock()

    @contextmanager
    def reading(self) -> Iterator[MemoryProfileTransaction]:
        yield MemoryProfileTransaction(self.tables, self.live_customers)

    @contextmanager
    def writing(self) -> Iterator[MemoryProfileTransaction]:
        with self._writer:
            tables = copy.deepcopy(self.tables)
            yield MemoryProfileTransaction(tables, self.live_customers)
            self.tables = tables


__all__ = ["MemoryProfileStorage", "MemoryProfileTransaction"]
