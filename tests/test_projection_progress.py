"""A caller of `Materializer.catch_up` (every meter query) sees every event committed before it,
also when another thread is already projecting: it waits for that thread's progress instead of
queueing behind it for the lock."""

from __future__ import annotations

import threading
from decimal import Decimal

from tallybook.ingest.events import Event
from tallybook.meters.models import Aggregation, MeterSpec, UsageQuery

TIME_US = 1_767_225_600_000_000


def events(prefix: str, count: int) -> list[Event]:
    return [
        Event("svc", f"{prefix}{i}", "calls", f"c{i % 7}", TIME_US + i, {"n": Decimal("0.5")}) for i in range(count)
    ]


def total(runtime) -> Decimal:
    rows = runtime.meters.query(UsageQuery(meter="calls"))
    return sum((row.value for row in rows), Decimal(0))


def test_a_query_while_another_thread_projects_sees_every_committed_event(runtime, monkeypatch):
    runtime.meters.create(
        MeterSpec(slug="calls", event_type="calls", aggregation=Aggregation.SUM, value_property="$.n")
    )
    materializer = runtime.meters.materializer
    monkeypatch.setattr(materializer, "chunk_events", 10)  # many chunks, each one announced
    runtime.ingest.ingest(events("a", 45))
    # Another thread holds the projection lock and projects in chunks, slowly.
    started, release = threading.Event(), threading.Event()
    real_chunk = materializer._chunk

    def slow_chunk(horizon: int) -> tuple[bool, int]:
        started.set()
        release.wait(10)
        return real_chunk(horizon)

    monkeypatch.setattr(materializer, "_chunk", slow_chunk)

    def project() -> None:
        with materializer._lock:
            materializer._catch_up_locked()

    worker = threading.Thread(target=project)
    worker.start()
    assert started.wait(10)
    answer: list[Decimal] = []
    query = threading.Thread(target=lambda: answer.append(total(runtime)))
    query.start()
    release.set()
    query.join(30)
    worker.join(30)
    assert answer == [Decimal("22.5")]  # 45 events of 0.5, none missing, none counted twice


def test_catch_up_after_the_other_thread_finished_projects_the_rest_itself(runtime):
    # The materializer's own catch-up: on SQLite ingest would project these events itself
    # (tallybook/meters/inline_sql.py, InlineProjection; tests/test_inline_projection.py).
    runtime.ingest.projection = None
    runtime.meters.create(
        MeterSpec(slug="calls", event_type="calls", aggregation=Aggregation.SUM, value_property="$.n")
    )
    runtime.ingest.ingest(events("a", 10))
    runtime.meters.catch_up()
    runtime.ingest.ingest(events("b", 6))
    assert runtime.meters.catch_up() == 6
    assert total(runtime) == Decimal("8.0")
