"""The catalog port's contract: one set of cases for the in-memory adapter and the SQL adapter.

The catalog's behaviour over HTTP is tests/test_plans.py (both engines); these cases pin what each
`PlanRepository` must do, so `MemoryPlanRepository` can stand in for a database in unit tests (the
last case runs the service on it) and cannot drift from `SqlPlanRepository`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from tallybook.api.wire.plans import parse_plan
from tallybook.billing.catalog import CatalogService
from tallybook.billing.catalog_memory import MemoryPlanRepository
from tallybook.billing.catalog_model import PlanConflict, PlanListQuery, PlanStatus
from tallybook.billing.catalog_ports import PlanRepository, PlanSearch, PlanVersionRow
from tallybook.billing.catalog_sql import SqlPlanRepository
from tallybook.clock import FixedClock
from tallybook.config import DatabaseSettings, Settings
from tallybook.runtime import Runtime
from tests.conftest import _postgres_database, empty_all_tables


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def repository(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[PlanRepository]:
    if request.param == "memory":
        yield MemoryPlanRepository()
        return
    url = f"sqlite:///{tmp_path / 'p.db'}" if request.param == "sqlite" else _postgres_database()
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=url)), sync_meters=False)
    empty_all_tables(runtime)
    try:
        yield SqlPlanRepository(runtime.store)
    finally:
        runtime.store.close()


def version(
    row_id: str, key: str, number: int, status: str = "draft", *, currency: str = "USD", at: int = 1, **more: Any
) -> PlanVersionRow:
    values: dict[str, Any] = {
        "id": row_id,
        "plan_key": key,
        "version": number,
        "name": f"{key} v{number}",
        "description": None,
        "metadata": None,
        "currency": currency,
        "billing_cadence": "P1M",
        "status": status,
        "document": {"rate_cards": [], "commitments": {"minimum": None, "maximum": None}},
        "created_us": at,
        "updated_us": at,
        "published_us": None,
        "archived_us": None,
        "deleted_us": None,
    }
    values.update(more)
    return PlanVersionRow(**values)


def test_a_key_is_locked_only_once_it_exists_or_is_created(repository: PlanRepository) -> None:
    with repository.lock("starter", 1) as missing:
        assert missing is None
    with repository.lock("starter", 1, create=True) as lock:
        assert lock is not None and lock.versions() == []
    with repository.lock("starter", 2) as again:
        assert again is not None  # the key stays, even with no version


def test_versions_are_read_oldest_first_by_key_and_by_id(repository: PlanRepository) -> None:
    with repository.lock("starter", 1, create=True) as lock:
        assert lock is not None
        lock.insert(version("B", "starter", 2))
        lock.insert(version("A", "starter", 1, "published", metadata={"team": "growth"}))
        with pytest.raises(ValueError):
            lock.insert(version("C", "other", 1))
    assert [r.id for r in repository.versions_of("starter")] == ["A", "B"]
    assert repository.versions_of("other") == []
    assert repository.by_id("A") == version("A", "starter", 1, "published", metadata={"team": "growth"})
    assert repository.by_id("nope") is None


def test_replace_changes_a_version_but_not_its_identity(repository: PlanRepository) -> None:
    with repository.lock("starter", 1, create=True) as lock:
        assert lock is not None
        lock.insert(version("A", "starter", 1, at=10))
    changed = version("A", "starter", 7, "published", at=99, name="renamed", published_us=99)
    with repository.lock("starter", 100) as lock:
        assert lock is not None
        lock.replace(changed)
    stored = repository.by_id("A")
    assert stored == replace(changed, version=1, created_us=10)


def test_a_write_that_fails_leaves_nothing_behind(repository: PlanRepository) -> None:
    with pytest.raises(RuntimeError), repository.lock("starter", 1, create=True) as lock:
        assert lock is not None
        lock.insert(version("A", "starter", 1))
        raise RuntimeError("the change is refused")
    assert repository.by_id("A") is None
    with repository.lock("starter", 1) as lock:
        assert lock is None  # the key created for the write went with it


def test_search_filters_orders_and_pages(repository: PlanRepository) -> None:
    rows = [
        version("A", "alpha", 1, "archived", at=5),
        version("B", "alpha", 2, "published", at=4),
        version("C", "beta", 1, "draft", currency="EUR", at=3),
        version("D", "beta", 2, "draft", at=2, deleted_us=9),
    ]
    for row in rows:
        with repository.lock(row.plan_key, 1, create=True) as lock:
            assert lock is not None
            lock.insert(row)

    def ids(**query: Any) -> tuple[list[str], int]:
        found, total = repository.search(PlanSearch(**query))
        return [r.id for r in found], total

    assert ids() == (["A", "B", "C"], 3)
    assert ids(include_deleted=True, order_by="created_at") == (["D", "C", "B", "A"], 4)
    assert ids(order_by="key", descending=True) == (["C", "B", "A"], 3)
    assert ids(order_by="version") == (["A", "C", "B"], 3)
    assert ids(keys=("beta",), include_deleted=True) == (["C", "D"], 2)
    assert ids(statuses=("draft", "published")) == (["B", "C"], 2)
    assert ids(currencies=("EUR",)) == (["C"], 1)
    assert ids(ids=("A", "D")) == (["A"], 1)
    assert ids(offset=1, limit=1) == (["B"], 3)


STARTER = {
    "key": "starter",
    "name": "Starter",
    "billingCadence": "P1M",
    "rateCards": [{"type": "flat_fee", "key": "base", "name": "Base", "price": {"type": "flat", "amount": "10"}}],
}


def test_the_catalog_service_runs_on_the_memory_adapter() -> None:
    catalog = CatalogService(MemoryPlanRepository(), FixedClock(datetime(2026, 1, 1, tzinfo=UTC)))
    first = catalog.create(parse_plan(STARTER))
    with pytest.raises(PlanConflict):
        catalog.create(parse_plan(STARTER))
    catalog.publish(first.id)
    second = catalog.next_version("starter")
    catalog.publish(second.id)
    assert catalog.get(first.id).status is PlanStatus.ARCHIVED
    assert catalog.plan_version("starter").version == 2
    assert [p.version for p in catalog.list(PlanListQuery(keys=("starter",), order_by="version")).items] == [1, 2]
