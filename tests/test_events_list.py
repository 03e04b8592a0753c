"""GET /api/v1/events and the codehooks GET /events: filters and ordering (both engines)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tallybook.clock import FixedClock
from tallybook.config import Settings
from tallybook.runtime import Runtime
from tests.conftest import empty_all_tables
from tests.helpers import BATCH, body, cloudevent, headers


@pytest.fixture
def seeded(settings: Settings, clock: FixedClock):
    """Events ingested at two known server times, so ingested-at filters can be checked."""
    from fastapi.testclient import TestClient

    from tallybook.api.app import create_app

    runtime = Runtime.build(settings, clock=clock)
    empty_all_tables(runtime)
    key = runtime.keys.create("t", "admin").plaintext
    with TestClient(create_app(runtime)) as client:
        first = [
            cloudevent("a1", subject="alice", type="api.calls", time="2026-01-01T00:00:00Z"),
            cloudevent("a2", subject="alice", type="storage", time="2026-01-02T00:00:00Z"),
            cloudevent("b1", subject="bob", type="api.calls", time="2026-01-03T00:00:00Z"),
        ]
        client.post("/api/v1/events", content=body(first), headers=headers(key, BATCH))
        clock.advance(timedelta(hours=1))
        later = [cloudevent("b2", subject="bob", type="api.calls", time="2026-01-01T12:00:00Z", source="other")]
        client.post("/api/v1/events", content=body(later), headers=headers(key, BATCH))
        yield client, key


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["event"]["id"] for item in response.json()]


def test_newest_event_time_first(seeded):
    client, key = seeded
    assert ids(client.get("/api/v1/events", headers=headers(key))) == ["b1", "a2", "b2", "a1"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("subject=alice", ["a2", "a1"]),
        ("type=api.calls", ["b1", "b2", "a1"]),
        ("id=b2", ["b2"]),
        ("source=other", ["b2"]),
        ("from=2026-01-02T00:00:00Z", ["b1", "a2"]),
        ("to=2026-01-02T00:00:00Z", ["a2", "b2", "a1"]),
        ("from=2026-01-01T06:00:00Z&to=2026-01-02T06:00:00Z", ["a2", "b2"]),
        ("ingestedAtFrom=2026-02-01T12:30:00Z", ["b2"]),
        ("ingestedAtTo=2026-02-01T12:30:00Z", ["b1", "a2", "a1"]),
        ("limit=2", ["b1", "a2"]),
        ("subject=bob&type=api.calls&limit=1", ["b1"]),
    ],
)
def test_filters(seeded, query, expected):
    client, key = seeded
    assert ids(client.get(f"/api/v1/events?{query}", headers=headers(key))) == expected


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("from=yesterday", "from"),
        ("to=2026-01-01T00:00:00", "time zone"),
    ],
)
def test_bad_parameters_are_400_problems(seeded, query, fragment):
    client, key = seeded
    response = client.get(f"/api/v1/events?{query}", headers=headers(key))
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert fragment in response.json()["detail"]


def test_customer_id_lists_the_events_of_that_customers_subjects(seeded):
    """OpenMeter's v1 `customerId` (repeatable): ids or keys; each listed event names its customer."""
    client, key = seeded
    created = client.post(
        "/api/v1/customers",
        json={"name": "Bob Ltd", "key": "bob-ltd", "usageAttribution": {"subjectKeys": ["bob"]}},
        headers=headers(key),
    )
    assert created.status_code == 201, created.text
    bob_id = created.json()["id"]
    by_id = client.get(f"/api/v1/events?customerId={bob_id}", headers=headers(key))
    assert ids(by_id) == ["b1", "b2"]
    assert {item["customerId"] for item in by_id.json()} == {bob_id}
    assert ids(client.get("/api/v1/events?customerId=bob-ltd&type=api.calls&limit=1", headers=headers(key))) == ["b1"]
    everyone = client.get("/api/v1/events", headers=headers(key)).json()
    assert [item.get("customerId") for item in everyone] == [bob_id, None, bob_id, None]
    both = client.get(f"/api/v1/events?customerId={bob_id}&customerId=bob-ltd", headers=headers(key))
    assert ids(both) == ["b1", "b2"]


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("customerId=nobody", "customerId: no customer has the id (or key) 'nobody'"),
        ("customerId=", "customerId: must be customer ids"),
        ("clientId=", "clientId"),
    ],
)
def test_customer_id_that_names_no_customer_is_a_400(seeded, query, fragment):
    client, key = seeded
    response = client.get(f"/api/v1/events?{query}", headers=headers(key))
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert fragment in response.json()["detail"]


def test_codehooks_event_list_filters_on_receive_time(seeded):
    client, key = seeded
    rows = client.get("/events?customerId=bob&eventType=api.calls", headers={"x-apikey": key}).json()
    # Newest received first: b2 was ingested an hour after b1.
    assert [r["id"] for r in rows] == ["b2", "b1"]
    assert rows[0] == {
        "id": "b2",
        "source": "other",
        "eventType": "api.calls",
        "customerId": "bob",
        "value": 1,
        "metadata": {},
        "time": "2026-01-01T12:00:00Z",
        "receivedAt": "2026-02-01T13:00:00Z",
    }
    recent = client.get("/events?from=2026-02-01T12:30:00Z", headers={"x-apikey": key}).json()
    assert [r["id"] for r in recent] == ["b2"]
