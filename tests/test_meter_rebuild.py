"""A new or changed meter is built in the background beside the projection queries read (issue 16).

While a changed meter rebuilds, queries answer from the previous definition, fresh; a new meter
says it is rebuilding (503 with progress); the build is swapped in atomically once caught up and
the old rows are deleted. Steps are driven by hand (the runtime's own threads are stopped), so
every assertion sees one definite moment of the build. The kill -9 resume is in
test_meter_rebuild_resume.py."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tallybook.ingest.events import Event
from tallybook.meters.models import Aggregation, MeterRebuilding, MeterSpec, UsageQuery
from tallybook.meters.tables import meter_usage, usage_key_of
from tallybook.voids.model import Actor, EventKey, VoidRequest
from tests.conftest import auth

TIME_US = 1_767_225_600_000_000
SPEC = MeterSpec(slug="calls", event_type="calls", aggregation=Aggregation.SUM, value_property="$.n")


def events(prefix: str, count: int) -> list[Event]:
    return [
        Event("svc", f"{prefix}{i}", "calls", f"c{i % 3}", TIME_US + i, {"n": i, "m": 2 * i, "model": f"x{i % 2}"})
        for i in range(count)
    ]


@pytest.fixture
def rt(runtime):
    """The runtime with its background materializer and jobs stopped; builds never finish inline."""
    runtime.meters.stop()
    runtime.jobs.stop()
    runtime.meters.settings = runtime.meters.settings.model_copy(update={"rebuild_inline_events": 0})
    runtime.meters.materializer.chunk_events = 10
    return runtime


def total(rt, **query) -> Decimal:
    return sum((row.value for row in rt.meters.query(UsageQuery(meter="calls", **query))), Decimal(0))


def usage_rows(rt, usage_key: int) -> int:
    with rt.store.read() as conn:
        return int(conn.execute(select(func.count()).where(meter_usage.c.meter_key == usage_key)).scalar_one())


def test_a_changed_meter_answers_from_its_previous_definition_until_the_rebuild_is_swapped_in(rt):
    rt.ingest.ingest(events("a", 40))
    rt.meters.settings = rt.meters.settings.model_copy(update={"rebuild_inline_events": 10_000})
    meter = rt.meters.create(SPEC)  # few events: built within the call
    rt.meters.settings = rt.meters.settings.model_copy(update={"rebuild_inline_events": 0})
    assert meter.projection is not None and meter.projection.state == "ready"
    assert total(rt) == sum(range(40))

    changed = rt.meters.update("calls", replace(SPEC, value_property="$.m"))
    assert changed.value_property == "$.m"  # the answer shows the new definition at once
    status = rt.meters.projection("calls")
    assert (status.state, status.answers_from, status.generation) == ("rebuilding", "previous", 1)
    assert (status.events_processed, status.events_total) == (0, 40)
    assert total(rt) == sum(range(40))  # the previous definition's figure

    # The previous definition's projection stays fresh while the new one builds.
    rt.ingest.ingest(events("b", 5))
    assert total(rt) == sum(range(40)) + sum(range(5))

    assert rt.meters.materializer.build_step() == 10
    status = rt.meters.projection("calls")
    assert (status.state, status.events_processed, status.events_total, status.percent) == (
        "rebuilding",
        10,
        45,
        22.2,
    )
    assert total(rt) == sum(range(40)) + sum(range(5))

    rt.meters.run_builds()
    status = rt.meters.projection("calls")
    assert (status.state, status.answers_from, status.generation) == ("ready", "current", 1)
    assert status.ready_at is not None and status.percent == 100.0
    assert total(rt) == 2 * (sum(range(40)) + sum(range(5)))  # the new definition's figure
    key = rt.meters.get("calls").key
    assert usage_rows(rt, usage_key_of(key, 0)) == 0  # the previous projection's rows are gone
    assert usage_rows(rt, usage_key_of(key, 1)) == 45


def test_a_new_meter_says_it_is_rebuilding_until_its_first_build_is_done(rt, client, keys):
    rt.ingest.ingest(events("a", 25))
    created = client.post("/api/v1/meters", json={**_body(), "slug": "calls"}, headers=auth(keys["admin"]))
    assert created.status_code == 201, created.text
    assert "tallybook.projection" not in created.json()["annotations"]  # the document stays OpenMeter's
    progress = client.get("/api/v1/meters/calls/projection", headers=auth(keys["read"])).json()
    assert (progress["state"], progress["answersFrom"], progress["eventsProcessed"]) == ("rebuilding", "none", 0)

    answer = client.get("/api/v1/meters/calls/query", headers=auth(keys["read"]))
    assert answer.status_code == 503
    problem = answer.json()
    assert problem["type"].endswith("meter-rebuilding")
    assert problem["projection"]["answersFrom"] == "none"
    assert problem["projection"]["eventsTotal"] == 25
    assert answer.headers["Retry-After"] == str(problem["retryAfterSeconds"])
    assert client.get("/api/v1/meters/calls/subjects", headers=auth(keys["read"])).status_code == 503
    with pytest.raises(MeterRebuilding):
        total(rt)

    rt.meters.materializer.build_step()
    progress = client.get("/api/v1/meters/calls/projection", headers=auth(keys["read"])).json()
    assert progress["state"] == "rebuilding"
    assert (progress["eventsProcessed"], progress["eventsTotal"], progress["percent"]) == (10, 25, 40.0)

    rt.meters.run_builds()
    ready = client.get("/api/v1/meters/calls/projection", headers=auth(keys["read"])).json()
    assert (ready["state"], ready["answersFrom"], ready["generation"]) == ("ready", "current", 0)
    assert ready["readyAt"] is not None
    rows = client.get("/api/v1/meters/calls/query", headers=auth(keys["read"])).json()["data"]
    assert [row["value"] for row in rows] == [sum(range(25))]


def _body() -> dict[str, object]:
    return {"eventType": "calls", "aggregation": "SUM", "valueProperty": "$.n", "groupBy": {"model": "$.model"}}


def test_a_group_by_key_only_the_new_definition_has_is_a_503_until_the_swap(rt):
    rt.meters.settings = rt.meters.settings.model_copy(update={"rebuild_inline_events": 10_000})
    rt.meters.create(SPEC)
    rt.meters.settings = rt.meters.settings.model_copy(update={"rebuild_inline_events": 0})
    rt.ingest.ingest(events("a", 12))
    rt.meters.update("calls", replace(SPEC, group_by={"model": "$.model"}))
    with pytest.raises(MeterRebuilding, match="new in meter 'calls'"):
        rt.meters.query(UsageQuery(meter="calls", group_by=("model",)))
    assert total(rt) == sum(range(12))  # ungrouped: the previous definition answers
    rt.meters.run_builds()
    rows = rt.meters.query(UsageQuery(meter="calls", group_by=("model",)))
    assert {row.group_by["model"]: row.value for row in rows} == {
        "x0": sum(range(0, 12, 2)),
        "x1": sum(range(1, 12, 2)),
    }


def test_a_change_reverted_while_it_rebuilds_stops_the_build(rt):
    rt.meters.settings = rt.meters.settings.model_copy(update={"rebuild_inline_events": 10_000})
    rt.meters.create(SPEC)
    rt.meters.settings = rt.meters.settings.model_copy(update={"rebuild_inline_events": 0})
    rt.ingest.ingest(events("a", 30))
    rt.meters.update("calls", replace(SPEC, value_property="$.m"))
    rt.meters.materializer.build_step()
    rt.meters.update("calls", SPEC)  # back to what the ready projection was built with
    status = rt.meters.projection("calls")
    assert (status.state, status.generation) == ("ready", 0)
    rt.meters.run_builds()  # deletes the stopped build's rows
    assert usage_rows(rt, usage_key_of(rt.meters.get("calls").key, 1)) == 0
    assert total(rt) == sum(range(30))


def test_an_event_voided_while_the_meter_rebuilds_stays_voided_after_the_swap(rt):
    rt.meters.settings = rt.meters.settings.model_copy(update={"rebuild_inline_events": 10_000})
    rt.meters.create(SPEC)
    rt.meters.settings = rt.meters.settings.model_copy(update={"rebuild_inline_events": 0})
    rt.ingest.ingest(events("a", 30))
    rt.meters.update("calls", replace(SPEC, value_property="$.m"))
    rt.meters.materializer.build_step()  # the build has passed event a3 (n=3, m=6)
    rt.voids.void(VoidRequest(reason="bad", actor=Actor("cli", None, "ops"), events=(EventKey("svc", "a3"),)))
    assert total(rt) == sum(range(30)) - 3  # the previous definition, without the voided event
    rt.meters.run_builds()
    assert total(rt) == 2 * sum(range(30)) - 6


def test_deleting_a_meter_deletes_its_rows_in_the_background(rt):
    rt.meters.settings = rt.meters.settings.model_copy(update={"rebuild_inline_events": 10_000})
    rt.ingest.ingest(events("a", 30))
    key = rt.meters.create(SPEC).key
    rt.meters.delete("calls")
    assert usage_rows(rt, key) == 30  # the API call does not wait for the rows
    rt.meters.run_builds()
    assert usage_rows(rt, key) == 0


def test_a_new_meter_is_served_while_events_keep_arriving(rt):
    """Under sustained ingest every pass finds a later horizon than the last one: the chunk that
    reaches the horizon swaps the build in, so a new meter does not answer 503 for as long as
    events keep coming (it did, before, on PostgreSQL with many stored events)."""
    rt.ingest.ingest(events("a", 25))
    rt.meters.create(SPEC)
    batches = 0
    while rt.meters.projection("calls").state != "ready":
        assert batches < 10, "the build never caught up with ingest"
        rt.meters.materializer.build_step()
        batches += 1
        rt.ingest.ingest(events(f"b{batches}-", 4))  # new events after every step
    assert batches == 4  # chunks of 10 events, 4 more after each: 1-10, 11-20, 21-30, then 31-37
    assert total(rt) == sum(range(25)) + batches * sum(range(4))
