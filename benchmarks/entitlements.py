"""How fast `value` and `access` answer for one customer, with 10M events and 10k customers.

    python benchmarks/entitlements.py                         # SQLite, 10M events, 10k customers
    python benchmarks/entitlements.py --events 1000000 --customers 1000 --samples 500

It builds a throwaway SQLite database with Tallybook's migrations, then fills it fast with bulk
SQL (the figures are about reading, not ingest): customers and their subjects, a SUM meter, and
`--events` rows straight into the meter projection (`meter_usage`, what the materializer would
have written), spread over the last 45 days across the customers; a feature, and for every
customer a monthly metered entitlement (anniversary 60 days ago, so one reset is crossed) with an
issueAfterReset grant plus a 3-month grant. It then times, for random customers, the service call
behind GET /api/v1/customers/{c}/entitlements/{f}/value and the one behind .../access, and the
same value over HTTP through the ASGI app. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `tallybook` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, text

from tallybook.clock import FixedClock, to_micros
from tallybook.config import Settings
from tallybook.customers.sql import customer_subjects, customers
from tallybook.entitlements import sql as ent_sql
from tallybook.entitlements.model import Entitlement, Expiration, Grant
from tallybook.entitlements.recurrence import Interval, Recurrence
from tallybook.ids import new_ulid
from tallybook.runtime import Runtime

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
CHUNK = 50_000


def build(url: str, n_events: int, n_customers: int) -> Runtime:
    settings = Settings.model_validate(
        {
            "database": {"url": url},
            "webhooks": {"scheduler": {"run_in_server": False}},
            "meters": {
                "definitions": [
                    {"slug": "api_calls", "eventType": "api.calls", "aggregation": "SUM", "valueProperty": "$.n"}
                ]
            },
        }
    )
    rt = Runtime.build(settings, clock=FixedClock(NOW))
    meter = rt.meters.get("api_calls")
    now_us = to_micros(NOW)
    keys = [f"cust_{i:05d}" for i in range(n_customers)]
    started = time.perf_counter()
    with rt.store.write() as conn:
        conn.execute(
            insert(customers),
            [
                {
                    "id": new_ulid(NOW),
                    "key": key,
                    "name": key,
                    "created_us": now_us,
                    "updated_us": now_us,
                }
                for key in keys
            ],
        )
        ids = dict(conn.execute(text("SELECT key, id FROM customers")).all())
        conn.execute(
            insert(customer_subjects),
            [{"subject": key, "customer_id": ids[key], "explicit": False} for key in keys],
        )
    # The projection, in chunks: rows spread over 45 days, one customer after another per chunk.
    span_us = int(timedelta(days=45).total_seconds() * 1_000_000)
    start_us = now_us - span_us
    rng = random.Random(7)
    seq = 0
    while seq < n_events:
        rows = []
        for _ in range(min(CHUNK, n_events - seq)):
            seq += 1
            rows.append(
                (meter.key, keys[seq % n_customers], start_us + rng.randrange(span_us), seq, now_us, rng.randint(1, 5))
            )
        with rt.store.write() as conn:
            conn.exec_driver_sql(
                "INSERT INTO meter_usage (meter_key, subject, time_us, event_seq, ingested_us, num) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
    filled = time.perf_counter() - started
    feature = rt.entitlements.create_feature(
        __import__("tallybook.entitlements.model", fromlist=["FeatureSpec"]).FeatureSpec(
            "api_calls", "API calls", "api_calls"
        )
    )
    anchor = NOW - timedelta(days=60)
    entitlement_rows, grant_rows = [], []
    for key in keys:
        e = Entitlement(
            id=new_ulid(NOW),
            type="metered",
            feature_id=feature.id,
            feature_key=feature.key,
            customer_id=ids[key],
            subject_key=key,
            metadata=None,
            annotations=None,
            created_at=anchor,
            updated_at=anchor,
            deleted_at=None,
            active_from=anchor,
            active_to=None,
            measure_usage_from=anchor,
            usage_period=Recurrence(Interval("MONTH"), anchor),
            issue_after_reset=__import__("decimal").Decimal(20000),
            issue_after_reset_priority=1,
        )
        entitlement_rows.append(ent_sql._entitlement_row(e))
        for amount, expiration, low, high in ((20000, None, 20000, 20000), (50000, Expiration("MONTH", 3), 0, 5000)):
            dec = __import__("decimal").Decimal
            grant_rows.append(
                ent_sql._grant_row(
                    Grant(
                        id=new_ulid(NOW),
                        entitlement_id=e.id,
                        amount=dec(amount),
                        priority=1 if expiration is None else 2,
                        effective_at=anchor,
                        expiration=expiration,
                        expires_at=None if expiration is None else anchor + timedelta(days=90),
                        min_rollover=dec(low),
                        max_rollover=dec(high),
                        recurrence=None,
                        metadata=None,
                        annotations=None,
                        created_at=anchor,
                        updated_at=anchor,
                        voided_at=None,
                        deleted_at=None,
                    )
                )
            )
    with rt.store.write() as conn:
        conn.execute(insert(ent_sql.entitlements), entitlement_rows)
        conn.execute(insert(ent_sql.entitlement_grants), grant_rows)
    with rt.store.write() as conn:
        conn.exec_driver_sql("ANALYZE")
    print(f"filled {n_events:,} usage rows for {n_customers:,} customers in {filled:.0f} s", flush=True)
    return rt


def timed(fn, samples: int) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """Wall-clock and CPU milliseconds of each call (the CPU time is this process's: no other thread
    runs, the runtime is not started)."""
    wall, cpu = [], []
    for _ in range(samples):
        started, cpu_started = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
    return wall, cpu


def summary(name: str, measured: tuple[list[float], list[float]]) -> str:
    ms = sorted(measured[0])
    p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    cpu = statistics.median(measured[1])
    return f"| {name} | {statistics.median(ms):.2f} | {p(0.95):.2f} | {p(0.99):.2f} | {ms[-1]:.2f} | {cpu:.2f} |"


METER_CONFIG = """meters:
  definitions:
    - {slug: api_calls, eventType: api.calls, aggregation: SUM, valueProperty: $.n}
"""


def over_server(path: Path, keys: list[str], samples: int, rng: random.Random) -> tuple[list[float], list[float]]:
    """The value route through a real `tallybook serve` (uvicorn, one process) on the same database,
    from a keep-alive HTTP client in this process, at `time=NOW` (the server's clock is the real
    one). Wall time is what a calling app waits; the CPU column is the server process's CPU per
    request (its mean, from /proc), since the client's is not the server's cost."""
    import httpx

    port = _free_port()
    admin = "tbk_bench_admin_key_0123456789abcdef"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "tallybook.yaml"
        config.write_text(
            f"database:\n  url: sqlite:///{path}\n"
            f'auth:\n  bootstrap_keys:\n    - {{name: bench, scope: admin, key: "{admin}"}}\n'
            "webhooks:\n  scheduler:\n    run_in_server: false\n"
            "logging:\n  level: WARNING\n" + METER_CONFIG
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "tallybook", "serve", "--config", str(config), "--port", str(port)],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=30) as client:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        if client.get("/readyz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the benchmark's server did not start")
                    time.sleep(0.2)
                at = NOW.isoformat().replace("+00:00", "Z")

                def call() -> None:
                    response = client.get(
                        f"/api/v1/customers/{rng.choice(keys)}/entitlements/api_calls/value", params={"time": at}
                    )
                    assert response.status_code == 200, response.text

                timed(call, 50)
                wall = []
                cpu_started = _process_cpu(server.pid)
                for _ in range(samples):
                    started = time.perf_counter()
                    call()
                    wall.append((time.perf_counter() - started) * 1000)
                # /proc counts CPU in 10 ms ticks: only the mean over every sample is meaningful.
                mean_cpu = (_process_cpu(server.pid) - cpu_started) * 1000 / samples
                return wall, [mean_cpu]
        finally:
            server.terminate()
            server.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument(
        "--db", type=Path, default=None, help="keep the database in this file and reuse it when it exists (no refill)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "bench.db"
        if path.exists():
            rt = Runtime.build(
                Settings.model_validate(
                    {"database": {"url": f"sqlite:///{path}"}, "webhooks": {"scheduler": {"run_in_server": False}}}
                ),
                clock=FixedClock(NOW),
                sync_meters=False,
            )
        else:
            rt = build(f"sqlite:///{path}", args.events, args.customers)
        service = rt.entitlements
        rng = random.Random(11)
        keys = [f"cust_{i:05d}" for i in range(args.customers)]
        # What the route does: resolve the customer, compute the value.
        value = lambda: service.value(service.customer(rng.choice(keys)), "api_calls")  # noqa: E731
        access = lambda: service.access(service.customer(rng.choice(keys)))  # noqa: E731
        sample = service.value(service.customer(keys[0]), "api_calls")
        print(f"sample value: balance={sample.balance} usage={sample.usage} overage={sample.overage}")
        timed(value, 50)  # warm up
        rows = [summary("value (service)", timed(value, args.samples))]
        rows.append(summary("access (service)", timed(access, args.samples)))
        from fastapi.testclient import TestClient

        from tallybook.api.app import create_app

        key = rt.keys.create("bench", "read").plaintext
        with TestClient(create_app(rt, manage_runtime=False)) as client:
            headers = {"Authorization": f"Bearer {key}"}

            def over_http() -> None:
                response = client.get(
                    f"/api/v1/customers/{rng.choice(keys)}/entitlements/api_calls/value", headers=headers
                )
                assert response.status_code == 200, response.text

            timed(over_http, 50)
            rows.append(summary("value (HTTP, in-process ASGI)", timed(over_http, args.samples)))
        rt.stop()
        served = over_server(path, keys, args.samples, rng)
        rows.append(summary("value (HTTP, uvicorn server; server CPU mean)", served))
    load = os.getloadavg()[0]
    print(f"\n{args.events:,} events, {args.customers:,} customers, {args.samples} samples each (ms)")
    print(f"{os.cpu_count()} cores, load average {load:.1f} while measuring\n")
    print("| call | median | p95 | p99 | max | CPU median |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
