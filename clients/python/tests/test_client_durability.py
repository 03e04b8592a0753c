"""Done-when tests against a real `tallybook serve` subprocess, on SQLite and PostgreSQL: a client
killed with SIGKILL, a server stopped for a while, a server killed mid-batch. In each case every
event `track` returned for is stored exactly once."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from tallybook_client import Backoff, CircuitBreaker, Tallybook

pytestmark = pytest.mark.slow
CHILD = Path(__file__).with_name("client_child.py")


def _assert_exactly_once(server, event_type, tracked_ids):
    stored = server.stored_ids(event_type)
    assert len(stored) == len(set(stored)), "an event was stored twice"
    missing = set(tracked_ids) - set(stored)
    assert not missing, f"{len(missing)} tracked events lost, e.g. {sorted(missing)[:3]}"
    assert len(stored) == len(tracked_ids)


def test_client_killed_with_sigkill_mid_stream_loses_nothing_after_restart(running_server, event_type, tmp_path):
    server = running_server
    meter = event_type.replace(".", "_")
    server.create_count_meter(meter, event_type)
    spool, side = tmp_path / "spool", tmp_path / "tracked.txt"
    child = subprocess.Popen(
        [sys.executable, str(CHILD), "track", server.url, server.key, str(spool), event_type, str(side), "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "tracking"
    finally:
        child.kill()  # SIGKILL: no atexit, no flush, mid-stream
        child.wait(timeout=10)
    assert child.returncode == -9
    tracked = side.read_text().split()
    assert len(tracked) > 200  # and the child was still tracking: it tracks until it is killed

    drain = subprocess.run(
        [sys.executable, str(CHILD), "drain", server.url, server.key, str(spool)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert drain.stdout.strip() == "drained", drain.stderr

    reader = Tallybook(server.url, server.key)
    counted = reader.query(meter).total
    reader.close()
    # The kill may land after an event was spooled but before its id reached the side file:
    # that event is stored too (the spool has it), so the count is the side file's, or one more.
    assert len(tracked) <= counted <= len(tracked) + 1
    last = tracked[-20:]
    for event_id in last:
        found = server.http.get("/api/v1/events", params={"id": event_id, "type": event_type}).json()
        assert len(found) == 1, event_id


class Signals:
    """Events the test waits on instead of sleeping: the metrics hook reports what the sender saw."""

    def __init__(self) -> None:
        self.failed = threading.Event()
        self.breaker_open = threading.Event()

    def __call__(self, stats) -> None:
        if stats.failed:
            self.failed.set()
        if stats.breaker == "open":
            self.breaker_open.set()


def _fast_retrying_client(server, signals, **options):
    return Tallybook(
        server.url,
        server.key,
        batch_size=50,
        flush_interval=0.01,
        backoff=Backoff(base=0.01, cap=0.1),
        breaker=CircuitBreaker(failure_threshold=3, reset_timeout=0.1),
        on_metrics=signals,
        **options,
    )


# SQLite only: a graceful stop is the server's business, not the engine's, and each restart of a
# server costs seconds. The SIGKILL test below runs on both engines (there commit durability matters).
@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_server_stopped_for_a_while_then_restarted_loses_and_duplicates_nothing(running_server, event_type, tmp_path):
    """Two clients through the same outage: one with a spool, one with only the memory queue."""
    server = running_server
    signals = {"spool": Signals(), "memory": Signals()}
    clients = {
        "spool": _fast_retrying_client(server, signals["spool"], spool=tmp_path / "spool"),
        "memory": _fast_retrying_client(server, signals["memory"]),
    }
    tracked: list[str] = []

    def track(n: int) -> None:
        for kind, tb in clients.items():
            tracked.append(tb.track(event_type, kind, {"n": n}))

    for n in range(100):
        track(n)
    assert all(tb.flush(timeout=30) for tb in clients.values())

    server.stop()
    for n in range(100, 300):
        track(n)
    for kind, tb in clients.items():
        assert signals[kind].breaker_open.wait(30), f"{kind}: the breaker should open while the server is down"
        assert tb.stats().queue_depth > 0 and not tb.flush(timeout=0)
    server.start()

    for kind, tb in clients.items():
        assert tb.flush(timeout=60), kind
        stats = tb.stats()
        tb.close()
        assert stats.failed >= 3 and stats.sent == 300 and stats.breaker == "closed", (kind, stats)
    _assert_exactly_once(server, event_type, tracked)


class KillsMidBatch(httpx.BaseTransport):
    """Forwards to the real server; on the Nth request, SIGKILLs the server right after the whole
    batch was written to the socket, i.e. while the server is reading, validating or committing it."""

    def __init__(self, server, at_request: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.server = server
        self.at_request = at_request
        self.requests = 0
        self.killed = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.requests == self.at_request:
            request.stream = _ThenKill(request.stream, self._kill)
        return self.inner.handle_request(request)

    def _kill(self) -> None:
        self.server.kill()
        self.killed.set()

    def close(self) -> None:
        self.inner.close()


class _ThenKill(httpx.SyncByteStream):
    def __init__(self, body, kill) -> None:
        self.body = body
        self.kill = kill

    def __iter__(self):
        yield from self.body
        self.kill()  # the last chunk is on the wire; the answer is not


def test_server_killed_mid_batch_then_restarted_stores_every_event_exactly_once(running_server, event_type, tmp_path):
    server = running_server
    signals = Signals()
    transport = KillsMidBatch(server, at_request=3)
    tb = _fast_retrying_client(server, signals, spool=tmp_path / "spool", http_transport=transport)
    tracked = [tb.track(event_type, f"customer-{n % 5}", {"n": n}) for n in range(400)]
    assert transport.killed.wait(30), "the server was never killed"
    assert signals.failed.wait(30)
    tracked += [tb.track(event_type, "acme", {"n": n}) for n in range(400, 500)]
    server.start()
    assert tb.flush(timeout=60)
    tb.close()
    _assert_exactly_once(server, event_type, tracked)


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # the engine plays no part
def test_gzip_against_this_server(running_server, event_type):
    """The server decodes Content-Encoding: gzip: compressed batches are stored exactly once.
    (Against a server that can't read them, the client falls back to plain JSON: see
    test_client_batching.py.)"""
    server = running_server
    tb = Tallybook(server.url, server.key, gzip=True, sync_mode=True)
    tracked = [tb.track(event_type, "acme", {"n": n}) for n in range(3)]
    stats = tb.stats()
    tb.close()
    assert stats.dead_lettered == 0 and stats.sent == 3
    _assert_exactly_once(server, event_type, tracked)


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # the engine plays no part
@pytest.mark.parametrize("with_spool", [False, True], ids=["memory", "spool"])
def test_a_normal_exit_sends_what_is_still_queued(running_server, event_type, tmp_path, with_spool):
    """No flush, no close, not even a reference left: the atexit hook still finds the client and
    sends what is queued (in memory or in the spool) before the interpreter exits."""
    server = running_server
    script = (
        "import gc, sys\n"
        "from tallybook_client import Tallybook\n"
        "spool = sys.argv[4] or None\n"
        "def work():\n"
        "    tb = Tallybook(sys.argv[1], sys.argv[2], spool=spool, flush_interval=3600, batch_size=10_000)\n"
        "    for n in range(50):\n"
        "        print(tb.track(sys.argv[3], 'acme', {'n': n}))\n"
        "work()\n"
        "gc.collect()\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, server.url, server.key, event_type, str(tmp_path) if with_spool else ""],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    _assert_exactly_once(server, event_type, child.stdout.split())
