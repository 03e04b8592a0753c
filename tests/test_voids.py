"""Voiding and amending events through the API, on SQLite and PostgreSQL: voided events stop
counting in meter queries and the event list, as-of queries before the void still count them,
amends store a corrected event atomically, refusals say what to fix, and the audit trail keeps who,
when, why and what."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tallybook import jsonutil
from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tallybook.voids.model import Actor, EventKey, VoidRequest
from tests.test_webhook_helpers import api, build_runtime

METERS = [
    {"slug": "api_calls", "eventType": "api.calls", "aggregation": "SUM", "valueProperty": "$.value"},
    {"slug": "calls", "eventType": "api.calls", "aggregation": "COUNT"},
]
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
BATCH = {"Content-Type": "application/cloudevents-batch+json"}


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def rt(database_url: str, clock: FixedClock) -> Iterator[Runtime]:
    runtime = build_runtime(database_url, clock, meters=METERS)
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
def admin(rt: Runtime) -> Iterator[httpx.Client]:
    client = api(rt)
    try:
        yield client
    finally:
        client.close()


def event(event_id: str, value: Any, subject: str = "acme", time: str = "2026-03-10T09:00:00Z", **extra: Any) -> dict:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "app",
        "type": "api.calls",
        "subject": subject,
        "time": time,
        "data": {"value": value},
        **extra,
    }


def ingest(client: httpx.Client, *events: dict[str, Any]) -> None:
    response = client.post("/api/v1/events", json=list(events), headers=BATCH)
    assert response.status_code == 204, response.text


def total(client: httpx.Client, meter: str = "api_calls", **params: str) -> str:
    query = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z", **params}
    response = client.get(f"/api/v1/meters/{meter}/query", params=query)
    assert response.status_code == 200, response.text
    rows = jsonutil.loads(response.content)["data"]
    return "0" if not rows else str(rows[0]["value"])


def listed(client: httpx.Client, **params: Any) -> dict[str, dict[str, Any]]:
    response = client.get("/api/v1/events", params=params)
    assert response.status_code == 200, response.text
    return {item["event"]["id"]: item for item in response.json()}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


def test_a_voided_event_stops_counting_but_as_of_queries_before_the_void_still_count_it(
    rt: Runtime, admin: httpx.Client, clock: FixedClock
) -> None:
    ingest(admin, event("e1", 5), event("e2", 7), event("e3", 11))
    assert total(admin) == "23"
    before_void = clock.now()

    clock.advance(timedelta(hours=1))
    response = admin.post(
        "/api/v1/events/void",
        json={"events": [{"source": "app", "id": "e2"}], "reason": "test traffic from the load test"},
    )
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["kind"] == "void"
    assert record["eventCount"] == 1
    assert record["events"] == [{"source": "app", "id": "e2"}]
    assert record["reason"] == "test traffic from the load test"
    assert record["createdAt"] == "2026-03-10T13:00:00Z"
    assert record["actor"] == {"type": "apiKey", "id": record["actor"]["id"], "name": "webhook tests"}
    assert record["selection"] == {"events": [{"source": "app", "id": "e2"}]}
    assert record["replacement"] is None

    # Every meter of the type stops counting it; as of before the void, it still counts.
    assert total(admin) == "16"
    assert total(admin, meter="calls") == "2"
    assert total(admin, asOf=before_void.isoformat()) == "23"
    assert total(admin, meter="calls", asOf=before_void.isoformat()) == "3"
    assert total(admin, asOf=(clock.now() - timedelta(microseconds=1)).isoformat()) == "23"
    assert total(admin, asOf=clock.now().isoformat()) == "16"  # voided at 13:00: not counted as of 13:00

    # The event list leaves it out unless asked, then shows when and by which void.
    assert set(listed(admin)) == {"e1", "e3"}
    with_voided = listed(admin, includeVoided="true")
    assert set(with_voided) == {"e1", "e2", "e3"}
    assert with_voided["e2"]["voidedAt"] == "2026-03-10T13:00:00Z"
    assert with_voided["e2"]["voidId"] == record["id"]
    assert "voidedAt" not in with_voided["e1"]

    # The audit trail.
    trail = admin.get("/api/v1/events/voids").json()
    assert trail["totalCount"] == 1
    assert [item["id"] for item in trail["items"]] == [record["id"]]
    assert admin.get(f"/api/v1/events/voids/{record['id']}").json() == record

    # Voiding it again, or an unknown event, changes nothing and says why.
    again = problem(
        admin.post("/api/v1/events/void", json={"events": [{"source": "app", "id": "e2"}], "reason": "x"}), 409
    )
    assert record["id"] in again["detail"]
    unknown = problem(
        admin.post(
            "/api/v1/events/void",
            json={"events": [{"source": "app", "id": "e1"}, {"source": "app", "id": "nope"}], "reason": "x"},
        ),
        404,
    )
    assert unknown["missing"] == [{"source": "app", "id": "nope"}]
    assert total(admin) == "16"  # e1 was not voided: all or nothing
    problem(admin.get("/api/v1/events/voids/01ARZ3NDEKTSV4RRFFQ69G5FAV"), 404)
    problem(admin.get("/api/v1/events/voids/bad%00id"), 400)
    problem(admin.get("/api/v1/events/voids/" + "x" * 5000), 404)


def test_void_by_filter_with_dry_run_and_an_exclusive_end(rt: Runtime, admin: httpx.Client, clock: FixedClock) -> None:
    ingest(
        admin,
        event("a1", 1, time="2026-03-10T08:00:00Z"),
        event("a2", 2, time="2026-03-10T08:30:00Z"),
        event("a3", 4, time="2026-03-10T09:00:00Z"),  # at `to`: not selected
        event("b1", 8, subject="other", time="2026-03-10T08:15:00Z"),
    )
    selection = {
        "filter": {
            "subject": "acme",
            "type": "api.calls",
            "from": "2026-03-10T08:00:00Z",
            "to": "2026-03-10T09:00:00Z",
        },
        "reason": "duplicate import of the 8 o'clock batch",
    }
    dry = admin.post("/api/v1/events/void", json={**selection, "dryRun": True})
    assert dry.status_code == 200, dry.text
    assert dry.json() == {
        "dryRun": True,
        "eventCount": 2,
        "events": [{"source": "app", "id": "a1"}, {"source": "app", "id": "a2"}],
    }
    assert total(admin) == "15"  # a dry run changes nothing
    assert admin.get("/api/v1/events/voids").json()["totalCount"] == 0

    clock.advance(timedelta(minutes=5))
    done = admin.post("/api/v1/events/void", json=selection)
    assert done.status_code == 201, done.text
    assert done.json()["eventCount"] == 2
    assert done.json()["selection"] == {"filter": selection["filter"]}
    assert total(admin) == "12"
    assert total(admin, subject="acme") == "4"
    assert total(admin, subject="other") == "8"

    # The same filter again finds nothing left to void.
    nothing = problem(admin.post("/api/v1/events/void", json=selection), 404)
    assert "nothing was voided" in nothing["detail"]
    assert admin.post("/api/v1/events/void", json={**selection, "dryRun": True}).json()["eventCount"] == 0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"filter": {}, "reason": "x"}, "at least a subject, a type or a source"),
        ({"filter": {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}, "reason": "x"}, "empty filter"),
        ({"reason": "x"}, "either `events`"),
        ({"events": [{"source": "app", "id": "e1"}], "filter": {"subject": "acme"}, "reason": "x"}, "not both"),
        ({"events": [{"source": "app", "id": "e1"}], "reason": "   "}, "reason is required"),
        ({"events": [{"source": "app", "id": "e1"}]}, "reason"),
        ({"filter": {"subject": "acme", "from": "0.067"}, "reason": "x"}, "filter.from"),
        ({"filter": {"subject": "acme", "from": "2026-03-02T00:00:00"}, "reason": "x"}, "time zone"),
        (
            {
                "filter": {"subject": "acme", "from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"},
                "reason": "x",
            },
            "before filter.to",
        ),
        ({"filter": {"subject": "acme", "colour": "red"}, "reason": "x"}, "colour"),
        ({"filter": {"subject": "acme\u0000"}, "reason": "x"}, "U+0000"),
        ({"events": [{"source": "app", "id": "e1\u0000"}], "reason": "x"}, "events[0].id"),
        ({"events": [{"source": "app", "id": "e1"}], "reason": "bad\u0000"}, "U+0000"),
        ({"filter": {"subject": "acme", "from": "0001-01-01T00:00:00+14:00"}, "reason": "x"}, "filter.from"),
    ],
)
def test_void_requests_that_could_void_the_wrong_events_are_refused(
    rt: Runtime, admin: httpx.Client, body: dict[str, Any], expected: str
) -> None:
    ingest(admin, event("e1", 5))
    refused = problem(admin.post("/api/v1/events/void", json=body), 400)
    assert expected in refused["detail"]
    assert total(admin) == "5"


def test_only_admin_keys_void(rt: Runtime, admin: httpx.Client) -> None:
    ingest(admin, event("e1", 5))
    for scope in ("read", "ingest"):
        key = rt.keys.create(scope, scope).plaintext
        response = admin.post(
            "/api/v1/events/void",
            json={"events": [{"source": "app", "id": "e1"}], "reason": "x"},
            headers={"Authorization": f"Bearer {key}"},
        )
        problem(response, 403)
        problem(admin.get("/api/v1/events/voids", headers={"Authorization": f"Bearer {key}"}), 403)
    assert total(admin) == "5"


def test_amend_replaces_an_event_atomically(rt: Runtime, admin: httpx.Client, clock: FixedClock) -> None:
    ingest(admin, event("e1", 5), event("e2", 100))
    before = clock.now()
    clock.advance(timedelta(minutes=30))
    corrected = event("e2-v2", 10)
    response = admin.post(
        "/api/v1/events/amend",
        json={"source": "app", "id": "e2", "reason": "the client sent bytes instead of kilobytes", "event": corrected},
    )
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["kind"] == "amend"
    assert record["events"] == [{"source": "app", "id": "e2"}]
    assert record["replacement"] == {"source": "app", "id": "e2-v2"}
    assert total(admin) == "15"
    assert total(admin, meter="calls") == "2"
    assert total(admin, asOf=before.isoformat()) == "105"  # before the amend: the old figures
    items = listed(admin, includeVoided="true")
    assert items["e2-v2"]["ingestedAt"] == items["e2"]["voidedAt"] == "2026-03-10T12:30:00Z"

    # The corrected event needs a new id; an id in use is refused; nothing changes either time.
    same = problem(
        admin.post("/api/v1/events/amend", json={"source": "app", "id": "e1", "reason": "x", "event": event("e1", 6)}),
        409,
    )
    assert "new id" in same["detail"]
    taken = problem(
        admin.post("/api/v1/events/amend", json={"source": "app", "id": "e1", "reason": "x", "event": event("e2", 6)}),
        409,
    )
    assert "already stored" in taken["detail"]
    assert total(admin) == "15"
    assert "voidedAt" not in listed(admin, includeVoided="true")["e1"]
    assert admin.get("/api/v1/events/voids").json()["totalCount"] == 1

    # The corrected event goes through ingest validation.
    bad = problem(
        admin.post(
            "/api/v1/events/amend",
            json={"source": "app", "id": "e1", "reason": "x", "event": event("e1-v2", 6, time="yesterday")},
        ),
        400,
    )
    assert bad["errors"][0]["field"] == "event.time"
    missing = problem(
        admin.post(
            "/api/v1/events/amend", json={"source": "app", "id": "nope", "reason": "x", "event": event("n2", 1)}
        ),
        404,
    )
    assert missing["missing"] == [{"source": "app", "id": "nope"}]
    assert total(admin) == "15"
    deep = admin.post("/api/v1/events/amend", content=b"[" * 100_000, headers={"Content-Type": "application/json"})
    problem(deep, 400)

    # The corrected event meets ingest's value domain: a metered value with more digits than meters
    # count exactly is refused, naming the field, and nothing changes.
    too_precise = admin.post(
        "/api/v1/events/amend",
        content=b'{"source":"app","id":"e1","reason":"precision","event":'
        b'{"specversion":"1.0","id":"e1-v2","source":"app","type":"api.calls","subject":"acme",'
        b'"time":"2026-03-10T09:00:00Z","data":{"value":0.1000000000000000000001}}}',
        headers={"Content-Type": "application/json"},
    )
    assert problem(too_precise, 400)["errors"][0]["field"] == "event.data.value"
    assert total(admin) == "15"
    # Exact numbers within it survive the amend as they survive ingest.
    admin.post(
        "/api/v1/events/amend",
        content=b'{"source":"app","id":"e1","reason":"precision","event":'
        b'{"specversion":"1.0","id":"e1-v2","source":"app","type":"api.calls","subject":"acme",'
        b'"time":"2026-03-10T09:00:00Z","data":{"value":0.100001}}}',
        headers={"Content-Type": "application/json"},
    ).raise_for_status()
    assert total(admin) == "10.100001"


def test_meters_created_after_a_void_never_count_the_voided_events(
    rt: Runtime, admin: httpx.Client, clock: FixedClock
) -> None:
    ingest(admin, event("e1", 5), event("e2", 7))
    before = clock.now()
    clock.advance(timedelta(minutes=1))
    admin.post(
        "/api/v1/events/void", json={"events": [{"source": "app", "id": "e2"}], "reason": "bad"}
    ).raise_for_status()
    created = admin.post(
        "/api/v1/meters",
        json={"slug": "late_meter", "eventType": "api.calls", "aggregation": "SUM", "valueProperty": "$.value"},
    )
    assert created.status_code == 201, created.text
    # The new meter's projection is built from the events, void stamps included.
    assert total(admin, meter="late_meter") == "5"
    assert total(admin, meter="late_meter", asOf=before.isoformat()) == "12"


def test_a_void_of_events_not_yet_projected_is_applied_when_they_are(
    rt: Runtime, admin: httpx.Client, clock: FixedClock
) -> None:
    rt.meters.stop()  # no background projection: the void lands before the materializer does
    rt.ingest.projection = None  # nor one in the ingest transaction (SQLite's InlineProjection)
    ingest(admin, event("e1", 5), event("e2", 7))
    assert rt.meters.materializer.pending()
    clock.advance(timedelta(seconds=1))
    rt.voids.void(VoidRequest(reason="bad", actor=Actor("cli", None, "ops"), events=(EventKey("app", "e2"),)))
    assert rt.meters.materializer.pending()  # still unprojected when voided
    assert total(admin) == "5"
    assert total(admin, asOf=T0.isoformat()) == "12"
