"""Tallybook invoices pushed to (fake) Stripe: invoices/s and Stripe requests per invoice.

    . .venv/bin/activate
    python -m benchmarks.stripe_invoices                   # 200 customers on the seed plan
    python -m benchmarks.stripe_invoices --customers 50    # quicker

A fresh SQLite database and a fresh fake Stripe server (fakestripe, the real SDK over HTTP on
loopback). N customers subscribe to the seed plan ($49/month in advance, three usage rate cards)
from 1 January, with a month of usage; the default billing profile's app is Stripe and invoices
are issued without approval. The billing job drafts and issues each customer's opening invoice
($49 for January) and January's invoice ($49 for February + three usage lines); then the
`stripe.invoices` job runs until nothing is due. It creates each Stripe customer, each Stripe
invoice with its items, and finalizes it. Afterwards Stripe's totals are compared with Tallybook's,
invoice by invoice, and a second sync run must find nothing to do.

Columns: invoices synced, Stripe requests (and per invoice), wall time, invoices/s, time inside the
SDK's HTTP calls, and Tallybook's own cost per invoice (wall - HTTP). The rate budget is lifted (the
fake does not limit); against real Stripe the budget (25 requests/s in test mode, 100 live) bounds
the rate to budget / requests-per-invoice.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import stripe  # noqa: E402

from benchmarks._inprocess import SEED_METERS, client_for, ok, run_billing, send, utc  # noqa: E402
from benchmarks.stripe_push import TimedClient  # noqa: E402
from fakestripe import FakeStripeServer  # noqa: E402
from scenarios.seed import SEED_PLAN  # noqa: E402
from tallybook.clock import FixedClock  # noqa: E402
from tallybook.config import Settings  # noqa: E402
from tallybook.runtime import Runtime  # noqa: E402
from tallybook.stripe.items import to_minor  # noqa: E402
from tallybook.stripe.service import StripeService  # noqa: E402
from tallybook.stripe.sql import SqlStripeStorage  # noqa: E402


def run(customers: int, fake: FakeStripeServer, directory: Path) -> dict[str, Any]:
    clock = FixedClock(utc(2026, 1, 1))
    fake.clock.set(utc(2026, 2, 1, 1).timestamp())
    settings = Settings.model_validate(
        {
            "database": {"url": f"sqlite:///{directory / 'invoices.db'}"},
            "webhooks": {"scheduler": {"run_in_server": False}},
            "meters": {"definitions": SEED_METERS},
            "billing": {"auto_issue": True, "profile": {"collector": "stripe"}},
            "stripe": {"enabled": True, "api_key": fake.api_key, "api_base": fake.url, "requests_per_second": 1e6},
        }
    )
    runtime = Runtime.build(settings, clock=clock)
    runtime.start()

    def factory(key: str | None) -> stripe.StripeClient:
        return stripe.StripeClient(
            key or fake.api_key,
            base_addresses=fake.base_addresses,
            max_network_retries=2,
            http_client=TimedClient(None, timeout=30.0),
        )

    runtime.use_stripe(
        StripeService(
            SqlStripeStorage(runtime.store),
            runtime.jobs.failures,
            runtime.customers,
            runtime.meters,
            settings.stripe,
            clock,
            client_factory=factory,
        )
    )
    setup_started = time.perf_counter()
    try:
        with client_for(runtime) as api:
            plan = ok(api.post("/api/v1/plans", json=SEED_PLAN), 201)
            ok(api.post(f"/api/v1/plans/{plan['id']}/publish"))
            events = []
            for i in range(customers):
                key = f"c{i:05d}"
                ok(
                    api.post("/api/v1/customers", json={"key": key, "name": key, "primaryEmail": f"{key}@x.example"}),
                    201,
                )
                body = {"customerKey": key, "plan": {"key": "pro"}, "activeFrom": "2026-01-01T00:00:00Z",
                        "alignment": "calendar"}  # fmt: skip
                ok(api.post("/api/v1/subscriptions", json=body), 201)
                events += [
                    ("api.calls", key, utc(2026, 1, 10), {"value": 1000 + i}),
                    ("storage.gb", key, utc(2026, 1, 11), {"value": 10 + i % 50}),
                    ("compute", key, utc(2026, 1, 12), {"seconds": 3600 + i}),
                ]
            clock.set(utc(2026, 2, 1, 0, 30))
            send(api, events)
        runtime.meters.catch_up()
        clock.set(utc(2026, 2, 1, 1))
        run_billing(runtime)
        print(
            f"set-up (customers, subscriptions, events, invoices): {time.perf_counter() - setup_started:.1f} s",
            flush=True,
        )
        TimedClient.spent, TimedClient.calls = 0.0, 0
        started = time.perf_counter()
        synced = 0
        while True:
            result = runtime.invoice_sync.run()
            if result["due"] == 0:
                break
            synced += result.get("synced", 0) + result.get("done", 0)
        seconds = time.perf_counter() - started
        http_seconds, requests = TimedClient.spent, TimedClient.calls
        _, invoices = runtime.invoicing.list_invoices(limit=100_000)
        external = runtime.invoice_sync.external_of([i.id for i in invoices])
        mismatches = 0
        with fake.state.lock:
            for invoice in invoices:
                s_invoice = fake.state.table("invoice")[external[invoice.id]["externalIds"]["invoicing"]]
                if (
                    s_invoice["total"] != to_minor(invoice.totals.total, invoice.currency)
                    or s_invoice["status"] != "open"
                ):
                    mismatches += 1
        assert runtime.invoice_sync.run()["due"] == 0
        return {
            "customers": customers,
            "invoices": len(invoices),
            "synced": synced,
            "requests": requests,
            "seconds": seconds,
            "http": http_seconds,
            "mismatches": mismatches,
        }
    finally:
        runtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeStripeServer() as fake:
        print(f"{args.customers} customers on the seed plan, 2 invoices each ...", flush=True)
        r = run(args.customers, fake, Path(tmp))
    print()
    print("| invoices | synced | requests | requests/invoice | sync s | invoices/s | HTTP s | overhead/invoice ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    overhead = (r["seconds"] - r["http"]) / r["invoices"] * 1000
    print(
        f"| {r['invoices']:,} | {r['synced']:,} | {r['requests']:,} | {r['requests'] / r['invoices']:.1f} "
        f"| {r['seconds']:.1f} | {r['invoices'] / r['seconds']:,.1f} | {r['http']:.1f} | {overhead:.1f} |"
    )
    if r["mismatches"]:
        print(f"  MISMATCH: {r['mismatches']} Stripe invoices differ from Tallybook's totals")
    sys.exit(1 if r["mismatches"] else 0)


if __name__ == "__main__":
    main()
