"""What `track` costs the caller, and how many events per second reach a local server.

    .venv/bin/python clients/python/benchmarks/bench_track.py                # starts a server (SQLite)
    .venv/bin/python clients/python/benchmarks/bench_track.py --events 50000
    .venv/bin/python clients/python/benchmarks/bench_track.py --url http://127.0.0.1:8888 --key tbk_…

Without --url it starts `python -m tallybook serve` on a throwaway SQLite database with the
repository's benchmark helpers (benchmarks/_common.py), so it needs the server installed (the
repository's `make install`). For each mode it tracks --events events in a tight loop, timing
every call, then waits for `flush()`:

- track µs: the cost of one `track` call to the caller (median and p99). The queue is sized to
  hold the whole run, so this is track's own cost, never time spent waiting for room;
- events/s: events tracked ÷ the time from the first `track` to `flush()` returning, i.e. until
  the server acknowledged all of them (sustained throughput through batching to the server).

Each run counts what the server stored (a COUNT meter, read with `tb.query`) and fails if a
single event is missing.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tallybook_client import Tallybook

REPO_ROOT = Path(__file__).resolve().parents[3]


def _percentile(sorted_values: list[int], q: float) -> float:
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index] / 1000


def run_mode(url: str, key: str, label: str, events: int, spool_dir: Path | None, spool_sync: str) -> list[str]:
    event_type = f"bench.{secrets.token_hex(4)}"
    meter = event_type.replace(".", "_")
    response = httpx.post(
        f"{url}/api/v1/meters",
        json={"slug": meter, "aggregation": "COUNT", "eventType": event_type},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    response.raise_for_status()
    tb = Tallybook(
        url,
        key,
        spool=spool_dir,
        spool_sync=spool_sync,  # type: ignore[arg-type]
        max_queue=max(events, 1),
        atexit_timeout=0,
    )
    durations: list[int] = []
    data = {"value": 1, "endpoint": "/items"}
    clock = time.perf_counter_ns
    started = time.perf_counter()
    for n in range(events):
        before = clock()
        tb.track(event_type, f"customer-{n % 100}", data)
        durations.append(clock() - before)
    tracked = time.perf_counter() - started
    if not tb.flush(timeout=600):
        raise SystemExit(f"{label}: flush did not finish")
    elapsed = time.perf_counter() - started
    stored = tb.query(meter).total
    tb.close()
    if stored != events:
        raise SystemExit(f"{label}: the server stored {stored} events, {events} were tracked")
    durations.sort()
    return [
        label,
        f"{events:,}",
        f"{statistics.median(durations) / 1000:.1f}",
        f"{_percentile(durations, 0.99):.1f}",
        f"{events / tracked:,.0f}",
        f"{events / elapsed:,.0f}",
    ]


def print_table(rows: list[list[str]]) -> None:
    header = ["mode", "events", "track µs p50", "track µs p99", "track calls/s", "events/s to server"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="events per mode (default 20,000)")
    parser.add_argument("--full-events", type=int, default=2_000, help="events for spool_sync=full (fsync each)")
    parser.add_argument("--url", help="an already running server (default: start one on SQLite)")
    parser.add_argument("--key", help="an admin API key for --url")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tallybook-bench-client-") as tmp:
        directory = Path(tmp)
        server = None
        if args.url:
            url, key = args.url.rstrip("/"), args.key or ""
        else:
            sys.path.insert(0, str(REPO_ROOT))
            from benchmarks._common import BenchDatabase, ServerProcess

            database = BenchDatabase("sqlite", directory, "client").create()
            server = ServerProcess(directory, database.url).start()
            url, key = server.url, server.admin_key
        try:
            # Warm-up: connections, the server's caches, imports.
            run_mode(url, key, "warm-up", 1_000, None, "normal")
            rows = [
                run_mode(url, key, "memory queue (no spool)", args.events, None, "normal"),
                run_mode(url, key, "spool, synchronous=normal", args.events, directory / "spool-normal", "normal"),
                run_mode(url, key, "spool, synchronous=full", args.full_events, directory / "spool-full", "full"),
            ]
        finally:
            if server is not None:
                server.stop()
    print_table(rows)


if __name__ == "__main__":
    main()
