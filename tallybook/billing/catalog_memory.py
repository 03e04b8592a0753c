"""An in-memory adapter of the catalog's port (catalog_ports.PlanRepository), for unit tests.

Held to the SQL adapter by tests/test_plan_repository.py. Writers are serial (one lock, as
SQLite's write transactions), and a write that raises leaves nothing behind, as a rolled-back
transaction: the lock context works on a copy that replaces the state only when it ends cleanly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from tallybook.billing.catalog_ports import PlanSearch, PlanVersionRow


class MemoryPlanLock:
    def __init__(self, rows: dict[str, PlanVersionRow], key: str) -> None:
        self.rows = rows
        self.key = key

    def versions(self) -> list[PlanVersionRow]:
        return sorted((r for r in self.rows.values() if r.plan_key == self.key), key=lambda r: r.version)

    def insert(self, row: PlanVersionRow) -> None:
        if row.plan_key != self.key:
            raise ValueError(f"version of {row.plan_key!r} written under the lock of {self.key!r}")
        if row.id in self.rows or any(r.version == row.version for r in self.versions()):
            raise ValueError(f"plan {row.plan_key!r} already has version {row.version} or id {row.id}")
        self.rows[row.id] = row

    def replace(self, row: PlanVersionRow) -> None:
        current = self.rows.get(row.id)
        if current is None or current.plan_key != self.key:
            return  # as an UPDATE that matches no row
        self.rows[row.id] = replace(
            row, plan_key=current.plan_key, version=current.version, created_us=current.created_us
        )


class MemoryPlanRepository:
    def __init__(self) -> None:
        self.keys: dict[str, int] = {}  # plan key -> created_us
        self.rows: dict[str, PlanVersionRow] = {}  # by version id
        self._writer = threading.Lock()

    @contextmanager
    def lock(self, key: str, created_us: int, create: bool = False) -> Iterator[MemoryPlanLock | None]:
        with self._writer:
            keys, rows = dict(self.keys), dict(self.rows)
            if create:
                keys.setdefault(key, created_us)
            yield MemoryPlanLock(rows, key) if key in keys else None
            self.keys, self.rows = keys, rows

    def by_id(self, version_id: str) -> PlanVersionRow | None:
        return self.rows.get(version_id)

    def versions_of(self, key: str) -> list[PlanVersionRow]:
        return MemoryPlanLock(self.rows, key).versions()

    def search(self, query: PlanSearch) -> tuple[list[PlanVersionRow], int]:
        found = [
            r
            for r in self.rows.values()
            if (query.include_deleted or r.deleted_us is None)
            and (not query.keys or r.plan_key in query.keys)
            and (not query.ids or r.id in query.ids)
            and (not query.statuses or r.status in query.statuses)
            and (not query.currencies or r.currency in query.currencies)
        ]
        orderings: dict[str, Any] = {
            "id": lambda r: (r.id,),
            "key": lambda r: (r.plan_key, r.version),
            "version": lambda r: (r.version, r.id),
            "created_at": lambda r: (r.created_us, r.id),
            "updated_at": lambda r: (r.updated_us, r.id),
        }
        found.sort(key=orderings[query.order_by], reverse=query.descending)
        return found[query.offset : query.offset + query.limit], len(found)


__all__ = ["MemoryPlanLock", "MemoryPlanRepository"]
