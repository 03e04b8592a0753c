"""OpenMeter's end-to-end suite (e2e/), ported: the cases on endpoints Tallybook shares with it.

Each test names the OpenMeter case it follows (e2e/e2e_test.go, e2e/streaming_test.go,
e2e/multisubject_test.go; the aggregation-over-an-empty-range table of
openmeter/streaming/clickhouse/connector_query_test.go and the CSV cases of
openmeter/server/server_test.go). Their meters (e2e/config.yaml) are created over the API here.
What differs, and why:

- Time comes from the fixture's clock (2026-06-01T12:00Z) instead of time.Now(), and random data
  from a seeded `random.Random` instead of gofakeit; the shapes of the data are OpenMeter's.
- OpenMeter polls until ClickHouse has the events; Tallybook's queries see every committed event.
- Loops of single-event requests send 200 events, not 1,000 (the batch case keeps 1,000).
- Values have at most 6 decimals (Tallybook refuses more at ingest: figures stay exact), so the
  connector case uses 0.456789 where OpenMeter sends 0.4567890123456789.
- Row order: OpenMeter's total rows come in ClickHouse's order; Tallybook sorts them by window,
  subject, customer and group values, so rows are compared sorted where OpenMeter's order is not
  defined.
- Validation messages are Tallybook's own; the tests check which events carry one.
- streaming_test.go also filters GET /api/v1/events by customerId; Tallybook's v1 event list has no
  customerId filter, so that part is checked through the meter query's filterCustomerId instead.
"""

# Fixtures are imported from tests.test_meters_helpers; test parameters then shadow the names.
# ruff: noqa: F811

from __future__ import annotations

import csv
import io
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tallybook.clock import format_rfc3339
from tests.test_meters_helpers import bearer, mclient, mclock, mkeys, mrt, utc  # noqa: F401  (fixtures)

NOW = utc(2026, 6, 1, 12)  # the mclock fixture's time
LOS_ANGELES = ZoneInfo("America/Los_Angeles")

# e2e/config.yaml's meters (those the ported cases use).
METERS: dict[str, dict[str, Any]] = {
    "ingest": {"eventType": "ingest", "aggregation": "SUM", "valueProperty": "$.duration_ms"},
    "batchingest": {"eventType": "batchingest", "aggregation": "SUM", "valueProperty": "$.duration_ms"},
    "ingest_content_type_application_json": {
        "eventType": "ingest_content_type_application_json",
        "aggregation": "SUM",
        "valueProperty": "$.duration_ms",
    },
    "ingest_invalid": {"eventType": "ingest_invalid", "aggregation": "SUM", "valueProperty": "$.duration_ms"},
    "dedupe": {"eventType": "dedupe", "aggregation": "COUNT"},
    "query": {
        "eventType": "query",
        "aggregation": "SUM",
        "valueProperty": "$.duration_ms",
        "groupBy": {"method": "$.method", "path": "$.path"},
    },
    "multi_subject_meter": {"eventType": "multi_subject", "aggregation": "COUNT"},
}


class Api:
    """The HTTP calls the ported cases make, with the keys they need."""

    def __init__(self, client: Any, keys: dict[str, str]) -> None:
        self.client = client
        self.keys = keys

    def create_meter(self, slug: str, **definition: Any) -> None:
        body = {"slug": slug, **(definition or METERS[slug])}
        response = self.client.post("/api/v1/meters", json=body, headers=bearer(self.keys["admin"]))
        assert response.status_code == 201, response.text

    def create_customer(self, name: str, key: str | None, subjects: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "currency": "USD", "usageAttribution": {"subjectKeys": subjects}}
        if key is not None:
            body["key"] = key
        response = self.client.post("/api/v1/customers", json=body, headers=bearer(self.keys["admin"]))
        assert response.status_code == 201, response.text
        return response.json()

    def ingest(self, payload: Any, content_type: str = "application/cloudevents+json") -> Any:
        headers = {**bearer(self.keys["ingest"]), "Content-Type": content_type}
        raw = payload if isinstance(payload, str) else json.dumps(payload)
        return self.client.post("/api/v1/events", content=raw, headers=headers)

    def ingest_ok(self, payload: Any, content_type: str = "application/cloudevents+json") -> None:
        response = self.ingest(payload, content_type)
        assert response.status_code == 204, response.text

    def query(self, slug: str, params: Any = None, accept: str | None = None) -> Any:
        headers = bearer(self.keys["read"])
        if accept:
            headers["Accept"] = accept
        return self.client.get(f"/api/v1/meters/{slug}/query", params=params, headers=headers)

    def query_ok(self, slug: str, params: Any = None) -> dict[str, Any]:
        response = self.query(slug, params)
        assert response.status_code == 200, response.text
        return response.json()

    def query_post(self, slug: str, body: dict[str, Any], accept: str | None = None) -> Any:
        headers = bearer(self.keys["read"])
        if accept:
            headers["Accept"] = accept
        return self.client.post(f"/api/v1/meters/{slug}/query", json=body, headers=headers)

    def list_events(self, **params: Any) -> list[dict[str, Any]]:
        response = self.client.get("/api/v1/events", params=params, headers=bearer(self.keys["read"]))
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def api(mrt, mclient, mkeys) -> Api:
    return Api(mclient, mkeys)


_ids = iter(range(10**9))


def cloudevent(
    type: str, subject: str, time: datetime, data: Any = None, *, id: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": id or f"e2e-{next(_ids)}",
        "source": "my-app",
        "type": type,
        "subject": subject,
        "time": format_rfc3339(time),
        **extra,
    }
    if data is not None:
        body["data"] = data
    return body


def date_range(rng: random.Random, start: datetime, end: datetime) -> datetime:
    """gofakeit.DateRange: a uniformly random instant in [start, end], whole seconds."""
    span = int((end - start).total_seconds())
    return start + timedelta(seconds=rng.randint(0, span))


def minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def iso(at: datetime) -> str:
    return format_rfc3339(at.astimezone(UTC))


def total_row(value: float, start: datetime, end: datetime, **extra: Any) -> dict[str, Any]:
    return {"value": value, "windowStart": iso(start), "windowEnd": iso(end), "subject": None, "groupBy": {}, **extra}


# -- e2e_test.go: TestIngest, TestIngestContentTypeApplicationJSON, TestBatchIngest ---------------------


def test_ingest_then_query_without_parameters(api):
    """TestIngest: events up to 30 days either side of now (so half are future-dated); a query
    without parameters counts all of them in one row spanning the data."""
    api.create_meter("ingest")
    rng = random.Random(1)
    times, total = [], 0
    for _ in range(200):
        at = date_range(rng, NOW - timedelta(days=30), NOW + timedelta(days=30))
        duration = rng.randint(1, 100)
        times.append(at)
        total += duration
        api.ingest_ok(cloudevent("ingest", "customer-1", at, {"duration_ms": str(duration)}))
    assert max(times) > NOW
    body = api.query_ok("ingest")
    assert body == {"data": [total_row(total, minute(min(times)), minute(max(times)) + timedelta(minutes=1))]}


def test_ingest_content_type_application_json(api):
    """TestIngestContentTypeApplicationJSON: application/json takes one event or an array."""
    slug = "ingest_content_type_application_json"
    api.create_meter(slug)
    at = NOW - timedelta(hours=1)
    api.ingest_ok(cloudevent(slug, "customer-1", at, {"duration_ms": "100"}), "application/json")
    api.ingest_ok(
        [cloudevent(slug, "customer-1", at, {"duration_ms": "100"}) for _ in range(2)],
        "application/json",
    )
    body = api.query_ok(slug)
    assert [row["value"] for row in body["data"]] == [300]


def test_batch_ingest(api):
    """TestBatchIngest: one batch of 1,000 events, future-dated ones included."""
    api.create_meter("batchingest")
    rng = random.Random(2)
    events, total = [], 0
    for _ in range(1000):
        duration = rng.randint(1, 1000)
        total += duration
        at = date_range(rng, NOW - timedelta(days=30), NOW + timedelta(days=30))
        events.append(cloudevent("batchingest", "customer-1", at, {"duration_ms": str(duration)}))
    api.ingest_ok(events, "application/cloudevents-batch+json")
    body = api.query_ok("batchingest")
    assert len(body["data"]) == 1 and body["data"][0]["value"] == total


# -- e2e_test.go: TestInvalidIngest, TestDedupe ---------------------------------------------------------


def test_invalid_ingest(api):
    """TestInvalidIngest: non-JSON data is refused; events the meter cannot use are stored, listed
    with a validation error, and left out of the figure."""
    api.create_meter("ingest_invalid")
    kind = subject = "ingest_invalid"
    base = NOW - timedelta(hours=1)
    at = iter(base - timedelta(minutes=i) for i in range(1, 100))  # each event a minute earlier

    xml = cloudevent(kind, subject, next(at), "<xml></xml>", datacontenttype="application/xml")
    assert api.ingest(xml).status_code == 400
    assert api.ingest(cloudevent(kind, subject, next(at), "string")).status_code == 400
    null_data = cloudevent(kind, subject, next(at))
    null_data["data"] = None
    api.ingest_ok(null_data)
    api.ingest_ok(cloudevent(kind, subject, next(at)))  # no data
    api.ingest_ok(cloudevent(kind, subject, next(at), {}))
    api.ingest_ok(cloudevent(kind, subject, next(at), {"duration_ms": "NaN"}))
    api.ingest_ok(cloudevent(kind, subject, next(at), {"duration_ms": "Inf"}))
    api.ingest_ok(cloudevent(kind, subject, next(at), {"duration_ms": "100"}))

    assert [row["value"] for row in api.query_ok("ingest_invalid")["data"]] == [100]
    events = api.list_events(subject=subject)
    assert len(events) == 6  # the two refused events were not stored
    # Newest event time first: null data, no data, empty data, NaN, Inf, then the valid one.
    assert [e["event"].get("data") for e in events] == [
        None,
        None,
        {},
        {"duration_ms": "NaN"},
        {"duration_ms": "Inf"},
        {"duration_ms": "100"},
    ]
    for listed in events[:5]:
        assert "$.duration_ms" in listed["validationError"], listed
    assert "validationError" not in events[5]


def test_dedupe(api):
    """TestDedupe: the same (source, id) at different times counts once."""
    api.create_meter("dedupe")
    rng = random.Random(3)
    for _ in range(200):
        at = date_range(rng, NOW - timedelta(days=30), NOW + timedelta(days=30))
        api.ingest_ok(cloudevent("dedupe", "customer-1", at, {}, id="52f44f66-020f-4fa9-a733-102a8ef6f515"))
    assert [row["value"] for row in api.query_ok("dedupe")["data"]] == [1]


# -- e2e_test.go: TestQuery -----------------------------------------------------------------------------

CUSTOMERS = 5
PATHS = ["/", "/about", "/users", "/contact"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
# OpenMeter picks a random day between 2023-05-06 and a future date; here a day after the clock's
# now, so every event is future-dated (a query without `to` must still count them all).
T = utc(2026, 7, 16)


@pytest.fixture
def query_events(api) -> datetime:
    """TestQuery's data: at T, T+1m, T+1h and T+1d, one event per customer-1..5, 100 ms each."""
    api.create_meter("query")
    rng = random.Random(8675309)
    events = []
    for at in (T, T + timedelta(minutes=1), T + timedelta(hours=1), T + timedelta(days=1)):
        method, path = rng.choice(METHODS), rng.choice(PATHS)
        for i in range(CUSTOMERS):
            data = {"duration_ms": "100", "method": method, "path": path}
            events.append(cloudevent("query", f"customer-{i + 1}", at, data))
    api.ingest_ok(events, "application/cloudevents-batch+json")
    return T


def test_query_total(api, query_events):
    body = api.query_ok("query")
    assert body == {"data": [total_row(CUSTOMERS * 4 * 100, T, T + timedelta(days=1, minutes=1))]}


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (
            "MINUTE",
            [
                (T, timedelta(minutes=1), 500),
                (T + timedelta(minutes=1), timedelta(minutes=1), 500),
                (T + timedelta(hours=1), timedelta(minutes=1), 500),
                (T + timedelta(days=1), timedelta(minutes=1), 500),
            ],
        ),
        (
            "HOUR",
            [
                (T, timedelta(hours=1), 1000),
                (T + timedelta(hours=1), timedelta(hours=1), 500),
                (T + timedelta(days=1), timedelta(hours=1), 500),
            ],
        ),
        ("DAY", [(T, timedelta(days=1), 1500), (T + timedelta(days=1), timedelta(days=1), 500)]),
    ],
)
def test_query_window_size(api, query_events, size, expected):
    """TestQuery/WindowSize: no from/to, only the windows that have events, windowSize echoed."""
    body = api.query_ok("query", {"windowSize": size})
    assert body == {
        "windowSize": size,
        "data": [total_row(value, start, start + length) for start, length, value in expected],
    }


def test_query_subject(api, query_events):
    """TestQuery/Subject: `subject` filters and groups by subject; each row spans its data."""
    body = api.query_ok("query", [("subject", "customer-1"), ("subject", "customer-2")])
    end = T + timedelta(days=1, minutes=1)
    assert sorted(body["data"], key=lambda r: r["subject"]) == [
        total_row(400, T, end, subject="customer-1"),
        total_row(400, T, end, subject="customer-2"),
    ]
    assert set(body) == {"data"}


@pytest.mark.parametrize("accept", [None, "application/json"])
def test_query_post_json(api, query_events, accept):
    """TestQuery/PostJSON: an empty body is a query without parameters; JSON by default."""
    response = api.query_post("query", {}, accept=accept)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"data": [total_row(CUSTOMERS * 4 * 100, T, T + timedelta(days=1, minutes=1))]}


def test_query_post_csv(api, query_events):
    """TestQuery/PostCSV: the exact body and Content-Type."""
    response = api.query_post("query", {}, accept="text/csv")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv"
    end = T + timedelta(days=1, minutes=1)
    assert response.text == f"window_start,window_end,value\n{iso(T)},{iso(end)},2000.000000\n"


def test_query_csv_columns_follow_the_grouping(api, query_events):
    """server_test.go "query meter as csv" / "... with subject": the subject column only when the
    query groups by subject; the other groupBy keys follow in the order asked."""
    plain = api.query("query", accept="text/csv")
    assert plain.text.splitlines()[0] == "window_start,window_end,value"
    by_subject = api.query("query", {"subject": "customer-1"}, accept="text/csv")
    end = T + timedelta(days=1, minutes=1)
    assert by_subject.text == f"window_start,window_end,subject,value\n{iso(T)},{iso(end)},customer-1,400.000000\n"
    grouped = api.query(
        "query", [("groupBy", "path"), ("groupBy", "subject"), ("windowSize", "DAY")], accept="text/csv"
    )
    rows = list(csv.reader(io.StringIO(grouped.text)))
    assert rows[0] == ["window_start", "window_end", "subject", "path", "value"]
    assert len(rows) > 1 and all(len(row) == 5 for row in rows)


# -- e2e_test.go: TestQueryDSTTransition -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "dst_day"),
    [
        ([(3, d) for d in range(6, 13)], (3, 9)),  # spring forward: 9 March 2025, 2am -> 3am
        ([(10, 30), (10, 31), (11, 1), (11, 2), (11, 3), (11, 4), (11, 5)], (11, 2)),  # fall back
    ],
    ids=["spring_forward", "fall_back"],
)
def test_query_dst_transition(api, days, dst_day):
    """TestQueryDSTTransition: DAY windows in America/Los_Angeles stay contiguous and start at
    local midnight across both 2025 changes; the change day is a whole local day."""
    api.create_meter("query")
    subject = "customer-dst"
    events = [
        cloudevent("query", subject, datetime(2025, month, day, 10, tzinfo=LOS_ANGELES), {"duration_ms": "100"})
        for month, day in days
    ]
    api.ingest_ok(events, "application/cloudevents-batch+json")
    first, last = days[0], days[-1]
    start = datetime(2025, first[0], first[1], tzinfo=LOS_ANGELES)
    end = datetime(2025, last[0], last[1], tzinfo=LOS_ANGELES) + timedelta(days=1)
    body = api.query_ok(
        "query",
        {
            "subject": subject,
            "windowSize": "DAY",
            "windowTimeZone": "America/Los_Angeles",
            "from": start.isoformat(),
            "to": end.isoformat(),
        },
    )
    rows = body["data"]
    assert len(rows) == 7
    starts = [datetime.fromisoformat(r["windowStart"]).astimezone(LOS_ANGELES) for r in rows]
    ends = [datetime.fromisoformat(r["windowEnd"]).astimezone(LOS_ANGELES) for r in rows]
    assert ends[:-1] == starts[1:]  # no gap, no overlap
    assert all((s.hour, s.minute, s.second) == (0, 0, 0) for s in starts)
    change = datetime(2025, dst_day[0], dst_day[1], tzinfo=LOS_ANGELES)
    assert (starts[3], ends[3]) == (change, datetime(2025, dst_day[0], dst_day[1] + 1, tzinfo=LOS_ANGELES))
    assert all(r["subject"] == subject and r["value"] == 100 for r in rows)


# -- connector_query_test.go: every aggregation, with and without events in range -----------------------


@pytest.mark.parametrize(
    ("aggregation", "value_property", "with_events", "without_events"),
    [
        ("SUM", "$.value", 123.456789, None),
        ("COUNT", None, 3, 0),
        ("AVG", "$.value", 61.7283945, None),
        ("MIN", "$.value", 0.456789, None),
        ("MAX", "$.value", 123, None),
        ("UNIQUE_COUNT", "$.name", 2, 0),
        ("LATEST", "$.value", 0.456789, None),
    ],
)
def test_aggregation_over_a_range_with_and_without_events(
    api, aggregation, value_property, with_events, without_events
):
    """TestConnectorQueryMeter: three events a minute ago (the last with null value and name). Over
    [now-1h, now) each aggregation has its value; over [now, now+1h) the counts answer a row of 0
    and the others no row. The row's window is the query's from and to."""
    definition: dict[str, Any] = {"eventType": "test-event", "aggregation": aggregation}
    if value_property:
        definition["valueProperty"] = value_property
    api.create_meter("test_meter", **definition)
    at = NOW - timedelta(minutes=1)
    api.ingest_ok(
        [
            cloudevent("test-event", "test-subject", at, {"value": 123, "name": 1}),
            cloudevent("test-event", "test-subject", at + timedelta(seconds=1), {"value": "0.456789", "name": "a"}),
            cloudevent("test-event", "test-subject", at + timedelta(seconds=2), {"value": None, "name": None}),
        ],
        "application/cloudevents-batch+json",
    )
    for start, end, expected in (
        (NOW - timedelta(hours=1), NOW, with_events),
        (NOW, NOW + timedelta(hours=1), without_events),
    ):
        body = api.query_ok("test_meter", {"from": iso(start), "to": iso(end)})
        rows = [] if expected is None else [total_row(expected, start, end)]
        assert body == {"from": iso(start), "to": iso(end), "data": rows}


# -- multisubject_test.go, streaming_test.go: customers with several subjects ---------------------------


def test_usage_aggregates_across_a_customers_subjects(api):
    """TestMultiSubject ("Should aggregate usage across all subjects")."""
    api.create_meter("multi_subject_meter")
    subjects = ["multi_subject_1", "multi_subject_2"]
    customer = api.create_customer("Test Customer Multi Subject", None, subjects)
    rng = random.Random(4)
    for subject in subjects:
        api.ingest_ok(cloudevent("multi_subject", subject, date_range(rng, NOW, NOW + timedelta(seconds=2))))
    assert [row["value"] for row in api.query_ok("multi_subject_meter")["data"]] == [2]
    by_customer = api.query_ok("multi_subject_meter", {"filterCustomerId": customer["id"]})
    assert [(row["customerId"], row["value"]) for row in by_customer["data"]] == [(customer["id"], 2)]
    # OpenMeter's CSV has a customer_id column here but leaves it empty; Tallybook fills it in.
    as_csv = api.query("multi_subject_meter", {"filterCustomerId": customer["id"]}, accept="text/csv")
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    assert rows[0] == ["window_start", "window_end", "customer_id", "value"]
    assert [row[2:] for row in rows[1:]] == [[customer["id"], "2.000000"]]


def test_usage_is_attributed_by_customer_key_and_subject_keys(api):
    """TestListEventsByCustomerAttribution: events sent with the customer's key or either subject
    key belong to the customer; each can still be listed by its own subject."""
    api.create_meter("streaming_e2e", eventType="streaming-e2e", aggregation="COUNT")
    key = "streaming-customer"
    subjects = ["streaming-subject-1", "streaming-subject-'2'"]
    customer = api.create_customer("Streaming E2E Customer", key, subjects)
    at = NOW
    ids = []
    for i, attribution in enumerate([key, *subjects]):
        event = cloudevent(
            "streaming-e2e", attribution, at + timedelta(milliseconds=i), {"attributionKey": attribution}
        )
        ids.append(event["id"])
        api.ingest_ok(event)
    body = api.query_ok("streaming_e2e", {"filterCustomerId": customer["id"]})
    assert [(row["customerId"], row["value"]) for row in body["data"]] == [(customer["id"], 3)]
    for event_id, attribution in zip(ids, [key, *subjects], strict=True):
        listed = api.list_events(subject=attribution, **{"from": iso(at - timedelta(minutes=1)), "limit": 100})
        assert [e["event"]["id"] for e in listed] == [event_id]


# -- OpenMeter's query code beyond its e2e suite (openmeter/streaming/clickhouse/meter_query.go) --------


def test_from_is_inclusive_and_to_exclusive(api):
    """meter_query.go filters `time >= from AND time < to`, whatever the spec's prose says of `to`."""
    api.create_meter("dedupe")
    start, end = utc(2026, 5, 1), utc(2026, 5, 2)
    api.ingest_ok([cloudevent("dedupe", "c", at) for at in (start, end)], "application/cloudevents-batch+json")
    body = api.query_ok("dedupe", {"from": iso(start), "to": iso(end)})
    assert [(row["windowStart"], row["windowEnd"], row["value"]) for row in body["data"]] == [(iso(start), iso(end), 1)]
    windowed = api.query_ok("dedupe", {"from": iso(start), "to": iso(end), "windowSize": "HOUR"})
    assert [row["windowStart"] for row in windowed["data"]] == [iso(start)]


def test_one_open_bound_gives_the_data_span_on_the_other_side(api):
    """A total with only `from` ends at the end of the last event's minute; with only `to`, it
    starts at the minute of the first event (QueryMeter replaces only the bounds that were sent)."""
    api.create_meter("dedupe")
    first, last = utc(2026, 5, 1, 10, 15, 30), utc(2026, 8, 1, 9, 59, 59)
    api.ingest_ok([cloudevent("dedupe", "c", at) for at in (first, last)], "application/cloudevents-batch+json")
    since = api.query_ok("dedupe", {"from": iso(utc(2026, 4, 1))})
    assert since == {"from": iso(utc(2026, 4, 1)), "data": [total_row(2, utc(2026, 4, 1), utc(2026, 8, 1, 10))]}
    until = api.query_ok("dedupe", {"to": iso(utc(2026, 9, 1))})
    assert until == {"to": iso(utc(2026, 9, 1)), "data": [total_row(2, utc(2026, 5, 1, 10, 15), utc(2026, 9, 1))]}
    nothing = api.query_ok("dedupe", {"from": iso(utc(2026, 9, 1))})
    assert nothing == {"from": iso(utc(2026, 9, 1)), "data": []}


def test_only_future_dated_events_and_no_events_never_fail_a_query_without_parameters(api):
    api.create_meter("dedupe")
    api.create_meter("query")
    assert api.query_ok("query") == {"data": []}
    assert api.query_ok("query", {"windowSize": "MINUTE"}) == {"windowSize": "MINUTE", "data": []}
    future = NOW + timedelta(days=400)
    api.ingest_ok(cloudevent("dedupe", "c", future))
    assert api.query_ok("dedupe") == {"data": [total_row(1, future, future + timedelta(minutes=1))]}


def test_unbounded_minute_windows_over_years_answer_only_the_windows_with_events(api):
    """Two years of data by MINUTE (over a million windows between the first and last event):
    OpenMeter answers the windows that have events, and so does Tallybook, without listing the
    empty ones; a half-hour zone's HOUR windows likewise."""
    api.create_meter("dedupe")
    times = [utc(2025, 1, 1, 0, 0, 30), utc(2025, 7, 4, 12, 1), utc(2026, 12, 31, 23, 59, 59)]
    api.ingest_ok([cloudevent("dedupe", "c", at) for at in times], "application/cloudevents-batch+json")
    body = api.query_ok("dedupe", {"windowSize": "MINUTE"})
    assert [(row["windowStart"], row["value"]) for row in body["data"]] == [(iso(minute(t)), 1) for t in times]
    kolkata = api.query_ok("dedupe", {"windowSize": "HOUR", "windowTimeZone": "Asia/Kolkata"})
    assert [row["windowStart"] for row in kolkata["data"]] == [
        "2024-12-31T23:30:00Z",
        "2025-07-04T11:30:00Z",
        "2026-12-31T23:30:00Z",
    ]
