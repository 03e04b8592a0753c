"""POST /api/v1/events: content types, validation, atomic batches (both engines)."""

from __future__ import annotations

from concurrent.futures import Future
from decimal import Decimal

import pytest

from tallybook.config import DatabaseSettings, IngestSettings, Settings
from tallybook.ingest.events import Event
from tallybook.ingest.service import _Request
from tallybook.runtime import Runtime
from tallybook.store.base import EventFilter
from tests.conftest import empty_all_tables
from tests.helpers import BATCH, SINGLE, body, cloudevent, headers


def stored_ids(runtime: Runtime) -> list[str]:
    return sorted(e.id for e in runtime.store.list_events(EventFilter(limit=1000)))


def test_single_cloudevent_is_stored_with_raw_data_and_times(client, keys, runtime):
    event = cloudevent("e1", data={"value": "0.1", "tokens": 12, "nested": {"model": "gpt"}})
    response = client.post("/api/v1/events", content=body(event), headers=headers(keys["ingest"], SINGLE))
    assert response.status_code == 204
    assert response.content == b""
    [item] = client.get("/api/v1/events", headers=headers(keys["read"])).json()
    assert item["event"] == {**event, "time": "2026-01-05T10:00:00Z"}
    assert item["ingestedAt"].endswith("Z")


def test_batch_content_type_stores_every_event(client, keys, runtime):
    batch = [cloudevent(f"b{i}", subject=f"cust_{i % 3}") for i in range(50)]
    response = client.post("/api/v1/events", content=body(batch), headers=headers(keys["ingest"], BATCH))
    assert response.status_code == 204
    assert stored_ids(runtime) == sorted(f"b{i}" for i in range(50))


@pytest.mark.parametrize("payload_kind", ["object", "array"])
def test_plain_json_accepts_one_event_or_an_array(client, keys, runtime, payload_kind):
    payload = cloudevent("p1") if payload_kind == "object" else [cloudevent("p1"), cloudevent("p2")]
    response = client.post("/api/v1/events", content=body(payload), headers=headers(keys["ingest"], "application/json"))
    assert response.status_code == 204
    assert stored_ids(runtime) == (["p1"] if payload_kind == "object" else ["p1", "p2"])


def test_time_defaults_to_now_and_data_is_optional(client, keys, runtime):
    event = cloudevent("no-time", time=..., data=...)
    assert (
        client.post("/api/v1/events", content=body(event), headers=headers(keys["ingest"], SINGLE)).status_code == 204
    )
    [item] = client.get("/api/v1/events", headers=headers(keys["read"])).json()
    assert "data" not in item["event"]
    assert item["event"]["time"][:10] == item["ingestedAt"][:10]


def test_exact_decimals_survive_storage(client, keys, runtime):
    value = "12345678901234567890.123456789"
    raw = (
        b'{"specversion":"1.0","id":"d1","source":"s","type":"t","subject":"c","time":"2026-01-05T10:00:00Z",'
        b'"data":{"a":0.1,"b":' + value.encode() + b',"c":1e-7}}'
    )
    assert client.post("/api/v1/events", content=raw, headers=headers(keys["ingest"], SINGLE)).status_code == 204
    [event] = runtime.store.list_events(EventFilter())
    assert event.data == {"a": Decimal("0.1"), "b": Decimal(value), "c": Decimal("1e-7")}
    listed = client.get("/api/v1/events", headers=headers(keys["read"])).content
    assert value.encode() in listed


def test_offsets_are_normalised_to_utc(client, keys, runtime):
    event = cloudevent("tz", time="2026-01-05T11:30:00+01:30")
    client.post("/api/v1/events", content=body(event), headers=headers(keys["ingest"], SINGLE))
    [item] = client.get("/api/v1/events", headers=headers(keys["read"])).json()
    assert item["event"]["time"] == "2026-01-05T10:00:00Z"


# -- validation ---------------------------------------------------------------------------------


def problem(response) -> dict:
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


@pytest.mark.parametrize(
    ("event", "field", "fragment"),
    [
        (cloudevent("x", id=...), "id", "is required"),
        (cloudevent("x", source=""), "source", "non-empty"),
        (cloudevent("x", type=5), "type", "non-empty string"),
        (cloudevent("x", subject=...), "subject", "is required"),
        (cloudevent("x", specversion="0.3"), "specversion", '"1.0"'),
        (cloudevent("x", specversion=...), "specversion", "is required"),
        (cloudevent("x", time="yesterday"), "time", "RFC 3339"),
        (cloudevent("x", time="2026-01-05T10:00:00"), "time", "time zone offset"),
        (cloudevent("x", data=[1, 2]), "data", "JSON object, got an array"),
        (cloudevent("x", data="text"), "data", "JSON object, got a string"),
        (cloudevent("x", datacontenttype="text/csv"), "datacontenttype", "application/json"),
    ],
)
def test_invalid_event_is_refused_naming_the_field(client, keys, runtime, event, field, fragment):
    response = client.post("/api/v1/events", content=body(event), headers=headers(keys["ingest"], SINGLE))
    assert response.status_code == 400
    details = problem(response)
    assert details["status"] == 400
    assert details["type"] == "urn:tallybook:problem:invalid-events"
    assert {"index": None, "field": field} == {k: details["errors"][0][k] for k in ("index", "field")}
    assert fragment in details["errors"][0]["message"]
    assert stored_ids(runtime) == []


def test_one_bad_event_rejects_the_whole_batch(client, keys, runtime):
    batch = [cloudevent(f"ok{i}") for i in range(5)]
    batch.insert(3, cloudevent("bad", time="not a time"))
    response = client.post("/api/v1/events", content=body(batch), headers=headers(keys["ingest"], BATCH))
    assert response.status_code == 400
    details = problem(response)
    assert details["errors"] == [
        {
            "index": 3,
            "field": "time",
            "message": "'not a time' is not an RFC 3339 timestamp (e.g. 2026-01-05T10:00:00Z)",
        }
    ]
    assert "nothing from this request was stored" in details["detail"]
    assert stored_ids(runtime) == []


def test_malformed_json_is_a_400_with_position(client, keys):
    response = client.post("/api/v1/events", content=b'{"id": ', headers=headers(keys["ingest"], SINGLE))
    assert response.status_code == 400
    assert "not valid JSON" in problem(response)["detail"]
    assert "line 1" in problem(response)["detail"]


def test_nan_is_not_json(client, keys):
    raw = b'{"specversion":"1.0","id":"n","source":"s","type":"t","subject":"c","data":{"v":NaN}}'
    response = client.post("/api/v1/events", content=raw, headers=headers(keys["ingest"], SINGLE))
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("content_type", "payload", "fragment"),
    [
        (SINGLE, [cloudevent("a")], "send arrays as application/cloudevents-batch+json"),
        (BATCH, cloudevent("a"), "JSON array"),
        ("application/json", "just a string", "one event object or an array"),
        (BATCH, [], "empty"),
    ],
)
def test_body_shape_must_match_content_type(client, keys, content_type, payload, fragment):
    response = client.post("/api/v1/events", content=body(payload), headers=headers(keys["ingest"], content_type))
    assert response.status_code == 400
    assert fragment in problem(response)["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
def test_wrong_content_type_is_415(client, keys, content_type):
    hdrs = headers(keys["ingest"], content_type)
    if content_type is None:
        hdrs["Content-Type"] = ""
    response = client.post("/api/v1/events", content=body(cloudevent("a")), headers=hdrs)
    assert response.status_code == 415
    assert "Content-Type must be" in problem(response)["detail"]


def test_content_type_parameters_are_ignored(client, keys, runtime):
    hdrs = headers(keys["ingest"], "application/cloudevents+json; charset=utf-8")
    assert client.post("/api/v1/events", content=body(cloudevent("cs")), headers=hdrs).status_code == 204


@pytest.fixture
def small_limits_client(database_url):
    from fastapi.testclient import TestClient

    from tallybook.api.app import create_app

    settings = Settings(
        database=DatabaseSettings(url=database_url),
        ingest=IngestSettings(max_batch_events=3, max_batch_bytes=2000),
    )
    runtime = Runtime.build(settings)
    empty_all_tables(runtime)
    key = runtime.keys.create("t", "admin").plaintext
    with TestClient(create_app(runtime)) as client:
        yield client, key, runtime


def test_batch_over_event_limit_is_413_and_stores_nothing(small_limits_client):
    client, key, runtime = small_limits_client
    batch = [cloudevent(f"e{i}", data=...) for i in range(4)]
    response = client.post("/api/v1/events", content=body(batch), headers=headers(key, BATCH))
    assert response.status_code == 413
    assert "the limit is 3 per request" in problem(response)["detail"]
    assert stored_ids(runtime) == []


def test_body_over_byte_limit_is_413(small_limits_client):
    client, key, runtime = small_limits_client
    batch = [cloudevent("big", data={"pad": "x" * 3000})]
    response = client.post("/api/v1/events", content=body(batch), headers=headers(key, BATCH))
    assert response.status_code == 413
    assert "2000 bytes" in problem(response)["detail"]
    # A chunked body (no Content-Length) is cut off at the limit too.
    chunks = iter([body(batch)[:1500], body(batch)[1500:]])
    response = client.post("/api/v1/events", content=chunks, headers=headers(key, BATCH))
    assert response.status_code == 413
    assert stored_ids(runtime) == []


def test_unpaired_surrogate_escapes_are_refused_naming_the_field(client, keys, runtime):
    """ "\\ud800" is valid JSON but not storable text; it must be a 400, not a failed commit."""
    raw = (
        b'[{"specversion":"1.0","id":"ok","source":"s","type":"t","subject":"c"},'
        b'{"specversion":"1.0","id":"bad","source":"s","type":"t","subject":"c\\ud800","data":{"k":"\\udfff"}}]'
    )
    response = client.post("/api/v1/events", content=raw, headers=headers(keys["ingest"], BATCH))
    assert response.status_code == 400
    errors = problem(response)["errors"]
    assert {(e["index"], e["field"]) for e in errors} == {(1, "subject"), (1, "data.k")}
    assert "unpaired UTF-16 surrogate" in errors[0]["message"]
    # A correctly paired surrogate (one emoji) is ordinary text.
    emoji = b'{"specversion":"1.0","id":"smile","source":"s","type":"t","subject":"\\ud83d\\ude00"}'
    assert client.post("/api/v1/events", content=emoji, headers=headers(keys["ingest"], SINGLE)).status_code == 204
    assert stored_ids(runtime) == ["smile"]


def test_codehooks_usage_refuses_unpaired_surrogates(client, keys, runtime):
    raw = b'{"customerId": "c\\ud800", "value": 1}'
    response = client.post(
        "/usage/api.calls", content=raw, headers={"x-apikey": keys["ingest"], "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert problem(response)["errors"][0]["field"] == "customerId"


def test_a_request_that_cannot_be_stored_does_not_fail_its_group(runtime):
    """If one request in a group commit fails in the store, the others still commit."""
    good = [Event("g", f"e{i}", "t", "s", 1, None) for i in range(3)]
    poison = [Event("p", "x", "t", "s\ud800", 1, None)]  # bypasses validation on purpose
    # Queue both while the writer is stopped, so the restarted writer takes them as one group.
    runtime.ingest.stop()
    requests = [_Request(batch, Future()) for batch in (good, poison)]
    for request in requests:
        runtime.ingest._queue.put(request)
    runtime.ingest.start()
    assert requests[0].future.result(timeout=30).accepted == 3
    with pytest.raises(Exception):  # noqa: B017 - the engine's own encoding error, whichever it is
        requests[1].future.result(timeout=30)
    assert stored_ids(runtime) == ["e0", "e1", "e2"]
