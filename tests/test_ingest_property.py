"""Property: any JSON body sent to an ingest endpoint is answered 2xx or 4xx, never 5xx, and afterwards
every meter query, the event list and the aggregations still answer 200.

Bodies are written as raw JSON text so they can hold what Python's encoder never writes: integers of
thousands of digits, exponents no database stores, U+0000, lone surrogates, deep nesting. One engine
(SQLite) is enough here; the regressions in test_trust_edges.py run on both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tallybook.api.app import create_app
from tallybook.config import DatabaseSettings, Settings
from tallybook.runtime import Runtime

METERS = [
    {"slug": "sum_value", "eventType": "api.calls", "aggregation": "SUM", "valueProperty": "$.value"},
    {"slug": "max_tokens", "eventType": "api.calls", "aggregation": "MAX", "valueProperty": "$.usage.tokens"},
    {"slug": "users", "eventType": "api.calls", "aggregation": "UNIQUE_COUNT", "valueProperty": "$.user"},
    {"slug": "by_model", "eventType": "api.calls", "aggregation": "COUNT", "groupBy": {"model": "$.model"}},
    {"slug": "hooks", "eventType": "hook", "aggregation": "SUM", "valueProperty": "$.value"},
]


class Raw:
    """A JSON number written exactly as given (json.dumps would refuse or reformat it)."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


def render(value: Any) -> str:
    if isinstance(value, Raw):
        return value.literal
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return json.dumps(value)  # ensure_ascii: NUL and lone surrogates become \u escapes


numbers = st.one_of(
    st.integers(-(10**15), 10**15).map(lambda n: Raw(str(n))),
    st.decimals(allow_nan=False, allow_infinity=False, places=8).map(lambda d: Raw(str(d))),
    st.sampled_from(
        ["1e999999999", "-1e999999999", "1e-999999999", "0e-20000", "1e131071", "1e-7", "1e12", "-0.0"]
    ).map(Raw),
    st.integers(18, 5000).map(lambda n: Raw("9" * n)),
)
texts = st.one_of(
    st.text(st.characters(codec=None), max_size=12),
    st.sampled_from(["\x00", "a\x00b", "\ud800", "\udfff x", "\ud83d\ude00", "[[[{{{", "x" * 1100, "lots", "12.5"]),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
KEYS = st.one_of(st.sampled_from(["value", "usage", "tokens", "user", "model", "metadata"]), texts)
json_values = st.recursive(
    leaves,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(KEYS, children, max_size=4)),
    max_leaves=12,
)


@st.composite
def deep(draw: Any) -> Raw:
    """Arrays and objects nested 30 to 1,500 levels, already rendered (render would recurse)."""
    levels = draw(st.sampled_from([30, 40, 1500]))
    arrays = draw(st.booleans())
    opening, closing = ("[", "]") if arrays else ('{"k":', "}")
    return Raw(opening * levels + render(draw(leaves)) + closing * levels)


anything = st.one_of(json_values, deep())
times = st.sampled_from(
    [None, "2026-01-05T10:00:00Z", "2026-01-05T10:00:00.5+01:00", "0001-01-01T00:00:00+14:00", "20260105T100000Z", 7]
)


@st.composite
def cloudevent(draw: Any) -> Any:
    event: dict[str, Any] = {
        "specversion": draw(st.sampled_from(["1.0", "1.0", "0.3"])),
        "id": draw(st.one_of(st.uuids().map(str), texts)),
        "source": draw(st.sampled_from(["svc", "a\x00", "s" * 1100])),
        "type": draw(st.sampled_from(["api.calls", "api.calls", "hook", "other"])),
        "subject": draw(st.one_of(st.sampled_from(["cust_1", "cust_2"]), texts)),
    }
    when = draw(times)
    if when is not None:
        event["time"] = when
    if draw(st.booleans()):
        event["data"] = draw(
            st.one_of(
                st.fixed_dictionaries(
                    {"value": numbers, "usage": st.fixed_dictionaries({"tokens": numbers}), "user": texts},
                    optional={"model": st.one_of(texts, numbers), "extra": anything},
                ),
                anything,
            )
        )
    return event


@st.composite
def usage_record(draw: Any) -> Any:
    record: dict[str, Any] = {"customerId": draw(st.one_of(st.just("cust_1"), texts)), "value": draw(numbers)}
    if draw(st.booleans()):
        record["metadata"] = draw(st.one_of(st.dictionaries(KEYS, anything, max_size=3), anything))
    if draw(st.booleans()):
        record["timestamp"] = draw(times)
    return record


requests = st.one_of(
    st.tuples(st.just("/api/v1/events"), st.just("application/cloudevents+json"), st.one_of(cloudevent(), anything)),
    st.tuples(
        st.just("/api/v1/events"),
        st.just("application/cloudevents-batch+json"),
        st.one_of(st.lists(cloudevent(), min_size=1, max_size=4), anything),
    ),
    st.tuples(st.just("/usage/hook"), st.just("application/json"), st.one_of(usage_record(), anything)),
    st.tuples(
        st.just("/usagebatch"),
        st.just("application/json"),
        st.lists(usage_record().map(lambda r: {"eventType": "hook", **r}), min_size=1, max_size=4),
    ),
)


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    from fastapi.testclient import TestClient

    url = f"sqlite:///{tmp_path_factory.mktemp('property') / 'tallybook.db'}"
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=url)))
    keys = {scope: runtime.keys.create(scope, scope).plaintext for scope in ("admin", "read", "ingest")}
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        for meter in METERS:
            created = client.post("/api/v1/meters", json=meter, headers={"Authorization": f"Bearer {keys['admin']}"})
            assert created.status_code == 201, created.text
        yield client, keys


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests)
def test_any_ingest_body_is_answered_without_a_server_error_and_reads_keep_working(app_client, request):
    client, keys = app_client
    path, content_type, payload = request
    response = client.post(
        path,
        content=render(payload).encode("utf-8", "surrogatepass"),
        headers={"Authorization": f"Bearer {keys['ingest']}", "Content-Type": content_type},
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        return  # nothing was stored, so nothing the reads see has changed
    read = {"Authorization": f"Bearer {keys['read']}"}
    for meter in METERS:
        query = client.get(f"/api/v1/meters/{meter['slug']}/query", headers=read)
        assert query.status_code == 200, query.text
    assert client.get("/api/v1/events?limit=1000", headers=read).status_code == 200
    assert client.get("/events", headers=read).status_code == 200
    assert client.get("/aggregations?from=2020-01-01T00:00:00Z", headers=read).status_code == 200
