"""The codehooks template's usage API maps onto the same event model (both engines)."""

from __future__ import annotations

from decimal import Decimal

from tallybook.ingest.events import CODEHOOKS_SOURCE
from tallybook.store.base import EventFilter


def test_usage_endpoint_answers_202_and_maps_fields(client, keys, runtime):
    response = client.post(
        "/usage/api.calls",
        json={"customerId": "cust_9", "value": 2.5, "metadata": {"endpoint": "/search"}},
        headers={"x-apikey": keys["ingest"]},
    )
    assert response.status_code == 202
    answer = response.json()
    assert answer["message"] == "Event captured"
    assert (answer["eventType"], answer["customerId"]) == ("api.calls", "cust_9")
    [event] = runtime.store.list_events(EventFilter())
    assert (event.source, event.type, event.subject, event.id) == (
        CODEHOOKS_SOURCE,
        "api.calls",
        "cust_9",
        answer["id"],
    )
    assert event.data == {"value": Decimal("2.5"), "endpoint": "/search"}


def test_usage_with_an_id_is_idempotent(client, keys, runtime):
    for _ in range(2):
        response = client.post(
            "/usage/api.calls",
            json={"customerId": "c", "value": 1, "id": "req-1"},
            headers={"x-apikey": keys["ingest"]},
        )
        assert response.status_code == 202
    assert len(runtime.store.list_events(EventFilter())) == 1


def test_usage_validation_uses_problem_json_with_the_template_error_field(client, keys, runtime):
    response = client.post("/usage/api.calls", json={"value": "lots"}, headers={"x-apikey": keys["ingest"]})
    assert response.status_code == 400
    details = response.json()
    assert {e["field"] for e in details["errors"]} == {"customerId", "value"}
    assert details["error"] == details["detail"]
    assert runtime.store.list_events(EventFilter()) == []


def test_usagebatch_stores_all_or_nothing(client, keys, runtime):
    good = [
        {"eventType": "api.calls", "customerId": "a", "value": 1},
        {"eventType": "storage.gb", "customerId": "b", "value": 0.5, "metadata": {"region": "eu"}},
    ]
    response = client.post("/usagebatch", json=good, headers={"x-apikey": keys["ingest"]})
    assert response.status_code == 202
    assert response.json()["count"] == 2
    bad = [*good, {"eventType": "api.calls", "value": 1}]
    response = client.post("/usagebatch", json=bad, headers={"x-apikey": keys["ingest"]})
    assert response.status_code == 400
    assert response.json()["errors"][0]["index"] == 2
    events = runtime.store.list_events(EventFilter())
    assert sorted(e.type for e in events) == ["api.calls", "storage.gb"]


def test_usagebatch_needs_an_array(client, keys):
    response = client.post("/usagebatch", json={"eventType": "x"}, headers={"x-apikey": keys["ingest"]})
    assert response.status_code == 400
    assert "array" in response.json()["detail"]
