"""GET /api/v1/subjects and the seen-subjects query behind the per-meter listing (both engines)."""

from __future__ import annotations

from datetime import UTC, datetime

from tallybook.customers import CustomerInput, SeenSubject
from tests.conftest import auth
from tests.helpers import BATCH, body, cloudevent, headers


def ingest(client, keys, events):
    response = client.post("/api/v1/events", content=body(events), headers=headers(keys["ingest"], BATCH))
    assert response.status_code == 204, response.text


def subjects(client, keys):
    response = client.get("/api/v1/subjects", headers=auth(keys["read"]))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def test_no_events_no_subjects(client, keys):
    assert subjects(client, keys) == []


def test_subjects_seen_in_events_with_their_customer(client, keys, runtime):
    ingest(
        client,
        keys,
        [
            cloudevent("e1", subject="zed"),
            cloudevent("e2", subject="acme"),
            cloudevent("e3", subject="acme-batch"),
            cloudevent("e4", subject="acme"),
            cloudevent("e5", subject="Acme"),  # subjects are case-sensitive
        ],
    )
    acme = runtime.customers.create(CustomerInput(name="ACME", key="acme", subject_keys=("acme-batch", "never-seen")))
    assert subjects(client, keys) == [
        {"key": "Acme"},
        {"key": "acme", "customerId": acme.id},
        {"key": "acme-batch", "customerId": acme.id},
        {"key": "zed"},
    ]

    runtime.customers.delete(acme.id)
    assert subjects(client, keys) == [{"key": "Acme"}, {"key": "acme"}, {"key": "acme-batch"}, {"key": "zed"}]


def test_subjects_need_the_read_scope(client, keys):
    assert client.get("/api/v1/subjects", headers=auth(keys["ingest"])).status_code == 403
    assert client.get("/api/v1/subjects").status_code == 401
    assert client.get("/api/v1/subjects", headers=auth(keys["admin"])).status_code == 200


def test_seen_subjects_by_event_type_and_time(client, keys, runtime):
    """What a meter's subject list uses: its event type, and an inclusive event-time window."""
    ingest(
        client,
        keys,
        [
            cloudevent("a", subject="alice", type="api.calls", time="2026-01-01T00:00:00Z"),
            cloudevent("b", subject="bob", type="api.calls", time="2026-01-02T00:00:00Z"),
            cloudevent("c", subject="carol", type="storage", time="2026-01-02T00:00:00Z"),
            cloudevent("d", subject="dave", type="api.calls", time="2026-01-03T00:00:00Z"),
        ],
    )
    bob = runtime.customers.create(CustomerInput(name="Bob", key="bob"))
    seen = runtime.customers.seen_subjects

    assert [s.key for s in seen()] == ["alice", "bob", "carol", "dave"]
    assert seen(event_type="api.calls") == [SeenSubject("alice"), SeenSubject("bob", bob.id), SeenSubject("dave")]
    assert seen(event_type="nothing") == []
    jan2 = datetime(2026, 1, 2, tzinfo=UTC)
    jan3 = datetime(2026, 1, 3, tzinfo=UTC)
    assert [s.key for s in seen(from_=jan2)] == ["bob", "carol", "dave"]
    assert [s.key for s in seen(to=jan2)] == ["alice", "bob", "carol"]
    assert [s.key for s in seen(event_type="api.calls", from_=jan2, to=jan3)] == ["bob", "dave"]
