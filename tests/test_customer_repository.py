"""The customers port's contract: one set of cases for the in-memory adapter and the SQL adapter.

The service's behaviour (conflict wording, soft delete, attribution) is tested over HTTP on both
engines in tests/test_customers.py; these cases pin what each adapter must do, so the in-memory one
can stand in for a database in unit tests and cannot drift from the real one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tallybook.clock import FixedClock
from tallybook.config import DatabaseSettings, Settings
from tallybook.customers import CustomerInput, CustomerListQuery, CustomerNotFound, CustomerService, SubjectConflict
from tallybook.customers.memory import MemoryCustomerRepository, StoredEvent
from tallybook.customers.model import CustomerKeyConflict, CustomerRow, CustomerSearch, KeyTaken, SubjectTaken
from tallybook.customers.ports import CustomerRepository
from tallybook.customers.sql import SqlCustomerRepository
from tallybook.ingest.events import Event
from tallybook.runtime import Runtime
from tests.conftest import _postgres_database, empty_all_tables


class Adapter:
    """A repository under test, and a way to put events where its seen_subjects reads them."""

    def __init__(self, repository: CustomerRepository, add_events: Any) -> None:
        self.repository = repository
        self.add_events = add_events


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def adapter(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Adapter]:
    if request.param == "memory":
        memory = MemoryCustomerRepository()
        yield Adapter(memory, lambda events: memory.events.extend(StoredEvent(*e) for e in events))
        return
    url = f"sqlite:///{tmp_path / 'c.db'}" if request.param == "sqlite" else _postgres_database()
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=url)), sync_meters=False)
    empty_all_tables(runtime)
    store = runtime.store

    def add_events(events: list[tuple[str, str, int]]) -> None:
        batch = [
            Event("test", f"e{n}", type_, subject, time_us, None) for n, (subject, type_, time_us) in enumerate(events)
        ]
        with store.write() as conn:
            store.insert_events(conn, batch, ingested_us=1)

    try:
        yield Adapter(SqlCustomerRepository(store), add_events)
    finally:
        runtime.store.close()


def row(customer_id: str, key: str | None, *subjects: str, name: str | None = None, created: int = 1) -> CustomerRow:
    return CustomerRow(
        id=customer_id,
        key=key,
        name=name or customer_id,
        description=None,
        primary_email=f"{customer_id.lower()}@example.com",
        currency=None,
        timezone=None,
        billing_address=None,
        metadata=None,
        created_us=created,
        updated_us=created,
        deleted_us=None,
        subject_keys=tuple(sorted(subjects)),
    )


def test_insert_and_read_back(adapter: Adapter) -> None:
    repo = adapter.repository
    acme = row("C1", "acme", "acme-api", "acme-batch")
    repo.insert(acme)
    assert repo.by_id("C1") == acme
    assert repo.live_by_key("acme") == acme
    assert repo.live_by_key("acme-api") is None  # a subject is not a key
    assert repo.subjects_of(["C1", "C9"]) == {"C1": ["acme", "acme-api", "acme-batch"]}
    assert repo.owners_of(["acme", "acme-batch", "nobody"]) == {"acme": "C1", "acme-batch": "C1"}
    assert repo.live_ids(["C1", "C9"]) == {"C1"}


def test_a_live_key_and_a_subject_each_belong_to_one_customer(adapter: Adapter) -> None:
    repo = adapter.repository
    repo.insert(row("C1", "acme", "shared"))
    with pytest.raises(KeyTaken) as key_taken:
        repo.insert(row("C2", "acme"))
    assert (key_taken.value.key, key_taken.value.owner_id) == ("acme", "C1")
    with pytest.raises(SubjectTaken) as listed:
        repo.insert(row("C2", "beta", "shared"))
    assert (listed.value.subject, listed.value.owner_id, listed.value.owner_key) == ("shared", "C1", "acme")
    # Another's key is its subject: it can be neither listed nor taken as a key here.
    with pytest.raises(SubjectTaken):
        repo.insert(row("C2", "beta", "acme"))
    with pytest.raises(SubjectTaken):
        repo.insert(row("C2", "shared"))
    assert repo.by_id("C2") is None  # a refused insert leaves nothing behind
    assert repo.owners_of(["beta"]) == {}


def test_replace_swaps_the_whole_subject_set_and_keeps_created(adapter: Adapter) -> None:
    repo = adapter.repository
    repo.insert(row("C1", "acme", "old-1", "old-2", created=5))
    repo.insert(row("C2", "beta", "taken"))
    with pytest.raises(SubjectTaken):
        repo.replace(row("C1", "acme", "new-1", "taken"))
    assert repo.subjects_of(["C1"]) == {"C1": ["acme", "old-1", "old-2"]}  # unchanged
    assert repo.replace(row("C1", "acme2", "new-1", name="Acme 2", created=99)) is True
    replaced = repo.by_id("C1")
    assert replaced is not None
    assert (replaced.key, replaced.name, replaced.created_us, replaced.subject_keys) == (
        "acme2",
        "Acme 2",
        5,
        ("new-1",),
    )
    assert repo.owners_of(["acme", "old-1", "acme2", "new-1"]) == {"acme2": "C1", "new-1": "C1"}


def test_soft_delete_frees_the_key_and_subjects(adapter: Adapter) -> None:
    repo = adapter.repository
    repo.insert(row("C1", "acme", "acme-api"))
    assert repo.soft_delete("C1", 77) is True
    assert repo.soft_delete("C1", 78) is False
    assert repo.replace(row("C1", "acme")) is False
    deleted = repo.by_id("C1")
    assert deleted is not None and (deleted.deleted_us, deleted.updated_us) == (77, 77)
    assert repo.live_by_key("acme") is None
    assert repo.live_ids(["C1"]) == set()
    repo.insert(row("C2", "acme", "acme-api"))
    assert repo.owners_of(["acme", "acme-api"]) == {"acme": "C2", "acme-api": "C2"}


def test_search_filters_orders_and_pages(adapter: Adapter) -> None:
    repo = adapter.repository
    repo.insert(row("C1", "alpha", "shared_x", name="bravo", created=30))
    repo.insert(row("C2", "beta", name="Alpha", created=10))
    repo.insert(row("C3", "gamma", "g-1", name="charlie", created=20))
    repo.insert(row("C4", "delta", name="Delta", created=40))
    repo.soft_delete("C4", 50)

    def ids(**query: Any) -> tuple[list[str], int]:
        rows, total = repo.search(CustomerSearch(**query))
        return [r.id for r in rows], total

    assert ids() == (["C1", "C2", "C3"], 3)
    assert ids(include_deleted=True, descending=True) == (["C4", "C3", "C2", "C1"], 4)
    assert ids(order_by="name") == (["C2", "C1", "C3"], 3)  # case-insensitive
    assert ids(order_by="created", descending=True) == (["C1", "C3", "C2"], 3)
    assert ids(offset=1, limit=1) == (["C2"], 3)
    assert ids(key="ET") == (["C2"], 1)
    assert ids(name="ALPHA") == (["C2"], 1)
    assert ids(primary_email="c3@") == (["C3"], 1)
    assert ids(subject="X") == (["C1"], 1)  # listed subjects
    assert ids(subject="gam") == (["C3"], 1)  # the key is a subject
    assert ids(subject="_") == (["C1"], 1)  # no wildcards
    assert ids(subject="del", include_deleted=True) == ([], 0)  # a deleted customer has no subjects


def test_seen_subjects_lists_event_subjects_with_their_owner(adapter: Adapter) -> None:
    repo = adapter.repository
    repo.insert(row("C1", "acme", "acme-api"))
    adapter.add_events(
        [("acme-api", "calls", 10), ("stray", "calls", 20), ("acme", "bytes", 30), ("acme-api", "calls", 40)]
    )
    assert repo.seen_subjects() == [("acme", "C1"), ("acme-api", "C1"), ("stray", None)]
    assert repo.seen_subjects(event_types=["calls"]) == [("acme-api", "C1"), ("stray", None)]
    assert repo.seen_subjects(from_us=20, to_us=30) == [("acme", "C1"), ("stray", None)]


# -- the service on the in-memory adapter: no database needed ------------------------------------------------
def memory_service() -> CustomerService:
    return CustomerService(MemoryCustomerRepository(), FixedClock(datetime(2026, 2, 1, tzinfo=UTC)))


def test_service_words_conflicts_and_soft_deletes() -> None:
    service = memory_service()
    acme = service.create(CustomerInput(name="Acme", key="acme", subject_keys=("acme-api",)))
    assert service.get("acme") == acme == service.get(acme.id)
    with pytest.raises(CustomerKeyConflict) as key_conflict:
        service.create(CustomerInput(name="Other", key="acme"))
    assert key_conflict.value.status == 409 and key_conflict.value.extra == {"key": "acme", "customerId": acme.id}
    with pytest.raises(SubjectConflict) as subject_conflict:
        service.create(CustomerInput(name="Other", key="other", subject_keys=("acme-api",)))
    assert "remove it from usageAttribution.subjectKeys here or there" in subject_conflict.value.detail
    service.delete("acme")
    with pytest.raises(CustomerNotFound) as gone:
        service.resolve(acme.id)
    assert "was deleted at 2026-02-01T00:00:00Z" in gone.value.detail and gone.value.status == 404
    assert service.list_customers(CustomerListQuery(include_deleted=True)).total_count == 1
    assert service.customer_of_subjects(["acme", "acme-api"]) == {}
