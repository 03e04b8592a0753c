"""The shortcuts of the ingest path give the answers of the long way round: the event-time reader
for the common UTC form, SQLite's one-statement insert (and its executemany alternative), and the
writer's own connection."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallybook.clock import to_micros
from tallybook.ingest import events as event_model
from tallybook.ingest.events import Event, parse_time
from tallybook.store import sqlite as sqlite_store
from tallybook.store.base import SqlStore
from tests.test_store_insert import INGESTED_US, event, insert, stored_rows


def _slow_micros(value: str) -> int | None:
    """What _event_time does without the shortcut: parse_time, then the event time range."""
    try:
        micros = to_micros(parse_time(value))
    except ValueError:
        return None
    return micros if event_model._TIME_MIN_US <= micros < event_model._TIME_MAX_US else None


_digits = st.text(alphabet="0123456789", min_size=1, max_size=4)
_timestamps = st.builds(
    lambda year, month, day, sep, hour, minute, second, fraction, zone: (
        f"{year}-{month}-{day}{sep}{hour}:{minute}:{second}{fraction}{zone}"
    ),
    st.sampled_from(["2026", "1969", "0001", "9999", "1900", "2100", "20x6"]),
    st.sampled_from(["01", "02", "12", "13", "00", "1"]),
    st.sampled_from(["01", "28", "29", "30", "31", "32"]),
    st.sampled_from(["T", "t", " ", "_"]),
    st.sampled_from(["00", "23", "24", "9"]),
    st.sampled_from(["00", "59", "60"]),
    st.sampled_from(["00", "59", "60", "5a"]),
    st.one_of(st.just(""), st.just("."), st.builds(lambda d: "." + d, st.text(alphabet="0123456789", max_size=9))),
    st.sampled_from(["Z", "z", "+00:00", "+01:00", "", "ZZ"]),
)


@given(_timestamps)
def test_the_utc_shortcut_reads_every_timestamp_as_parse_time_does(value):
    fast = event_model._utc_micros(value)
    if fast is not None:  # where it answers, it answers as the long way does
        assert fast == _slow_micros(value), value


@pytest.mark.parametrize(
    "value",
    [
        "2026-01-05T10:00:00Z",
        "2026-01-05T10:00:00.1Z",
        "2026-01-05T10:00:00.123Z",
        "2026-01-05T10:00:00.123456Z",
        "2026-01-05 10:00:00.5Z",
        "2024-02-29T23:59:59.999999Z",
    ],
)
def test_the_utc_shortcut_answers_the_common_forms(value):
    assert event_model._utc_micros(value) == to_micros(parse_time(value))


@pytest.mark.parametrize(
    "value",
    [
        "2026-01-05T10:00:00.1234567Z",  # past microseconds: parse_time truncates; left to it
        "2026-01-05T10:00:00.Z",
        "2026-02-30T10:00:00Z",
        "2026-01-05T10:00:60Z",
        "2026-01-05T10:00:00+00:00",
        "2026-01-05T10:00:00.1\u0663Z",  # a digit, but not an ASCII one
        "0001-01-01T00:00:00Z",  # outside the event time range: parse_time's error says so
    ],
)
def test_the_utc_shortcut_leaves_the_rest_to_parse_time(value):
    assert event_model._utc_micros(value) is None


def test_the_seconds_cache_stays_bounded(monkeypatch):
    monkeypatch.setattr(event_model, "_SECONDS_US", {})
    monkeypatch.setattr(event_model, "_SECONDS_CACHED", 3)
    for minute in range(10):
        value = f"2026-01-05T10:{minute:02d}:00.25Z"
        assert event_model._utc_micros(value) == to_micros(parse_time(value))
    assert len(event_model._SECONDS_US) <= 3


_TRICKY_DATA: list[dict[str, Any] | None] = [
    None,
    {},
    {"n": Decimal("1.50"), "e": Decimal("1E+400"), "tiny": Decimal("1E-5"), "zero": Decimal("-0.000")},
    {"escapes": 'q " b \\ / \n \t \x01 \x1f \u2028 \u2029', "emoji": "\U0001f680", "k\u00e9y": []},
    {"big": 2**70, "neg": -(2**63), "max": 2**64 - 1, "flags": [True, False, None]},
    {"deep": {"a": [{"b": [[[{"c": "d"}]]]}]}},
]


@pytest.mark.parametrize("arrows", [True, False], ids=["json_each", "executemany"])
def test_both_sqlite_insert_statements_store_what_the_generic_path_stores(runtime, monkeypatch, arrows):
    if runtime.store.dialect_name != "sqlite":
        pytest.skip("SQLite's statements")
    monkeypatch.setattr(sqlite_store, "_HAS_JSON_ARROWS", arrows)
    fast = [event(f"fast{i}", data=data) for i, data in enumerate(_TRICKY_DATA)]
    generic = [event(f"generic{i}", data=data) for i, data in enumerate(_TRICKY_DATA)]
    assert insert(runtime, fast) == {e.key for e in fast}
    with runtime.store.write() as conn:
        SqlStore.insert_events(runtime.store, conn, generic, INGESTED_US)
    rows = {r["event_id"]: r for r in stored_rows(runtime)}
    for i in range(len(_TRICKY_DATA)):
        assert rows[f"fast{i}"]["data"] == rows[f"generic{i}"]["data"], _TRICKY_DATA[i]
    # Re-sent: every one is a known key with the same content, on either statement.
    with runtime.store.write() as conn:
        assert runtime.store.insert_events(conn, fast, INGESTED_US) == set()
        assert runtime.store.compare_stored(conn, fast) == [True] * len(fast)
        changed = [event(f"fast{i}", data={"other": i}) for i in range(len(_TRICKY_DATA))]
        assert runtime.store.compare_stored(conn, changed) == [False] * len(changed)


@pytest.mark.parametrize(
    "shape",
    ["all stored", "stored ends, new middle", "new first", "changed", "one event"],
)
def test_insert_new_events_answers_as_insert_then_compare(runtime, monkeypatch, shape):
    """A batch whose first and last keys are stored is compared before it is inserted (SQLite);
    whatever the batch, the keys inserted and the verdicts are those of insert, then compare."""
    inserts: list[list[str]] = []
    original = type(runtime.store).insert_events

    def recorded(store, conn, batch, ingested_us):
        inserts.append([e.id for e in batch])
        return original(store, conn, batch, ingested_us)

    stored = [event(f"s{i}", data=data) for i, data in enumerate(_TRICKY_DATA)]
    insert(runtime, stored)
    new = [event(f"n{i}", data=data) for i, data in enumerate(_TRICKY_DATA)]
    changed = [event(f"s{i}", data={"other": i}) for i in range(len(_TRICKY_DATA))]
    batch = {
        "all stored": stored,
        "stored ends, new middle": [stored[0], new[0], changed[1], new[1], stored[2], stored[-1]],
        "new first": [new[2], *stored],
        "changed": [changed[0], stored[1], changed[-1]],
        "one event": [stored[3]],
    }[shape]
    monkeypatch.setattr(type(runtime.store), "insert_events", recorded)
    with runtime.store.write() as conn:
        inserted, verdicts = runtime.store.insert_new_events(conn, batch, INGESTED_US)
        skipped = [e for e in batch if e.key not in inserted]
        if verdicts is None:
            verdicts = runtime.store.compare_stored(conn, skipped)
        assert inserted == {e.key for e in batch if e.id.startswith("n")}
        assert verdicts == [e in stored for e in skipped]
    stored_ends = shape in ("all stored", "stored ends, new middle", "changed")
    if runtime.store.dialect_name == "sqlite" and stored_ends:  # compared first: only new keys offered
        new_ones = [e.id for e in batch if e.id.startswith("n")]
        assert inserts == ([new_ones] if new_ones else [])
    else:
        assert inserts == [[e.id for e in batch]]
    assert {e.key for e in batch} <= {(r["source"], r["event_id"]) for r in stored_rows(runtime)}


def test_tricky_data_compares_equal_to_itself_once_stored(runtime):
    """The duplicate check reads what the insert wrote the same way, on both engines."""
    batch = [event(f"t{i}", data=data) for i, data in enumerate(_TRICKY_DATA)]
    insert(runtime, batch)
    with runtime.store.write() as conn:
        assert runtime.store.compare_stored(conn, batch) == [True] * len(batch)
        assert runtime.store.compare_stored(conn, [event("unknown")]) == [None]


def _one_writer(service: Any) -> Any:
    """Restart the ingest service with one writer thread (PostgreSQL runs two) and return its state."""
    service.stop()
    service.writers = 1
    service.start()
    return service._writers[0]


def test_the_writer_recovers_after_a_failed_transaction_on_a_fresh_connection(runtime, monkeypatch):
    service = runtime.ingest
    writer = _one_writer(service)
    assert service.ingest([event("first")]).accepted == 1
    held = writer.connection
    assert held is not None
    original = type(runtime.store).insert_events
    calls = {"n": 0}

    def fail_once(self: Any, conn: Any, batch: Any, ingested_us: int) -> set[tuple[str, str]]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the database went away")
        return original(self, conn, batch, ingested_us)

    monkeypatch.setattr(type(runtime.store), "insert_events", fail_once)
    with pytest.raises(RuntimeError, match="went away"):
        service.ingest([event("second")])
    assert writer.connection is None  # closed: the next group opens a new one
    assert service.ingest([event("second")]).accepted == 1
    assert writer.connection is not None and writer.connection is not held
    assert [r["event_id"] for r in stored_rows(runtime)] == ["first", "second"]


def test_stopping_the_writers_closes_their_connections(runtime):
    runtime.ingest.ingest([Event("svc", "x", "api.calls", "cust_1", INGESTED_US, None)])
    connections = [w.connection for w in runtime.ingest._writers if w.connection is not None]
    assert len(connections) == 1  # the writer that took the group; any other has not connected yet
    runtime.ingest.stop()
    assert [w.connection for w in runtime.ingest._writers] == [None] * runtime.ingest.writers
    assert all(connection.closed for connection in connections)


def test_a_stop_left_by_a_writer_that_died_does_not_stop_the_next_start(runtime):
    """stop() queues one stop per writer; one meant for a writer that had already died (a
    BaseException escaping its thread) stays queued, and must not end a restarted writer."""
    from tallybook.ingest.service import _STOP

    service = runtime.ingest
    service.stop()
    service._queue.put(_STOP)  # what a dead writer leaves behind
    service.start()
    assert service.submit([event("after-restart")]).result(timeout=30).accepted == 1
    service.stop()
    assert service._queue.empty()  # every writer was alive to take exactly one of stop()'s
    service.start()
    assert [r["event_id"] for r in stored_rows(runtime)] == ["after-restart"]
