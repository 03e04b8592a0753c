"""GET /api/v2/events (OpenMeter's listEventsV2) on SQLite and PostgreSQL: filter objects, the cursor
walk (100,000 events of one subject while new ones arrive), voided events, customers, refusals."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from tallybook.clock import FixedClock, to_micros
from tallybook.config import Settings
from tallybook.customers.model import CustomerInput
from tallybook.eventlist.model import Cursor
from tallybook.ingest.events import Event
from tallybook.meters.models import Aggregation, MeterSpec
from tallybook.runtime import Runtime
from tallybook.store.schema import events as events_table
from tallybook.voids.model import Actor, EventKey, VoidRequest
from tests.conftest import empty_all_tables
from tests.helpers import BATCH, body, cloudevent, headers


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 2, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def rt(settings: Settings, clock: FixedClock) -> Iterator[Runtime]:
    runtime = Runtime.build(settings, clock=clock)
    empty_all_tables(runtime)
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
def api(rt: Runtime) -> Iterator[tuple[httpx.Client, str]]:
    from fastapi.testclient import TestClient

    from tallybook.api.app import create_app

    key = rt.keys.create("t", "admin").plaintext
    with TestClient(create_app(rt, manage_runtime=False), raise_server_exceptions=False) as client:
        yield client, key


def page(client: httpx.Client, key: str, flt: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
    if flt is not None:
        params["filter"] = json.dumps(flt)
    response = client.get("/api/v2/events", params=params, headers=headers(key))
    assert response.status_code == 200, response.text
    return dict(response.json())


def ids(client: httpx.Client, key: str, flt: dict[str, Any] | None = None, **params: Any) -> list[str]:
    return [item["event"]["id"] for item in page(client, key, flt, **params)["items"]]


@pytest.fixture
def seeded(api: tuple[httpx.Client, str], clock: FixedClock) -> tuple[httpx.Client, str]:
    client, key = api
    first = [
        cloudevent("a1", subject="alice", type="api.calls", time="2026-01-01T00:00:00Z"),
        cloudevent("a2", subject="alice", type="storage", time="2026-01-02T00:00:00Z"),
        cloudevent("b1", subject="bob", type="api.calls", time="2026-01-03T00:00:00Z"),
        cloudevent("B_1", subject="Bob", type="API.calls", time="2026-01-02T00:00:00Z", source="Other%"),
    ]
    assert client.post("/api/v1/events", content=body(first), headers=headers(key, BATCH)).status_code == 204
    clock.advance(timedelta(hours=1))
    later = [cloudevent("b2", subject="bob", type="api.calls", time="2026-01-01T12:00:00Z", source="other")]
    assert client.post("/api/v1/events", content=body(later), headers=headers(key, BATCH)).status_code == 204
    return client, key


def test_newest_event_time_first_and_the_later_stored_first_on_ties(seeded):
    client, key = seeded
    listed = page(client, key)
    assert [item["event"]["id"] for item in listed["items"]] == ["b1", "B_1", "a2", "b2", "a1"]
    assert "nextCursor" not in listed  # not a full page
    assert listed["items"][0] == {
        "event": {
            "specversion": "1.0",
            "id": "b1",
            "source": "svc",
            "type": "api.calls",
            "subject": "bob",
            "time": "2026-01-03T00:00:00Z",
            "data": {"value": 1},
        },
        "ingestedAt": "2026-02-01T12:00:00Z",
        "storedAt": "2026-02-01T12:00:00Z",
    }


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({}, ["b1", "B_1", "a2", "b2", "a1"]),
        ({"subject": {"$eq": "alice"}}, ["a2", "a1"]),
        ({"subject": {"$ne": "alice"}}, ["b1", "B_1", "b2"]),
        ({"subject": {"$in": ["alice", "Bob"]}}, ["B_1", "a2", "a1"]),
        ({"subject": {"$nin": ["alice", "Bob"]}}, ["b1", "b2"]),
        ({"subject": {"$like": "b%"}}, ["b1", "b2"]),  # case-sensitive on both engines
        ({"subject": {"$ilike": "B%"}}, ["b1", "B_1", "b2"]),
        ({"subject": {"$nlike": "b%"}}, ["B_1", "a2", "a1"]),
        ({"subject": {"$nilike": "B%"}}, ["a2", "a1"]),
        ({"id": {"$like": "B\\_%"}}, ["B_1"]),  # \_ is a literal underscore
        ({"id": {"$like": "_1"}}, ["b1", "a1"]),
        ({"source": {"$like": "Other\\%"}}, ["B_1"]),
        ({"type": {"$eq": "api.calls"}}, ["b1", "b2", "a1"]),
        ({"subject": {"$gt": "alice"}}, ["b1", "b2"]),  # code point order: "Bob" < "alice" < "bob"
        ({"subject": {"$lte": "Bob"}}, ["B_1"]),
        ({"subject": {"$or": [{"$eq": "alice"}, {"$eq": "Bob"}]}}, ["B_1", "a2", "a1"]),
        ({"subject": {"$and": [{"$like": "%b%"}, {"$ne": "Bob"}]}}, ["b1", "b2"]),
        ({"time": {"$gte": "2026-01-02T00:00:00Z"}}, ["b1", "B_1", "a2"]),
        ({"time": {"$gt": "2026-01-02T00:00:00Z"}}, ["b1"]),
        ({"time": {"$lt": "2026-01-02T00:00:00+01:00"}}, ["b2", "a1"]),
        ({"time": {"$lte": "2026-01-01T12:00:00Z"}}, ["b2", "a1"]),
        (
            {"time": {"$or": [{"$lt": "2026-01-01T06:00:00Z"}, {"$gte": "2026-01-03T00:00:00Z"}]}},
            ["b1", "a1"],
        ),
        ({"ingestedAt": {"$gte": "2026-02-01T12:30:00Z"}}, ["b2"]),
        ({"ingestedAt": {"$lt": "2026-02-01T12:30:00Z"}}, ["b1", "B_1", "a2", "a1"]),
        ({"subject": {"$eq": "bob"}, "type": {"$eq": "api.calls"}, "source": {"$eq": "svc"}}, ["b1"]),
        ({"subject": {}}, ["b1", "B_1", "a2", "b2", "a1"]),  # an empty filter object: no condition
    ],
)
def test_filters(seeded, flt, expected):
    client, key = seeded
    assert ids(client, key, flt) == expected


def test_limit_and_the_cursor_continue_where_the_page_ended(seeded):
    client, key = seeded
    first = page(client, key, limit=2)
    assert [i["event"]["id"] for i in first["items"]] == ["b1", "B_1"]
    second = page(client, key, limit=2, cursor=first["nextCursor"])
    assert [i["event"]["id"] for i in second["items"]] == ["a2", "b2"]
    third = page(client, key, limit=2, cursor=second["nextCursor"])
    assert [i["event"]["id"] for i in third["items"]] == ["a1"]
    assert "nextCursor" not in third
    # A full last page hands out a cursor; the page after it is empty and has none.
    full = page(client, key, limit=1, cursor=second["nextCursor"])
    assert page(client, key, limit=1, cursor=full["nextCursor"]) == {"items": []}
    # The cursor is opaque, but standard base64 with padding (OpenMeter's encoding) reads the same.
    decoded = Cursor.decode(first["nextCursor"])
    import base64

    standard = base64.b64encode(base64.urlsafe_b64decode(first["nextCursor"] + "==")).decode()
    assert Cursor.decode(standard) == decoded
    assert ids(client, key, limit=2, cursor=standard) == ["a2", "b2"]
    # Filters and cursors combine.
    by_subject = page(client, key, {"subject": {"$eq": "bob"}}, limit=1)
    assert ids(client, key, {"subject": {"$eq": "bob"}}, cursor=by_subject["nextCursor"]) == ["b2"]


def test_voided_events_follow_the_v1_list(rt: Runtime, seeded, clock: FixedClock):
    client, key = seeded
    clock.advance(timedelta(hours=1))
    record = rt.voids.void(VoidRequest(reason="test", actor=Actor("cli", name="t"), events=(EventKey("svc", "a2"),)))
    assert ids(client, key) == ["b1", "B_1", "b2", "a1"]
    with_voided = page(client, key, includeVoided="true")["items"]
    assert [i["event"]["id"] for i in with_voided] == ["b1", "B_1", "a2", "b2", "a1"]
    voided = with_voided[2]
    assert (voided["voidedAt"], voided["voidId"]) == ("2026-02-01T14:00:00Z", record.id)
    assert "voidedAt" not in with_voided[0] and "voidId" not in with_voided[0]
    # The v1 list agrees.
    v1 = client.get("/api/v1/events?includeVoided=true", headers=headers(key)).json()
    assert [i["event"]["id"] for i in v1] == [i["event"]["id"] for i in with_voided]


def test_customer_filter_and_customer_ids_on_items(rt: Runtime, seeded):
    client, key = seeded
    acme = rt.customers.create(CustomerInput(name="Acme", key="acme", subject_keys=("alice", "Bob")))
    listed = page(client, key, {"customerId": {"$in": [acme.id]}})["items"]
    assert [i["event"]["id"] for i in listed] == ["B_1", "a2", "a1"]
    assert {i["customerId"] for i in listed} == {acme.id}
    # A key names the customer too; events of unattributed subjects carry no customerId.
    assert ids(client, key, {"customerId": {"$in": ["acme"]}}) == ["B_1", "a2", "a1"]
    assert "customerId" not in page(client, key, {"subject": {"$eq": "bob"}})["items"][0]
    unknown = client.get(
        "/api/v2/events",
        params={"filter": json.dumps({"customerId": {"$in": [acme.id, "01G65Z755AFWAKHE12NY0CQ9FH"]}})},
        headers=headers(key),
    )
    assert unknown.status_code == 400
    detail = "filter.customerId.$in: no customer has the id (or key) '01G65Z755AFWAKHE12NY0CQ9FH'"
    assert unknown.json()["detail"] == detail


def test_events_a_meter_cannot_count_carry_the_reason(rt: Runtime, api):
    client, key = api
    rt.meters.create(MeterSpec(slug="calls", event_type="api.calls", aggregation=Aggregation.SUM, value_property="$.n"))
    sent = [cloudevent("ok", data={"n": 1}), cloudevent("bad", data={"n": "many"})]
    assert client.post("/api/v1/events", content=body(sent), headers=headers(key, BATCH)).status_code == 204
    items = {i["event"]["id"]: i for i in page(client, key)["items"]}
    assert "validationError" not in items["ok"]
    assert items["bad"]["validationError"].startswith("meter calls: ")


@pytest.mark.parametrize(
    ("params", "code", "detail"),
    [
        ({"filter": "{"}, "invalid-filter", "filter: not valid JSON"),
        ({"filter": "[1]"}, "invalid-filter", "filter: must be a JSON object"),
        ({"filter": '{"colour": {}}'}, "invalid-filter", "filter: unknown field 'colour'"),
        ({"filter": '{"subject": "acme"}'}, "invalid-filter", "filter.subject: must be a filter object"),
        ({"filter": '{"subject": {"$eq": "a", "$ne": "b"}}'}, "invalid-filter", "give exactly one operator"),
        ({"filter": '{"subject": {"$regex": "a"}}'}, "invalid-filter", "unknown operator '$regex'"),
        ({"filter": '{"subject": {"$eq": ""}}'}, "invalid-filter", "filter.subject.$eq: must not be empty"),
        ({"filter": '{"subject": {"$eq": 7}}'}, "invalid-filter", "filter.subject.$eq: must be a string"),
        ({"filter": '{"subject": {"$eq": "a\\u0000"}}'}, "invalid-filter", "filter: holds U+0000"),
        ({"filter": '{"subject": {"$in": "a"}}'}, "invalid-filter", "must be an array of strings"),
        ({"filter": '{"subject": {"$like": "a\\\\"}}'}, "invalid-filter", "lone escape character"),
        ({"filter": '{"subject": {"$or": []}}'}, "invalid-filter", "must be a non-empty array"),
        ({"filter": '{"subject": {"$or": [{}]}}'}, "invalid-filter", "an empty filter object"),
        (
            {"filter": '{"subject": {"$or": [{"$and": [{"$eq": "a"}]}]}}'},
            "invalid-filter",
            "filter.subject.$or[0].$and: $and and $or cannot nest this deep here",
        ),
        ({"filter": '{"time": {"$eq": "2026-01-01T00:00:00Z"}}'}, "invalid-filter", "unknown operator '$eq'"),
        ({"filter": '{"time": {"$gte": "2026-01-01"}}'}, "invalid-filter", "filter.time.$gte: '2026-01-01' is not"),
        ({"filter": '{"time": {"$gte": "2026-01-01T00:00:00"}}'}, "invalid-filter", "has no time zone offset"),
        ({"filter": '{"customerId": {"$in": []}}'}, "invalid-filter", "filter.customerId.$in: must be a non-empty"),
        ({"filter": '{"customerId": {"$eq": "x"}}'}, "invalid-filter", "filter.customerId: must be"),
        ({"cursor": "not a cursor"}, "invalid-cursor", "cursor: not a cursor of this list"),
        ({"cursor": "MjAyNi0wMS0wNVQxMDowMDo1OS4wMDAwMDBa"}, "invalid-cursor", "(no position in it)"),
        ({"cursor": "eWVzdGVyZGF5LDEy"}, "invalid-cursor", "(no time in it)"),
        ({"cursor": "//79"}, "invalid-cursor", "cursor: not a cursor of this list"),
        ({"limit": "0"}, "invalid-parameters", "limit"),
        ({"limit": "101"}, "invalid-parameters", "limit"),
        ({"clientId": "x" * 37}, "invalid-parameters", "clientId"),
    ],
)
def test_bad_filters_and_cursors_are_400_problems(seeded, params, code, detail):
    client, key = seeded
    response = client.get("/api/v2/events", params=params, headers=headers(key))
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == f"urn:tallybook:problem:{code}"
    assert detail in problem["detail"]


def test_the_largest_filter_runs_on_both_engines(seeded):
    """100 comparisons (the limit) in one $or, 1,000 values in one $in: no engine limit is hit."""
    client, key = seeded
    wide = {"$or": [{"$eq": f"s{i}"} for i in range(99)] + [{"$in": [f"x{i}" for i in range(999)] + ["bob"]}]}
    assert ids(client, key, {"subject": wide, "id": {"$or": [{"$like": f"%{i}"} for i in range(100)]}}) == ["b1", "b2"]
    too_many = {"$or": [{"$eq": f"s{i}"} for i in range(101)]}
    response = client.get("/api/v2/events", params={"filter": json.dumps({"subject": too_many})}, headers=headers(key))
    assert response.status_code == 400
    assert response.json()["detail"] == "filter.subject: at most 100 comparisons in one filter"


WALKED = 100_000
PAGE = 100


def test_a_cursor_walks_100k_events_of_one_subject_in_order_while_new_ones_arrive(rt: Runtime, api):
    """Every stored event of the subject is listed exactly once, in (time, seq) order, although
    events keep arriving during the walk: newer ones, ones at the cursor's very instant, ones the
    walk has passed (none of these are listed) and ones still ahead of it (listed in place)."""
    client, key = api
    started = time.perf_counter()
    base_us = to_micros(datetime(2026, 1, 1, tzinfo=UTC))
    # Two events per microsecond instant (ties broken by seq), and another subject's events between.
    walked = [
        Event("svc", f"w{i}", "api.calls", "walker", base_us + (i // 2) * 1_000_000, {"n": i}) for i in range(WALKED)
    ]
    others = [Event("svc", f"o{i}", "api.calls", "other", base_us + i * 5_000_000, {"n": i}) for i in range(10_000)]
    batch = 10_000
    for start in range(0, WALKED, batch):
        rt.ingest.ingest(walked[start : start + batch] + others[start // 10 : (start + batch) // 10])
    if rt.store.dialect_name == "postgresql":
        with rt.store.write() as conn:
            # Planner statistics for the table just filled, as autovacuum gathers them within a
            # minute; without any, PostgreSQL guesses a handful of matches and sorts them all.
            conn.execute(text("ANALYZE events"))
    stored = time.perf_counter()

    flt = json.dumps({"subject": {"$eq": "walker"}})
    seen: list[str] = []
    expected_extra: set[str] = set()
    not_listed: set[str] = set()
    cursor: str | None = None
    pages = 0
    ingest_s = 0.0
    while True:
        params = {"filter": flt, "limit": PAGE, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/v2/events", params=params, headers=headers(key))
        assert response.status_code == 200, response.text
        listed = response.json()
        seen.extend(item["event"]["id"] for item in listed["items"])
        pages += 1
        cursor = listed.get("nextCursor")
        if cursor is None:
            break
        if pages % 10 == 0:
            at = Cursor.decode(cursor).time_us
            arriving = {
                f"new-newest-{pages}": base_us + WALKED * 1_000_000 + pages,
                f"new-at-cursor-{pages}": at,  # same instant, later seq: before the cursor
                f"new-passed-{pages}": at + 1,
                f"new-ahead-{pages}": at - 1,
                f"new-oldest-{pages}": base_us - pages,
            }
            t0 = time.perf_counter()
            rt.ingest.ingest([Event("svc", i, "api.calls", "walker", t, None) for i, t in arriving.items()])
            ingest_s += time.perf_counter() - t0
            expected_extra.update(i for i in arriving if "ahead" in i or "oldest" in i)
            not_listed.update(i for i in arriving if not ("ahead" in i or "oldest" in i))
    walked_at = time.perf_counter()

    assert len(seen) == len(set(seen)), "an event was listed twice"
    assert set(seen) == {e.id for e in walked} | expected_extra
    assert not set(seen) & not_listed
    with rt.store.read() as conn:
        order = {
            row.event_id: (row.time_us, row.seq)
            for row in conn.execute(select(events_table.c.event_id, events_table.c.time_us, events_table.c.seq))
        }
    positions = [order[i] for i in seen]
    assert positions == sorted(positions, reverse=True), "the walk left (time, seq) order"
    print(
        f"\n{rt.store.dialect_name}: stored {WALKED + 10_000} events in {stored - started:.1f}s, "
        f"walked {len(seen)} in {pages} pages in {walked_at - stored:.1f}s (ingest {ingest_s:.1f}s)"
    )
