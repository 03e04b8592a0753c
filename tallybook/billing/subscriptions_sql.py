"""The SQL adapter of the subscriptions port (subscriptions_ports.SubscriptionStorage).

The `subscriptions` table and its queries stay in `tallybook/store/billing.py` for now: invoicing
reads and marks the same rows (`billed_through_us`) in its own transactions, and that module is
being moved with invoicing's SQL. This adapter only gives the subscription service its port.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from tallybook.billing.subscriptions_ports import SubscriptionRow
from tallybook.store import billing as billing_store
from tallybook.store import locks

if TYPE_CHECKING:
    from tallybook.store.base import SqlStore


class SqlSubscriptionTransaction:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get(self, subscription_id: str) -> SubscriptionRow | None:
        return billing_store.get_subscription(self.conn, subscription_id)

    def list(
        self,
        customer_ids: Sequence[str] | None = None,
        overlapping: tuple[int | None, int | None] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[SubscriptionRow]:
        return billing_store.list_subscriptions(
            self.conn, customer_ids, overlapping=overlapping, limit=limit, offset=offset
        )

    def insert(self, row: SubscriptionRow) -> None:
        billing_store.insert_subscription(self.conn, row)

    def update(self, subscription_id: str, values: dict[str, Any]) -> None:
        billing_store.update_subscription(self.conn, subscription_id, values)


class SqlSubscriptionStorage:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    @contextmanager
    def reading(self) -> Iterator[SqlSubscriptionTransaction]:
        with self.store.read() as conn:
            yield SqlSubscriptionTransaction(conn)

    @contextmanager
    def writing(self) -> Iterator[SqlSubscriptionTransaction]:
        with self.store.write() as conn:
            yield SqlSubscriptionTransaction(conn)

    def changing(self, subscription_id: str) -> AbstractContextManager[bool]:
        return locks.try_lock(self.store.engine, f"tallybook.subscription:{subscription_id}")


__all__ = ["SqlSubscriptionStorage", "SqlSubscriptionTransaction"]
