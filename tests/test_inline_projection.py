"""SQLite: a group commit projects its new events into the ready projections that are caught up, in
the ingest writer's own transaction, so a meter counts an event as soon as its request is
acknowledged. Checked by behaviour: the rows and cursors are there before any materializer pass,
values are exact, repeats and retries are counted once, and a failed or lagging inline projection
leaves the events to the materializer without losing or double counting any."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tallybook.ingest.events import Event
from tallybook.meters import definitions_sql, materializer_sql
from tallybook.meters.inline_sql import InlineProjection
from tallybook.meters.models import Aggregation, MeterSpec, UsageQuery

TIME_US = 1_767_225_600_000_000


def make_events(prefix: str, count: int, event_type: str = "calls") -> list[Event]:
    return [
        Event(
            "svc",
            f"{prefix}{i}",
            event_type,
            f"c{i % 7}",
            TIME_US + i,
            {"n": Decimal("0.125") if i % 2 else 3, "model": f"m{i % 3}"},
        )
        for i in range(count)
    ]


@pytest.fixture
def sqlite_runtime(runtime):
    if runtime.store.dialect_name != "sqlite":
        pytest.skip("the ingest-time projection is SQLite's (one writer holds the only write lock)")
    runtime.meters.create(
        MeterSpec(
            slug="calls",
            event_type="calls",
            aggregation=Aggregation.SUM,
            value_property="$.n",
            group_by={"model": "$.model"},
        )
    )
    runtime.meters.materializer.stop()  # from here on nothing but ingest projects in the background
    return runtime


def stored(runtime) -> tuple[set[int], int, int]:
    """(cursors of the ready projections, highest stored seq, projected rows)."""
    with runtime.store.read() as conn:
        cursors = set(definitions_sql.cursors(conn).values())
        visible = definitions_sql.visible_max_seq(conn)
        rows = conn.exec_driver_sql("SELECT count(*) FROM meter_usage").scalar_one()
    return cursors, visible, rows


def totals(runtime) -> dict[str, Decimal]:
    rows = runtime.meters.query(UsageQuery(meter="calls", group_by=("model",)))
    return {row.group_by["model"]: row.value for row in rows}


def expected(events: list[Event]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for event in events:
        assert event.data is not None
        model = event.data["model"]
        out[model] = out.get(model, Decimal(0)) + Decimal(event.data["n"])
    return out


def test_a_group_commit_projects_its_new_events_in_its_own_transaction(sqlite_runtime):
    runtime = sqlite_runtime
    calls = make_events("a", 300)
    other = make_events("o", 40, "other")
    # Repeats in any position (first occurrence wins) and events of a type no meter reads.
    batch = [calls[5], *calls[:150], *other, calls[0], *calls[150:], calls[299]]
    result = runtime.ingest.ingest(batch)
    assert (result.accepted, result.duplicates, result.conflicts) == (340, 3, 0)
    cursors, visible, rows = stored(runtime)
    assert cursors == {visible}  # projected before any materializer pass
    assert rows == 300
    assert runtime.meters.catch_up() == 0  # nothing left for the materializer
    with runtime.store.read() as conn:
        kinds = conn.exec_driver_sql("SELECT DISTINCT typeof(num), typeof(groups) FROM meter_usage").all()
    assert sorted(kinds) == [("integer", "text"), ("text", "text")]  # 3 as INTEGER, 0.125 as its text
    assert totals(runtime) == expected(calls)

    # A retry of stored events, new events in several requests of one group: each counted once.
    more = make_events("b", 120)
    futures = [runtime.ingest.submit(calls[:50]), runtime.ingest.submit(more[:60]), runtime.ingest.submit(more)]
    for future in futures:
        future.result()
    cursors, visible, rows = stored(runtime)
    assert cursors == {visible}
    assert rows == 420
    assert totals(runtime) == expected(calls + more)


def test_a_failed_inline_projection_loses_nothing_and_a_lagging_one_is_left_to_the_materializer(
    sqlite_runtime, monkeypatch
):
    runtime = sqlite_runtime
    first = make_events("a", 100)
    runtime.ingest.ingest(first)

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(materializer_sql, "set_cursor", broken)  # after the rows are written
    second = make_events("b", 100)
    assert runtime.ingest.ingest(second).accepted == 100  # ingest is not failed by the projection
    monkeypatch.undo()
    cursors, visible, rows = stored(runtime)
    assert rows == 100 and cursors != {visible}  # the savepoint undid the rows and the cursor

    # The projection lags now: the next group leaves its events to the materializer too.
    third = make_events("c", 100)
    runtime.ingest.ingest(third)
    cursors, visible, rows = stored(runtime)
    assert rows == 100 and cursors != {visible}
    assert totals(runtime) == expected(first + second + third)  # the query's catch-up projects the rest
    cursors, visible, rows = stored(runtime)
    assert cursors == {visible} and rows == 300

    # Caught up again: ingest projects inline once more.
    fourth = make_events("d", 50)
    runtime.ingest.ingest(fourth)
    cursors, visible, rows = stored(runtime)
    assert cursors == {visible} and rows == 350
    assert totals(runtime) == expected(first + second + third + fourth)


def test_ingest_without_meters_prepares_no_projection(sqlite_runtime):
    runtime = sqlite_runtime
    projection = runtime.ingest.projection
    assert isinstance(projection, InlineProjection)
    with runtime.store.read() as conn:
        assert projection.prepare(conn, ["nobody-reads-this"]) is None


def test_an_event_a_meter_cannot_count_spoils_nothing_else_in_its_group(sqlite_runtime):
    """One event of a group whose value the meter cannot count (a string where `$.n` should be a
    number, accepted as OpenMeter does): it is recorded as not counted, with why, and every other
    event of the same group, of every customer, is counted at acknowledgement."""
    runtime = sqlite_runtime
    good = make_events("g", 60)
    hostile = Event("svc", "bad", "calls", "c3", TIME_US + 7, {"n": "lots", "model": "m1"})
    result = runtime.ingest.ingest([*good[:30], hostile, *good[30:]])
    assert result.accepted == 61
    cursors, visible, rows = stored(runtime)
    assert cursors == {visible}  # projected in the ingest transaction, the hostile event too
    assert rows == 61
    assert totals(runtime) == expected(good)
    with runtime.store.read() as conn:
        errors = conn.exec_driver_sql("SELECT error FROM meter_usage WHERE error IS NOT NULL").scalars().all()
    assert len(errors) == 1 and "lots" in errors[0]
