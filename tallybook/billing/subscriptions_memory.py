"""An in-memory adapter of the subscriptions port, for unit tests.

Held to the SQL adapter by tests/test_subscription_storage.py. Writers are serial, and a write that
raises leaves nothing behind (the transaction works on a copy that replaces the state at its end).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tallybook.billing.subscriptions_ports import SubscriptionRow


class MemorySubscriptionTransaction:
    def __init__(self, rows: dict[str, SubscriptionRow]) -> None:
        self.rows = rows

    def get(self, subscription_id: str) -> SubscriptionRow | None:
        row = self.rows.get(subscription_id)
        return None if row is None else copy.deepcopy(row)

    def list(
        self,
        customer_ids: Sequence[str] | None = None,
        overlapping: tuple[int | None, int | None] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[SubscriptionRow]:
        found = [r for r in self.rows.values() if customer_ids is None or r["customer_id"] in customer_ids]
        if overlapping is not None:
            start_us, end_us = overlapping
            if end_us is not None:
                found = [r for r in found if r["active_from_us"] < end_us]
            if start_us is not None:
                # Ended after the start, and not ended before it began (canceled before it started).
                found = [
                    r
                    for r in found
                    if r["active_to_us"] is None
                    or (r["active_from_us"] < r["active_to_us"] and start_us < r["active_to_us"])
                ]
        found.sort(key=lambda r: (r["active_from_us"], r["id"]))
        page = found[offset:] if limit is None else found[offset : offset + limit]
        return [copy.deepcopy(r) for r in page]

    def insert(self, row: SubscriptionRow) -> None:
        if row["id"] in self.rows:
            raise ValueError(f"subscription {row['id']} exists")
        self.rows[row["id"]] = copy.deepcopy(row)

    def update(self, subscription_id: str, values: dict[str, Any]) -> None:
        if subscription_id in self.rows:
            self.rows[subscription_id].update(copy.deepcopy(values))


class MemorySubscriptionStorage:
    def __init__(self) -> None:
        self.rows: dict[str, SubscriptionRow] = {}
        self._writer = threading.Lock()
        self._changing: set[str] = set()

    @contextmanager
    def changing(self, subscription_id: str) -> Iterator[bool]:
        with self._writer:
            taken = subscription_id not in self._changing
            if taken:
                self._changing.add(subscription_id)
        try:
            yield taken
        finally:
            if taken:
                with self._writer:
                    self._changing.discard(subscription_id)

    @contextmanager
    def reading(self) -> Iterator[MemorySubscriptionTransaction]:
        yield MemorySubscriptionTransaction(self.rows)

    @contextmanager
    def writing(self) -> Iterator[MemorySubscriptionTransaction]:
        with self._writer:
            rows = copy.deepcopy(self.rows)
            yield MemorySubscriptionTransaction(rows)
            self.rows = rows


__all__ = ["MemorySubscriptionStorage", "MemorySubscriptionTransaction"]
