"""Usage pushed to (fake) Stripe: events/s for N customers x 3 meters, v1 meter events vs the v2
meter event stream, and Tallybook's own cost per reported window.

    . .venv/bin/activate
    python -m benchmarks.stripe_push                      # 10,000 customers x 3 meters, both transports
    python -m benchmarks.stripe_push --customers 1000     # quicker

For each transport: a fresh SQLite database and a fresh fake Stripe server (fakestripe, real
SDK over HTTP on loopback); N customers linked to N Stripe customers, 3 SUM meters, one event per
customer and meter in one hour, so each run reports N x 3 windows. Then:

- **push**: one `report()` run sends every window (intents written, requests sent, outcomes
  recorded); events/s = windows / wall time;
- **HTTP**: time spent inside the SDK's HTTP calls (client side; the fake runs in-process);
- **overhead/window**: (wall - HTTP) / windows: Tallybook's query, planning and ledger writes;
- **recheck**: a second `report()` with nothing new (what every hourly run costs per window
  already reported), per window.

The rate budget is lifted (the fake does not limit); against real Stripe the budget (25/s test,
100/s live) bounds v1 to that many windows per second, while the stream carries 100 per request.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import stripe  # noqa: E402

from fakestripe import FakeStripeServer  # noqa: E402
from tallybook.clock import FixedClock, to_micros  # noqa: E402
from tallybook.config import DatabaseSettings, Settings  # noqa: E402
from tallybook.customers.model import CustomerInput  # noqa: E402
from tallybook.ingest.events import Event  # noqa: E402
from tallybook.meters.models import Aggregation, MeterSpec  # noqa: E402
from tallybook.runtime import Runtime  # noqa: E402
from tallybook.stripe.client import BudgetedRequestsClient  # noqa: E402
from tallybook.stripe.model import CustomerLink, ReportFilter  # noqa: E402
from tallybook.stripe.service import StripeService  # noqa: E402
from tallybook.stripe.settings import StripeMeterMapping, StripeSettings  # noqa: E402
from tallybook.stripe.sql import SqlStripeStorage  # noqa: E402

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
METERS = ("api_calls", "tokens", "storage")


class TimedClient(BudgetedRequestsClient):
    """The SDK's requests client, adding up the time spent in HTTP calls."""

    spent = 0.0
    calls = 0

    def request(self, method: str, url: str, headers: Any, post_data: Any = None) -> Any:
        started = time.perf_counter()
        try:
            return super().request(method, url, headers, post_data)
        finally:
            TimedClient.spent += time.perf_counter() - started
            TimedClient.calls += 1


@dataclass
class Result:
    transport: str
    windows: int
    requests: int
    seconds: float
    http_seconds: float
    recheck_seconds: float
    stripe_total: Decimal
    expected_total: Decimal


def run(transport: str, customers: int, fake: FakeStripeServer, directory: Path) -> Result:
    clock = FixedClock(NOW)
    fake.clock.set(NOW.timestamp())
    mappings = [StripeMeterMapping(meter=m, event_name=m, transport=transport) for m in METERS]  # type: ignore[arg-type]
    settings = StripeSettings(
        enabled=False,
        api_key=fake.api_key,
        api_base=fake.url,
        requests_per_second=1_000_000,
        max_network_retries=2,
        meters=mappings,
    )
    runtime = Runtime.build(
        Settings(database=DatabaseSettings(url=f"sqlite:///{directory / f'{transport}.db'}"), stripe=settings),
        clock=clock,
    )
    try:
        runtime.ingest.start()
        for slug in METERS:
            runtime.meters.create(MeterSpec(slug, slug, Aggregation.SUM, value_property="$.value"))
            fake.client().v1.billing.meters.create(
                {"display_name": slug, "event_name": slug, "default_aggregation": {"formula": "sum"}}
            )

        def factory(key: str | None) -> stripe.StripeClient:
            return stripe.StripeClient(
                key or fake.api_key,
                base_addresses=fake.base_addresses,
                max_network_retries=2,
                http_client=TimedClient(None, timeout=30.0),
            )

        service = StripeService(
            SqlStripeStorage(runtime.store),
            runtime.jobs.failures,
            runtime.customers,
            runtime.meters,
            settings,
            clock,
            client_factory=factory,
        )
        events = []
        for i in range(customers):
            key = f"c{i:05d}"
            customer = runtime.customers.create(CustomerInput(name=key, key=key))
            with fake.state.lock:
                stripe_customer = fake.state.insert("customer", fake.state.base_object("cus", "customer", name=key))
            service.db.put_customer(CustomerLink(customer.id, stripe_customer["id"], None, None, to_micros(NOW)))
            for m, slug in enumerate(METERS):
                when = NOW - timedelta(hours=2) + timedelta(seconds=(i * 3 + m) % 3600)
                events.append(Event("bench", f"{key}-{slug}", slug, key, to_micros(when), {"value": (i % 7) + 1}))
        for start in range(0, len(events), 10_000):
            runtime.ingest.ingest(events[start : start + 10_000])
        runtime.meters.catch_up()

        TimedClient.spent, TimedClient.calls = 0.0, 0
        started = time.perf_counter()
        summary = service.report()
        seconds = time.perf_counter() - started
        http_seconds, requests = TimedClient.spent, TimedClient.calls
        assert summary.halted is None and summary.rejected == 0, summary

        started = time.perf_counter()
        again = service.report()
        recheck = time.perf_counter() - started
        assert again.sent == 0

        total, _ = service.list_reports(ReportFilter(limit=1))
        stripe_total = Decimal(0)
        with fake.state.lock:
            for record in fake.state.meter_events:
                if not record.cancelled:
                    stripe_total += record.value
        expected = Decimal(sum((i % 7) + 1 for i in range(customers)) * len(METERS))
        return Result(transport, total, requests, seconds, http_seconds, recheck, stripe_total, expected)
    finally:
        runtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--transports", nargs="+", default=["v1", "v2_stream"], choices=["v1", "v2_stream"])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for transport in args.transports:
            with FakeStripeServer() as fake:
                print(f"{transport}: {args.customers} customers x {len(METERS)} meters ...", flush=True)
                results.append(run(transport, args.customers, fake, Path(tmp)))
    print()
    header = "| transport | windows | requests | push s | events/s | HTTP s | overhead/window ms | recheck/window ms |"
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    failed = False
    for r in results:
        per_window = (r.seconds - r.http_seconds) / r.windows * 1000
        print(
            f"| {r.transport} | {r.windows:,} | {r.requests:,} | {r.seconds:.1f} | {r.windows / r.seconds:,.0f} "
            f"| {r.http_seconds:.1f} | {per_window:.3f} | {r.recheck_seconds / r.windows * 1000:.3f} |"
        )
        if r.stripe_total != r.expected_total:
            print(f"  MISMATCH: Stripe holds {r.stripe_total}, Tallybook counted {r.expected_total}")
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
