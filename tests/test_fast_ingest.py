"""The ingest fast path (tallybook/api/fast_ingest.py) answers the common request itself and hands
everything else to the FastAPI route, which answers exactly as it did without it."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tallybook import jsonutil
from tallybook.api.fast_ingest import _CommitWaits
from tallybook.api.routes import events as event_routes
from tallybook.ingest.service import IngestUnavailable
from tests.helpers import BATCH, SINGLE, body, cloudevent, headers

DEEP: Any = 1
for _ in range(40):
    DEEP = [DEEP]


@pytest.fixture
def route_calls(monkeypatch) -> list[int]:
    """Counts the requests the FastAPI route handled (it reads the body with read_limited_body)."""
    calls: list[int] = []
    real = event_routes.read_limited_body

    async def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(event_routes, "read_limited_body", counting)
    return calls


def request_seconds(runtime, status: str) -> float:
    sample = runtime.metrics.registry.get_sample_value(
        "tallybook_http_request_seconds_count", {"method": "POST", "route": "/api/v1/events", "status": status}
    )
    return sample or 0.0


def test_valid_events_with_a_cached_key_skip_the_route(client, keys, runtime, route_calls):
    key = keys["ingest"]
    first = client.post("/api/v1/events", content=body(cloudevent("a")), headers=headers(key, SINGLE))
    assert first.status_code == 204
    calls_after_first = len(route_calls)  # the first request may verify the key through the route
    for kind, payload in ((SINGLE, cloudevent("b")), (BATCH, [cloudevent("c"), cloudevent("d")])):
        response = client.post("/api/v1/events", content=body(payload), headers=headers(key, kind))
        assert response.status_code == 204
        assert response.content == b""
    assert len(route_calls) == calls_after_first
    assert runtime.store.count_events() == 4
    assert request_seconds(runtime, "204") == 3


def test_both_paths_answer_alike(client, keys, runtime, route_calls):
    key = keys["ingest"]
    client.post("/api/v1/events", content=body(cloudevent("warm")), headers=headers(key, SINGLE))
    fast = client.post("/api/v1/events", content=body(cloudevent("x")), headers=headers(key, SINGLE))
    gzip_headers = {**headers(key, SINGLE), "Content-Encoding": "identity "}  # not exactly "identity": the route
    slow = client.post("/api/v1/events", content=body(cloudevent("y")), headers=gzip_headers)
    assert (fast.status_code, fast.content) == (slow.status_code, slow.content) == (204, b"")
    assert {k for k in fast.headers if k != "date"} == {k for k in slow.headers if k != "date"}


@pytest.mark.parametrize(
    ("payload", "kind", "status"),
    [
        (b"", SINGLE, 400),
        (b"{not json", SINGLE, 400),
        (body([cloudevent("a")]), SINGLE, 400),  # an array sent as one event
        (body(cloudevent("a", time="yesterday")), SINGLE, 400),
        (body({**cloudevent("a"), "data": {"n": "\\u0000"}}).replace(b"\\\\u0000", b"\\u0000"), SINGLE, 400),
        (body([cloudevent("a", data={"d": DEEP})]), BATCH, 400),
        (body(cloudevent("a")), "text/plain", 415),
    ],
)
def test_refusals_are_the_routes(client, keys, runtime, route_calls, payload, kind, status):
    key = keys["ingest"]
    client.post("/api/v1/events", content=body(cloudevent("warm")), headers=headers(key, SINGLE))
    before = len(route_calls)
    response = client.post("/api/v1/events", content=payload, headers=headers(key, kind))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert len(route_calls) == before + (kind != "text/plain")
    assert runtime.store.count_events() == 1


def test_keys_the_fast_path_cannot_vouch_for_go_to_the_route(client, keys, runtime):
    for key, status in ((keys["read"], 403), ("tbk_unknown", 401), (None, 401)):
        hdrs = headers(key, SINGLE) if key else {"Content-Type": SINGLE}
        for _ in range(2):  # the second time the key's verdict is cached
            response = client.post("/api/v1/events", content=body(cloudevent("k")), headers=hdrs)
            assert response.status_code == status
    assert runtime.store.count_events() == 0


def test_a_commit_that_fails_is_answered_by_the_route(client, keys, runtime, monkeypatch):
    key = keys["ingest"]
    client.post("/api/v1/events", content=body(cloudevent("warm")), headers=headers(key, SINGLE))

    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise IngestUnavailable("stopping")

    monkeypatch.setattr(runtime.ingest, "submit", unavailable)
    response = client.post("/api/v1/events", content=body(cloudevent("z")), headers=headers(key, SINGLE))
    assert response.status_code == 503
    assert response.json()["type"].endswith("unavailable")


def test_a_nul_in_the_query_is_refused_by_the_guard_not_ingested(client, keys, runtime):
    """The fast path runs before the middleware stack, so it leaves what the guards refuse to them."""
    key = keys["ingest"]
    client.post("/api/v1/events", content=body(cloudevent("warm")), headers=headers(key, SINGLE))
    response = client.post("/api/v1/events?x=%00", content=body(cloudevent("q")), headers=headers(key, SINGLE))
    assert response.status_code == 400
    assert response.json()["type"].endswith("invalid-characters")
    assert runtime.store.count_events() == 1


def test_a_commit_failure_after_the_queue_is_answered_by_the_route(client, keys, runtime, monkeypatch):
    """A future the writer fails reaches the waiting request through the commit waits, and the
    route answers it (here, a writer refusing once, then storing the route's retry)."""
    key = keys["ingest"]
    client.post("/api/v1/events", content=body(cloudevent("warm")), headers=headers(key, SINGLE))
    real = runtime.ingest.submit
    calls: list[int] = []

    def failing_once(events: Any, indexed: bool = True) -> Future[Any]:
        calls.append(1)
        if len(calls) == 1:
            failed: Future[Any] = Future()
            threading.Thread(target=failed.set_exception, args=(RuntimeError("disk on fire"),)).start()
            return failed
        return real(events, indexed)

    monkeypatch.setattr(runtime.ingest, "submit", failing_once)
    response = client.post("/api/v1/events", content=body(cloudevent("f")), headers=headers(key, SINGLE))
    assert response.status_code == 204
    assert len(calls) == 2
    assert runtime.store.count_events() == 2


def test_commit_waits_settle_a_group_with_one_wake_up():
    """Futures resolved together by another thread wake the event loop once, not once each; every
    waiter gets its own outcome, and a waiter cancelled meanwhile is left alone."""
    waits = _CommitWaits()

    async def scenario() -> tuple[list[Any], int]:
        loop = asyncio.get_running_loop()
        wake_ups = 0
        real = loop.call_soon_threadsafe

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal wake_ups
            wake_ups += 1
            return real(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        futures: list[Future[Any]] = [Future() for _ in range(40)]
        waiters = [waits.wait(f) for f in futures]
        waiters[7].cancel()

        def writer() -> None:
            for n, future in enumerate(futures):
                if n == 3:
                    future.set_exception(ValueError("refused"))
                else:
                    future.set_result(n)

        thread = threading.Thread(target=writer)
        thread.start()
        thread.join()  # the loop is busy (here: blocked) while the writer answers its whole group
        outcomes = await asyncio.gather(*waiters, return_exceptions=True)
        return outcomes, wake_ups

    outcomes, wake_ups = asyncio.run(scenario())
    assert isinstance(outcomes[3], ValueError)
    assert isinstance(outcomes[7], asyncio.CancelledError)
    assert [o for n, o in enumerate(outcomes) if n not in (3, 7)] == [n for n in range(40) if n not in (3, 7)]
    assert wake_ups == 1


def test_commit_waits_settle_each_waiter_in_its_own_loop():
    """Two event loops (tests and embedders may run several) waiting at once: the futures the
    writer resolves while both are busy are settled by each loop for its own waiters."""
    waits = _CommitWaits()
    futures = {name: [Future() for _ in range(10)] for name in ("a", "b")}
    waiting = threading.Barrier(3)
    resolved = threading.Event()
    outcomes: dict[str, list[Any]] = {}

    def loop_thread(name: str) -> None:
        async def scenario() -> list[Any]:
            gathered = asyncio.gather(*(waits.wait(f) for f in futures[name]))  # callbacks on each waiter
            waiting.wait()
            resolved.wait()  # this loop stays busy while the writer answers everyone
            return await asyncio.wait_for(gathered, timeout=10)

        # debug: a waiter settled from another loop's thread raises instead of passing unnoticed
        outcomes[name] = asyncio.run(scenario(), debug=True)

    threads = [threading.Thread(target=loop_thread, args=(name,)) for name in futures]
    for thread in threads:
        thread.start()
    waiting.wait()
    for name, group in futures.items():
        for n, future in enumerate(group):
            future.set_result((name, n))
    resolved.set()
    for thread in threads:
        thread.join()
    assert outcomes == {name: [(name, n) for n in range(10)] for name in futures}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(lambda d: d.is_finite())
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def standard(raw: bytes) -> Any:
    """loads_request with only the standard decoder, or the type of its refusal."""
    with patch.object(jsonutil, "_fast_decode", lambda _raw: jsonutil._UNDECIDED):
        try:
            return jsonutil.loads_request(raw, None)
        except ValueError as exc:
            return (type(exc), str(exc))


def ours(raw: bytes) -> Any:
    try:
        return jsonutil.loads_request(raw, None)
    except ValueError as exc:
        return (type(exc), str(exc))


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_the_fast_decoder_reads_what_the_standard_one_reads(value):
    """jsonutil.loads_request tries msgspec first: where it answers, the answer is the standard
    decoder's (numbers exact, ints as ints); where either refuses, both do, in the same words."""
    raw = jsonutil.dumpb(value)
    expected, got = standard(raw), ours(raw)
    assert got == expected
    if not isinstance(expected, tuple):
        assert jsonutil.dumpb(got) == jsonutil.dumpb(expected)


@pytest.mark.parametrize(
    "raw",
    [
        b"NaN",
        b"[Infinity]",
        b'"\\ud800"',
        b'"a\\u0000b"',
        b"\xef\xbb\xbf{}",
        b"\xff",
        b"[1e999999]",
        b"9" * 5000,
        b"[1,]",
    ],
)
def test_bodies_the_fast_decoder_does_not_read_get_the_standard_answer(raw):
    """msgspec refuses these (or reads U+0000, which the checks after decoding refuse); the
    standard decoder then answers, refusal or (a UTF-8 byte order mark) document, as before."""
    assert ours(raw) == standard(raw)
