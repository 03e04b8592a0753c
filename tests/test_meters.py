"""Meter definitions: API, validation, re-aggregation, billed-meter lock, config sources, bad values."""

# Fixtures are imported from tests.test_meters_helpers; test parameters then shadow the names.
# ruff: noqa: F811

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest

from tallybook.config import DatabaseSettings, Settings, load_settings
from tallybook.meters.config import MeterSettings
from tallybook.meters.definitions import spec_of
from tallybook.meters.models import Aggregation, MeterConflict, UsageQuery
from tallybook.runtime import Runtime
from tests.conftest import empty_all_tables
from tests.test_meters_helpers import (  # noqa: F401  (fixtures)
    bearer,
    event,
    ingest,
    mclient,
    mclock,
    meter,
    mkeys,
    mrt,
    utc,
)

TOKENS = {
    "slug": "tokens_total",
    "name": "Tokens",
    "description": "AI tokens",
    "eventType": "prompt",
    "aggregation": "SUM",
    "valueProperty": "$.tokens",
    "groupBy": {"model": "$.model"},
}


def total(rt, slug, **kw):
    rows = rt.meters.query(UsageQuery(meter=slug, **kw))
    assert len(rows) <= 1
    return rows[0].value if rows else None


def test_meter_crud_over_the_api(mclient, mkeys):
    admin, read = bearer(mkeys["admin"]), bearer(mkeys["read"])
    created = mclient.post("/api/v1/meters", json=TOKENS, headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["slug"] == "tokens_total" and body["aggregation"] == "SUM" and body["groupBy"] == {"model": "$.model"}
    assert len(body["id"]) == 26

    assert mclient.get(f"/api/v1/meters/{body['id']}", headers=read).json()["slug"] == "tokens_total"
    assert [m["slug"] for m in mclient.get("/api/v1/meters", headers=read).json()] == ["tokens_total"]
    # Creating needs admin.
    assert mclient.post("/api/v1/meters", json={**TOKENS, "slug": "x"}, headers=read).status_code == 403

    updated = mclient.put(
        "/api/v1/meters/tokens_total", json={"name": "All tokens", "groupBy": {"m": "$.model"}}, headers=admin
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["name"] == "All tokens" and updated.json()["groupBy"] == {"m": "$.model"}

    assert mclient.delete("/api/v1/meters/tokens_total", headers=admin).status_code == 204
    missing = mclient.get("/api/v1/meters/tokens_total", headers=read)
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    # The slug is free again after deletion.
    assert mclient.post("/api/v1/meters", json=TOKENS, headers=admin).status_code == 201


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"aggregation": "COUNT"}, "COUNT counts events and takes no valueProperty"),
        ({"valueProperty": None}, "SUM needs a valueProperty"),
        ({"slug": "Tokens-Total"}, "slug"),
        ({"valueProperty": "tokens"}, "not a JSONPath expression"),
        ({"valueProperty": "$[?(@.x"}, "not valid JSONPath"),
        ({"groupBy": {"subject": "$.s"}}, "reserved"),
        ({"aggregation": "MEDIAN"}, "aggregation"),
    ],
)
def test_invalid_meter_definitions_are_400_saying_what_to_fix(mclient, mkeys, change, fragment):
    body = {**TOKENS, **change}
    body = {k: v for k, v in body.items() if v is not None}
    response = mclient.post("/api/v1/meters", json=body, headers=bearer(mkeys["admin"]))
    assert response.status_code == 400, response.text
    assert fragment in response.json()["detail"]


def test_duplicate_slug_is_409(mclient, mkeys):
    assert mclient.post("/api/v1/meters", json=TOKENS, headers=bearer(mkeys["admin"])).status_code == 201
    again = mclient.post("/api/v1/meters", json=TOKENS, headers=bearer(mkeys["admin"]))
    assert again.status_code == 409 and "already exists" in again.json()["detail"]


def test_meters_count_past_events_and_changes_reaggregate_history(mrt):
    ingest(
        mrt,
        event(data={"tokens": 5, "chars": 100}),
        event(data={"tokens": "7", "chars": 50}),
    )
    meter(mrt, "tokens_total", "SUM")
    assert total(mrt, "tokens_total") == Decimal(12)
    current = mrt.meters.get("tokens_total")
    mrt.meters.update("tokens_total", replace(spec_of(current), value_property="$.chars"))
    assert total(mrt, "tokens_total") == Decimal(150)
    mrt.meters.update("tokens_total", replace(spec_of(current), aggregation=Aggregation.MAX))
    assert total(mrt, "tokens_total") == Decimal(7)


def test_billed_meter_refuses_counting_changes_with_409(mrt, mclient, mkeys):
    admin = bearer(mkeys["admin"])
    assert mclient.post("/api/v1/meters", json=TOKENS, headers=admin).status_code == 201
    locked = mrt.meters.lock("tokens_total", at=utc(2026, 2, 1))
    assert locked.locked_at == utc(2026, 2, 1)

    for change in ({"aggregation": "MAX"}, {"valueProperty": "$.other"}):
        refused = mclient.put("/api/v1/meters/tokens_total", json=change, headers=admin)
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert "has been billed" in detail and "tokens_total_v2" in detail
    # Cosmetic changes stay possible; so does the group-by (it does not change totals).
    ok = mclient.put("/api/v1/meters/tokens_total", json={"name": "Renamed", "groupBy": {}}, headers=admin)
    assert ok.status_code == 200
    assert ok.json()["annotations"]["tallybook.billedAt"] == "2026-02-01T00:00:00Z"
    assert mclient.delete("/api/v1/meters/tokens_total", headers=admin).status_code == 409


def test_bad_values_are_not_counted_and_are_reported(mrt, mclient, mkeys):
    meter(mrt, "tokens_total", "SUM")
    ingest(
        mrt,
        event(id="ok", data={"tokens": "0.1"}),
        event(id="ok2", data={"tokens": Decimal("0.2")}),
        event(id="missing", data={"other": 1}),
        event(id="words", data={"tokens": "lots"}),
        event(id="nodata", data=None),
        event(id="bool", data={"tokens": True}),
    )
    assert total(mrt, "tokens_total") == Decimal("0.3")
    shown = mclient.get("/api/v1/meters/tokens_total", headers=bearer(mkeys["read"])).json()
    assert shown["annotations"]["tallybook.invalidEvents"] == 4
    listed = mclient.get("/api/v1/events", headers=bearer(mkeys["read"])).json()
    errors = {item["event"]["id"]: item.get("validationError") for item in listed}
    assert errors["ok"] is None and errors["ok2"] is None
    assert "meter tokens_total: valueProperty $.tokens is missing" in errors["missing"]
    assert "'lots', not a number" in errors["words"]
    assert errors["nodata"] and errors["bool"]


def test_decimal_values_are_exact_in_the_api(mrt, mclient, mkeys):
    meter(mrt, "tokens_total", "SUM")
    ingest(mrt, event(data={"tokens": Decimal("0.1")}), event(data={"tokens": "0.2"}))
    response = mclient.get("/api/v1/meters/tokens_total/query", headers=bearer(mkeys["read"]))
    assert response.status_code == 200
    assert b'"value":0.3' in response.content


def test_event_from_ignores_older_events(mrt):
    ingest(mrt, event(time=utc(2025, 12, 31, 23), data={"tokens": 1}), event(time=utc(2026, 1, 1), data={"tokens": 2}))
    meter(mrt, "tokens_total", "SUM", event_from=utc(2026, 1, 1))
    assert total(mrt, "tokens_total") == Decimal(2)


def test_subjects_of_a_meter(mrt, mclient, mkeys):
    meter(mrt, "tokens_total", "SUM")
    ingest(
        mrt,
        event(subject="b", data={"tokens": 1}),
        event(subject="a", data={"tokens": 1}),
        event(subject="c", type="other", data={"tokens": 1}),
    )
    response = mclient.get("/api/v1/meters/tokens_total/subjects", headers=bearer(mkeys["read"]))
    assert response.json() == ["a", "b"]


def test_meters_from_tallybook_yaml_and_codehooks_systemconfig(tmp_path, database_url):
    system = tmp_path / "systemconfig.json"
    system.write_text(
        json.dumps(
            {
                "periods": ["daily", "monthly"],
                "events": {"api.calls": {"op": "sum"}, "logins": {"op": "count"}, "storage.gb": {"op": "last"}},
            }
        )
    )
    config = tmp_path / "tallybook.yaml"
    config.write_text(
        f"""
database:
  url: {database_url}
meters:
  from_codehooks: {system}
  definitions:
    - slug: tokens_total
      eventType: prompt
      aggregation: SUM
      valueProperty: $.tokens
"""
    )
    settings = load_settings(config, env={})
    assert settings.meters.codehooks_periods == ["daily", "monthly"]
    clean = Runtime.build(Settings(database=DatabaseSettings(url=database_url)))
    empty_all_tables(clean)
    clean.stop()
    rt = Runtime.build(settings)  # creates the configured meters
    try:
        meters = {m.slug: m for m in rt.meters.list()}
        assert set(meters) == {"tokens_total", "api_calls", "logins", "storage_gb"}
        assert meters["api_calls"].aggregation is Aggregation.SUM and meters["api_calls"].value_property == "$.value"
        assert meters["logins"].aggregation is Aggregation.COUNT and meters["logins"].value_property is None
        assert meters["storage_gb"].aggregation is Aggregation.LATEST
        assert all(m.managed_by == "config" for m in meters.values())
        with pytest.raises(MeterConflict, match=r"tallybook\.yaml"):
            rt.meters.update("logins", spec_of(meters["logins"]))
        # Dropping a definition from the file removes the meter at the next start.
        rt.meters.sync_config(MeterSettings(definitions=[]))
        assert [m.slug for m in rt.meters.list()] == []
    finally:
        rt.stop()


def test_codehooks_config_errors_name_the_problem(tmp_path):
    system = tmp_path / "systemconfig.json"
    system.write_text(json.dumps({"events": {"api.calls": {"op": "median"}}}))
    with pytest.raises(ValueError, match=r"events.api.calls.op must be one of sum, count"):
        Settings(database=DatabaseSettings(), meters={"from_codehooks": str(system)})


def test_materializer_runs_in_the_background(mrt, mclock):
    meter(mrt, "tokens_total", "SUM")
    ingest(mrt, event(data={"tokens": 3}))
    deadline = 50
    while mrt.meters.materializer.pending() and deadline:
        time.sleep(0.1)
        deadline -= 1
    assert not mrt.meters.materializer.pending()
    mclock.advance(timedelta(seconds=1))
    assert total(mrt, "tokens_total") == Decimal(3)
