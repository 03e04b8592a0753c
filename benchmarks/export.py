"""`tallybook export` at scale: wall time and peak RSS of the real CLI, per kind and format.

    python -m benchmarks.export                       # 1,000,000 events, every format, events and usage
    python -m benchmarks.export --events 200000 --formats csv

Seeds a throwaway SQLite database as benchmarks/query.py does (events and their meter_usage rows
bulk-inserted with sqlite3; in a child process, so this one stays small: a child's peak RSS
includes what it inherited at fork), then runs `python -m tallybook export KIND --format F -o FILE` once
per combination in a subprocess and reads that process's own peak RSS (os.wait4). The first line
is the same command exporting no rows: the fixed cost of the process (Python, SQLAlchemy, pyarrow
and the runtime), so "peak RSS" minus it is what the rows cost.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_export(url: str, kind: str, fmt: str, output: Path, *extra: str) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one export process."""
    command = [sys.executable, "-m", "tallybook", "export", kind, "--format", fmt, "-o", str(output)]
    started = time.perf_counter()
    proc = subprocess.Popen([*command, *extra, "--database", url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"export failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return elapsed, usage.ru_maxrss * 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--formats", default="csv,jsonl,parquet")
    parser.add_argument("--kinds", default="events,usage")
    parser.add_argument("--db", type=Path, help="seeded database to reuse (seeded here first if missing)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tallybook-export-") as tmp:
        path = args.db or Path(tmp) / "export.db"
        if not path.exists():
            print(f"seeding {args.events:,} events into {path} ...", file=sys.stderr)
            seed = f"from benchmarks.query import load_sqlite; load_sqlite({str(path)!r}, {args.events}, print)"
            subprocess.run([sys.executable, "-c", seed], check=True, stdout=sys.stderr)
        url = f"sqlite:///{path}"
        print("| kind | format | rows | wall s | rows/s after start-up | peak RSS MiB | file MiB |")
        print("|---|---|---|---|---|---|---|")
        fixed: dict[str, float] = {}
        for fmt in args.formats.split(","):
            empty = Path(tmp) / f"empty.{fmt}"
            seconds, rss = run_export(url, "events", fmt, empty, "--from", "2100-01-01T00:00:00Z")
            fixed[fmt] = seconds
            print(f"| no rows (fixed cost) | {fmt} | 0 | {seconds:.1f} | — | {rss / 2**20:.0f} | 0 |", flush=True)
        for kind in args.kinds.split(","):
            for fmt in args.formats.split(","):
                output = Path(tmp) / f"{kind}.{fmt}"
                seconds, rss = run_export(url, kind, fmt, output)
                rows = args.events
                size = output.stat().st_size / 2**20
                rate = rows / max(seconds - fixed[fmt], 1e-3)  # rows/s once started
                print(
                    f"| {kind} | {fmt} | {rows:,} | {seconds:.1f} | {rate:,.0f} | {rss / 2**20:.0f} | {size:.0f} |",
                    flush=True,
                )
                output.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
