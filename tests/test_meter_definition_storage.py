"""The meter definitions port's contract: one set of cases for the in-memory adapter and the SQL one.

Meters over HTTP and through the service are tests/test_meters.py and tests/test_meter_rebuild.py
(both engines); these cases pin what each `MeterDefinitionStorage` must do with meter rows and their
projections (generations, usage keys, one ready and one building projection per meter), so
`MemoryMeterDefinitions` cannot drift from `SqlMeterStorage`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tallybook.config import DatabaseSettings, Settings
from tallybook.meters.memory import MemoryMeterDefinitions
from tallybook.meters.ports import GENERATION_SHIFT, MeterDefinitionStorage
from tallybook.meters.sql import SqlMeterStorage
from tallybook.runtime import Runtime
from tests.conftest import _postgres_database, empty_all_tables


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[MeterDefinitionStorage]:
    if request.param == "memory":
        yield MemoryMeterDefinitions()
        return
    url = f"sqlite:///{tmp_path / 'm.db'}" if request.param == "sqlite" else _postgres_database()
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=url)), sync_meters=False)
    empty_all_tables(runtime)
    try:
        yield SqlMeterStorage(runtime.store)
    finally:
        runtime.store.close()


def meter(meter_id: str, slug: str, at: int = 1, **more: Any) -> dict[str, Any]:
    return {
        "id": meter_id,
        "slug": slug,
        "name": slug,
        "event_type": "prompt",
        "aggregation": "SUM",
        "value_property": "$.tokens",
        "group_by": {"model": "$.model"},
        "managed_by": "api",
        "created_us": at,
        "updated_us": at,
        **more,
    }


def definition(**more: Any) -> dict[str, Any]:
    return {
        "event_type": "prompt",
        "aggregation": "SUM",
        "value_property": "$.tokens",
        "group_by": {"model": "$.model"},
        "event_from_us": None,
        **more,
    }


def test_meters_are_found_by_id_or_slug_and_deleted_ones_free_their_slug(storage: MeterDefinitionStorage) -> None:
    with storage.writing() as tx:
        first = tx.insert_meter(meter("01A", "tokens"))
        second = tx.insert_meter(meter("01B", "calls", aggregation="COUNT", value_property=None, group_by={}))
    with storage.reading() as tx:
        by_slug, by_id = tx.meter_row("tokens"), tx.meter_row("01A")
        assert by_slug is not None and by_id is not None
        assert by_slug["key"] == by_id["key"] == first
        assert by_slug["group_by"] == {"model": "$.model"}
        assert (by_slug["usage_key"], by_slug["projected_seq"], by_slug["locked_us"]) == (None, 0, None)
        assert [r["slug"] for r in tx.live_meter_rows()] == ["tokens", "calls"]
        assert tx.meter_row("nothing") is None
    with storage.writing() as tx:
        tx.update_meter(first, {"deleted_us": 5})
        again = tx.insert_meter(meter("01C", "tokens", at=6))
    with storage.reading() as tx:
        assert [r["key"] for r in tx.live_meter_rows()] == [second, again]
        assert [(r["slug"], r["deleted_us"]) for r in tx.all_meter_rows()] == [
            ("tokens", 5),
            ("calls", None),
            ("tokens", None),
        ]
        found = tx.meter_row("tokens")
        assert found is not None and found["id"] == "01C"
        assert tx.meter_row("01A") is None  # deleted meters are not found


def test_a_build_is_swapped_in_and_the_next_generation_gets_its_own_usage_key(
    storage: MeterDefinitionStorage,
) -> None:
    with storage.writing() as tx:
        key = tx.insert_meter(meter("01A", "tokens"))
        first = tx.add_projection(key, definition(), now_us=10)
    assert first == key  # generation 0 keeps the meter's own key
    with storage.reading() as tx:
        assert tx.cursors("building") == {first: 0}
        assert tx.cursors("ready") == {}
        (row,) = tx.projection_rows()
        assert (row["state"], row["generation"], row["meter_id"], row["meter_slug"]) == ("building", 0, "01A", "tokens")
        assert row["started_us"] == 10 and row["ready_us"] is None
    with storage.writing() as tx:
        tx.set_cursor([first], 7)
        tx.set_cursor([first], 3)  # never back
        tx.swap_in([first], now_us=20)
    with storage.reading() as tx:
        assert tx.cursors("ready") == {first: 7}
        served = tx.meter_row("tokens")
        assert served is not None and (served["usage_key"], served["projected_seq"]) == (first, 7)
        assert tx.projection_rows(("ready",))[0]["ready_us"] == 20
        assert not tx.has_retired()
    with storage.writing() as tx:
        second = tx.add_projection(key, definition(aggregation="MAX"), now_us=30)
        tx.set_cursor([first, second], 9)
    assert second == key + (1 << GENERATION_SHIFT)
    with storage.reading() as tx:
        assert tx.cursors("ready") == {first: 9}
        assert tx.cursors("building") == {second: 9}
        building = tx.projection_rows(("building",), key)
        assert [(r["generation"], r["aggregation"]) for r in building] == [(1, "MAX")]
        served = tx.meter_row("tokens")
        assert served is not None and served["projected_seq"] == 9  # the served projection's cursor
    with storage.writing() as tx:
        tx.swap_in([second], now_us=40)
        tx.swap_in([first], now_us=41)  # no longer building: nothing happens
    with storage.reading() as tx:
        assert [(r["usage_key"], r["state"]) for r in tx.projection_rows(("building", "ready", "retired"))] == [
            (first, "retired"),
            (second, "ready"),
        ]
        served = tx.meter_row("tokens")
        assert served is not None and served["usage_key"] == second
        assert tx.has_retired()


def test_a_newer_definition_supersedes_a_running_build(storage: MeterDefinitionStorage) -> None:
    with storage.writing() as tx:
        key = tx.insert_meter(meter("01A", "tokens"))
        tx.swap_in([tx.add_projection(key, definition(), now_us=1)], now_us=2)
        tx.add_projection(key, definition(aggregation="MAX"), now_us=3)
        latest = tx.add_projection(key, definition(aggregation="MIN"), now_us=4)
    with storage.reading() as tx:
        states = [(r["generation"], r["state"]) for r in tx.projection_rows(("building", "ready", "retired"))]
        assert states == [(0, "ready"), (1, "retired"), (2, "building")]
        assert tx.cursors("building") == {latest: 0}
    with storage.writing() as tx:
        tx.retire_building(key)  # the definition went back to the ready one's
    with storage.reading() as tx:
        assert tx.cursors("building") == {}
        assert [r["generation"] for r in tx.projection_rows()] == [0]


def test_a_deleted_meter_has_no_projections_left_to_serve(storage: MeterDefinitionStorage) -> None:
    with storage.writing() as tx:
        key = tx.insert_meter(meter("01A", "tokens"))
        other = tx.insert_meter(meter("01B", "calls"))
        tx.swap_in([tx.add_projection(key, definition(), now_us=1)], now_us=1)
        tx.swap_in([tx.add_projection(other, definition(), now_us=1)], now_us=1)
        tx.retire_projections(key)
        tx.update_meter(key, {"deleted_us": 2})
    with storage.reading() as tx:
        assert list(tx.cursors("ready")) == [other]
        assert [r["meter_slug"] for r in tx.projection_rows(("building", "ready", "retired"))] == ["calls"]
        deleted = next(r for r in tx.all_meter_rows() if r["key"] == key)
        assert deleted["usage_key"] is None
        assert tx.has_retired()  # its rows wait for the background cleanup


def test_a_failed_write_leaves_nothing_behind(storage: MeterDefinitionStorage) -> None:
    with pytest.raises(RuntimeError), storage.writing() as tx:
        key = tx.insert_meter(meter("01A", "tokens"))
        tx.add_projection(key, definition(), now_us=1)
        raise RuntimeError("the caller failed after writing")
    with storage.reading() as tx:
        assert tx.all_meter_rows() == []
        assert tx.projection_rows(("building", "ready", "retired")) == []
        assert tx.visible_max_seq() == 0
