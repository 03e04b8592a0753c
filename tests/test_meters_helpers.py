"""Fixtures and builders shared by the meter and query tests (no tests in this module)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert

from tallybook.api.app import create_app
from tallybook.clock import FixedClock, to_micros
from tallybook.config import Settings
from tallybook.customers.sql import customer_subjects, customers
from tallybook.ingest.events import Event
from tallybook.meters.models import Aggregation, MeterSpec
from tallybook.runtime import Runtime
from tests.conftest import empty_all_tables

_ids = itertools.count()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def mclock() -> FixedClock:
    return FixedClock(utc(2026, 6, 1, 12))


@pytest.fixture
def mrt(settings: Settings, mclock: FixedClock) -> Iterator[Runtime]:
    """A started runtime on a clean database whose clock (and so ingested_at) the test controls."""
    rt = Runtime.build(settings, clock=mclock)
    empty_all_tables(rt)
    rt.start()
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture
def mkeys(mrt: Runtime) -> dict[str, str]:
    return {scope: mrt.keys.create(f"test {scope}", scope).plaintext for scope in ("admin", "read", "ingest")}


@pytest.fixture
def mclient(mrt: Runtime) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(create_app(mrt, manage_runtime=False), raise_server_exceptions=False) as test_client:
        yield test_client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def event(
    type: str = "prompt",
    subject: str = "cust_1",
    time: datetime | None = None,
    data: dict[str, Any] | None = None,
    id: str | None = None,
    source: str = "svc",
) -> Event:
    return Event(
        source=source,
        id=id or f"ev{next(_ids)}",
        type=type,
        subject=subject,
        time_us=to_micros(time or utc(2026, 1, 5, 10)),
        data=data,
    )


def ingest(rt: Runtime, *events: Event) -> None:
    result = rt.ingest.ingest(list(events))
    assert result.accepted == len(events)


def meter(
    rt: Runtime,
    slug: str,
    aggregation: Aggregation | str,
    value_property: str | None = "$.tokens",
    event_type: str = "prompt",
    group_by: dict[str, str] | None = None,
    **extra: Any,
) -> Any:
    aggregation = Aggregation(aggregation)
    return rt.meters.create(
        MeterSpec(
            slug=slug,
            event_type=event_type,
            aggregation=aggregation,
            value_property=None if aggregation is Aggregation.COUNT else value_property,
            group_by=group_by or {},
            **extra,
        )
    )


def add_customer(rt: Runtime, customer_id: str, key: str | None, subjects: list[str]) -> None:
    """Attribute subjects to a customer directly in the store (as the customers service does)."""
    now = to_micros(rt.clock.now())
    with rt.store.write() as conn:
        conn.execute(
            insert(customers).values(id=customer_id, key=key, name=customer_id, created_us=now, updated_us=now)
        )
        for subject in subjects:
            conn.execute(insert(customer_subjects).values(subject=subject, customer_id=customer_id))
