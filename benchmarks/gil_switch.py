"""The ingest writer's group commit beside a busy thread, per GIL switch interval (issue 16).

Under load the event loop's thread holds the GIL most of the time. The ingest writer gives the GIL
up around each statement and must take it back after; a waiting thread gets it only when the holder
lets go, at the latest when the switch interval runs out (Python's default: 5 ms). This measures
what that costs a group commit: the same groups of 30 requests of 100 events each are committed on
a SQLite store in this process while a second thread runs Python code without pause (a stand-in
for the event loop), once per switch interval, interleaved. It prints the commit's wall time and
how much the busy thread got done, so the interval `tallybook serve` sets
(`cli/common.GIL_SWITCH_INTERVAL`) can be checked against the alternatives.

    python benchmarks/gil_switch.py                 # 5, 1 and 0.5 ms, 3 rounds of 30 commits (~30 s)
    python benchmarks/gil_switch.py --rounds 5 --intervals 5,2,1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tallybook.ingest.events import Event
from tallybook.ingest.service import IngestService, _Request, _Writer
from tallybook.ingest.sql import SqlEventLog
from tallybook.store import open_store

REQUESTS_PER_GROUP = 30
EVENTS_PER_REQUEST = 100
BASE_TIME_US = 1_767_225_600_000_000


def events(tag: str, count: int) -> list[Event]:
    return [
        Event(
            source="benchmark",
            id=f"{tag}-{i:06d}",
            type="api_call",
            subject=f"customer-{i % 997:04d}",
            time_us=BASE_TIME_US + i * 1000,
            data={"tokens": 17 + i % 4096, "cost_usd": Decimal("0.000125"), "model": "small"},
        )
        for i in range(count)
    ]


class BusyThread:
    """Runs pure Python in a loop, as the event loop does under full load; counts its laps."""

    def __init__(self) -> None:
        self.laps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy", daemon=True)

    def _run(self) -> None:
        total = 0
        while not self._stop.is_set():
            for i in range(1000):
                total += i
            self.laps += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()


def one_round(
    directory: Path, interval: float, commits: int, tag: str, busy_beside: bool = True
) -> tuple[list[float], float]:
    """Commit `commits` groups on a fresh store beside a busy thread (or alone): each commit's wall
    time (s), and the busy thread's laps per second (0 alone)."""
    store = open_store(f"sqlite:///{directory / tag}.db")
    store.migrate()
    service = IngestService(SqlEventLog(store))
    writer = _Writer()
    groups = [
        [_Request(events(f"{tag}-{g}-{r}", EVENTS_PER_REQUEST), Future()) for r in range(REQUESTS_PER_GROUP)]
        for g in range(commits)
    ]
    service._write(writer, [_Request(events(f"{tag}-warm", 10), Future())])  # connection, caches
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    walls: list[float] = []
    busy = BusyThread()
    try:
        if busy_beside:
            busy.start()
        started = time.perf_counter()
        for group in groups:
            began = time.perf_counter()
            service._write(writer, group)
            walls.append(time.perf_counter() - began)
        rate = busy.laps / (time.perf_counter() - started)
    finally:
        busy.stop()
        sys.setswitchinterval(previous)
        if writer.connection is not None:
            writer.connection.close()
        store.close()
    return walls, rate


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", default="5,1,0.5", help="switch intervals to compare, in ms")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per interval (interleaved)")
    parser.add_argument("--commits", type=int, default=30, help="group commits per round")
    args = parser.parse_args(argv)
    intervals = [float(value) / 1000 for value in args.intervals.split(",")]
    walls: dict[float, list[float]] = {interval: [] for interval in intervals}
    rates: dict[float, list[float]] = {interval: [] for interval in intervals}
    with tempfile.TemporaryDirectory(prefix="tallybook-gil-") as scratch:
        for round_number in range(args.rounds):
            for n, interval in enumerate(intervals):
                commit_walls, rate = one_round(Path(scratch), interval, args.commits, f"r{round_number}i{n}")
                walls[interval].extend(commit_walls)
                rates[interval].append(rate)
        alone, _ = one_round(Path(scratch), 0.005, args.commits, "alone", busy_beside=False)
    table = Table(
        title=f"Group commit of {REQUESTS_PER_GROUP} requests of {EVENTS_PER_REQUEST} events on SQLite beside a busy "
        f"thread; {args.rounds} rounds of {args.commits} commits per interval"
    )
    for column in ("switch interval", "commit wall median", "p90", "busy thread laps/s (median)", "vs 5 ms"):
        table.add_column(column, justify="right")
    baseline = statistics.median(rates[intervals[0]])
    for interval in intervals:
        ordered = sorted(walls[interval])
        rate = statistics.median(rates[interval])
        table.add_row(
            f"{interval * 1000:g} ms",
            f"{statistics.median(ordered) * 1000:.1f} ms",
            f"{ordered[int(len(ordered) * 0.9)] * 1000:.1f} ms",
            f"{rate:,.0f}",
            f"{rate / baseline * 100:.0f} %",
        )
    table.add_row("(no busy thread)", f"{statistics.median(alone) * 1000:.1f} ms", "", "", "")
    console = Console(width=140)
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
