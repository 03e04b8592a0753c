"""An event is identified by (source, id): retries are stored once, whatever the path."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tallybook.config import Settings
from tallybook.ingest.events import Event
from tallybook.store.base import EventFilter
from tests.conftest import empty_all_tables
from tests.helpers import BATCH, SINGLE, body, cloudevent, headers


def all_events(runtime) -> list[Event]:
    return runtime.store.list_events(EventFilter(limit=10_000))


def duplicate_count(runtime, kind: str) -> float:
    value = runtime.metrics.registry.get_sample_value("tallybook_events_duplicate_total", {"kind": kind})
    return value or 0.0


def test_retry_of_an_accepted_event_is_accepted_and_stored_once(client, keys, runtime):
    for _ in range(3):
        response = client.post(
            "/api/v1/events", content=body(cloudevent("r1")), headers=headers(keys["ingest"], SINGLE)
        )
        assert response.status_code == 204
    assert [e.id for e in all_events(runtime)] == ["r1"]
    assert duplicate_count(runtime, "retry") == 2


def test_same_event_twice_in_one_batch_is_stored_once(client, keys, runtime):
    batch = [cloudevent("twice"), cloudevent("other"), cloudevent("twice")]
    assert client.post("/api/v1/events", content=body(batch), headers=headers(keys["ingest"], BATCH)).status_code == 204
    assert sorted(e.id for e in all_events(runtime)) == ["other", "twice"]
    assert duplicate_count(runtime, "retry") == 1


def test_same_id_from_different_sources_are_different_events(client, keys, runtime):
    batch = [cloudevent("same", source="a"), cloudevent("same", source="b")]
    client.post("/api/v1/events", content=body(batch), headers=headers(keys["ingest"], BATCH))
    assert sorted(e.source for e in all_events(runtime)) == ["a", "b"]


def test_conflicting_content_keeps_the_first_and_is_counted(client, keys, runtime):
    first = cloudevent("c1", data={"value": 1})
    second = cloudevent("c1", data={"value": 999})
    assert (
        client.post("/api/v1/events", content=body(first), headers=headers(keys["ingest"], SINGLE)).status_code == 204
    )
    assert (
        client.post("/api/v1/events", content=body(second), headers=headers(keys["ingest"], SINGLE)).status_code == 204
    )
    [stored] = all_events(runtime)
    assert stored.data == {"value": 1}
    assert duplicate_count(runtime, "conflict") == 1
    assert duplicate_count(runtime, "retry") == 0


def test_conflict_inside_one_batch_keeps_the_first(client, keys, runtime):
    batch = [cloudevent("k", data={"value": 1}), cloudevent("k", data={"value": 2})]
    client.post("/api/v1/events", content=body(batch), headers=headers(keys["ingest"], BATCH))
    [stored] = all_events(runtime)
    assert stored.data == {"value": 1}
    assert duplicate_count(runtime, "conflict") == 1


def test_parallel_duplicate_requests_are_stored_once(live_server, keys, runtime):
    """Many clients race to send the same events over real HTTP; each is stored exactly once."""
    batch = [cloudevent(f"par{i}", subject=f"s{i % 7}") for i in range(200)]
    payload = body(batch)

    def send(_: int) -> int:
        with httpx.Client(base_url=live_server.url, timeout=30) as http:
            return http.post("/api/v1/events", content=payload, headers=headers(keys["ingest"], BATCH)).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(send, range(32)))
    assert statuses == [204] * 32
    stored = all_events(runtime)
    assert len(stored) == 200
    assert len({e.id for e in stored}) == 200
    accepted = runtime.metrics.registry.get_sample_value("tallybook_events_accepted_total")
    assert accepted == 200
    assert duplicate_count(runtime, "retry") == 31 * 200


def test_parallel_single_event_requests_share_commits(live_server, keys, runtime):
    """Group commit: concurrent single-event requests are all acknowledged and all stored."""

    def send(i: int) -> int:
        with httpx.Client(base_url=live_server.url, timeout=30) as http:
            event = body(cloudevent(f"single{i}"))
            return http.post("/api/v1/events", content=event, headers=headers(keys["ingest"], SINGLE)).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(send, range(300)))
    assert statuses == [204] * 300
    assert len(all_events(runtime)) == 300
    groups = runtime.metrics.registry.get_sample_value("tallybook_ingest_commit_group_events_count")
    assert groups is not None and groups <= 300


def test_two_processes_racing_on_one_database_store_each_event_once(runtime, settings):
    """Two independent runtimes (as two `serve` processes would be) ingest the same events at once."""
    from tallybook.runtime import Runtime

    other = Runtime.build(settings)
    other.start()
    try:
        batches = [
            [Event("race", f"e{b}-{i}", "t", f"s{i}", 1_700_000_000_000_000 + i, None) for i in range(100)]
            for b in range(20)
        ]

        def send(args):
            target, batch = args
            return target.ingest.ingest(batch)

        jobs = [(rt, batch) for batch in batches for rt in (runtime, other)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(send, jobs))
    finally:
        other.stop()
    assert sum(r.accepted for r in results) == 2000
    assert sum(r.duplicates for r in results) == 2000
    assert sum(r.conflicts for r in results) == 0
    assert len(all_events(runtime)) == 2000


@pytest.mark.postgres
def test_several_writer_threads_store_each_event_once_and_count_every_repeat(postgres_url):
    """ingest.writers on PostgreSQL: groups commit at once on their own connections; repeated keys
    (in one batch, across batches, across writers) are stored once, a different content is a
    conflict, and every event is counted exactly once as accepted, retry or conflict."""
    from tallybook.runtime import Runtime

    rt = Runtime.build(Settings.model_validate({"database": {"url": postgres_url}, "ingest": {"writers": 4}}))
    empty_all_tables(rt)
    rt.start()
    try:
        assert rt.ingest.writers == 4 and len(rt.ingest._writers) == 4
        keys = [f"k{i}" for i in range(300)]
        # Every key four times in all, in shuffled batches of 25; key k0..k9 once with other content.
        rng = random.Random(5)
        sent = [Event("w", key, "t", "s", 1_700_000_000_000_000, {"n": 1}) for key in keys * 4]
        sent += [Event("w", key, "t", "s", 1_700_000_000_000_000, {"n": 2}) for key in keys[:10]]
        rng.shuffle(sent)
        batches = [sent[i : i + 25] for i in range(0, len(sent), 25)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(rt.ingest.ingest, batches))
    finally:
        rt.stop()
    assert sum(r.accepted for r in results) == 300
    assert sum(r.accepted + r.duplicates + r.conflicts for r in results) == len(sent)
    stored = {e.id: e.data for e in all_events(rt)}
    assert sorted(stored) == sorted(keys)
    # A key sent with two contents keeps whichever committed first; the others are its conflicts.
    assert sum(r.conflicts for r in results) == sum(1 for e in sent if e.id in stored and e.data != stored[e.id])


def test_ingest_writers_default_by_engine_and_sqlite_keeps_one():
    assert Settings.model_validate({"database": {"url": "sqlite:///x.db"}}).ingest.writers_for("sqlite:///x.db") == 1
    postgres = Settings.model_validate({"database": {"url": "postgresql+psycopg://h/db"}})
    assert postgres.ingest.writers_for("postgresql+psycopg://h/db") == 2
    with pytest.raises(ValueError, match=r"ingest\.writers above 1 needs PostgreSQL"):
        Settings.model_validate({"database": {"url": "sqlite:///x.db"}, "ingest": {"writers": 2}})
    # A PostgreSQL config pointed at a SQLite file (--database) still writes with one thread.
    four = Settings.model_validate({"database": {"url": "postgresql+psycopg://h/db"}, "ingest": {"writers": 4}})
    assert four.ingest.writers_for("sqlite:///x.db") == 1
