"""The ingest writer builds its value checks (tallybook.ingest.metered) again only when the live
meters it reads in its transaction change: a created, changed or deleted meter applies to the very
next group, on both engines."""

from __future__ import annotations

import pytest

from tallybook.ingest.events import Event, InvalidEvents
from tallybook.meters.models import Aggregation, MeterSpec

TIME_US = 1_767_225_600_000_000
TOO_BIG = 10**15  # outside the metered value domain (12 integer digits)


def event(name: str) -> Event:
    return Event("svc", name, "calls", "c1", TIME_US, {"big": TOO_BIG, "small": 2})


def spec(path: str) -> MeterSpec:
    return MeterSpec(slug="calls", event_type="calls", aggregation=Aggregation.SUM, value_property=path)


def test_meter_changes_apply_to_the_next_group(runtime):
    assert runtime.ingest.ingest([event("a")]).accepted == 1  # no meter reads $.big
    runtime.meters.create(spec("$.big"))
    with pytest.raises(InvalidEvents) as refused:
        runtime.ingest.ingest([event("b")])
    assert "data.big" in str(refused.value)
    runtime.meters.update("calls", spec("$.small"))
    assert runtime.ingest.ingest([event("c")]).accepted == 1
    runtime.meters.update("calls", spec("$.big"))
    with pytest.raises(InvalidEvents):
        runtime.ingest.ingest([event("d")])
    runtime.meters.delete("calls")
    assert runtime.ingest.ingest([event("e")]).accepted == 1
    assert runtime.store.count_events() == 3
