"""What the entitlement test modules share: the meters, the start instant, the runtime and admin
client fixtures (SQLite and PostgreSQL through `database_url`), and the API calls every scenario
begins with. A module uses a fixture by importing it; defining `clock` itself moves the start."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tallybook import jsonutil
from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tests.test_webhook_helpers import api, build_runtime

METERS = [
    {
        "slug": "api_calls",
        "eventType": "api.calls",
        "aggregation": "SUM",
        "valueProperty": "$.value",
        "groupBy": {"model": "$.model"},
    },
    {"slug": "latest_seats", "eventType": "seats", "aggregation": "LATEST", "valueProperty": "$.value"},
]
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
BATCH = {"Content-Type": "application/cloudevents-batch+json"}


@pytest.fixture(name="clock")
def clock_fixture() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture(name="rt")
def rt_fixture(database_url: str, clock: FixedClock) -> Iterator[Runtime]:
    runtime = build_runtime(database_url, clock, meters=METERS)
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture(name="admin")
def admin_fixture(rt: Runtime) -> Iterator[httpx.Client]:
    client = api(rt)
    try:
        yield client
    finally:
        client.close()


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return jsonutil.loads(response.content) if response.content else None


def usage(client: httpx.Client, *items: tuple[str, Any, str], subject: str = "acme", model: str = "gpt") -> None:
    """Ingest api.calls events given as (id, value, time)."""
    events = [
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "app",
            "type": "api.calls",
            "subject": subject,
            "time": time,
            "data": {"value": value, "model": model},
        }
        for event_id, value, time in items
    ]
    assert client.post("/api/v1/events", json=events, headers=BATCH).status_code == 204


def setup_acme(client: httpx.Client, timezone: str | None = None) -> None:
    """Customer acme (subjects acme and acme-2) and the feature api_calls on the api_calls meter."""
    body: dict[str, Any] = {"name": "Acme", "key": "acme", "usageAttribution": {"subjectKeys": ["acme", "acme-2"]}}
    if timezone:
        body["timezone"] = timezone
    ok(client.post("/api/v1/customers", json=body), 201)
    ok(client.post("/api/v1/features", json={"key": "api_calls", "name": "API calls", "meterSlug": "api_calls"}), 201)
