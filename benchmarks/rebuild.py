"""Meter create and change over many stored events: the API call answers at once, the rebuild runs
in the background with progress, queries answer meanwhile (issue 16).

    python benchmarks/rebuild.py                    # 1,000,000 events, SQLite
    python benchmarks/rebuild.py --events 200000

Set-up: a throwaway SQLite database built by the migrations, N events (three types, a third of
them `prompt`) bulk-inserted as ingest stores them, and a `tokens` meter created and projected on
them. Then, through `MeterService` (the API's code path minus HTTP):

- change the meter from SUM of tokens to COUNT: the time the call takes (the goal: < 1 s at any N), and a
  query during the rebuild (it answers from the previous definition);
- create a second meter: the call's time, and what a query answers (503 `meter-rebuilding`);
- run both builds to the end (`tallybook meters rebuild`'s loop): stored events scanned per second;
- a query after the swap, with the new figure.

Times are wall clock on a shared machine: read them with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `tallybook` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.query import EVENT_COLUMNS, YEAR_END, Generator, _chunks, _event_row
from tallybook.clock import FixedClock
from tallybook.meters.models import Aggregation, MeterRebuilding, MeterSpec, UsageQuery
from tallybook.meters.service import MeterService
from tallybook.meters.sql import SqlMeterStorage
from tallybook.store import open_store

TOKENS = MeterSpec("tokens", "prompt", Aggregation.SUM, value_property="$.tokens", group_by={"model": "$.model"})
SECONDS = MeterSpec("seconds", "job", Aggregation.SUM, value_property="$.seconds")


def _timed(call):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.events
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rebuild.db"
        store = open_store(f"sqlite:///{path}")
        store.migrate()
        service = MeterService(SqlMeterStorage(store), FixedClock(YEAR_END))
        service.create(TOKENS)  # on no events: ready at once
        store.close()
        gen = Generator(n)
        db = sqlite3.connect(path, isolation_level=None)
        for chunk in _chunks(gen.by_time()):
            db.execute("BEGIN")
            db.executemany(
                f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", (_event_row(gen, i) for i in chunk)
            )
            db.execute("COMMIT")
        db.close()
        store = open_store(f"sqlite:///{path}")
        service = MeterService(SqlMeterStorage(store), FixedClock(YEAR_END))
        _, initial = _timed(service.catch_up)
        print(f"{n:,} events; initial projection of `tokens` in {initial:.1f} s; load {os.getloadavg()[0]:.1f}")

        def total() -> object:
            return sum(row.value for row in service.query(UsageQuery(meter="tokens")))

        before = total()
        counted = replace(TOKENS, aggregation=Aggregation.COUNT, value_property=None)
        _, change_s = _timed(lambda: service.update("tokens", counted))
        during, query_s = _timed(total)
        status = service.projection("tokens")
        print(
            f"change tokens from SUM to COUNT: the call took {change_s * 1000:.0f} ms (goal < 1000 ms); state "
            f"{status.state}, queries answer from the {status.answers_from} definition"
        )
        print(f"  query during the rebuild: {query_s * 1000:.0f} ms, total {during} (before the change: {before})")
        _, create_s = _timed(lambda: service.create(SECONDS))
        try:
            service.query(UsageQuery(meter="seconds"))
            answer = "figures"
        except MeterRebuilding as exc:
            answer = f"503 meter-rebuilding ({exc.extra['projection']['percent']}% done)"
        print(f"create `seconds`: the call took {create_s * 1000:.0f} ms (goal < 1000 ms); a query answers {answer}")
        read, build_s = _timed(service.run_builds)
        print(
            f"both builds to the end (one shared scan of the {n:,} stored events, old rows deleted): "
            f"{build_s:.1f} s = {n / build_s:,.0f} stored events/s ({read:,} of the meters' types projected); "
            f"load {os.getloadavg()[0]:.1f}"
        )
        after = total()
        print(f"after the swap: tokens total {after} (new definition), state {service.projection('tokens').state}")
        store.close()


if __name__ == "__main__":
    main()
