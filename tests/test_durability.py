"""A 2xx means committed: a server killed with SIGKILL mid-stream loses no acknowledged event."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tallybook.config import DatabaseSettings, Settings
from tallybook.runtime import Runtime
from tallybook.store.base import EventFilter
from tests.conftest import empty_all_tables
from tests.helpers import BATCH, body, cloudevent, headers
from tests.serverproc import ADMIN_KEY, ServerProcess

pytestmark = pytest.mark.slow


def test_sigkill_during_acknowledged_ingest_loses_nothing(tmp_path, database_url):
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=database_url)))
    empty_all_tables(runtime)
    runtime.store.close()

    server = ServerProcess(tmp_path, database_url).start()
    acknowledged: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def stream(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for n in range(10_000):
                batch = [cloudevent(f"w{worker}-{n}-{i}", subject=f"s{i}") for i in range(10)]
                try:
                    response = http.post("/api/v1/events", content=body(batch), headers=headers(ADMIN_KEY, BATCH))
                except httpx.HTTPError:
                    return  # the server died mid-request: not acknowledged, the client would retry
                if response.status_code != 204:
                    return
                with lock:
                    acknowledged.extend(e["id"] for e in batch)
                    if len(acknowledged) >= 3_000:
                        enough.set()

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(stream, w) for w in range(6)]
        assert enough.wait(timeout=120), "the server did not acknowledge events"
        server.kill()  # SIGKILL while requests are in flight
        for future in futures:
            future.result()

    restarted = ServerProcess(tmp_path, database_url).start()
    try:
        runtime = Runtime.build(Settings(database=DatabaseSettings(url=database_url)))
        stored = {e.id for e in runtime.store.list_events(EventFilter(limit=1_000_000))}
        runtime.store.close()
        missing = set(acknowledged) - stored
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
        assert len(acknowledged) >= 3_000
        # The restarted server serves the data it found on disk.
        listed = httpx.get(f"{restarted.url}/api/v1/events?limit=1", headers=headers(ADMIN_KEY)).json()
        assert len(listed) == 1
    finally:
        restarted.stop()
