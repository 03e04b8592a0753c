"""Ingest throughput over HTTP, next to the database engine's own bulk-insert rate.

    python benchmarks/ingest.py                      # SQLite and PostgreSQL, default sizes
    python benchmarks/ingest.py --engines sqlite --events 200000 --runs 5

For each engine it starts a real `tallybook serve` on a fresh database, sends CloudEvents over
keep-alive HTTP (batches of 100 as application/cloudevents-batch+json, then one event per request
as application/cloudevents+json) with many requests in flight so group commit has something to
group, and measures, in the same run on the same machine, how fast the engine itself bulk-inserts
the same rows into an identical `events` table (SQLite: executemany in one transaction, WAL and
synchronous=FULL as Tallybook uses; PostgreSQL: COPY). It ends by checking that the server stored
exactly the events it acknowledged. See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from rich.console import Console
from rich.table import Table

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `tallybook` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    ENGINES,
    PG_ADMIN_URL,
    BenchDatabase,
    LoadResult,
    NoopServer,
    ServerProcess,
    encode_post,
    median,
    postgres_reachable,
    run_load,
)

EVENTS_PATH = "/api/v1/events"
BATCH_TYPE = "application/cloudevents-batch+json"
SINGLE_TYPE = "application/cloudevents+json"
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
BASE_TIME_US = int(BASE_TIME.timestamp()) * 1_000_000
COLUMNS = ("source", "event_id", "type", "subject", "time_us", "ingested_us", "data", "datacontenttype")
COMMITS_METRIC = "tallybook_ingest_commit_group_events_count"  # one observation per group commit
# The goals, as ratios measured in one run (see benchmarks/README.md).
GOAL_BATCH_OF_RAW = 0.50  # batch ingest against the engine's own bulk insert
GOAL_RESENT_OF_NEW = 0.80  # re-sent (duplicate) events against new ones, batch and single
GOAL_SINGLE_OF_NOOP = 0.70  # single-event ingest against a no-op endpoint on the same server stack
GOAL_FRESHNESS_P99 = 2.0  # seconds from acknowledgement to visibility in a meter query, p99
GOAL_RSS_MB = 200  # server memory under all of the above (peak resident set, VmHWM)
FRESHNESS_POLL = 0.1  # seconds between the probe's meter queries
FRESHNESS_TIMEOUT = 60.0  # seconds to wait, after the load, for the meter to show every event

console = Console(width=max(shutil.get_terminal_size((160, 24)).columns, 160))


# -- workload --------------------------------------------------------------------------------------
def make_events(tag: str, count: int, event_type: str = "api_call") -> list[dict[str, Any]]:
    """`count` distinct, realistic CloudEvents: 1 ms apart, ~1,000 subjects, a small data object."""
    events = []
    for i in range(count):
        micros = BASE_TIME_US + i * 1000
        seconds, fraction = divmod(micros, 1_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:06d}Z"
        events.append(
            {
                "specversion": "1.0",
                "id": f"{tag}-{i:09d}",
                "source": "benchmark",
                "type": event_type,
                "subject": f"customer-{i % 997:04d}",
                "time": stamp,
                "data": {
                    "tokens": 17 + i % 4096,
                    "cost_usd": 0.000125,
                    "model": "small",
                    "region": "eu-west-1",
                },
            }
        )
    return events


def batch_bodies(events: Sequence[dict[str, Any]], size: int) -> list[bytes]:
    return [orjson.dumps(list(events[i : i + size])) for i in range(0, len(events), size)]


def single_bodies(events: Sequence[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


def raw_rows(events: Sequence[dict[str, Any]], ingested_us: int) -> list[tuple[Any, ...]]:
    """The rows Tallybook would store for `events`, as the engine's driver takes them."""
    return [
        (
            e["source"],
            e["id"],
            e["type"],
            e["subject"],
            BASE_TIME_US + i * 1000,
            ingested_us,
            orjson.dumps(e["data"]).decode(),
            None,
        )
        for i, e in enumerate(events)
    ]


# -- the engine's own rate -------------------------------------------------------------------------
def raw_insert_rate(database: BenchDatabase, rows: Sequence[tuple[Any, ...]]) -> float:
    """Events/s for one bulk insert of `rows` in one transaction, commit (fsync) included."""
    if database.engine == "sqlite":
        return _sqlite_executemany_rate(database.path, rows)
    return _postgres_copy_rate(database.libpq_url, rows)


def _sqlite_executemany_rate(path: Path, rows: Sequence[tuple[Any, ...]]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        statement = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(statement, rows)
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return len(rows) / elapsed


def _postgres_copy_rate(url: str, rows: Sequence[tuple[Any, ...]]) -> float:
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(f"COPY events ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        elapsed = time.perf_counter() - started
    return len(rows) / elapsed


# -- measurements ----------------------------------------------------------------------------------
@dataclass
class ModeRuns:
    rates: list[float] = field(default_factory=list)  # events/s, one per run
    requests_per_second: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    server_us_per_event: list[float] = field(default_factory=list)  # server CPU time per event
    events_per_commit: list[float] = field(default_factory=list)  # group commit: events per transaction
    server_cores: list[float] = field(default_factory=list)
    client_cores: list[float] = field(default_factory=list)

    def add(self, events: int, load: LoadResult, server_cpu: float, commits: float) -> None:
        self.rates.append(events / load.elapsed)
        self.requests_per_second.append((load.ok + load.failed) / load.elapsed)
        self.p50_ms.append(load.percentile(0.50) * 1000)
        self.p99_ms.append(load.percentile(0.99) * 1000)
        self.server_us_per_event.append(server_cpu / events * 1e6)
        if commits > 0:
            self.events_per_commit.append(events / commits)
        self.server_cores.append(server_cpu / load.elapsed)
        self.client_cores.append(load.client_cpu / load.elapsed)


@dataclass
class Freshness:
    """Acknowledgement to visibility in a meter query, under the batch load (one run)."""

    delays: list[float] = field(default_factory=list)  # seconds, one per acknowledged request
    events_per_second: float = 0.0  # the ingest rate while it was measured
    caught_up_after: float | None = None  # seconds from the last acknowledgement to all visible
    polls: int = 0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.delays)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class EngineReport:
    engine: str
    raw: list[float] = field(default_factory=list)
    batch: ModeRuns = field(default_factory=ModeRuns)
    batch_again: ModeRuns = field(default_factory=ModeRuns)  # the same batches re-sent: every event a retry
    single: ModeRuns = field(default_factory=ModeRuns)
    single_again: ModeRuns = field(default_factory=ModeRuns)
    noop: ModeRuns = field(default_factory=ModeRuns)  # the single bodies sent to a no-op endpoint
    freshness: Freshness | None = None
    batch_workers: ModeRuns = field(default_factory=ModeRuns)  # batches to `serve --workers N` (PostgreSQL)
    busy_processes: list[int] = field(default_factory=list)  # processes that used CPU, per workers run
    peak_rss_mb: float | None = None  # the one-process server's peak RSS (VmHWM) over the whole run
    workers_peak_rss_mb: float | None = None  # the largest peak among the --workers server's processes
    sent: int = 0  # events in requests the server acknowledged
    stored: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.problems and self.stored == self.sent


class Driver:
    """Sends one workload to the server and files the outcome in the engine's report."""

    def __init__(
        self, server: ServerProcess, report: EngineReport, args: argparse.Namespace, noop: NoopServer | None = None
    ) -> None:
        self.server = server
        self.noop = noop
        self.busy = 0  # processes of the server that used CPU in the last send
        self.report = report
        self.args = args

    def send(
        self,
        events: Sequence[dict[str, Any]],
        batched: bool,
        runs: ModeRuns | None,
        what: str,
        new: bool = True,
        server: ServerProcess | None = None,
    ) -> None:
        server = server or self.server
        args = self.args
        cpu_by_process = server.cpu_by_process()
        if batched:
            bodies, content_type = batch_bodies(events, args.batch_size), BATCH_TYPE
        else:
            bodies, content_type = single_bodies(events), SINGLE_TYPE
        requests = [
            encode_post(server.host, server.port, EVENTS_PATH, content_type, server.admin_key, b) for b in bodies
        ]
        commits_before = server.metrics().get(COMMITS_METRIC, 0.0)
        cpu_before = server.cpu_seconds()
        load = run_load(server.host, server.port, requests, args.concurrency, args.clients, args.request_timeout)
        server_cpu = server.cpu_seconds() - cpu_before
        self.busy = sum(1 for pid, cpu in server.cpu_by_process().items() if cpu - cpu_by_process.get(pid, 0.0) > 0.1)
        commits = server.metrics().get(COMMITS_METRIC, 0.0) - commits_before
        if load.failed:
            self.report.problems.append(f"{what}: {load.failed} of {len(requests)} requests failed: {load.failures}")
            return
        if new:
            self.report.sent += len(events)
        if runs is not None:
            runs.add(len(events), load, server_cpu, commits)

    def send_noop(self, events: Sequence[dict[str, Any]], runs: ModeRuns | None) -> None:
        """The single-event requests, byte for byte, to the no-op endpoint."""
        noop, args = self.noop, self.args
        assert noop is not None
        requests = [
            encode_post(noop.host, noop.port, noop.path, SINGLE_TYPE, self.server.admin_key, b)
            for b in single_bodies(events)
        ]
        cpu_before = noop.cpu_seconds()
        load = run_load(noop.host, noop.port, requests, args.concurrency, args.clients, args.request_timeout)
        if load.failed:
            self.report.problems.append(f"no-op: {load.failed} of {len(requests)} requests failed: {load.failures}")
            return
        if runs is not None:
            runs.add(len(events), load, noop.cpu_seconds() - cpu_before, 0.0)

    def freshness(self, events: Sequence[dict[str, Any]]) -> Freshness:
        """Send `events` as batches at full speed while a thread queries a SUM meter (with a
        groupBy) over their type every FRESHNESS_POLL seconds, and after the load until the meter
        shows them all. An acknowledged request is visible at the first query answered after its
        acknowledgement whose total counts at least every event acknowledged up to it."""
        server, args = self.server, self.args
        auth = {"Authorization": f"Bearer {server.admin_key}"}
        event_type = events[0]["type"]
        meter = {
            "slug": "bench_fresh",
            "name": "freshness probe",
            "eventType": event_type,
            "aggregation": "COUNT",
            "groupBy": {"model": "$.model"},
        }
        created = httpx.post(f"{server.url}/api/v1/meters", json=meter, headers=auth, timeout=120)
        created.raise_for_status()
        bodies = batch_bodies(events, args.batch_size)
        requests = [encode_post(server.host, server.port, EVENTS_PATH, BATCH_TYPE, server.admin_key, b) for b in bodies]
        seen: list[tuple[float, int]] = []  # (answered at, events counted)
        done = threading.Event()
        total = len(events)

        def poll() -> None:
            with httpx.Client(base_url=server.url, headers=auth, timeout=60) as client:
                deadline = None
                while True:
                    response = client.get("/api/v1/meters/bench_fresh/query")
                    answered = time.monotonic()
                    if response.status_code == 200:
                        counted = int(sum(Decimal(str(row["value"])) for row in response.json()["data"]))
                        seen.append((answered, counted))
                        if done.is_set() and counted >= total:
                            return
                    if done.is_set():
                        deadline = deadline or answered + FRESHNESS_TIMEOUT
                        if answered > deadline:
                            return
                    time.sleep(FRESHNESS_POLL)

        poller = threading.Thread(target=poll, name="freshness-poller")
        poller.start()
        try:
            load = run_load(server.host, server.port, requests, args.concurrency, args.clients, args.request_timeout)
        finally:
            done.set()
            poller.join()
        result = Freshness(events_per_second=total / load.elapsed, polls=len(seen))
        if load.failed:
            self.report.problems.append(f"freshness: {load.failed} of {len(requests)} requests failed")
            return result
        self.report.sent += total
        acked = sorted(load.acked)
        for index, at in enumerate(acked):
            needed = (index + 1) * args.batch_size if (index + 1) * args.batch_size <= total else total
            visible = next((t for t, counted in seen if t >= at and counted >= needed), None)
            result.delays.append(visible - at if visible is not None else float("inf"))
        last = next((t for t, counted in seen if counted >= total), None)
        result.caught_up_after = None if last is None else max(0.0, last - acked[-1])
        return result


def start_worker(server: ServerProcess, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """`tallybook worker` on the server's config: its materializer projects in another process
    (PostgreSQL lets several take turns), beside the server's own thread."""
    log_path = server.directory / "worker.log"
    env = server.environment()
    command = [sys.executable, "-m", "tallybook", "worker", "--config", str(server.config)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=server.directory, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while "worker running" not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"tallybook worker did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.1)
    return proc


def bench_engine(engine: str, args: argparse.Namespace) -> EngineReport:
    report = EngineReport(engine)
    with tempfile.TemporaryDirectory(prefix=f"tallybook-bench-{engine}-") as scratch:
        directory = Path(scratch)
        server_db = BenchDatabase(engine, directory, "server", args.postgres_url)
        raw_db = BenchDatabase(engine, directory, "raw", args.postgres_url)
        # --ingest-writers: group-commit writer threads (PostgreSQL; the server's default when unset).
        writers = {"ingest": {"writers": args.ingest_writers}} if engine == "postgres" and args.ingest_writers else None
        server = ServerProcess(directory, server_db.url, settings=writers)
        noop = NoopServer(directory)
        driver = Driver(server, report, args, noop)
        # PostgreSQL: a second server on the same database, with --workers, measured in the same runs.
        multi = None
        if engine == "postgres" and args.workers > 1:
            extra = ["--workers", str(args.workers)]
            multi = ServerProcess(directory, server_db.url, settings=writers, extra_args=extra, name="workers")
            multi.admin_key = server.admin_key
        try:
            server_db.create()
            raw_db.create().migrate()
            server.start()
            noop.start()
            if multi is not None:
                multi.start()
                warm_multi = make_events(f"{engine}-warm-multi", 4_000)
                driver.send(warm_multi, batched=True, runs=None, what="warm-up (workers)", server=multi)
            # Warm-up, not measured: connections, imports, caches, plans.
            warm = make_events(f"{engine}-warm", 2_000)
            driver.send(warm[:1_500], batched=True, runs=None, what="warm-up (batch)")
            driver.send(warm[1_500:], batched=False, runs=None, what="warm-up (single)")
            driver.send_noop(warm[1_500:], runs=None)
            # Interleaved, so that drift in the machine's load touches every column alike.
            for run in range(args.runs):
                console.print(f"  {engine}: run {run + 1} of {args.runs}", style="dim", highlight=False)
                rows = raw_rows(make_events(f"{engine}-raw-{run}", args.events), BASE_TIME_US)
                report.raw.append(raw_insert_rate(raw_db, rows))
                del rows
                batch = make_events(f"{engine}-batch-{run}", args.events)
                driver.send(batch, batched=True, runs=report.batch, what=f"batch run {run + 1}")
                again = f"batch re-sent, run {run + 1}"
                driver.send(batch, batched=True, runs=report.batch_again, what=again, new=False)
                del batch
                if multi is not None:
                    batch = make_events(f"{engine}-batch-multi-{run}", args.events)
                    what = f"batch, {args.workers} workers, run {run + 1}"
                    driver.send(batch, batched=True, runs=report.batch_workers, what=what, server=multi)
                    report.busy_processes.append(driver.busy)
                    del batch
                single = make_events(f"{engine}-single-{run}", args.single_events)
                driver.send_noop(single, runs=report.noop)
                driver.send(single, batched=False, runs=report.single, what=f"single run {run + 1}")
                again = f"single re-sent, run {run + 1}"
                driver.send(single, batched=False, runs=report.single_again, what=again, new=False)
            console.print(f"  {engine}: freshness under batch load", style="dim", highlight=False)
            fresh = make_events(f"{engine}-fresh", args.freshness_events, "fresh_call")
            projector = start_worker(server) if engine == "postgres" and args.projector_worker else None
            try:
                report.freshness = driver.freshness(fresh)
            finally:
                if projector is not None:
                    projector.terminate()
                    projector.wait(timeout=60)
            del fresh
            report.peak_rss_mb = max(server.peak_rss_mb().values(), default=None)
            if multi is not None:
                report.workers_peak_rss_mb = max(multi.peak_rss_mb().values(), default=None)
                multi.stop()
            server.stop()
            if server.proc is not None and server.proc.returncode not in (0, -signal.SIGTERM, None):
                report.problems.append(f"the server exited with {server.proc.returncode}")
            report.stored = server_db.count_events()
            if report.stored != report.sent:
                report.problems.append(f"the server acknowledged {report.sent:,} events but stored {report.stored:,}")
        except Exception as exc:
            report.problems.append(f"{type(exc).__name__}: {exc}")
            log = server.log_text()
            if log:
                report.problems.append(f"server log tail:\n{log}")
        finally:
            server.stop()
            noop.stop()
            if multi is not None:
                multi.stop()
            for database in (server_db, raw_db):
                try:
                    database.drop()
                except Exception as exc:
                    report.problems.append(f"could not drop {database.name}: {exc}")
    return report


# -- output ----------------------------------------------------------------------------------------
def _spread(values: Sequence[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}" if len(values) > 1 else ""


@dataclass(frozen=True)
class Row:
    label: str
    runs: ModeRuns
    versus: str  # what the ratio compares with: "raw", or the label of another row
    goal: float  # the goal for that ratio


def rows_of(report: EngineReport, args: argparse.Namespace) -> list[Row]:
    batch = f"batch {args.batch_size}/req"
    return [
        Row(batch, report.batch, "raw", GOAL_BATCH_OF_RAW),
        Row(f"{batch} re-sent", report.batch_again, batch, GOAL_RESENT_OF_NEW),
        *(
            [Row(f"{batch}, {args.workers} workers", report.batch_workers, "raw", GOAL_BATCH_OF_RAW)]
            if report.batch_workers.rates
            else []
        ),
        Row("no-op endpoint", report.noop, "raw", 0.0),
        Row("single", report.single, "no-op endpoint", GOAL_SINGLE_OF_NOOP),
        Row("single re-sent", report.single_again, "single", GOAL_RESENT_OF_NEW),
    ]


def ratio_of(row: Row, report: EngineReport, rows: Sequence[Row]) -> float | None:
    """The row's median events/s over its reference's (the raw insert rate or another row)."""
    if not row.runs.rates:
        return None
    if row.versus == "raw":
        reference = median(report.raw) if report.raw else 0.0
    else:
        other = next((r for r in rows if r.label == row.versus), None)
        reference = median(other.runs.rates) if other is not None and other.runs.rates else 0.0
    return median(row.runs.rates) / reference if reference else None


def render(reports: Sequence[EngineReport], args: argparse.Namespace) -> Table:
    table = Table(
        title=(
            f"Tallybook ingest over HTTP, median of {args.runs} runs: {args.events:,} events/run in batches of "
            f"{args.batch_size}, {args.single_events:,} events/run one per request; {args.concurrency} requests "
            f"in flight from {args.clients} client process(es)"
        ),
        title_justify="left",
    )
    headers = ("engine", "mode", "events/s", "min-max", "raw events/s", "ratio", "of", "req/s", "p50/p99 ms")
    for header in (*headers, "ev/commit", "CPU µs/ev", "cores srv/cli"):
        table.add_column(header, justify="left" if header in ("engine", "mode", "of") else "right", no_wrap=True)
    for report in reports:
        raw = median(report.raw) if report.raw else 0.0
        rows = rows_of(report, args)
        for index, row in enumerate(rows):
            raw_cell = f"{raw:,.0f}" + (f" ({_spread(report.raw)})" if index == 0 and len(report.raw) > 1 else "")
            runs = row.runs
            if not runs.rates:
                table.add_row(report.engine, row.label, "failed", "", raw_cell, *[""] * 7)
                continue
            ratio = ratio_of(row, report, rows)
            table.add_row(
                report.engine,
                row.label,
                f"{median(runs.rates):,.0f}",
                _spread(runs.rates),
                raw_cell,
                f"{ratio:.1%}" if ratio is not None else "",
                row.versus,
                f"{median(runs.requests_per_second):,.0f}",
                f"{median(runs.p50_ms):.0f}/{median(runs.p99_ms):.0f}",
                f"{median(runs.events_per_commit):,.0f}" if runs.events_per_commit else "?",
                f"{median(runs.server_us_per_event):.1f}",
                f"{median(runs.server_cores):.2f}/{median(runs.client_cores):.2f}",
            )
    return table


def goal_lines(reports: Sequence[EngineReport], args: argparse.Namespace) -> list[tuple[str, bool]]:
    """One line per goal of the issue that this run measured: (text, met)."""
    lines = []
    for report in reports:
        rows = rows_of(report, args)
        for row in rows:
            ratio = ratio_of(row, report, rows)
            if row.goal and ratio is not None:
                text = f"{report.engine} {row.label}: {ratio:.1%} of {row.versus} (goal ≥ {row.goal:.0%})"
                other = next((r for r in rows if r.label == row.versus), None)
                if other is not None and other.runs.server_us_per_event and row.runs.server_us_per_event:
                    # The same comparison by the server's CPU time per event, which other load on
                    # the machine disturbs much less than events/s.
                    by_cpu = median(other.runs.server_us_per_event) / median(row.runs.server_us_per_event)
                    text += f"; by server CPU per event {by_cpu:.1%}"
                lines.append((text, ratio >= row.goal))
        if report.busy_processes:
            busy = min(report.busy_processes)
            text = f"{report.engine} --workers {args.workers}: {busy} server processes busy in every run (goal > 1)"
            lines.append((text, busy > 1))
        fresh = report.freshness
        if fresh is not None and fresh.delays:
            p99 = fresh.percentile(0.99)
            caught = "never" if fresh.caught_up_after is None else f"{fresh.caught_up_after:.2f} s"
            text = (
                f"{report.engine} freshness at {fresh.events_per_second:,.0f} events/s: ack to visible in a meter "
                f"query p50 {fresh.percentile(0.5):.2f} s, p99 {p99:.2f} s (goal ≤ {GOAL_FRESHNESS_P99:.0f} s); "
                f"all visible {caught} after the last ack; {fresh.polls} queries"
            )
            lines.append((text, p99 <= GOAL_FRESHNESS_P99))
        if report.peak_rss_mb is not None:
            peaks = [report.peak_rss_mb] + ([report.workers_peak_rss_mb] if report.workers_peak_rss_mb else [])
            text = f"{report.engine} server memory: peak RSS {report.peak_rss_mb:.0f} MB over the whole run"
            if report.workers_peak_rss_mb:
                text += f", {report.workers_peak_rss_mb:.0f} MB for the largest --workers process"
            lines.append((text + f" (goal ≤ {GOAL_RSS_MB} MB)", max(peaks) <= GOAL_RSS_MB))
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ingest events/s over HTTP against a real `tallybook serve`, next to the engine's raw rate."
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: sqlite,postgres")
    parser.add_argument("--events", type=int, default=100_000, help="events per batch-mode run and raw run")
    parser.add_argument("--single-events", type=int, default=10_000, help="events (= requests) per single run")
    parser.add_argument(
        "--freshness-events", type=int, default=300_000, help="events sent (in batches) while a meter is queried"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="PostgreSQL: also measure batches sent to `serve --workers N`"
    )
    parser.add_argument(
        "--ingest-writers", type=int, default=None, help="PostgreSQL: the servers' ingest.writers (default: theirs)"
    )
    parser.add_argument(
        "--projector-worker",
        action="store_true",
        help="PostgreSQL: run `tallybook worker` beside the server while measuring freshness",
    )
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch request")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode; the table shows the median")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (keep-alive connections)")
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes sharing --concurrency")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="time limit of one run, seconds")
    parser.add_argument("--postgres-url", default=PG_ADMIN_URL, help="server to create the throwaway databases on")
    args = parser.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    for name in ("events", "single_events", "freshness_events", "batch_size", "runs", "concurrency", "clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reports: list[EngineReport] = []
    started = time.monotonic()
    for engine in args.engines:
        if engine == "postgres":
            reason = postgres_reachable(args.postgres_url)
            if reason is not None:
                console.print(f"[yellow]skipping PostgreSQL:[/yellow] not reachable at {args.postgres_url}: {reason}")
                continue
        console.print(f"[bold]{engine}[/bold]: starting tallybook serve", highlight=False)
        reports.append(bench_engine(engine, args))
    console.print(render(reports, args))
    ok = True
    for report in reports:
        if report.verified:
            console.print(
                f"[green]✓ {report.engine}: the server stored exactly the {report.sent:,} events it acknowledged"
                "[/green]"
            )
        else:
            ok = False
            console.print(f"[red]✗ {report.engine}:[/red]", highlight=False)
            for problem in report.problems:
                console.print(f"    {problem}", highlight=False, markup=False)
    for text, met in goal_lines(reports, args):
        console.print(f"goal {text}: " + ("[green]met[/green]" if met else "[yellow]not met[/yellow]"), highlight=False)
    console.print(f"finished in {time.monotonic() - started:.0f} s", style="dim")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
