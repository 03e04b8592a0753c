"""The billing profiles port's contract: one set of cases for the in-memory and the SQL adapter.

Profile behaviour over HTTP (defaults, the config profile, overrides) is
tests/billing/test_billing_profiles.py on both engines; these cases pin what a `ProfileStorage`
must do, so `MemoryProfileStorage` can stand in for a database (the last case runs the service on
it) and cannot drift from `SqlProfileStorage`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tallybook.billing.profiles import ProfileService
from tallybook.billing.profiles_memory import MemoryProfileStorage
from tallybook.billing.profiles_model import CONFIG_PROFILE_ID, ProfileConflict, ProfileInput
from tallybook.billing.profiles_ports import ProfileRow, ProfileStorage
from tallybook.billing.profiles_sql import SqlProfileStorage
from tallybook.clock import FixedClock
from tallybook.config import DatabaseSettings, Settings
from tallybook.customers import CustomerInput, CustomerService
from tallybook.customers.memory import MemoryCustomerRepository
from tallybook.customers.sql import customers
from tallybook.runtime import Runtime
from tests.conftest import _postgres_database, empty_all_tables


class Adapter:
    """A storage under test, and a way to add customers (live or deleted) where it looks them up."""

    def __init__(self, storage: ProfileStorage, add_customer: Callable[[str, bool], None]) -> None:
        self.storage = storage
        self.add_customer = add_customer


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def adapter(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Adapter]:
    if request.param == "memory":
        live: set[str] = set()
        yield Adapter(MemoryProfileStorage(live.__contains__), lambda cid, deleted: None if deleted else live.add(cid))
        return
    url = f"sqlite:///{tmp_path / 'p.db'}" if request.param == "sqlite" else _postgres_database()
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=url)), sync_meters=False)
    empty_all_tables(runtime)
    store = runtime.store

    def add_customer(customer_id: str, deleted: bool) -> None:
        with store.write() as conn:
            conn.execute(
                customers.insert().values(
                    id=customer_id, name=customer_id, created_us=1, updated_us=1, deleted_us=2 if deleted else None
                )
            )

    try:
        yield Adapter(SqlProfileStorage(store), add_customer)
    finally:
        store.close()


def profile(profile_id: str, *, at: int = 1, source: str = "api", default: bool = False, **more: Any) -> ProfileRow:
    return {
        "id": profile_id,
        "name": f"profile {profile_id}",
        "description": None,
        "is_default": default,
        "source": source,
        "body": {"supplier": {"name": "Example Ltd"}, "workflow": {"grace_us": 3_600_000_000}},
        "created_us": at,
        "updated_us": at,
        "deleted_us": None,
        **more,
    }


def test_profiles_are_stored_listed_oldest_first_and_updated(adapter: Adapter) -> None:
    with adapter.storage.writing() as tx:
        tx.insert_profile(profile("B", at=2))
        tx.insert_profile(profile("A", at=1, deleted_us=5))
        tx.insert_profile(profile("C", at=2))
    with adapter.storage.reading() as tx:
        assert [r["id"] for r in tx.profile_rows()] == ["B", "C"]
        assert [r["id"] for r in tx.profile_rows(include_deleted=True)] == ["A", "B", "C"]
        assert tx.get_profile("B") == profile("B", at=2)
        assert tx.get_profile("nope") is None
    with adapter.storage.writing() as tx:
        assert tx.update_profile("B", {"name": "renamed", "body": {"apps": {"collector": "stripe"}}, "updated_us": 9})
        assert not tx.update_profile("nope", {"name": "x"})
    with adapter.storage.reading() as tx:
        assert tx.get_profile("B") == profile("B", at=2, name="renamed", body={"apps": {"collector": "stripe"}}) | {
            "updated_us": 9
        }


def test_the_live_api_default_is_the_newest_marked_one(adapter: Adapter) -> None:
    with adapter.storage.writing() as tx:
        assert tx.live_api_default() is None
        tx.insert_profile(profile(CONFIG_PROFILE_ID, source="config", default=True, at=1))
        tx.insert_profile(profile("A", default=True, at=2))
        tx.insert_profile(profile("B", default=True, at=3))
        tx.insert_profile(profile("C", default=True, at=4, deleted_us=5))
        assert tx.live_api_default() == "B"
        tx.clear_defaults(except_id="A")
        assert tx.live_api_default() == "A"
        tx.clear_defaults()
    with adapter.storage.reading() as tx:
        assert tx.live_api_default() is None
        assert not any(r["is_default"] for r in tx.profile_rows(include_deleted=True))


def test_assignments_are_put_moved_read_and_removed(adapter: Adapter) -> None:
    with adapter.storage.writing() as tx:
        tx.put_assignment("c1", "A", 10)
        tx.put_assignment("c2", "A", 11)
        tx.put_assignment("c1", "B", 20)  # moved: keeps when it was first assigned
    with adapter.storage.reading() as tx:
        assert tx.get_assignment("c1") == {"customer_id": "c1", "profile_id": "B", "created_us": 10, "updated_us": 20}
        assert tx.get_assignment("c3") is None
        assert tx.assignments_of(["c1", "c3", "c2", "c1"]) == {"c1": "B", "c2": "A"}
    with adapter.storage.writing() as tx:
        assert tx.delete_assignment("c1")
        assert not tx.delete_assignment("c1")
    with adapter.storage.reading() as tx:
        assert tx.assignments_of(["c1", "c2"]) == {"c2": "A"}


def test_only_live_customers_hold_a_profile(adapter: Adapter) -> None:
    for customer_id, deleted in (("c1", False), ("c2", True), ("c3", False), ("c4", False)):
        adapter.add_customer(customer_id, deleted)
    with adapter.storage.writing() as tx:
        for customer_id in ("c4", "c1", "c2", "c3"):
            tx.put_assignment(customer_id, "A", 1)
        tx.put_assignment("c9", "A", 1)  # no such customer
        assert tx.live_customers_on("A", sample=2) == (3, ["c1", "c3"])
        assert tx.live_customers_on("B") == (0, [])
        assert tx.delete_assignments_to("A") == 5
        assert tx.live_customers_on("A") == (0, [])


def test_a_write_that_fails_leaves_nothing_behind(adapter: Adapter) -> None:
    with pytest.raises(RuntimeError), adapter.storage.writing() as tx:
        tx.insert_profile(profile("A"))
        tx.put_assignment("c1", "A", 1)
        raise RuntimeError("refused")
    with adapter.storage.reading() as tx:
        assert tx.get_profile("A") is None and tx.get_assignment("c1") is None


def test_the_profile_service_runs_on_the_memory_adapter() -> None:
    clock = FixedClock(datetime(2026, 1, 1, tzinfo=UTC))
    customer_service = CustomerService(MemoryCustomerRepository(), clock)
    service = ProfileService(MemoryProfileStorage(), clock, customer_service)
    assert service.sync_config().default
    created = service.create(ProfileInput(name="Manual", supplier={"name": "Example Ltd"}, default=True))
    assert service.default().id == created.id and not service.get(CONFIG_PROFILE_ID).default
    customer = customer_service.create(CustomerInput(name="Acme", key="acme"))
    assert service.assign("acme", created.id).profile.id == created.id
    with pytest.raises(ProfileConflict):
        service.delete(created.id)
    assert service.for_customers([customer.id]) == {customer.id: service.get(created.id)}
