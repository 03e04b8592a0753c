"""The job scheduler's exclusivity across processes, and exactly-once period close on PostgreSQL
with several workers running at the same moment (threads with their own engines, and real
`tallybook jobs run --once` processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from sqlalchemy import text

from tallybook import jsonutil
from tallybook.clock import FixedClock, format_rfc3339
from tallybook.jobs.scheduler import Job
from tallybook.jobs.sql import advisory_key, sql_scheduler
from tallybook.store import open_store
from tests.test_webhook_helpers import SECRET, Receiver, api, build_runtime, reset_database

METERS = [{"slug": "api_calls", "eventType": "api.calls", "aggregation": "SUM", "valueProperty": "$.value"}]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


class Blocking:
    """A job body that holds until released, counting how often it ran."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, now: datetime) -> dict[str, Any]:
        self.calls += 1
        self.started.set()
        assert self.release.wait(10)
        return {"calls": self.calls}


def test_an_exclusive_job_runs_in_one_process_at_a_time(database_url):
    reset_database(database_url)
    clock = FixedClock(datetime(2026, 3, 1, tzinfo=UTC))
    store_a, store_b = open_store(database_url), open_store(database_url)
    body = Blocking()
    a, b = sql_scheduler(store_a, clock), sql_scheduler(store_b, clock)
    for scheduler in (a, b):
        scheduler.register(Job("close", body, interval=timedelta(minutes=1)))
    try:
        results: list[Any] = []
        holder = threading.Thread(target=lambda: results.append(a.run_job(a.jobs[0], force=True)))
        holder.start()
        assert body.started.wait(10)
        skipped = b.run_job(b.jobs[0], force=True)
        assert (skipped.ran, skipped.skipped_reason) == (False, "running in another process")
        body.release.set()
        holder.join(10)
        assert results[0].ran and results[0].result == {"calls": 1}
        # The run is recorded for everyone: the other process finds it not due.
        assert b.run_due() == []
        assert b.run_job(b.jobs[0], force=False).skipped_reason == "not due"
        clock.advance(timedelta(minutes=1))
        [ran] = b.run_due()
        assert ran.ran and body.calls == 2
    finally:
        store_a.close()
        store_b.close()


def test_a_crashed_holder_does_not_block_the_job_forever_on_sqlite(sqlite_url):
    reset_database(sqlite_url)
    clock = FixedClock(datetime(2026, 3, 1, tzinfo=UTC))
    store = open_store(sqlite_url)
    scheduler = sql_scheduler(store, clock)
    calls: list[datetime] = []
    scheduler.register(Job("close", lambda now: {"n": len(calls.append(now) or calls)}, timedelta(minutes=1)))
    try:
        # A process took the lease and died (kill -9) without releasing it.
        lease_until = int((clock.now() + timedelta(minutes=10)).timestamp() * 1_000_000)
        with store.write() as conn:
            conn.execute(
                text("INSERT INTO job_runs (name, locked_by, locked_until_us) VALUES ('close', 'dead', :until)"),
                {"until": lease_until},
            )
        assert scheduler.run_once()[0].skipped_reason == "running in another process"
        clock.advance(timedelta(minutes=10))
        assert scheduler.run_once()[0].ran
        assert len(calls) == 1
    finally:
        store.close()


def _wait_until_released(libpq_url: str, key: int) -> None:
    """The server ends a closed connection's backend (and its locks) a moment after the close."""
    with psycopg.connect(libpq_url, autocommit=True) as probe:
        for _ in range(200):
            if probe.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                probe.execute("SELECT pg_advisory_unlock(%s)", (key,))
                return
            threading.Event().wait(0.05)
    raise AssertionError("the advisory lock outlived its connection")


@pytest.mark.postgres
def test_the_postgres_lock_dies_with_its_holders_connection(postgres_url):
    reset_database(postgres_url)
    clock = FixedClock(datetime(2026, 3, 1, tzinfo=UTC))
    store = open_store(postgres_url)
    scheduler = sql_scheduler(store, clock)
    calls: list[datetime] = []
    scheduler.register(Job("close", lambda now: {"n": len(calls.append(now) or calls)}, timedelta(minutes=1)))
    libpq_url = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    try:
        holder = psycopg.connect(libpq_url, autocommit=True)
        holder.execute("SELECT pg_advisory_lock(%s)", (advisory_key("close"),))
        assert scheduler.run_once()[0].skipped_reason == "running in another process"
        holder.close()  # what the server sees when a worker is killed
        _wait_until_released(libpq_url, advisory_key("close"))
        assert scheduler.run_once()[0].ran
        assert len(calls) == 1
    finally:
        store.close()


def _ingest_spread(client: Any, subjects: int, start: datetime) -> None:
    batch = [
        {
            "specversion": "1.0",
            "id": f"e-{s}-{i}",
            "source": "test",
            "type": "api.calls",
            "subject": f"cust_{s:02d}",
            "time": format_rfc3339(start + timedelta(minutes=10 * i)),
            "data": {"value": i + 1},
        }
        for s in range(subjects)
        for i in range(3)
    ]
    response = client.post("/api/v1/events", json=batch, headers={"Content-Type": "application/cloudevents-batch+json"})
    assert response.status_code == 204, response.text


@pytest.mark.postgres
def test_two_workers_closing_periods_at_once_enqueue_each_exactly_once(postgres_url, receiver):
    """Two runtimes (own engines) run the period-close job body at the same instant, without the
    scheduler lock: the outbox's keys alone keep each (subject, period, endpoint) to one event."""
    clock = FixedClock(datetime(2026, 1, 12, 10, 0, tzinfo=UTC))
    settings = {
        "endpoints": [{"url": receiver.url, "secret": SECRET}],
        "periods": ["hourly", "daily"],
        "grace": "1h",
    }
    first = build_runtime(postgres_url, clock, meters=METERS, **settings)
    second = build_runtime(postgres_url, clock, reset=False, meters=METERS, **settings)
    client = api(first)
    try:
        _ingest_spread(client, subjects=20, start=datetime(2026, 1, 12, 10, 0, tzinfo=UTC))
        clock.set(datetime(2026, 1, 13, 2, 0, tzinfo=UTC))
        jobs = [next(j for j in rt.jobs.jobs if j.name == "aggregation.close") for rt in (first, second)]
        barrier = threading.Barrier(2)
        results: list[Any] = []
        errors: list[BaseException] = []

        def run(job: Job) -> None:
            try:
                barrier.wait(10)
                results.append(job.run(clock.now()))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert sum(r["completed"] for r in results) == 40  # 20 subjects x (one hour + one day)
        with first.store.read() as conn:
            events = conn.execute(
                text(
                    "SELECT subject, payload_period, count(*) FROM (SELECT subject, body::jsonb->>'period' AS "
                    "payload_period FROM notification_events) e GROUP BY subject, payload_period"
                )
            ).all()
            deliveries = conn.execute(text("SELECT count(*) FROM notification_deliveries")).scalar_one()
            sent = conn.execute(text("SELECT count(*) FROM aggregation_sent")).scalar_one()
        assert len(events) == 40 and all(count == 1 for _, _, count in events)
        assert deliveries == 40 and sent == 40

        # Both deliver at once too: each event reaches the receiver once.
        delivered = [threading.Thread(target=rt.jobs.run_once) for rt in (first, second)]
        for thread in delivered:
            thread.start()
        for thread in delivered:
            thread.join(60)
        got = receiver.wait_for(40)
        keys = sorted((b["customerId"], b["period"]) for b in (jsonutil.loads(r.body) for r in got))
        assert len(keys) == 40 and len(set(keys)) == 40
    finally:
        client.close()
        second.stop()
        first.stop()


@pytest.mark.postgres
@pytest.mark.slow
def test_two_jobs_run_once_processes_send_each_period_once(postgres_url, receiver, tmp_path: Path):
    """Two real `tallybook jobs run --once` processes started together on one PostgreSQL."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    hour = now - timedelta(hours=3)  # closed, grace passed
    config = {
        "database": {"url": postgres_url},
        "logging": {"level": "WARNING"},
        "meters": {"definitions": METERS},
        "webhooks": {
            "endpoints": [{"url": receiver.url, "secret": SECRET}],
            "periods": ["hourly"],
            "grace": "1h",
            "scheduler": {"run_in_server": False},
        },
    }
    config_file = tmp_path / "tallybook.yaml"
    config_file.write_text(yaml.safe_dump(config))
    # The database exists and is set up (migrated, meters and endpoint synced) before the workers.
    runtime = build_runtime(postgres_url, FixedClock(now), meters=METERS, **config["webhooks"])
    client = api(runtime)
    try:
        _ingest_spread(client, subjects=10, start=hour)
    finally:
        client.close()
        runtime.stop()
    env = {**os.environ, "TALLYBOOK_CONFIG": str(config_file)}
    command = [sys.executable, "-m", "tallybook", "jobs", "run", "--once"]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, out + err
    got = receiver.wait_for(10)
    assert len(got) == 10
    periods = sorted(jsonutil.loads(r.body)["customerId"] for r in got)
    assert periods == [f"cust_{s:02d}" for s in range(10)]
    assert {jsonutil.loads(r.body)["data"]["periodStart"] for r in got} == {hour.strftime("%Y-%m-%dT%H:00:00.000Z")}
    store = open_store(postgres_url)
    try:
        with store.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM notification_events")).scalar_one() == 10
            states = conn.execute(text("SELECT state, count(*) FROM notification_deliveries GROUP BY state")).all()
        assert dict(states) == {"SUCCESS": 10}
    finally:
        store.close()
