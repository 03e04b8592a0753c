"""The subscriptions port's contract: one set of cases for the in-memory and the SQL adapter.

Subscription behaviour (overlaps, cancel, plan change) is tests/billing/test_subscriptions.py on
both engines; these cases pin what a `SubscriptionStorage` must do, so the in-memory adapter can
stand in for a database and the SQL one can move (with invoicing's SQL) without drifting.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tallybook.billing.subscriptions_memory import MemorySubscriptionStorage
from tallybook.billing.subscriptions_ports import SubscriptionRow, SubscriptionStorage
from tallybook.billing.subscriptions_sql import SqlSubscriptionStorage
from tallybook.config import DatabaseSettings, Settings
from tallybook.runtime import Runtime
from tests.conftest import _postgres_database, empty_all_tables


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[SubscriptionStorage]:
    if request.param == "memory":
        yield MemorySubscriptionStorage()
        return
    url = f"sqlite:///{tmp_path / 's.db'}" if request.param == "sqlite" else _postgres_database()
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=url)), sync_meters=False)
    empty_all_tables(runtime)
    try:
        yield SqlSubscriptionStorage(runtime.store)
    finally:
        runtime.store.close()


def row(sub_id: str, customer: str, active_from: int, active_to: int | None = None, **more: Any) -> SubscriptionRow:
    values: SubscriptionRow = {
        "id": sub_id,
        "customer_id": customer,
        "name": "Starter",
        "plan_key": "starter",
        "plan_version": 1,
        "currency": "USD",
        "cadence": "monthly",
        "cadence_days": None,
        "alignment": "anniversary",
        "anchor_us": active_from,
        "timezone": "UTC",
        "active_from_us": active_from,
        "active_to_us": active_to,
        "canceled_us": None,
        "previous_id": None,
        "next_id": None,
        "billed_through_us": None,
        "metadata": None,
        "created_us": 1,
        "updated_us": 1,
    }
    values.update(more)
    return values


def ids(rows: list[SubscriptionRow]) -> list[str]:
    return [r["id"] for r in rows]


def test_rows_are_stored_read_back_and_updated(storage: SubscriptionStorage) -> None:
    with storage.writing() as tx:
        tx.insert(row("S1", "c1", 100, metadata={"team": "growth"}))
    with storage.reading() as tx:
        assert tx.get("S1") == row("S1", "c1", 100, metadata={"team": "growth"})
        assert tx.get("nope") is None
    with storage.writing() as tx:
        tx.update("S1", {"active_to_us": 500, "canceled_us": 90})
        tx.update("nope", {"next_id": "S1"})  # no such row: nothing happens
    with storage.reading() as tx:
        assert tx.get("S1") == row("S1", "c1", 100, 500, canceled_us=90, metadata={"team": "growth"})


def test_a_write_that_fails_leaves_nothing_behind(storage: SubscriptionStorage) -> None:
    with pytest.raises(RuntimeError), storage.writing() as tx:
        tx.insert(row("S1", "c1", 100))
        raise RuntimeError("overlap found")
    with storage.reading() as tx:
        assert tx.get("S1") is None


def test_listing_filters_by_customer_and_overlap_oldest_first(storage: SubscriptionStorage) -> None:
    with storage.writing() as tx:
        tx.insert(row("S3", "c1", 300))  # open-ended
        tx.insert(row("S1", "c1", 100, 200))
        tx.insert(row("S2", "c2", 150, 250))
        tx.insert(row("S4", "c2", 400, 400))  # canceled before it started: never active
    with storage.reading() as tx:
        assert ids(tx.list()) == ["S1", "S2", "S3", "S4"]
        assert ids(tx.list(["c1"])) == ["S1", "S3"]
        assert ids(tx.list(["c1", "c2"], limit=2, offset=1)) == ["S2", "S3"]
        assert ids(tx.list(overlapping=(200, 300))) == ["S2"]
        assert ids(tx.list(overlapping=(199, 301))) == ["S1", "S2", "S3"]
        assert ids(tx.list(overlapping=(0, None))) == ["S1", "S2", "S3"]
        assert ids(tx.list(overlapping=(None, 150))) == ["S1"]
        assert ids(tx.list(["c2"], overlapping=(0, 1000))) == ["S2"]


def test_one_change_of_a_subscription_at_a_time(storage: SubscriptionStorage) -> None:
    """`changing` never waits: a second holder of the same subscription is told no, another
    subscription is not held up, and the lock is free again once the block ends (even by an error)."""
    with storage.changing("sub-1") as first:
        assert first is True
        with storage.changing("sub-1") as second:
            assert second is False
        with storage.changing("sub-2") as other:
            assert other is True
    with pytest.raises(RuntimeError), storage.changing("sub-1") as again:
        assert again is True
        raise RuntimeError("the change failed")
    with storage.changing("sub-1") as after_failure:
        assert after_failure is True
