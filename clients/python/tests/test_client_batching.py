"""Batching bounds, ordering, and what each server answer does to a batch (fake HTTP, no server)."""

from __future__ import annotations

import gzip
import json
import threading
from decimal import Decimal

import httpx
import pytest
from tallybook_client import Tallybook
from tallybook_client._buffer import MemoryQueue, SqliteSpool


def test_batches_close_at_batch_size_and_flush_sends_the_rest(recorder):
    rec = recorder()
    tb = Tallybook("http://tb", "k", batch_size=3, flush_interval=60, http_transport=rec.transport)
    ids = [tb.track("api.calls", "acme", {"value": i}) for i in range(7)]
    assert tb.flush(timeout=10)
    assert [len(b) for b in rec.batches] == [3, 3, 1]
    assert rec.ids == ids
    assert tb.stats().sent == 7 and tb.stats().queue_depth == 0
    tb.close()


def test_batches_close_at_max_batch_bytes(recorder):
    rec = recorder()
    tb = Tallybook("http://tb", "k", batch_size=100, max_batch_bytes=700, http_transport=rec.transport)
    for i in range(6):
        tb.track("api.calls", "acme", {"pad": "x" * 150, "i": i})
    assert tb.flush(timeout=10)
    sizes = [len(json.dumps(b, separators=(",", ":"))) for b in rec.batches]
    assert len(rec.batches) > 1 and max(sizes) <= 700
    assert [e["data"]["i"] for b in rec.batches for e in b] == list(range(6))
    tb.close()


def test_time_bound_sends_a_partial_batch_after_flush_interval(clock, recorder):
    tb = Tallybook("http://tb", batch_size=10, flush_interval=2.0, clock=clock, http_transport=recorder().transport)
    dispatcher = tb._dispatcher
    assert dispatcher._wait_for(clock.now) is None  # empty: sleep until a track wakes it
    tb._dispatcher.buffer.put(b"{}")
    dispatcher.notify_put()
    assert dispatcher._wait_for(clock.now) == 2.0
    clock.now += 1.5
    assert dispatcher._wait_for(clock.now) == pytest.approx(0.5)
    clock.now += 0.5
    assert dispatcher._wait_for(clock.now) == 0.0
    for _ in range(9):
        tb._dispatcher.buffer.put(b"{}")
        dispatcher.notify_put()
    clock.now -= 1.0
    assert dispatcher._wait_for(clock.now) == 0.0  # full batch: no waiting for the clock
    tb._dispatcher.buffer.remove(range(1, 11))
    tb.close(timeout=0)


def test_the_event_carries_a_client_side_uuid7_and_the_tracking_time(recorder):
    rec = recorder()
    tb = Tallybook("http://tb", "k", source="billing-svc", sync_mode=True, http_transport=rec.transport)
    event_id = tb.track("api.calls", "acme", {"value": 1})
    own_id = tb.track("api.calls", "acme", id="req-42")
    event = rec.batches[0][0]
    assert event["id"] == event_id and event_id[14] == "7" and event_id[19] in "89ab"
    assert event["source"] == "billing-svc" and event["specversion"] == "1.0"
    assert event["time"].endswith("Z") and event["data"] == {"value": 1}
    assert own_id == "req-42" and rec.batches[1][0]["id"] == "req-42"
    tb.close()


def test_decimal_data_is_sent_as_an_exact_json_number():
    seen: list[bytes] = []
    transport = httpx.MockTransport(lambda req: seen.append(req.content) or httpx.Response(204))
    tb = Tallybook("http://tb", sync_mode=True, http_transport=transport)
    tb.track("api.calls", "acme", {"value": Decimal("0.1"), "note": "\x00 stays text"})
    assert b'"value":0.1' in seen[0] and b'"note":"\\u0000 stays text"' in seen[0]
    tb.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": "", "subject": "acme"}, "type"),
        ({"type": "a", "subject": ""}, "subject"),
        ({"type": "a", "subject": "acme", "data": [1]}, "data must be a dict"),
        ({"type": "a", "subject": "acme", "data": {"v": float("nan")}}, "not valid JSON"),
        ({"type": "a", "subject": "acme", "data": {"v": "\ud800"}}, "lone surrogate"),
        ({"type": "a", "subject": "acme", "data": {"v": object()}}, "no JSON form"),
    ],
)
def test_an_invalid_event_fails_track_itself(kwargs, message, recorder):
    tb = Tallybook("http://tb", http_transport=recorder().transport)
    with pytest.raises((ValueError, TypeError), match=message):
        tb.track(**kwargs)
    assert tb.stats().queue_depth == 0
    tb.close()


def test_a_naive_time_is_refused(recorder):
    from datetime import datetime

    tb = Tallybook("http://tb", http_transport=recorder().transport)
    with pytest.raises(ValueError, match="timezone-aware"):
        tb.track("a", "acme", time=datetime(2026, 1, 1))
    tb.close()


def test_gzip_compresses_the_body_when_asked():
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda req: seen.append(req) or httpx.Response(204))
    tb = Tallybook("http://tb", sync_mode=True, gzip=True, http_transport=transport)
    tb.track("api.calls", "acme", {"value": 1})
    request = seen[0]
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["content-type"] == "application/cloudevents-batch+json"
    assert json.loads(gzip.decompress(request.content))[0]["subject"] == "acme"
    tb.close()


def test_the_spool_drains_in_tracking_order_after_a_restart(tmp_path, recorder):
    spool = SqliteSpool(tmp_path)
    bodies = [json.dumps({"id": f"e{i}"}).encode() for i in range(25)]
    for body in bodies:
        spool.put(body)
    spool.close()
    rec = recorder()
    tb = Tallybook("http://tb", spool=tmp_path, batch_size=10, http_transport=rec.transport)
    assert tb.flush(timeout=10)
    assert rec.ids == [f"e{i}" for i in range(25)]
    assert tb.stats().spool_size == 0
    tb.close()


def test_a_400_moves_exactly_the_invalid_events_to_dead_letters_and_sends_the_rest(tmp_path, recorder):
    def refuse_3_and_5(batch):
        problem = {
            "type": "urn:tallybook:problem:invalid-events",
            "status": 400,
            "detail": "2 problem(s) found",
            "errors": [
                {"index": 3, "field": "data", "message": "bad"},
                {"index": 5, "field": "time", "message": "bad"},
            ],
        }
        return httpx.Response(400, json=problem, headers={"content-type": "application/problem+json"})

    refused = []
    rec = recorder(refuse_3_and_5)
    tb = Tallybook(
        "http://tb", spool=tmp_path, batch_size=10, http_transport=rec.transport, on_dead_letter=refused.append
    )
    ids = [tb.track("api.calls", "acme", {"i": i}) for i in range(8)]
    assert tb.flush(timeout=10)
    assert [len(b) for b in rec.batches] == [8, 6]
    assert rec.batches[1] == [e for i, e in enumerate(rec.batches[0]) if i not in (3, 5)]
    assert [r.event["id"] for r in refused] == [ids[3], ids[5]]
    assert refused[0].problem["errors"] == [{"index": 3, "field": "data", "message": "bad"}]
    letters = tb.dead_letters()
    assert [d.event["id"] for d in letters] == [ids[3], ids[5]] and letters[1].status == 400
    stats = tb.stats()
    assert (stats.sent, stats.dead_lettered, stats.spool_size) == (6, 2, 0)
    # Once the server side is fixed, dead letters go back into the queue.
    assert tb.requeue_dead_letters() == 2
    assert tb.flush(timeout=10)
    assert rec.batches[2] == [rec.batches[0][3], rec.batches[0][5]] and tb.dead_letters() == []
    tb.close()


def test_a_400_without_indexes_and_a_413_split_the_batch_until_the_culprit_is_alone(recorder):
    poison = "bad-subject"

    def judge(batch):
        if len(batch) > 2:
            return httpx.Response(
                413, json={"detail": "too large"}, headers={"content-type": "application/problem+json"}
            )
        if any(e["subject"] == poison for e in batch):
            return httpx.Response(
                400, json={"detail": "malformed"}, headers={"content-type": "application/problem+json"}
            )
        return httpx.Response(204)

    refused = []
    rec = recorder(*[judge] * 50)
    tb = Tallybook(
        "http://tb", batch_size=8, flush_interval=60, http_transport=rec.transport, on_dead_letter=refused.append
    )
    for i in range(8):
        tb.track("api.calls", poison if i == 5 else f"s{i}")
    assert tb.flush(timeout=10)
    stored = [e["subject"] for b in rec.batches if len(b) <= 2 and poison not in {e["subject"] for e in b} for e in b]
    assert stored == [f"s{i}" for i in range(8) if i != 5]
    assert [r.event["subject"] for r in refused] == [poison] and refused[0].status == 400
    tb.close()


def test_a_400_that_is_not_a_problem_answer_is_retried_not_dead_lettered(clock, recorder):
    rec = recorder(httpx.Response(400, text="<html>proxy says no</html>"))
    tb = Tallybook("http://tb", sync_mode=True, clock=clock, sleep=clock.sleep, http_transport=rec.transport)
    tb.track("api.calls", "acme")
    assert len(rec.batches) == 2 and tb.stats().dead_lettered == 0 and tb.stats().failed == 1
    tb.close()


def test_memory_queue_overflow_policies():
    dropped: list[bytes] = []
    raising = MemoryQueue(2, "raise", None, dropped.append)
    raising.put(b"1")
    raising.put(b"2")
    from tallybook_client import QueueFull

    with pytest.raises(QueueFull):
        raising.put(b"3")
    dropping = MemoryQueue(1, "drop", None, dropped.append)
    assert dropping.put(b"1") == 1
    assert dropping.put(b"2") is None and dropped == [b"2"]
    blocking = MemoryQueue(1, "block", 0, dropped.append)
    blocking.put(b"1")
    with pytest.raises(QueueFull, match="stayed full"):
        blocking.put(b"2")


def test_overflow_drop_counts_and_reports_every_dropped_event(recorder):
    gate = threading.Event()
    entered = threading.Event()

    def hold(batch):
        entered.set()
        gate.wait(10)
        return httpx.Response(204)

    drops = []
    rec = recorder(hold)
    tb = Tallybook(
        "http://tb",
        max_queue=2,
        overflow="drop",
        batch_size=1,
        flush_interval=0,
        http_transport=rec.transport,
        on_drop=lambda event, reason: drops.append((event["subject"], reason)),
    )
    tb.track("api.calls", "first")
    assert entered.wait(10)  # "first" is in flight and still counts against the bound
    tb.track("api.calls", "second")
    tb.track("api.calls", "third")  # over the bound: dropped, counted, reported
    assert drops == [("third", "queue_full")] and tb.stats().dropped == 1
    gate.set()
    assert tb.flush(timeout=10)
    assert [e["subject"] for b in rec.batches for e in b] == ["first", "second"]
    tb.close()


def test_overflow_block_waits_for_room_then_returns(recorder):
    gate = threading.Event()
    entered = threading.Event()

    def hold(batch):
        entered.set()
        gate.wait(10)
        return httpx.Response(204)

    rec = recorder(hold)
    tb = Tallybook("http://tb", max_queue=1, overflow="block", batch_size=1, http_transport=rec.transport)
    tb.track("api.calls", "first")
    assert entered.wait(10)
    waiting = threading.Event()
    queue = tb._memory
    real_wait_for = queue._not_full.wait_for

    def observed_wait_for(predicate, timeout=None):
        waiting.set()
        return real_wait_for(predicate, timeout)

    queue._not_full.wait_for = observed_wait_for
    done = threading.Event()
    blocked = threading.Thread(target=lambda: (tb.track("api.calls", "second"), done.set()))
    blocked.start()
    assert waiting.wait(10) and not done.is_set()  # track is waiting for room
    gate.set()
    blocked.join(10)
    assert done.is_set()
    assert tb.flush(timeout=10)
    assert [e["subject"] for b in rec.batches for e in b] == ["first", "second"]
    tb.close()


def test_overflow_raise_tells_the_caller(recorder):
    from tallybook_client import QueueFull

    gate = threading.Event()
    entered = threading.Event()

    def hold(batch):
        entered.set()
        gate.wait(10)
        return httpx.Response(204)

    tb = Tallybook("http://tb", max_queue=1, overflow="raise", batch_size=1, http_transport=recorder(hold).transport)
    tb.track("api.calls", "first")
    assert entered.wait(10)
    with pytest.raises(QueueFull):
        tb.track("api.calls", "second")
    gate.set()
    assert tb.flush(timeout=10)
    tb.close()


def test_close_without_a_spool_reports_unsent_events_as_dropped(clock):
    transport = httpx.MockTransport(lambda req: httpx.Response(503))
    drops = []
    tb = Tallybook(
        "http://tb",
        sync_mode=True,
        clock=clock,
        sleep=clock.sleep,
        http_transport=transport,
        on_drop=lambda event, reason: drops.append(reason),
    )
    with pytest.raises(Exception, match="not acknowledged"):
        tb.track("api.calls", "acme")
    assert tb.close(timeout=1) is False
    assert drops == ["closed_unsent"] and tb.stats().dropped == 1


def test_gzip_falls_back_to_plain_json_when_the_server_cannot_read_it(recorder):
    seen: list[httpx.Request] = []

    def server_without_gzip(request):
        seen.append(request)
        try:
            json.loads(request.content)
        except ValueError:
            problem = {"type": "urn:tallybook:problem:malformed-json", "status": 400, "detail": "not valid JSON"}
            return httpx.Response(400, json=problem, headers={"content-type": "application/problem+json"})
        return httpx.Response(204)

    refused = []
    tb = Tallybook(
        "http://tb",
        sync_mode=True,
        gzip=True,
        http_transport=httpx.MockTransport(server_without_gzip),
        on_dead_letter=refused.append,
    )
    tb.track("api.calls", "acme")
    tb.track("api.calls", "acme")
    assert [r.headers.get("content-encoding") for r in seen] == ["gzip", None, None]
    assert refused == [] and tb.stats().sent == 2
    tb.close()


def test_many_threads_tracking_at_once_lose_and_repeat_nothing(tmp_path, recorder):
    rec = recorder()
    tb = Tallybook("http://tb", spool=tmp_path, batch_size=64, flush_interval=0.001, http_transport=rec.transport)
    ids: list[list[str]] = [[] for _ in range(8)]

    def worker(n: int) -> None:
        ids[n] = [tb.track("api.calls", f"c{n}", {"i": i}) for i in range(250)]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tb.flush(timeout=30)
    sent = rec.ids
    assert len(sent) == len(set(sent)) == 2000
    assert set(sent) == {i for per_thread in ids for i in per_thread}
    for n in range(8):  # each thread's events arrive in the order it tracked them
        assert [i for i in sent if i in set(ids[n])] == ids[n]
    tb.close()


def test_a_spool_from_a_newer_client_is_refused_not_misread(tmp_path):
    import sqlite3

    SqliteSpool(tmp_path).close()
    with sqlite3.connect(tmp_path / "spool.sqlite3") as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(RuntimeError, match="newer tallybook-client"):
        SqliteSpool(tmp_path)
