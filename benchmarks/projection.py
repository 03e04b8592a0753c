"""How fast the materializer projects stored events into `meter_usage`, per engine and path.

    python benchmarks/projection.py                  # 60,000 events, 3 runs, SQLite and PostgreSQL
    python benchmarks/projection.py --events 200000 --runs 5

Each run stores `--events` events of three types in a throwaway database, with three meters
(`tokens` SUM of integers with a groupBy, `seconds` SUM of decimals, `users` UNIQUE_COUNT: the
data set of benchmarks/query.py), and times one `MeterService.catch_up()` over all of them: events
projected per second, and the CPU time this process spent per event (on PostgreSQL the work the
database does in its own process is not in that column: that is the point of computing it there).
On PostgreSQL it runs twice per round, interleaved: with the database computing the rows
(meters/projection_sql.py, the default) and with every row made by the Python `Projector` (the
path SQLite and every non-member JSONPath take).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

if __package__ in (None, ""):  # run as a script: make `tallybook` and `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.query import PG_ADMIN_URL, materializer_run
from tallybook.meters import projection_sql


@contextmanager
def postgres_database() -> Iterator[str]:
    name = f"tallybook_projbench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def python_projector_only() -> Iterator[None]:
    """Every row through the `Projector`, as before the store computed them."""
    real = projection_sql.can_project
    projection_sql.can_project = lambda _conn, _meter: False  # type: ignore[assignment]
    try:
        yield
    finally:
        projection_sql.can_project = real  # type: ignore[assignment]


def measure(url_factory, events: int, python_only: bool = False) -> tuple[float, float]:
    """(events/s, CPU µs per event in this process) of one catch-up over `events` stored events."""
    with url_factory() as url:
        if not python_only:
            rate, cpu = materializer_run(url, events)
        else:
            with python_projector_only():
                rate, cpu = materializer_run(url, events)
    return rate, cpu * 1e6


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        yield f"sqlite:///{tmp}/projection.db"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", default="sqlite,postgres")
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    rows: dict[str, list[tuple[float, float]]] = {}
    for run in range(args.runs):
        print(f"run {run + 1} of {args.runs}", flush=True)
        if "sqlite" in engines:
            rows.setdefault("sqlite, Projector", []).append(measure(sqlite_database, args.events))
        if "postgres" in engines:
            rows.setdefault("postgres, in SQL", []).append(measure(postgres_database, args.events))
            rows.setdefault("postgres, Projector", []).append(measure(postgres_database, args.events, True))
    print(f"\nMaterializer catch-up over {args.events:,} stored events (3 meters), median of {args.runs} runs")
    print(f"{'engine, path':<22} {'events/s':>10} {'min-max':>17} {'CPU µs/ev':>10}")
    for name, results in rows.items():
        rates = [r for r, _ in results]
        cpu = statistics.median(c for _, c in results)
        span = f"{min(rates):,.0f}-{max(rates):,.0f}"
        print(f"{name:<22} {statistics.median(rates):>10,.0f} {span:>17} {cpu:>10.1f}")
    if "postgres, in SQL" in rows:
        fast = statistics.median(r for r, _ in rows["postgres, in SQL"])
        slow = statistics.median(r for r, _ in rows["postgres, Projector"])
        print(f"\npostgres: computing the rows in SQL projects {fast / slow:.1f}x the events/s of the Projector")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
