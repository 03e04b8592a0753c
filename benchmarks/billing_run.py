"""The monthly billing run: invoices for many customers from many events, timed.

    python benchmarks/billing_run.py                                 # quick: 1,000 customers, 300,000 events
    python benchmarks/billing_run.py --customers 10000 --events 10000000   # the issue's size

Set-up (not timed): a throwaway SQLite database (or PostgreSQL with --engine postgres), the seed
plan (a $49/month fee + API calls at $0.001, storage at $0.01/GB (MAX) and compute at $0.0001/s),
`--customers` customers each subscribed from 1 January, and `--events` events spread evenly over
January across the three meters and all customers. Events and customers are bulk-written through
the store; the meters' projection is then brought up to date (its time is reported separately).

Timed: one `billing.invoice` run on 1 February 01:00 (the grace hour after the period end): it
drafts one invoice per customer with four lines each, reading usage with one grouped query per
meter and period. Reported: wall time, peak RSS, invoices and lines written, and a check that the
invoice totals add up to the expected sum computed independently from the generated events.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from scenarios.seed import SEED_PLAN  # noqa: E402
from tallybook.api.wire.plans import parse_plan  # noqa: E402
from tallybook.billing import invoicing_sql  # noqa: E402
from tallybook.billing.currency import round_money  # noqa: E402
from tallybook.billing.invoicing_ports import InvoiceSearch  # noqa: E402
from tallybook.billing.models import RoundingMode  # noqa: E402
from tallybook.clock import FixedClock, to_micros  # noqa: E402
from tallybook.config import Settings  # noqa: E402
from tallybook.customers.sql import customer_subjects, customers  # noqa: E402
from tallybook.ids import new_ulid  # noqa: E402
from tallybook.ingest.events import Event  # noqa: E402
from tallybook.runtime import Runtime  # noqa: E402
from tallybook.store import billing as billing_store  # noqa: E402

METERS = [
    {"slug": "api_calls", "eventType": "api.calls", "aggregation": "SUM", "valueProperty": "$.value"},
    {"slug": "storage_gb", "eventType": "storage.gb", "aggregation": "MAX", "valueProperty": "$.value"},
    {"slug": "compute_seconds", "eventType": "compute", "aggregation": "SUM", "valueProperty": "$.value"},
]
PRICES = {"api.calls": Decimal("0.001"), "storage.gb": Decimal("0.01"), "compute": Decimal("0.0001")}
TYPES = ("api.calls", "storage.gb", "compute")
JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
CHUNK = 200_000


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(runtime: Runtime, n_customers: int, n_events: int, seed: int) -> Decimal:
    """Plan, customers, subscriptions and events; returns the expected grand total."""
    now = runtime.clock.now()
    plan = runtime.catalog.create(parse_plan(SEED_PLAN))
    runtime.catalog.publish(plan.id)
    subjects = [f"cust_{i:06d}" for i in range(n_customers)]
    now_us = to_micros(now)
    with runtime.store.write() as conn:
        customer_rows = []
        subject_rows = []
        sub_rows = []
        for subject in subjects:
            cid = new_ulid(now)
            customer_rows.append(
                {
                    "id": cid,
                    "key": subject,
                    "name": subject,
                    "currency": "USD",
                    "timezone": "UTC",
                    "created_us": now_us,
                    "updated_us": now_us,
                }
            )
            subject_rows.append({"subject": subject, "customer_id": cid, "explicit": False})
            sub_rows.append(
                {
                    "id": new_ulid(now),
                    "customer_id": cid,
                    "name": "Pro",
                    "plan_key": "pro",
                    "plan_version": 1,
                    "currency": "USD",
                    "cadence": "monthly",
                    "cadence_days": None,
                    "alignment": "calendar",
                    "anchor_us": to_micros(JAN),
                    "timezone": "UTC",
                    "active_from_us": to_micros(JAN),
                    "active_to_us": None,
                    "canceled_us": None,
                    "previous_id": None,
                    "next_id": None,
                    "billed_through_us": None,
                    "metadata": None,
                    "created_us": now_us,
                    "updated_us": now_us,
                }
            )
        for start in range(0, n_customers, 2000):
            conn.execute(customers.insert(), customer_rows[start : start + 2000])
            conn.execute(customer_subjects.insert(), subject_rows[start : start + 2000])
            conn.execute(billing_store.subscriptions.insert(), sub_rows[start : start + 2000])

    rng = random.Random(seed)
    span_us = to_micros(FEB) - to_micros(JAN) - 1
    jan_us = to_micros(JAN)
    sums: dict[tuple[str, str], int] = {}
    maxima: dict[str, int] = {}
    written = 0
    while written < n_events:
        batch = []
        for i in range(written, min(n_events, written + CHUNK)):
            subject = subjects[i % n_customers]
            etype = TYPES[(i // n_customers) % 3]
            value = rng.randint(1, 100)
            batch.append(
                Event(
                    source="bench",
                    id=str(i),
                    type=etype,
                    subject=subject,
                    time_us=jan_us + rng.randint(0, span_us),
                    data={"value": value},
                    datacontenttype=None,
                    ingested_us=now_us,
                )
            )
            if etype == "storage.gb":
                maxima[subject] = max(maxima.get(subject, 0), value)
            else:
                sums[(subject, etype)] = sums.get((subject, etype), 0) + value
        with runtime.store.write() as conn:
            runtime.store.insert_events(conn, batch, now_us)
        written += len(batch)
        print(f"  events written: {written:,}", end="\r", flush=True)
    print()
    expected = Decimal(0)
    for subject in subjects:
        # The $49 fee is billed in advance: January's on each subscription's opening invoice,
        # February's on the January period invoice, next to January's usage.
        total = Decimal(49) * 2
        total += round_money(Decimal(sums.get((subject, "api.calls"), 0)) * PRICES["api.calls"], "USD", ROUND)
        total += round_money(Decimal(maxima.get(subject, 0)) * PRICES["storage.gb"], "USD", ROUND)
        total += round_money(Decimal(sums.get((subject, "compute"), 0)) * PRICES["compute"], "USD", ROUND)
        expected += total
    return expected


ROUND = RoundingMode.HALF_EVEN


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-url", default=None, help="admin URL (default: the test server)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tallybook-billing-bench-") as tmp:
        drop = None
        if args.engine == "sqlite":
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        else:
            import psycopg

            from benchmarks._common import PG_ADMIN_URL

            admin = args.postgres_url or PG_ADMIN_URL
            name = f"tallybook_bench_billing_{random.randrange(1 << 30)}"
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            url = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"

            def drop() -> None:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        clock = FixedClock(JAN - timedelta(days=1))
        settings = Settings.model_validate(
            {
                "database": {"url": url},
                "meters": {"definitions": METERS},
                "webhooks": {"scheduler": {"run_in_server": False}},
            }
        )
        runtime = Runtime.build(settings, clock=clock)
        try:
            print(f"set-up: {args.customers:,} customers, {args.events:,} events on {args.engine}")
            started = time.perf_counter()
            expected = setup(runtime, args.customers, args.events, args.seed)
            print(f"  set-up took {time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            runtime.meters.catch_up()
            projection = time.perf_counter() - started
            print(f"  meter projection (materializer) took {projection:.1f} s")

            clock.set(FEB + timedelta(hours=1))
            rss_before = peak_rss_mib()
            started = time.perf_counter()
            result = runtime.invoicing.run()
            elapsed = time.perf_counter() - started
            rss_after = peak_rss_mib()

            with runtime.store.read() as conn:
                total, records = invoicing_sql.search_invoices(conn, InvoiceSearch())
            lines = sum(len(r.lines) for r in records)
            billed = sum((Decimal(r.row["total"]) for r in records), Decimal(0))
            print(
                f"billing run: {elapsed:.2f} s wall for {result['created']:,} invoices ({lines:,} lines), "
                f"peak RSS {rss_after:.0f} MiB (before the run {rss_before:.0f} MiB)"
            )
            print(
                f"  invoiced total {billed} USD, expected {expected} USD: {'OK' if billed == expected else 'MISMATCH'}"
            )
            ok = billed == expected and total == 2 * args.customers  # an opening and a period invoice each
            if args.customers >= 10_000 and args.events >= 10_000_000:
                print(
                    "  goal (< 60 s on SQLite for 10,000 customers x 10M events): "
                    + ("met" if elapsed < 60 else "missed")
                )
            return 0 if ok else 1
        finally:
            runtime.stop()
            if drop is not None:
                drop()


if __name__ == "__main__":
    sys.exit(main())
