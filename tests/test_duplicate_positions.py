"""Re-sent events wherever they sit in a batch: a retry of a stored event, a conflicting
re-send, or a repeat inside the batch itself, at every position, on both engines.

The store settles known keys in one statement (`SqlStore.insert_events`, then
`SqlStore.compare_stored`); these tests hold it to the generic path's answers: the new events are
stored once in batch order, the first version of a key is kept, and every re-sent event is counted
as a retry or a conflict exactly as `Event.same_content` says.
"""

from __future__ import annotations

from concurrent.futures import Future
from decimal import Decimal
from itertools import combinations
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tallybook.ingest.events import Event
from tallybook.ingest.service import IngestResult, _Request
from tallybook.runtime import Runtime
from tallybook.store import sqlite as sqlite_store
from tallybook.store.base import SqlStore

BATCH = 6
TIME_US = 1_767_225_600_000_000


def event(event_id: str, value: Any = 1, source: str = "svc", **overrides: Any) -> Event:
    fields: dict[str, Any] = {"type": "api.calls", "subject": "cust_1", "time_us": TIME_US, "data": {"value": value}}
    fields.update(overrides)
    return Event(source=source, id=event_id, **fields)


def stored(runtime: Runtime) -> list[tuple[str, str, Any]]:
    """(source, id, data) of every stored event, in seq order."""
    with runtime.store.read() as conn:
        rows = conn.execute(text("SELECT source, event_id, seq FROM events ORDER BY seq")).all()
        keys = [(r[0], r[1]) for r in rows]
        found = runtime.store.events_by_key(conn, keys)
    return [(s, i, found[(s, i)].data) for s, i in keys]


def counts(result: IngestResult) -> tuple[int, int, int]:
    return result.accepted, result.duplicates, result.conflicts


def reset(runtime: Runtime) -> None:
    with runtime.store.write() as conn:
        conn.execute(text("DELETE FROM events"))


def test_a_retry_at_each_position_is_counted_and_the_rest_stored(runtime):
    for position in range(BATCH):
        reset(runtime)
        runtime.ingest.ingest([event("known", value=7)])
        batch = [event(f"new{i}") for i in range(BATCH)]
        batch[position] = event("known", value=7)
        result = runtime.ingest.ingest(batch)
        assert counts(result) == (BATCH - 1, 1, 0), position
        assert [i for _, i, _ in stored(runtime)] == ["known"] + [e.id for e in batch if e.id != "known"]


def test_a_conflict_at_each_position_keeps_the_first_version(runtime):
    for position in range(BATCH):
        reset(runtime)
        runtime.ingest.ingest([event("known", value=7)])
        batch = [event(f"new{i}") for i in range(BATCH)]
        batch[position] = event("known", value=8)
        result = runtime.ingest.ingest(batch)
        assert counts(result) == (BATCH - 1, 0, 1), position
        assert result.conflict_keys == [("svc", "known")]
        assert stored(runtime)[0] == ("svc", "known", {"value": 7})


def test_a_key_repeated_inside_the_batch_at_each_pair_of_positions(runtime):
    for first, second in combinations(range(BATCH), 2):
        reset(runtime)
        retry = (first + second) % 2 == 1
        batch = [event(f"new{i}") for i in range(BATCH)]
        batch[first] = event("twice", value=1)
        batch[second] = event("twice", value=1 if retry else 2)
        result = runtime.ingest.ingest(batch)
        assert counts(result) == (BATCH - 1, int(retry), int(not retry)), (first, second)
        assert [d for _, i, d in stored(runtime) if i == "twice"] == [{"value": 1}]


def test_a_known_key_repeated_inside_the_batch_is_compared_with_the_stored_version(runtime):
    for position in range(BATCH):
        reset(runtime)
        runtime.ingest.ingest([event("known", value=7)])
        batch = [event(f"new{i}") for i in range(BATCH)]
        batch[position] = event("known", value=8)  # a conflict with the stored version
        batch[(position + 3) % BATCH] = event("known", value=7)  # a retry of the stored version
        result = runtime.ingest.ingest(batch)
        assert counts(result) == (BATCH - 2, 1, 1), position
        assert stored(runtime)[0] == ("svc", "known", {"value": 7})


def test_a_batch_of_only_retries_stores_nothing_new(runtime):
    batch = [event(f"e{i}", value=i) for i in range(BATCH)]
    runtime.ingest.ingest(batch)
    before = stored(runtime)
    assert counts(runtime.ingest.ingest(batch)) == (0, BATCH, 0)
    assert stored(runtime) == before


def test_equal_content_written_differently_is_a_retry(runtime):
    """The store compares stored text (SQLite) or JSONB (PostgreSQL) first; content that is equal
    but written differently (key order, 1.5 against 1.50) must still count as a retry."""
    runtime.ingest.ingest([event("k", data={"a": Decimal("1.50"), "b": "x"})])
    again = event("k", data={"b": "x", "a": Decimal("1.5")})
    other = event("k", data={"b": "x", "a": Decimal("1.51")})
    assert counts(runtime.ingest.ingest([again])) == (0, 1, 0)
    assert counts(runtime.ingest.ingest([other])) == (0, 0, 1)


@pytest.mark.parametrize("arrows", [True, False], ids=["json-arrows", "json-extract"])
def test_compare_stored_answers_as_the_generic_path(runtime, monkeypatch, arrows):
    """Both SQLite statements (with and without the JSON arrow operators) name only the events
    that are not retries; the answers must still be everyone's, missing keys included."""
    if runtime.store.dialect_name == "sqlite":
        monkeypatch.setattr(sqlite_store, "_HAS_JSON_ARROWS", arrows)
    elif not arrows:
        pytest.skip("SQLite's older statement")
    runtime.ingest.ingest([event("a", value=1), event("b", value=Decimal("2.5")), event("c", data=None)])
    probe = [
        event("a", value=1),
        event("a", value=2),
        event("b", value=Decimal("2.50")),
        event("c", data=None),
        event("c", data={}),
        event("missing"),
        event("a", value=1, subject="someone else"),
        event("a", value=1, time_us=TIME_US + 1),
        event("a", value=1, datacontenttype="application/json"),
        event("a", value=1, type="other"),
        event("a", value=1, source="elsewhere"),
    ]
    with runtime.store.read() as conn:
        fast = runtime.store.compare_stored(conn, probe)
        generic = SqlStore.compare_stored(runtime.store, conn, probe)
    assert fast == generic == [True, False, True, True, False, None, False, False, False, False, None]


@st.composite
def batches(draw: Any) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """A history and a batch over a few keys with a few values: retries, conflicts and repeats."""
    key = st.sampled_from(["k0", "k1", "k2", "k3", "k4", "k5"])
    value = st.integers(0, 2)
    history = draw(st.lists(st.tuples(key, value), max_size=6))
    batch = draw(st.lists(st.tuples(key, value), min_size=1, max_size=12))
    return history, batch


@given(batches())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_counts_and_stored_events_follow_a_reference_model(runtime, case):
    history, batch = case
    reset(runtime)
    kept: dict[str, int] = {}
    for key, value in history:
        kept.setdefault(key, value)
    if history:
        runtime.ingest.ingest([event(k, value=v) for k, v in history])
    expected = [0, 0, 0]
    for key, value in batch:
        if key not in kept:
            kept[key] = value
            expected[0] += 1
        elif kept[key] == value:
            expected[1] += 1
        else:
            expected[2] += 1
    result = runtime.ingest.ingest([event(k, value=v) for k, v in batch])
    assert list(counts(result)) == expected
    assert {i: d["value"] for _, i, d in stored(runtime)} == kept


def _one_group(runtime: Runtime, batches: list[list[Event]]) -> list[Any]:
    """Commit `batches` as the requests of one group (queued while the writer is stopped); each
    request's IngestResult, or the exception it failed with."""
    runtime.ingest.stop()
    requests = [_Request(batch, Future()) for batch in batches]
    for request in requests:
        runtime.ingest._queue.put(request)
    runtime.ingest.start()
    outcomes: list[Any] = []
    for request in requests:
        try:
            outcomes.append(counts(request.future.result(timeout=30)))
        except Exception as exc:  # the failing request's own error, whichever it is
            outcomes.append(type(exc))
    return outcomes


@pytest.mark.parametrize("poison", [False, True], ids=["one-group", "with-a-request-the-store-refuses"])
def test_a_retried_group_with_a_conflict_leaves_other_clients_intact(runtime, poison):
    """One group: a client retrying its batch (with one event changed since), another client's new
    events, and a second retry, so the group's first and last keys are stored (SQLite compares such
    a group before inserting). With `poison`, a request the store cannot take joins the group and
    it is committed request by request. Every request gets its own counts; the new events are
    stored once; the changed one keeps its first version."""
    runtime.ingest.ingest([event(f"a{i}", value=i) for i in range(4)] + [event("z", value=9)])
    retry = [event("a0", value=0), event("a1", value=1), event("a2", value=99), event("a3", value=3)]
    fresh = [event(f"b{i}", source="other") for i in range(3)]
    batches = [retry, fresh]
    if poison:
        batches.append([Event("p", "x", "t", "s\ud800", 1, None)])  # bypasses validation on purpose
    batches.append([event("z", value=9)])
    outcomes = _one_group(runtime, batches)
    expected: list[Any] = [(0, 3, 1), (3, 0, 0)]
    assert outcomes[:2] == expected
    assert outcomes[-1] == (0, 1, 0)
    if poison:
        assert isinstance(outcomes[2], type) and issubclass(outcomes[2], Exception)
    rows = stored(runtime)
    assert [(s, i) for s, i, _ in rows] == [("svc", f"a{i}") for i in range(4)] + [("svc", "z")] + [
        ("other", f"b{i}") for i in range(3)
    ]
    assert rows[2][2] == {"value": 2}  # the first version of the changed event is kept
