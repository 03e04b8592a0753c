"""Issue 12, items 1, 3, 4, 5: inputs that used to be accepted and then broke metering, or that ended
in a 500/503, are refused with a 400 naming what to fix, the same way on SQLite and PostgreSQL; and
values already stored (or read by a meter created later) are recorded as not counted, never a 500."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from tallybook import jsonutil
from tallybook.cli.main import app as cli_app
from tallybook.ingest.events import Event, InvalidEvents
from tallybook.ingest.limits import MAX_JSON_DEPTH, MAX_KEY_BYTES
from tallybook.store.base import EventFilter
from tests.helpers import BATCH, SINGLE, body, cloudevent, headers

HUGE = "9" * 4301  # one digit past Python's int-from-text limit (sys.get_int_max_str_digits)


def raw_event(event_id: str, data: str, **fields: str) -> bytes:
    """A CloudEvent whose `data` is given as raw JSON text (numbers orjson would not write)."""
    head = {"specversion": "1.0", "id": event_id, "source": "svc", "type": "api.calls", "subject": "cust_1"}
    head.update({"time": "2026-01-05T10:00:00Z", **fields})
    return body(head)[:-1] + b',"data":' + data.encode() + b"}"


def make_meter(client: Any, keys: dict[str, str], slug: str = "calls", **spec: Any) -> None:
    definition = {
        "slug": slug,
        "name": slug,
        "eventType": "api.calls",
        "aggregation": "SUM",
        "valueProperty": "$.value",
    }
    definition.update(spec)
    response = client.post("/api/v1/meters", json=definition, headers=headers(keys["admin"]))
    assert response.status_code == 201, response.text


def post(client: Any, keys: dict[str, str], content: bytes, content_type: str = SINGLE) -> Any:
    return client.post("/api/v1/events", content=content, headers=headers(keys["ingest"], content_type))


def assert_reads_answer(client: Any, keys: dict[str, str], slugs: tuple[str, ...] = ("calls",)) -> list[Any]:
    """Every read the issue saw fail answers 200; returns the meters' query rows."""
    read = headers(keys["read"])
    rows = []
    for slug in slugs:
        response = client.get(f"/api/v1/meters/{slug}/query", headers=read)
        assert response.status_code == 200, response.text
        rows.append(response.json()["data"])
    assert client.get("/api/v1/events", headers=read).status_code == 200
    aggregations = client.get("/aggregations?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z", headers=read)
    assert aggregations.status_code == 200, aggregations.text
    return rows


def refusal(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:tallybook:problem:invalid-events"
    return [{k: e[k] for k in ("index", "field")} for e in problem["errors"]]


def stored_ids(runtime: Any) -> set[str]:
    return {e.id for e in runtime.store.list_events(EventFilter(limit=1000))}


# -- item 1: the poison event ----------------------------------------------------------------------


@pytest.mark.parametrize("number", [HUGE, "1e999999999", "1e-7", "1000000000000"])
def test_an_out_of_domain_number_in_a_metered_field_is_refused_naming_event_and_field(client, keys, runtime, number):
    make_meter(client, keys)
    batch = b"[" + raw_event("ok", '{"value": 2}') + b"," + raw_event("bad", '{"value": ' + number + "}") + b"]"
    response = post(client, keys, batch, BATCH)
    assert refusal(response) == [{"index": 1, "field": "data.value"}]
    assert stored_ids(runtime) == set()
    assert assert_reads_answer(client, keys) == [[]]


def test_a_numeric_string_in_a_metered_field_is_held_to_the_same_domain(client, keys, runtime):
    make_meter(client, keys)
    response = post(client, keys, body(cloudevent("s", data={"value": "12345678901234567890"})))
    assert refusal(response) == [{"index": None, "field": "data.value"}]
    assert "meter calls counts this field" in response.json()["errors"][0]["message"]


def test_a_huge_integer_in_another_key_is_stored_as_sent_and_never_counted(client, keys, runtime):
    make_meter(client, keys)
    assert post(client, keys, raw_event("e1", '{"value": 2, "blob": ' + HUGE + "}")).status_code == 204
    [rows] = assert_reads_answer(client, keys)
    assert [row["value"] for row in rows] == [2]
    listed = client.get("/api/v1/events", headers=headers(keys["read"]))
    assert f'"blob":{HUGE}'.encode() in listed.content  # every digit, as sent
    [stored] = runtime.store.list_events(EventFilter())
    assert stored.data == {"value": 2, "blob": Decimal(HUGE)}


@pytest.mark.parametrize("key", ["value", "other"])
def test_a_number_postgresql_cannot_store_is_refused_on_both_engines(client, keys, runtime, key):
    make_meter(client, keys)
    response = post(client, keys, raw_event("e", '{"value": 1, "' + key + '": 1e999999999}'))
    assert refusal(response) == [{"index": None, "field": f"data.{key}"}]
    assert "digits before the decimal point" in response.json()["errors"][0]["message"]
    assert assert_reads_answer(client, keys) == [[]]


def test_a_meter_created_later_records_out_of_domain_values_as_not_counted(client, keys, runtime):
    for i, value in enumerate([HUGE, "0.00000001", "7"]):
        assert post(client, keys, raw_event(f"e{i}", '{"value": 1, "later": ' + value + "}")).status_code == 204
    make_meter(client, keys, slug="later", valueProperty="$.later")
    [rows] = assert_reads_answer(client, keys, ("later",))
    assert [row["value"] for row in rows] == [7]
    meter = client.get("/api/v1/meters/later", headers=headers(keys["read"])).json()
    assert meter["annotations"]["tallybook.invalidEvents"] == 2
    listed = {
        i["event"]["id"]: i.get("validationError")
        for i in jsonutil.loads(client.get("/api/v1/events", headers=headers(keys["read"])).content)
    }
    assert "meter later: valueProperty $.later is 999999999999…999999 (4,301 characters)" in listed["e0"]
    assert "too many digits after the decimal point" in listed["e1"]
    assert listed["e2"] is None


def test_events_stored_before_the_checks_are_not_counted_and_nothing_fails(client, keys, runtime):
    """Rows the old code accepted: the materializer records them as errors and goes on."""
    make_meter(client, keys)
    make_meter(client, keys, slug="by_region", aggregation="COUNT", valueProperty=None, groupBy={"region": "$.region"})
    old = [
        Event("svc", "huge", "api.calls", "cust_1", 1_767_607_200_000_000, {"value": Decimal(HUGE)}),
        Event("svc", "long", "api.calls", "cust_1", 1_767_607_200_000_000, {"value": 1, "region": "r" * 5000}),
        Event("svc", "fine", "api.calls", "cust_1", 1_767_607_200_000_000, {"value": 3, "region": "eu"}),
    ]
    if runtime.store.dialect_name == "sqlite":  # PostgreSQL's numeric never stored this one
        old.append(Event("svc", "exp", "api.calls", "cust_1", 1_767_607_200_000_000, {"value": Decimal("1e999999999")}))
    with pytest.raises(InvalidEvents):  # the writer now checks what meters read ...
        runtime.ingest.ingest(old)
    assert stored_ids(runtime) == set()
    with runtime.store.write() as conn:  # ... so store them as the old code did
        runtime.store.insert_events(conn, old, 1_767_607_200_000_000)
    calls, regions = assert_reads_answer(client, keys, ("calls", "by_region"))
    assert [row["value"] for row in calls] == [4]  # "long" and "fine": 1 + 3
    assert [row["value"] for row in regions] == [len(old) - 1]  # all but "long"
    invalid = {
        slug: client.get(f"/api/v1/meters/{slug}", headers=headers(keys["read"])).json()
        for slug in ("calls", "by_region")
    }
    assert invalid["calls"]["annotations"]["tallybook.invalidEvents"] == len(old) - 2
    assert invalid["by_region"]["annotations"]["tallybook.invalidEvents"] == 1


def test_an_event_whose_data_cannot_be_read_fails_only_itself(client, keys, runtime):
    make_meter(client, keys)
    if runtime.store.dialect_name != "sqlite":
        pytest.skip("PostgreSQL's JSONB only holds valid JSON")
    assert post(client, keys, raw_event("good", '{"value": 5}')).status_code == 204
    with runtime.store.write() as conn:  # JSON text no decoder reads back (SQLite stores any text)
        conn.execute(
            text(
                "INSERT INTO events (source, event_id, type, subject, time_us, ingested_us, data) "
                "VALUES ('svc', 'broken', 'api.calls', 'cust_1', 1767607200000000, 1767607200000000, '{\"value\": NaN')"
            )
        )
    response = client.get("/api/v1/meters/calls/query", headers=headers(keys["read"]))
    assert response.status_code == 200 and [r["value"] for r in response.json()["data"]] == [5]
    meter = client.get("/api/v1/meters/calls", headers=headers(keys["read"])).json()
    assert meter["annotations"]["tallybook.invalidEvents"] == 1


def test_usage_rows_projected_before_the_checks_stop_being_counted(sqlite_url):
    """SQLite: the old materializer stored 1E+999999999 as a usage value; the migration clears it."""
    from alembic import command

    from tallybook.config import DatabaseSettings, Settings
    from tallybook.meters.models import Aggregation, MeterSpec, UsageQuery
    from tallybook.runtime import Runtime
    from tallybook.store.migrate import alembic_config, upgrade

    runtime = Runtime.build(Settings(database=DatabaseSettings(url=sqlite_url)))
    runtime.ingest.start()
    try:
        runtime.meters.create(MeterSpec("calls", "api.calls", Aggregation.SUM, value_property="$.value"))
        runtime.ingest.ingest([Event("svc", "ok", "api.calls", "c", 1_767_607_200_000_000, {"value": 2})])
        runtime.meters.catch_up()
        config = alembic_config()
        with runtime.store.engine.connect() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0011")
            conn.commit()
        with runtime.store.write() as conn:
            conn.execute(
                text(
                    "INSERT INTO meter_usage (meter_key, subject, time_us, event_seq, ingested_us, num) "
                    "SELECT key, 'c', 1767607200000000, 99, 1767607200000000, '1E+999999999' FROM meters"
                )
            )
        with pytest.raises(Exception):  # noqa: B017  (decimal.Overflow, as wrapped by sqlite3)
            runtime.meters.query(UsageQuery(meter="calls"))
        upgrade(runtime.store.engine)
        [row] = runtime.meters.query(UsageQuery(meter="calls"))
        assert row.value == 2
        assert runtime.meters.get("calls").invalid_events == 1
    finally:
        runtime.stop()


def test_codehooks_value_and_metered_metadata_are_held_to_the_domain(client, keys, runtime):
    make_meter(client, keys, slug="by_tier", aggregation="COUNT", valueProperty=None, groupBy={"tier": "$.tier"})
    hdrs = {"x-apikey": keys["ingest"], "Content-Type": "application/json"}
    response = client.post("/usage/api.calls", content=b'{"customerId": "c", "value": 1e999999999}', headers=hdrs)
    assert refusal(response) == [{"index": None, "field": "value"}]
    response = client.post("/usage/api.calls", content=b'{"customerId": "c", "value": 0.0000001}', headers=hdrs)
    assert refusal(response) == [{"index": None, "field": "value"}]
    batch = body([{"eventType": "api.calls", "customerId": "c", "value": 1, "metadata": {"tier": "t" * 2000}}])
    assert refusal(client.post("/usagebatch", content=batch, headers=hdrs)) == [{"index": 0, "field": "metadata.tier"}]
    assert stored_ids(runtime) == set()


def test_group_by_values_and_unique_count_keys_are_bounded(client, keys, runtime):
    make_meter(client, keys, slug="users", aggregation="UNIQUE_COUNT", valueProperty="$.user", groupBy={"m": "$.model"})
    long_text = "u" * 1025
    response = post(
        client,
        keys,
        body([cloudevent("a", data={"user": long_text}), cloudevent("b", data={"model": long_text})]),
        BATCH,
    )
    assert refusal(response) == [{"index": 0, "field": "data.user"}, {"index": 1, "field": "data.model"}]
    ok = body(cloudevent("c", data={"user": "u" * 1024, "model": "é" * 512}))  # 1,024 bytes each
    assert post(client, keys, ok).status_code == 204


def test_a_non_number_in_a_metered_field_is_still_accepted_and_reported(client, keys, runtime):
    make_meter(client, keys)
    assert post(client, keys, body(cloudevent("w", data={"value": "lots"}))).status_code == 204
    [item] = client.get("/api/v1/events", headers=headers(keys["read"])).json()
    assert "'lots', not a number" in item["validationError"]


def test_file_import_skips_events_out_of_the_domain_and_reports_them(tmp_path, client, keys, runtime, database_url):
    make_meter(client, keys)
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"id": "f1", "type": "api.calls", "subject": "a", "data": {"value": 1}}\n'
        '{"id": "f2", "type": "api.calls", "subject": "a", "data": {"value": 1e999}}\n'
        '{"id": "f3", "type": "api.calls", "subject": "a", "data": {"value": 1, "x": "\\u0000"}}\n'
    )
    result = CliRunner().invoke(cli_app, ["ingest", str(path), "--database", database_url])
    assert result.exit_code == 1, result.output
    assert "f2: data.value" in result.output and "line 3" in result.output
    assert stored_ids(runtime) == {"f1"}


# -- item 3: 500 instead of 400 --------------------------------------------------------------------


@pytest.mark.parametrize(
    "when",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999999-14:00", "1969-12-31T23:59:59Z", "9999-06-01T00:00:00Z"],
)
def test_event_time_out_of_range_is_a_400(client, keys, runtime, when):
    assert refusal(post(client, keys, body(cloudevent("t", time=when)))) == [{"index": None, "field": "time"}]
    hdrs = {"x-apikey": keys["ingest"], "Content-Type": "application/json"}
    response = client.post("/usage/api.calls", json={"customerId": "c", "value": 1, "timestamp": when}, headers=hdrs)
    assert refusal(response) == [{"index": None, "field": "timestamp"}]


def nested(levels: int, leaf: str = "1") -> str:
    return "[" * levels + leaf + "]" * levels


@pytest.mark.parametrize(
    ("route", "content", "expected"),
    [
        ("/api/v1/events", raw_event("d", '{"x": ' + nested(10_000) + "}"), None),
        ("/api/v1/events", nested(10_000).encode(), None),
        (
            "/usage/api.calls",
            b'{"customerId": "c", "value": 1, "metadata": {"a": ' + nested(10_000).encode() + b"}}",
            None,
        ),
        (
            "/api/v1/events",
            raw_event("d", '{"x": ' + nested(MAX_JSON_DEPTH) + "}"),
            {"index": None, "field": "data.x" + "[0]" * (MAX_JSON_DEPTH - 2)},
        ),
    ],
)
def test_json_nested_beyond_the_limit_is_a_400(client, keys, runtime, route, content, expected):
    hdrs = headers(keys["ingest"], "application/json")
    errors = refusal(client.post(route, content=content, headers=hdrs))
    if expected is not None:
        assert errors == [expected]
    assert stored_ids(runtime) == set()


def test_nesting_up_to_the_limit_is_accepted(client, keys, runtime):
    # The batch array, the event and `data` are 3 levels; the rest may nest up to the limit.
    batch = b"[" + raw_event("deep", '{"x": ' + nested(MAX_JSON_DEPTH - 3) + "}") + b"]"
    assert post(client, keys, batch, BATCH).status_code == 204
    assert client.get("/api/v1/events", headers=headers(keys["read"])).status_code == 200
    brackets_in_text = body([cloudevent(f"t{i}", data={"note": "[[[{{{" * 20}) for i in range(3)])
    assert post(client, keys, brackets_in_text, BATCH).status_code == 204


@pytest.mark.parametrize("resource", ["events", "channels", "rules"])
@pytest.mark.parametrize(
    "query", ["page=18446744073709551617", "page=1000001", "page=0", "pageSize=100000000000000000000"]
)
def test_absurd_pages_are_a_400(client, keys, resource, query):
    response = client.get(f"/api/v1/notification/{resource}?{query}", headers=headers(keys["admin"]))
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "urn:tallybook:problem:invalid-parameters"


# -- item 4: permanent input errors are 400 on both engines, never 503 -----------------------------


@pytest.mark.parametrize("field", ["subject", "id", "type", "source"])
def test_nul_in_a_key_field_is_a_400(client, keys, runtime, field):
    response = post(client, keys, body(cloudevent("n", **{field: "a\u0000b"})))
    assert refusal(response) == [{"index": None, "field": field}]
    assert "U+0000" in response.json()["errors"][0]["message"]


@pytest.mark.parametrize(("data", "field"), [('{"k": "a\\u0000b"}', "data.k"), ('{"a\\u0000b": 1}', "data.a\u0000b")])
def test_nul_in_data_is_a_400(client, keys, runtime, data, field):
    assert refusal(post(client, keys, raw_event("n", data))) == [{"index": None, "field": field}]


def test_nul_in_codehooks_fields_is_a_400(client, keys, runtime):
    hdrs = {"x-apikey": keys["ingest"], "Content-Type": "application/json"}
    response = client.post("/usage/api%00calls", json={"customerId": "c", "value": 1}, headers=hdrs)
    assert response.status_code == 400  # refused before any route runs (tallybook/api/guards.py)
    assert "U+0000" in response.json()["error"]
    response = client.post("/usage/api.calls", json={"customerId": "c\u0000", "value": 1}, headers=hdrs)
    assert refusal(response) == [{"index": None, "field": "customerId"}]
    assert stored_ids(runtime) == set()


def test_key_fields_are_bounded_in_bytes_the_same_on_both_engines(client, keys, runtime):
    four_byte = "\U0001f600"
    too_long = four_byte * (MAX_KEY_BYTES // 4 + 1)
    response = post(client, keys, body(cloudevent(too_long, source=too_long)))
    assert refusal(response) == [{"index": None, "field": "id"}, {"index": None, "field": "source"}]
    at_limit = four_byte * (MAX_KEY_BYTES // 4)
    assert post(client, keys, body(cloudevent(at_limit, source=at_limit, subject=at_limit))).status_code == 204
    hdrs = {"x-apikey": keys["ingest"], "Content-Type": "application/json"}
    response = client.post("/usage/api.calls", json={"customerId": "c" * (MAX_KEY_BYTES + 1), "value": 1}, headers=hdrs)
    assert refusal(response) == [{"index": None, "field": "customerId"}]


# -- item 5: timestamps in query parameters are RFC 3339 -------------------------------------------


@pytest.mark.parametrize("value", ["0.067", "1700000000", "2026-01-05", "20260105T100000Z", "2026-01-05T10:00:00+01"])
@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/v1/events", "from"),
        ("/api/v1/events", "to"),
        ("/api/v1/events", "ingestedAtFrom"),
        ("/api/v1/events", "ingestedAtTo"),
        ("/events", "from"),
        ("/api/v1/stripe/reports", "from"),
        ("/api/v1/billing/customers/nobody/invoices/simulate", "at"),
        ("/api/v1/meters/none/query", "from"),
    ],
)
def test_timestamps_that_are_not_rfc3339_are_a_400(client, keys, path, name, value):
    response = client.get(path, params={name: value}, headers=headers(keys["admin"]))
    assert response.status_code == 400, response.text
    assert "RFC 3339" in response.json()["detail"]


def test_rfc3339_query_timestamps_still_work(client, keys, runtime):
    assert post(client, keys, body(cloudevent("q"))).status_code == 204
    read = headers(keys["read"])
    for value in ["2026-01-05T10:00:00Z", "2026-01-05T11:00:00+01:00", "2026-01-05t10:00:00z"]:
        response = client.get("/api/v1/events", params={"from": value, "to": value}, headers=read)
        assert [i["event"]["id"] for i in response.json()] == ["q"], value
    # An unencoded '+' arrives as a space.
    response = client.get("/api/v1/events?from=2026-01-05T11:00:00+01:00", headers=read)
    assert [i["event"]["id"] for i in response.json()] == ["q"]


def test_a_request_refused_for_a_metered_value_does_not_fail_its_group(client, keys, runtime):
    """The writer checks metered fields per request: the others in the same group commit."""
    from concurrent.futures import Future

    from tallybook.ingest.service import _Request

    make_meter(client, keys)
    good = [Event("svc", f"g{i}", "api.calls", "c", 1_767_607_200_000_000, {"value": i}) for i in range(3)]
    bad = [
        Event("svc", "b0", "api.calls", "c", 1_767_607_200_000_000, {"value": 1}),
        Event("svc", "b1", "api.calls", "c", 1_767_607_200_000_000, {"value": Decimal("0.1234567")}),
    ]
    runtime.ingest.stop()  # queue both while the writer is stopped: the restarted writer takes one group
    requests = [_Request(good, Future()), _Request(bad, Future())]
    for request in requests:
        runtime.ingest._queue.put(request)
    runtime.ingest.start()
    assert requests[0].future.result(timeout=30).accepted == 3
    with pytest.raises(InvalidEvents) as refused:
        requests[1].future.result(timeout=30)
    assert [(e.index, e.field) for e in refused.value.errors] == [(1, "data.value")]
    assert stored_ids(runtime) == {"g0", "g1", "g2"}


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/billing/invoices/%00abc",
        "/api/v1/customers/acme%00",
        "/api/v1/meters/api_calls%00/query",
        "/api/v1/subscriptions/x%00y",
        "/api/v1/events?subject=acme%00",
        "/api/v1/customers?key=%00",
    ],
)
def test_u0000_in_a_path_or_query_is_refused_alike_on_both_engines(client, keys, path):
    """PostgreSQL cannot hold U+0000 in text: a lookup by such an id failed the statement (500)
    there and answered 404 on SQLite. Every route now refuses it first, with one answer."""
    answer = client.get(path, headers=headers(keys["admin"]))
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"].endswith("invalid-characters")
    assert "U+0000" in problem["detail"]
