"""Usage-query latency on a large event history, next to hand-written SQL on the raw events table.

    python benchmarks/query.py                          # 10M events, SQLite and PostgreSQL
    python benchmarks/query.py --events 1000000 --engines sqlite

The data set: 1,000 customers (one subject each), one year (2025), three meters on three event
types, spread evenly: `tokens` (SUM of integer $.tokens, groupBy model), `seconds` (SUM of decimal
$.seconds) and `users` (UNIQUE_COUNT of $.user). The loader bulk-inserts directly into the store
tables (`events`, and `meter_usage` rows made by the materializer's own Projector), so loading
10M events takes minutes, not hours; the databases are cached (benchmarks/.cache/ for SQLite, a
PostgreSQL database named tallybook_qbench_v<version>_<N>) and reused by the next run with the same --events.
`--fresh` rebuilds them.

Three of the questions have no from/to (the whole history), as OpenMeter clients send them. Each
query runs through `MeterService.query` (the API's code path minus HTTP) and, for the ratio,
as the same question in hand-written SQL against the raw `events` table; the median of --runs
runs is shown. A separate small run measures the materializer itself (events projected per second
from `events` into `meter_usage`).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

if __package__ in (None, ""):  # run as a script: make `tallybook` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from tallybook import jsonutil
from tallybook.clock import FixedClock, to_micros
from tallybook.ingest.events import Event
from tallybook.meters.materializer import Projector
from tallybook.meters.models import Aggregation, MeterSpec, UsageQuery
from tallybook.meters.ports import StoredEvent
from tallybook.meters.service import MeterService
from tallybook.meters.sql import SqlMeterStorage
from tallybook.meters.tables import to_store_value
from tallybook.meters.windows import WindowSize
from tallybook.store import open_store
from tallybook.store.base import SqlStore

PG_ADMIN_URL = os.environ.get("TALLYBOOK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
# Part of the cache names: bump it whenever the loaded schema or data changes.
DATA_VERSION = 3
CUSTOMERS = 1000
YEAR_START = datetime(2025, 1, 1, tzinfo=UTC)
YEAR_END = datetime(2026, 1, 1, tzinfo=UTC)
TYPES = ("prompt", "job", "visit")
MODELS = ("gpt", "claude", "llama")
CHUNK = 100_000
MONTH = (datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC))
SUBJECT = "cust_0042"


def subject_of(i: int) -> str:
    return f"cust_{(i // len(TYPES)) % CUSTOMERS:04d}"


def meter_specs() -> list[MeterSpec]:
    return [
        MeterSpec("tokens", "prompt", Aggregation.SUM, value_property="$.tokens", group_by={"model": "$.model"}),
        MeterSpec("seconds", "job", Aggregation.SUM, value_property="$.seconds"),
        MeterSpec("users", "visit", Aggregation.UNIQUE_COUNT, value_property="$.user"),
    ]


class Generator:
    """Event i of N: type i % 3, subject (i // 3) % 1000, time evenly spread over 2025 in i order.

    Both the time-ordered stream (for `events`) and the per-(meter, subject) streams (for
    `meter_usage`, in its clustering order) can be produced without holding all events in memory.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.start_us = to_micros(YEAR_START)
        self.step_us = (to_micros(YEAR_END) - self.start_us) // n

    def time_us(self, i: int) -> int:
        return self.start_us + i * self.step_us + (i * 7919) % max(self.step_us, 1)

    def data(self, i: int) -> dict[str, Any]:
        kind = i % len(TYPES)
        if kind == 0:
            return {"tokens": 1 + (i * 2654435761) % 2000, "model": MODELS[(i // 7) % 3]}
        if kind == 1:
            q = (i * 40503) % 100_000
            return {"seconds": f"{q // 1000}.{q % 1000:03d}"}
        return {"user": f"u{(i * 31) % 50}"}

    def stored(self, i: int) -> StoredEvent:
        t = self.time_us(i)
        return StoredEvent(i + 1, TYPES[i % 3], subject_of(i), t, t + 2_000_000, self.data(i))

    def by_time(self) -> Iterator[int]:
        return iter(range(self.n))

    def by_meter_subject(self, kind: int) -> Iterator[int]:
        # Subjects sorted by name are cust_0000..cust_0999, i.e. by number.
        stride = len(TYPES) * CUSTOMERS
        for customer in range(CUSTOMERS):
            yield from range(len(TYPES) * customer + kind, self.n, stride)


def _chunks(items: Iterator[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _event_row(gen: Generator, i: int) -> tuple[Any, ...]:
    ev = gen.stored(i)
    return (ev.seq, "bench", f"e{i:09d}", ev.type, ev.subject, ev.time_us, ev.ingested_us, jsonutil.dumps(ev.data))


def _usage_rows(gen: Generator, projectors: list[Projector], dialect: str) -> Iterator[tuple[Any, ...]]:
    for kind, projector in enumerate(projectors):
        for i in gen.by_meter_subject(kind):
            record = projector.project(gen.stored(i))
            assert record is not None
            groups = None if record.groups is None else jsonutil.dumps(record.groups)
            yield (
                record.meter_key,
                record.subject,
                record.time_us,
                record.event_seq,
                record.ingested_us,
                to_store_value(dialect, record.num),
                record.ukey,
                groups,
                record.error,
            )


USAGE_COLUMNS = "meter_key, subject, time_us, event_seq, ingested_us, num, ukey, groups, error"
EVENT_COLUMNS = "seq, source, event_id, type, subject, time_us, ingested_us, data"
TIME_INDEX = "CREATE INDEX ix_meter_usage_time ON meter_usage (meter_key, time_us, ingested_us, num, ukey, voided_us)"


def _prepare(url: str) -> tuple[SqlStore, MeterService, list[Projector]]:
    store = open_store(url)
    store.migrate()
    service = MeterService(SqlMeterStorage(store), FixedClock(YEAR_END))
    meters = [service.create(spec) for spec in meter_specs()]
    return store, service, [Projector(m) for m in meters]


def _customers(n: int) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]]]:
    now = to_micros(YEAR_END)
    rows = [(f"01JBENCH{c:018d}", f"cust_{c:04d}", f"Customer {c}", now, now) for c in range(n)]
    links = [(f"cust_{c:04d}", f"01JBENCH{c:018d}") for c in range(n)]
    return rows, links


def load_sqlite(path: Path, n: int, log: Callable[[str], None]) -> None:
    url = f"sqlite:///{path}"
    store, _service, projectors = _prepare(url)
    store.close()
    gen = Generator(n)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1000000")
    db.execute("DROP INDEX ix_meter_usage_time")
    started = time.perf_counter()
    for chunk in _chunks(gen.by_time()):
        db.execute("BEGIN")
        db.executemany(
            f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", (_event_row(gen, i) for i in chunk)
        )
        db.execute("COMMIT")
    log(f"  events: {n:,} rows in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    for chunk in _chunks(_usage_rows(gen, projectors, "sqlite")):
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO meter_usage ({USAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", chunk)
        db.execute("COMMIT")
    db.execute(TIME_INDEX)
    rows, links = _customers(CUSTOMERS)
    db.execute("BEGIN")
    db.executemany("INSERT INTO customers (id, key, name, created_us, updated_us) VALUES (?,?,?,?,?)", rows)
    db.executemany("INSERT INTO customer_subjects (subject, customer_id) VALUES (?,?)", links)
    db.execute("UPDATE meters SET projected_seq = ?", (n,))
    db.execute("UPDATE meter_projections SET projected_seq = ?", (n,))
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()
    log(f"  meter_usage: {n:,} rows + index in {time.perf_counter() - started:.0f} s")


def load_postgres(url: str, raw_url: str, n: int, log: Callable[[str], None]) -> None:
    store, _service, projectors = _prepare(url)
    store.close()
    gen = Generator(n)
    with psycopg.connect(raw_url, autocommit=True) as db:
        db.execute("DROP INDEX ix_meter_usage_time")
        started = time.perf_counter()
        with db.cursor() as cur, cur.copy(f"COPY events ({EVENT_COLUMNS}) FROM STDIN") as copy:
            for i in gen.by_time():
                copy.write_row(_event_row(gen, i))
        db.execute("SELECT setval(pg_get_serial_sequence('events', 'seq'), %s)", (n,))
        log(f"  events: {n:,} rows in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        with db.cursor() as cur, cur.copy(f"COPY meter_usage ({USAGE_COLUMNS}) FROM STDIN") as copy:
            for row in _usage_rows(gen, projectors, "postgresql"):
                copy.write_row(row)
        db.execute(TIME_INDEX)
        rows, links = _customers(CUSTOMERS)
        with db.cursor() as cur:
            cur.executemany(
                "INSERT INTO customers (id, key, name, created_us, updated_us) VALUES (%s,%s,%s,%s,%s)", rows
            )
            cur.executemany("INSERT INTO customer_subjects (subject, customer_id) VALUES (%s,%s)", links)
        db.execute("UPDATE meters SET projected_seq = %s", (n,))
        db.execute("UPDATE meter_projections SET projected_seq = %s", (n,))
        db.execute("VACUUM ANALYZE")
        log(f"  meter_usage: {n:,} rows + index, vacuum in {time.perf_counter() - started:.0f} s")


# -- the four questions --------------------------------------------------------------------------------


def service_queries() -> dict[str, UsageQuery]:
    year = (YEAR_START, YEAR_END)
    return {
        "one customer, month by day": UsageQuery(
            meter="tokens", from_=MONTH[0], to=MONTH[1], window_size=WindowSize.DAY, subjects=(SUBJECT,)
        ),
        "one customer, year by month": UsageQuery(
            meter="tokens", from_=year[0], to=year[1], window_size=WindowSize.MONTH, subjects=(SUBJECT,)
        ),
        "all customers, month totals by customer": UsageQuery(
            meter="tokens", from_=MONTH[0], to=MONTH[1], group_by=("customer_id",)
        ),
        "UNIQUE_COUNT users, month, by customer": UsageQuery(
            meter="users", from_=MONTH[0], to=MONTH[1], group_by=("customer_id",)
        ),
        # No from/to: the whole history (OpenMeter's semantics: every event, windows only where data is).
        "one customer, no from/to, by minute": UsageQuery(
            meter="tokens", window_size=WindowSize.MINUTE, subjects=(SUBJECT,)
        ),
        "one customer, no from/to, by day": UsageQuery(meter="tokens", window_size=WindowSize.DAY, subjects=(SUBJECT,)),
        "all customers, no parameters (total)": UsageQuery(meter="tokens"),
    }


def raw_queries(dialect: str) -> dict[str, tuple[str, dict[str, Any]]]:
    s, e = to_micros(MONTH[0]), to_micros(MONTH[1])
    ys, ye = to_micros(YEAR_START), to_micros(YEAR_END)
    if dialect == "sqlite":
        tokens = "json_extract(data, '$.tokens')"
        users = "json_extract(e.data, '$.user')"
        month = "strftime('%Y-%m', time_us / 1000000, 'unixepoch')"
        etokens = "json_extract(e.data, '$.tokens')"
    else:
        tokens = "(data->>'tokens')::numeric"
        users = "e.data->>'user'"
        month = "date_trunc('month', to_timestamp(time_us / 1000000.0) AT TIME ZONE 'UTC')"
        etokens = "(e.data->>'tokens')::numeric"
    return {
        "one customer, month by day": (
            f"SELECT (time_us - :s) / 86400000000 AS d, SUM({tokens}) FROM events "
            "WHERE type = 'prompt' AND subject = :subj AND time_us >= :s AND time_us < :e GROUP BY d",
            {"s": s, "e": e, "subj": SUBJECT},
        ),
        "one customer, year by month": (
            f"SELECT {month} AS m, SUM({tokens}) FROM events "
            "WHERE type = 'prompt' AND subject = :subj AND time_us >= :s AND time_us < :e GROUP BY m",
            {"s": ys, "e": ye, "subj": SUBJECT},
        ),
        "all customers, month totals by customer": (
            f"SELECT cs.customer_id, SUM({etokens}) FROM events e "
            "LEFT JOIN customer_subjects cs ON cs.subject = e.subject "
            "WHERE e.type = 'prompt' AND e.time_us >= :s AND e.time_us < :e GROUP BY cs.customer_id",
            {"s": s, "e": e},
        ),
        "UNIQUE_COUNT users, month, by customer": (
            f"SELECT cs.customer_id, COUNT(DISTINCT {users}) FROM events e "
            "LEFT JOIN customer_subjects cs ON cs.subject = e.subject "
            "WHERE e.type = 'visit' AND e.time_us >= :s AND e.time_us < :e GROUP BY cs.customer_id",
            {"s": s, "e": e},
        ),
        "one customer, no from/to, by minute": (
            f"SELECT time_us / 60000000 AS m, SUM({tokens}) FROM events "
            "WHERE type = 'prompt' AND subject = :subj GROUP BY m",
            {"subj": SUBJECT},
        ),
        "one customer, no from/to, by day": (
            f"SELECT time_us / 86400000000 AS d, SUM({tokens}) FROM events "
            "WHERE type = 'prompt' AND subject = :subj GROUP BY d",
            {"subj": SUBJECT},
        ),
        "all customers, no parameters (total)": (
            f"SELECT MIN(time_us), SUM({tokens}), MAX(time_us) FROM events WHERE type = 'prompt'",
            {},
        ),
    }


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    result = fn()  # warm-up (and the answer, for a sanity check)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), result


def measure(url: str, runs: int) -> list[tuple[str, float, float, int]]:
    store = open_store(url)
    service = MeterService(SqlMeterStorage(store), FixedClock(YEAR_END))
    raw = raw_queries(store.dialect_name)
    out = []
    for name, q in service_queries().items():
        ours, rows = timed(lambda q=q: service.query(q), runs)
        sql, params = raw[name]

        def run_raw(sql: str = sql, params: dict[str, Any] = params) -> list[Any]:
            with store.read() as conn:
                return conn.execute(text(sql), params).all()

        theirs, raw_rows = timed(run_raw, max(1, runs // 2))
        out.append((name, ours, theirs, len(rows)))
        if len(rows) != len([r for r in raw_rows if r[1]]):
            print(f"  note: {name}: {len(rows)} rows from Tallybook, {len(raw_rows)} from raw SQL")
    store.close()
    return out


def materializer_rate(url: str, n: int = 60_000) -> float:
    """Events per second the real materializer projects (three meters, one event type each)."""
    return materializer_run(url, n)[0]


def materializer_run(url: str, n: int = 60_000) -> tuple[float, float]:
    """(events per second, this process's CPU seconds per event) of the real materializer projecting
    `n` stored events (three meters, one event type each); benchmarks/projection.py shows both."""
    store = open_store(url)
    store.migrate()
    service = MeterService(SqlMeterStorage(store), FixedClock(YEAR_END))
    for spec in meter_specs():
        service.create(spec)
    gen = Generator(n)
    events = [
        Event("bench", f"m{i}", ev.type, ev.subject, ev.time_us, ev.data)
        for i, ev in ((i, gen.stored(i)) for i in range(n))
    ]
    with store.write() as conn:
        for start in range(0, n, 10_000):
            store.insert_events(conn, events[start : start + 10_000], to_micros(YEAR_END))
    started, cpu = time.perf_counter(), time.process_time()
    service.catch_up()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    store.close()
    return n / elapsed, cpu / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached databases")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    results: dict[str, list[tuple[str, float, float, int]]] = {}
    rates: dict[str, float] = {}
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if engine == "sqlite":
            CACHE_DIR.mkdir(exist_ok=True)
            (CACHE_DIR / ".gitignore").write_text("*\n")  # generated data, never committed
            path = CACHE_DIR / f"query-v{DATA_VERSION}-{args.events}.db"
            if args.fresh or not path.exists():
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
                log(f"sqlite: loading {args.events:,} events into {path}")
                partial = path.with_suffix(".loading")
                partial.unlink(missing_ok=True)
                load_sqlite(partial, args.events, log)
                partial.rename(path)
            url = f"sqlite:///{path}"
            with tempfile.TemporaryDirectory() as tmp:
                rates[engine] = materializer_rate(f"sqlite:///{tmp}/m.db")
        elif engine == "postgres":
            name = f"tallybook_qbench_v{DATA_VERSION}_{args.events}"
            base = PG_ADMIN_URL.rsplit("/", 1)[0]
            raw_url = f"{base}/{name}"
            url = raw_url.replace("postgresql://", "postgresql+psycopg://", 1)
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
                complete = False
                if exists and not args.fresh:
                    with psycopg.connect(raw_url) as db:
                        row = db.execute(
                            "SELECT to_regclass('meters') IS NOT NULL AND "
                            "(SELECT count(*) FROM meters WHERE projected_seq = %s) = 3",
                            (args.events,),
                        ).fetchone()
                        complete = bool(row and row[0])
                if not complete:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    admin.execute(f'CREATE DATABASE "{name}"')
                    log(f"postgres: loading {args.events:,} events into database {name}")
                    load_postgres(url, raw_url, args.events, log)
                scratch = f"tallybook_qbench_scratch_{os.getpid()}"
                admin.execute(f'CREATE DATABASE "{scratch}"')
                try:
                    scratch_url = f"{base}/{scratch}".replace("postgresql://", "postgresql+psycopg://", 1)
                    rates[engine] = materializer_rate(scratch_url)
                finally:
                    admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        else:
            parser.error(f"unknown engine {engine!r}; use sqlite and/or postgres")
        log(f"{engine}: measuring ({args.runs} runs each)")
        results[engine] = measure(url, args.runs)

    print()
    print(f"Median latency, {args.events:,} events ({CUSTOMERS} customers, 2025, 3 meters)")
    header = f"{'engine':<9} {'query':<42} {'rows':>5} {'tallybook':>11} {'raw SQL':>11} {'raw/tallybook':>14}"
    print(header)
    print("-" * len(header))
    for engine, rows in results.items():
        for name, ours, theirs, count in rows:
            ratio = theirs / ours
            print(f"{engine:<9} {name:<42} {count:>5} {ours * 1000:>8.1f} ms {theirs * 1000:>8.1f} ms {ratio:>13.1f}x")
    print()
    for engine, rate in rates.items():
        print(f"materializer ({engine}): {rate:,.0f} events/s projected into meter_usage (3 meters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
