"""Fault isolation in job loops (jobs/runs.py), without a database: the in-memory failure records
stand in for `job_failures`, and the SQL adapter is held to the same cases on both engines."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from tallybook.clock import FixedClock
from tallybook.jobs.memory import MemoryFailureRecords
from tallybook.jobs.ports import FailureRecords
from tallybook.jobs.runs import ItemFailureLog
from tallybook.jobs.sql import JobStore
from tallybook.store import open_store
from tests.conftest import _postgres_database, empty_all_tables

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def records(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[FailureRecords]:
    if request.param == "memory":
        yield MemoryFailureRecords()
        return
    url = f"sqlite:///{tmp_path / 'jobs.db'}" if request.param == "sqlite" else _postgres_database()
    store = open_store(url)
    store.migrate()
    empty_all_tables(SimpleNamespace(store=store))  # type: ignore[arg-type]  # PostgreSQL tests share a database
    try:
        yield JobStore(store)
    finally:
        store.close()


def run_items(log: ItemFailureLog, outcomes: dict[str, bool]) -> dict[str, Any]:
    """One run of job "sync" over items named by `outcomes` (True: the item works)."""
    with log.run("sync") as run:
        for item, works in outcomes.items():
            with run.item("customer", item, customerKey=item):
                if not works:
                    raise RuntimeError(f"{item} is broken\x00")
    return run.outcome({"done": len(outcomes)})


def test_a_failing_item_is_recorded_skipped_and_cleared_once_it_works(records: FailureRecords) -> None:
    clock = FixedClock(START)
    log = ItemFailureLog(records, clock)

    assert run_items(log, {"a": True, "b": False, "c": True}) == {"done": 3, "failedItems": 1}
    [failed] = log.failing("sync")
    assert (failed.item_kind, failed.item_id, failed.count) == ("customer", "b", 1)
    assert failed.error == "RuntimeError: b is broken\\x00"  # NUL spelled out: PostgreSQL text holds none
    assert failed.context == {"customerKey": "b"}

    clock.set(START + timedelta(minutes=5))
    run_items(log, {"b": False})
    [again] = log.failing("sync", "customer")
    five_minutes = 300_000_000
    assert (again.count, again.first_seen_us, again.last_seen_us) == (
        2,
        failed.first_seen_us,
        failed.first_seen_us + five_minutes,
    )
    assert log.list() == (1, [again])

    assert run_items(log, {"b": True}) == {"done": 1}
    assert log.failing("sync") == []
    assert log.list(job="sync") == (0, [])


def test_the_listing_is_newest_first_and_filtered(records: FailureRecords) -> None:
    clock = FixedClock(START)
    log = ItemFailureLog(records, clock)
    run_items(log, {"old": False})
    clock.set(START + timedelta(seconds=1))
    with log.run("other") as run, run.item("invoice", "inv_1"):
        raise ValueError("bad total")
    total, rows = log.list()
    assert total == 2 and [r.item_id for r in rows] == ["inv_1", "old"]
    assert log.list(item_kind="invoice", limit=1)[1][0].job == "other"
    assert log.list(limit=1, offset=1)[1][0].item_id == "old"
