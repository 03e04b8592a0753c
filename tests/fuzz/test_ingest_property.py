"""Property: any body sent to the ingest endpoints is accepted (2xx) or refused (4xx), never a 5xx,
and afterwards every meter query and the event list still answer 200, on both engines.

The bodies are CloudEvents and codehooks records whose fields hold any JSON: huge integers, number
literals Python cannot hold in a float (1e999999999), NUL and other control characters, nesting,
wrong types. Events accumulate across examples, so one poison event is enough to fail the property.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tallybook.meters.models import Aggregation, MeterSpec
from tallybook.runtime import Runtime
from tests.conftest import auth

EVENT_TYPE = "fuzz.usage"
METERS = (
    MeterSpec(slug="fuzz_sum", event_type=EVENT_TYPE, aggregation=Aggregation.SUM, value_property="$.value"),
    MeterSpec(slug="fuzz_max", event_type=EVENT_TYPE, aggregation=Aggregation.MAX, value_property="$.value"),
    MeterSpec(slug="fuzz_count", event_type=EVENT_TYPE, aggregation=Aggregation.COUNT, group_by={"g": "$.g"}),
)
INGEST_MEDIA_TYPES = ("application/cloudevents+json", "application/cloudevents-batch+json", "application/json")


class Raw:
    """A JSON text spliced into the body as it is (numbers json.dumps would never write)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        shown = self.text if len(self.text) < 60 else f"{self.text[:25]}...({len(self.text)} chars)"
        return f"Raw({shown!r})"


def dump(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


number_literals = st.from_regex(r"\A-?(0|[1-9][0-9]{0,6})(\.[0-9]{1,8})?([eE][+-]?[0-9]{1,10})?\Z").map(Raw)
huge_integers = st.integers(min_value=4, max_value=6000).map(lambda digits: Raw("9" * digits))
texts = st.text(max_size=20)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    number_literals,
    huge_integers,
    texts,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
nested = st.integers(min_value=1, max_value=3000).map(lambda depth: Raw("[" * depth + "]" * depth))
values = st.one_of(scalars, json_values, nested)
times = st.one_of(
    st.none(),
    texts,
    st.sampled_from(
        ["2026-02-01T10:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999999-14:00", "2026-02-30T00:00Z"]
    ),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
)
ids = st.one_of(st.text(min_size=1, max_size=40), st.sampled_from(["e1", "e2", "\u0000", "a\u0000b"]))


@st.composite
def cloud_events(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(st.one_of(values, st.fixed_dictionaries({"value": values, "g": values})))
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": draw(ids),
        "source": draw(st.one_of(st.just("fuzz"), ids)),
        "type": draw(st.one_of(st.just(EVENT_TYPE), ids)),
        "subject": draw(st.one_of(st.just("cust"), ids)),
        "time": draw(times),
        "data": data,
    }
    dropped = draw(st.sets(st.sampled_from(sorted(event)), max_size=2))
    return {k: v for k, v in event.items() if k not in dropped}


@st.composite
def usage_records(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "eventType": draw(st.one_of(st.just(EVENT_TYPE), ids)),
        "customerId": draw(st.one_of(st.just("cust"), ids)),
        "value": draw(values),
        "metadata": draw(st.one_of(st.none(), values, st.fixed_dictionaries({"g": values}))),
        "id": draw(st.one_of(st.none(), ids)),
    }


requests = st.one_of(
    st.tuples(st.just("/api/v1/events"), st.sampled_from(INGEST_MEDIA_TYPES), cloud_events()),
    st.tuples(st.just("/api/v1/events"), st.sampled_from(INGEST_MEDIA_TYPES), st.lists(cloud_events(), max_size=3)),
    st.tuples(st.just(f"/usage/{EVENT_TYPE}"), st.just("application/json"), usage_records()),
    st.tuples(st.just("/usagebatch"), st.just("application/json"), st.lists(usage_records(), max_size=3)),
    st.tuples(st.sampled_from(["/api/v1/events", "/usagebatch"]), st.just("application/json"), values),
)


def test_any_ingest_body_is_accepted_or_refused_and_meters_keep_answering(
    client: httpx.Client, keys: dict[str, str], runtime: Runtime
) -> None:
    for spec in METERS:
        runtime.meters.create(spec)
    ingest, read = auth(keys["ingest"]), auth(keys["read"])

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=requests)
    def sent(request: tuple[str, str, Any]) -> None:
        path, media_type, body = request
        text = dump(body)
        answer = client.post(path, content=text.encode(), headers={**ingest, "Content-Type": media_type})
        assert answer.status_code < 500, f"{path} {media_type} {text[:300]!r}: {answer.status_code} {answer.text}"
        for spec in METERS:
            query = client.get(f"/api/v1/meters/{spec.slug}/query", params={"windowSize": "DAY"}, headers=read)
            assert query.status_code == 200, f"after {text[:300]!r}: {spec.slug}: {query.status_code} {query.text}"
        listed = client.get("/api/v1/events", headers=read)
        assert listed.status_code == 200, f"after {text[:300]!r}: events: {listed.status_code} {listed.text}"

    sent()
