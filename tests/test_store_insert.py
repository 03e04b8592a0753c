"""`SqlStore.insert_events` as each engine implements it (SQLite: executemany with a savepoint
fallback; PostgreSQL: INSERT ... SELECT FROM unnest): same contract and same stored values as the
generic SQLAlchemy path in base.py."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tallybook.ingest.events import Event
from tallybook.runtime import Runtime
from tallybook.store import base, postgres
from tallybook.store.base import BatchKeys, SqlStore

INGESTED_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
LARGE_BATCH = 2 * base.INSERT_PAGE_SIZE + 7  # three pages of the generic path (SQLite's fallback)
SMALL_PAGE = 1000  # PostgreSQL's page size in the large-batch tests, so that they cross pages too


def event(event_id: str, source: str = "svc", **overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "type": "api.calls",
        "subject": "cust_1",
        "time_us": INGESTED_US - 1_000_000,
        "data": {"value": 1},
        "datacontenttype": None,
    }
    fields.update(overrides)
    return Event(source=source, id=event_id, **fields)


def insert(runtime: Runtime, batch: list[Event], ingested_us: int = INGESTED_US) -> set[tuple[str, str]]:
    with runtime.store.write() as conn:
        return runtime.store.insert_events(conn, batch, ingested_us)


def stored_rows(runtime: Runtime) -> list[dict[str, Any]]:
    """Every column as the database holds it (data as its JSON text), in `seq` order."""
    data = "data::text" if runtime.store.dialect_name == "postgresql" else "data"
    query = (
        f"SELECT seq, source, event_id, type, subject, time_us, ingested_us, {data} AS data, datacontenttype "
        "FROM events ORDER BY seq"
    )
    with runtime.store.read() as conn:
        return [dict(row._mapping) for row in conn.execute(text(query))]


def stored(runtime: Runtime, key: tuple[str, str]) -> Event:
    with runtime.store.read() as conn:
        return runtime.store.events_by_key(conn, [key])[key]


def test_an_empty_batch_inserts_nothing(runtime):
    assert insert(runtime, []) == set()
    assert runtime.store.count_events() == 0


def test_new_events_are_all_returned_and_stored_in_batch_order(runtime):
    batch = [event(f"e{i}", source="a" if i % 2 else "b") for i in range(5)]
    assert insert(runtime, batch) == {e.key for e in batch}
    rows = stored_rows(runtime)
    assert [(r["source"], r["event_id"]) for r in rows] == [e.key for e in batch]
    assert {r["ingested_us"] for r in rows} == {INGESTED_US}


def test_stored_values_match_the_generic_path(runtime):
    """Column for column, the engine's fast path writes what SQLAlchemy's generic path writes."""
    variants: list[dict[str, Any]] = [
        {},
        {"data": None},
        {"data": {}},
        {"datacontenttype": "application/json"},
        {"data": {"n": Decimal("1.50"), "deep": {"list": [1, "two", None, True, {"x": Decimal("-0.001")}]}}},
        {
            "data": {
                "text": 'quote " backslash \\ tab \t newline \n',
                "unicode": "na\u00efve \u2013 \u65e5\u672c \U0001f680",
            }
        },
        {"subject": "ünïcode subject", "type": "t" * 1024, "time_us": -5},
        {"data": {"big": Decimal("123456789012345678901234567890"), "small": 2**62, "neg": -(2**63)}},
    ]
    fast = [event(f"fast{i}", **v) for i, v in enumerate(variants)]
    generic = [event(f"generic{i}", **v) for i, v in enumerate(variants)]
    assert insert(runtime, fast) == {e.key for e in fast}
    with runtime.store.write() as conn:
        assert SqlStore.insert_events(runtime.store, conn, generic, INGESTED_US) == {e.key for e in generic}
    rows = {r["event_id"]: r for r in stored_rows(runtime)}
    for i in range(len(variants)):
        ours, reference = dict(rows[f"fast{i}"]), dict(rows[f"generic{i}"])
        for row in (ours, reference):
            del row["seq"], row["event_id"]
        assert ours == reference, variants[i]


def test_duplicates_against_history_return_only_the_new_keys(runtime):
    insert(runtime, [event("a"), event("b", data={"value": 2})], INGESTED_US)
    later = INGESTED_US + 5
    batch = [event("c"), event("b", data={"value": 999}), event("d")]
    assert insert(runtime, batch, later) == {("svc", "c"), ("svc", "d")}
    rows = stored_rows(runtime)
    assert [r["event_id"] for r in rows] == ["a", "b", "c", "d"]
    kept = stored(runtime, ("svc", "b"))
    assert kept.data == {"value": 2}  # the first version stays
    assert kept.ingested_us == INGESTED_US
    assert [r["ingested_us"] for r in rows[2:]] == [later, later]


def test_a_batch_of_only_known_keys_inserts_nothing(runtime):
    batch = [event(f"k{i}") for i in range(10)]
    insert(runtime, batch)
    before = stored_rows(runtime)
    assert insert(runtime, batch, INGESTED_US + 1) == set()
    assert stored_rows(runtime) == before


def test_same_id_from_another_source_is_a_new_event(runtime):
    insert(runtime, [event("x", source="one")])
    assert insert(runtime, [event("x", source="two"), event("x", source="one")]) == {("two", "x")}


def test_exact_decimals_survive(runtime):
    data = {
        "tenth": Decimal("0.1"),
        "trailing": Decimal("1.50"),
        "exponent": Decimal("1E+3"),
        "tiny": Decimal("0.000000000000000000000000001"),
        "huge": Decimal("98765432109876543210.0123456789"),
        "int": 9223372036854775807,
        "long": Decimal("12345678901234567890123"),  # how jsonutil.loads reads ints past 64 bits
    }
    insert(runtime, [event("money", data=data)])
    got = stored(runtime, ("svc", "money")).data
    assert got is not None
    assert got == data
    assert str(got["trailing"]) == "1.50"
    assert str(got["tenth"]) == "0.1"
    assert got["huge"] == Decimal("98765432109876543210.0123456789")
    assert got["int"] == 9223372036854775807
    assert str(got["long"]) == "12345678901234567890123"


def test_nested_json_round_trips(runtime):
    data = {
        "model": {"name": "small", "params": {"layers": [1, 2, {"k": [None, False, True]}]}},
        "tags": ["a", "b"],
        "empty": {"list": [], "object": {}},
        "text": 'he said "hi" \\ \u00e9',
    }
    insert(runtime, [event("nested", data=data), event("null", data=None)])
    assert stored(runtime, ("svc", "nested")).data == data
    assert stored(runtime, ("svc", "null")).data is None


def test_a_batch_larger_than_a_page(runtime, monkeypatch):
    monkeypatch.setattr(postgres, "UNNEST_PAGE_SIZE", SMALL_PAGE)
    batch = [event(f"big{i:05d}", subject=f"s{i % 13}", time_us=i) for i in range(LARGE_BATCH)]
    assert insert(runtime, batch) == {e.key for e in batch}
    assert runtime.store.count_events() == LARGE_BATCH
    rows = stored_rows(runtime)
    assert [r["event_id"] for r in rows] == [e.id for e in batch]  # seq follows the batch order
    assert [r["time_us"] for r in rows] == list(range(LARGE_BATCH))


def test_a_large_batch_with_duplicates_scattered_through_it(runtime, monkeypatch):
    monkeypatch.setattr(postgres, "UNNEST_PAGE_SIZE", SMALL_PAGE)
    known = [event(f"big{i:05d}") for i in range(0, LARGE_BATCH, 997)]
    insert(runtime, known)
    batch = [event(f"big{i:05d}") for i in range(LARGE_BATCH)]
    expected = {e.key for e in batch} - {e.key for e in known}
    assert insert(runtime, batch, INGESTED_US + 1) == expected
    assert runtime.store.count_events() == LARGE_BATCH
    rows = stored_rows(runtime)
    new_rows = rows[len(known) :]
    assert [r["event_id"] for r in new_rows] == [e.id for e in batch if e.key in expected]


def test_the_insert_belongs_to_the_callers_transaction(runtime):
    insert(runtime, [event("kept")])
    with pytest.raises(RuntimeError), runtime.store.write() as conn:
        assert runtime.store.insert_events(conn, [event("gone")], INGESTED_US) == {("svc", "gone")}
        # Also the duplicate path, which rolls back to its own savepoint on SQLite.
        assert runtime.store.insert_events(conn, [event("kept"), event("gone2")], INGESTED_US) == {("svc", "gone2")}
        raise RuntimeError("the caller fails after inserting")
    assert [r["event_id"] for r in stored_rows(runtime)] == ["kept"]


def test_two_inserts_in_one_transaction(runtime):
    with runtime.store.write() as conn:
        first = runtime.store.insert_events(conn, [event("a"), event("b")], INGESTED_US)
        second = runtime.store.insert_events(conn, [event("b"), event("c")], INGESTED_US)
        third = runtime.store.insert_events(conn, [event("d")], INGESTED_US)
    assert first == {("svc", "a"), ("svc", "b")}
    assert second == {("svc", "c")}
    assert third == {("svc", "d")}
    assert [r["event_id"] for r in stored_rows(runtime)] == ["a", "b", "c", "d"]


def test_a_failing_insert_leaves_the_transaction_usable_on_sqlite(runtime):
    """A database error inside the fast path is raised; on SQLite the savepoint is undone, so the
    caller may still commit what it wrote before."""
    if runtime.store.dialect_name != "sqlite":
        pytest.skip("PostgreSQL aborts the whole transaction on an error, whatever the insert path")
    with runtime.store.write() as conn:
        runtime.store.insert_events(conn, [event("before")], INGESTED_US)
        conn.exec_driver_sql(
            "CREATE TEMP TRIGGER refuse BEFORE INSERT ON events WHEN NEW.event_id = 'bad' "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        try:
            with pytest.raises(Exception, match="refused"):
                runtime.store.insert_events(conn, [event("fine"), event("bad")], INGESTED_US)
        finally:
            conn.exec_driver_sql("DROP TRIGGER refuse")
        assert runtime.store.insert_events(conn, [event("after")], INGESTED_US) == {("svc", "after")}
    assert [r["event_id"] for r in stored_rows(runtime)] == ["before", "after"]


def test_new_keys_do_not_fall_back_to_the_generic_path(runtime, monkeypatch):
    """The engine's own path handles the common case by itself (the generic one is the slow one)."""

    def refuse(*_args: Any) -> set[tuple[str, str]]:
        raise AssertionError("the generic insert path was used")

    monkeypatch.setattr(SqlStore, "insert_events", refuse)
    batch = [event(f"n{i}") for i in range(50)]
    assert insert(runtime, batch) == {e.key for e in batch}


def test_concurrent_writers_with_overlapping_keys_store_each_event_once(runtime):
    """Two transactions racing over the same keys (as two processes sharing PostgreSQL would):
    each key is reported inserted by exactly one of them."""
    keys = [f"race{i:04d}" for i in range(3000)]
    batches = [[event(k) for k in keys[:2000]], [event(k) for k in reversed(keys[1000:])]]
    start = threading.Barrier(2)

    def write(batch: list[Event]) -> set[tuple[str, str]]:
        start.wait(10)
        return insert(runtime, batch)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(write, batches)
    assert first.isdisjoint(second)
    assert first | second == {("svc", k) for k in keys}
    assert runtime.store.count_events() == len(keys)


def test_the_keys_of_a_wholly_inserted_batch_act_as_a_set():
    """SQLite answers an insert that stored every event with BatchKeys (built only when looked into)."""
    batch = [event(f"b{i}") for i in range(3)]
    keys = BatchKeys(batch)
    assert len(keys) == 3
    assert ("svc", "b1") in keys and ("svc", "other") not in keys
    assert keys == {("svc", "b0"), ("svc", "b1"), ("svc", "b2")}
    assert keys | {("svc", "x")} == {("svc", "b0"), ("svc", "b1"), ("svc", "b2"), ("svc", "x")}
    assert keys - {("svc", "b0")} == {("svc", "b1"), ("svc", "b2")}
    assert sorted(keys) == [("svc", "b0"), ("svc", "b1"), ("svc", "b2")]
    assert not BatchKeys([])
