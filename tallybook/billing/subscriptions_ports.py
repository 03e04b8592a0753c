"""What the subscription service needs from storage: transactions over subscription rows.

A subscription row is a dict of its columns (`subscriptions.subscription_from_row` reads one, the
service's `_row` writes one). "A customer has at most one subscription at any instant" is checked
against the customer's rows and the new row inserted in one `writing()` transaction. A cancel or a
plan change holds `changing()` from reading the subscription to the credits its end gives, so two
at once cannot both credit the same unused time.
`subscriptions_sql.SqlSubscriptionStorage` is the adapter on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

SubscriptionRow = dict[str, Any]


class SubscriptionTransaction(Protocol):
    def get(self, subscription_id: str) -> SubscriptionRow | None: ...

    def list(
        self,
        customer_ids: Sequence[str] | None = None,
        overlapping: tuple[int | None, int | None] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[SubscriptionRow]:
        """Subscriptions (of these customers; active at some point in [start_us, end_us)), oldest first."""
        ...

    def insert(self, row: SubscriptionRow) -> None: ...

    def update(self, subscription_id: str, values: dict[str, Any]) -> None:
        """Set these columns of the subscription."""
        ...


class SubscriptionStorage(Protocol):
    def reading(self) -> AbstractContextManager[SubscriptionTransaction]: ...

    def writing(self) -> AbstractContextManager[SubscriptionTransaction]: ...

    def changing(self, subscription_id: str) -> AbstractContextManager[bool]:
        """Hold the subscription's change lock for the block (True), or False when another change
        of it (its end, and the credits that end gives) is in progress; never waits. Held across
        several transactions, and across processes where several serve one database."""
        ...


__all__ = ["SubscriptionRow", "SubscriptionStorage", "SubscriptionTransaction"]
