"""The HTTP side: customer ↔ Stripe endpoints (OpenMeter's shapes), the report ledger, the signed
period-end webhook (delivered by the fake Stripe), and the `tallybook stripe` CLI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fakestripe import FakeStripeServer
from tallybook.api.app import create_app
from tallybook.cli.main import app as cli
from tallybook.clock import to_micros
from tallybook.config import DatabaseSettings, Settings
from tallybook.customers.model import CustomerInput
from tallybook.ingest.events import Event
from tallybook.meters.models import Aggregation, MeterSpec
from tallybook.runtime import Runtime
from tests.conftest import LiveServer
from tests.test_stripe_support import StripeEnv, fake_fixture, hour, stripe_env_fixture  # noqa: F401  (fixtures)


@pytest.fixture
def api(stripe_env: StripeEnv) -> Iterator[tuple[TestClient, dict[str, str]]]:
    key = stripe_env.runtime.keys.create("admin", "admin").plaintext
    with TestClient(create_app(stripe_env.runtime, manage_runtime=False), raise_server_exceptions=False) as client:
        yield client, {"Authorization": f"Bearer {key}"}


def test_customer_stripe_link_endpoints(stripe_env: StripeEnv, api: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = api
    customer = stripe_env.runtime.customers.create(CustomerInput(name="Alice", key="alice"))
    url = "/api/v1/customers/alice/stripe"
    assert client.get(url, headers=auth).status_code == 404
    put = client.put(url, headers=auth, json={"stripeCustomerId": "cus_123", "stripeDefaultPaymentMethodId": "pm_9"})
    assert put.status_code == 200
    assert put.json() == {"type": "stripe", "stripeCustomerId": "cus_123", "stripeDefaultPaymentMethodId": "pm_9"}
    assert client.get(f"/api/v1/customers/{customer.id}/stripe", headers=auth).json()["stripeCustomerId"] == "cus_123"

    apps = client.put(
        "/api/v1/customers/alice/apps", headers=auth, json=[{"type": "stripe", "stripeCustomerId": "cus_456"}]
    )
    assert apps.status_code == 200 and apps.json() == [{"type": "stripe", "stripeCustomerId": "cus_456"}]
    assert client.get(url, headers=auth).json() == {"type": "stripe", "stripeCustomerId": "cus_456"}

    bad = client.put(url, headers=auth, json={"stripeCustomerId": "acct_1"})
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
    assert "stripeCustomerId" in bad.json()["detail"]
    assert client.put(url, headers=auth, json={}).status_code == 400
    assert client.put(url, headers=auth, json={"stripeCustomerId": "cus_1", "colour": "red"}).status_code == 400
    sandbox = client.put("/api/v1/customers/alice/apps", headers=auth, json=[{"type": "sandbox"}])
    assert sandbox.status_code == 400 and "stripe" in sandbox.json()["detail"]
    missing = client.put("/api/v1/customers/nobody/stripe", headers=auth, json={"stripeCustomerId": "cus_1"})
    assert missing.status_code == 404 and missing.json()["type"].endswith("customer-not-found")
    # One Stripe customer belongs to one Tallybook customer.
    stripe_env.runtime.customers.create(CustomerInput(name="Bob", key="bob"))
    taken = client.put("/api/v1/customers/bob/stripe", headers=auth, json={"stripeCustomerId": "cus_456"})
    assert taken.status_code == 400 and "already linked" in taken.json()["detail"]
    assert client.get(url).status_code == 401


def test_reports_endpoint_shows_each_attempt(stripe_env: StripeEnv, api: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = api
    env = stripe_env
    env.meter("api_calls")
    alice, alice_stripe = env.customer("alice")
    env.events("api_calls", "alice", (hour(9, 5), 2))
    env.fake.faults.rate_limit("/v1/billing/meter_events", times=1)
    env.service.report()
    env.advance(timedelta(minutes=1))
    env.service.report()
    body = client.get("/api/v1/stripe/reports", headers=auth).json()
    assert body["totalCount"] == 1
    item = body["items"][0]
    assert item["status"] == "SENT" and item["attempts"] == 2 and item["customerId"] == alice
    assert item["request"]["payload"] == {"stripe_customer_id": alice_stripe, "value": "2"}
    assert item["response"]["identifier"] == item["identifier"] and item["value"] == 2
    assert item["windowStart"] == "2026-03-10T09:00:00Z"
    log = item["attemptLog"]
    assert [(a["outcome"], a["httpStatus"]) for a in log] == [("RETRY", 429), ("SENT", 200)]
    assert log[0]["response"]["code"] == "rate_limit" and log[1]["response"]["identifier"] == item["identifier"]
    filtered = client.get("/api/v1/stripe/reports?status=PENDING", headers=auth).json()
    assert filtered["totalCount"] == 0
    bad = client.get("/api/v1/stripe/reports?status=LOST", headers=auth)
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
    naive = client.get("/api/v1/stripe/reports?from=2026-03-10T00:00:00", headers=auth)
    assert naive.status_code == 400


def test_period_end_webhook_reports_the_finished_period(stripe_env: StripeEnv) -> None:
    env = stripe_env
    env.meter("api_calls")
    alice, alice_stripe = env.customer("alice")
    price = env.fake.client().v1.prices.create(
        {"currency": "usd", "product_data": {"name": "calls"}, "unit_amount_decimal": Decimal("0.00002"),
         "recurring": {"interval": "month", "usage_type": "metered", "meter": env.stripe_meters["api_calls"]}}
    )  # fmt: skip
    sub = env.fake.client().v1.subscriptions.create({"customer": alice_stripe, "items": [{"price": price.id}]})
    period_end = datetime.fromtimestamp(sub["items"].data[0].current_period_end, UTC)
    env.events("api_calls", "alice", (hour(13), 5), (period_end - timedelta(minutes=20), 7))
    with LiveServer(env.runtime) as server:
        endpoint = env.fake.add_webhook_endpoint(
            f"{server.url}/api/v1/stripe/webhook", ["customer.subscription.updated"]
        )
        env.reconfigure(webhook_secret=endpoint["secret"])
        env.fake.advance_subscription(sub.id, move_clock=True)
        env.clock.set(datetime.fromtimestamp(env.fake.clock.now(), UTC))
        deliveries = env.fake.deliver_webhooks()
        assert deliveries and deliveries[-1].status == 200, deliveries

        # The whole finished period reached Stripe before the next hourly run, last window included.
        assert env.stripe_total("api_calls", alice_stripe, hour(12), period_end) == Decimal(12)
        assert env.service.db.get_customer(alice).period_start_us == to_micros(period_end)  # type: ignore[union-attr]

        forged = httpx.post(
            f"{server.url}/api/v1/stripe/webhook",
            content=b'{"id": "evt_1", "type": "customer.subscription.updated"}',
            headers={"Stripe-Signature": f"t={int(time.time())},v1={'0' * 64}"},
        )
        assert forged.status_code == 400 and forged.headers["content-type"] == "application/problem+json"
        assert forged.json()["type"].endswith("invalid-stripe-signature")
        unsigned = httpx.post(f"{server.url}/api/v1/stripe/webhook", content=b"{}")
        assert unsigned.status_code == 400
    assert len([r for r in env.ledger() if r.status == "SENT"]) == 2


def test_cli_setup_report_reconcile_and_reports(
    tmp_path: Path, fake: FakeStripeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.clock.set(time.time())  # the CLI runs on the system clock
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    config = tmp_path / "tallybook.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {"url": db},
                "webhooks": {"scheduler": {"run_in_server": False}},
                "stripe": {"api_base": fake.url, "max_network_retries": 1},
            }
        )
    )
    monkeypatch.setenv("STRIPE_API_KEY", fake.api_key)
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=db)))
    now = datetime.now(UTC)
    try:
        runtime.meters.create(MeterSpec("api_calls", "api_calls", Aggregation.SUM, value_property="$.value"))
        runtime.customers.create(CustomerInput(name="Alice", key="alice", primary_email="a@example.com"))
        runtime.ingest.start()
        two_hours_ago = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
        runtime.ingest.ingest(
            [Event("svc", "e1", "api_calls", "alice", to_micros(two_hours_ago + timedelta(minutes=3)), {"value": 4})]
        )
    finally:
        runtime.stop()
    runner = CliRunner()
    setup = runner.invoke(cli, ["stripe", "setup", "--meter", "api_calls", "--customer", "alice", "-c", str(config)])
    assert setup.exit_code == 0, setup.output
    assert "https://dashboard.stripe.com/test/billing/meters/mtr_" in setup.output
    assert "https://dashboard.stripe.com/test/subscriptions/sub_" in setup.output
    price = fake.state.all("price")[0]
    assert Decimal(price["unit_amount_decimal"]) * 1_000_000 == 20  # cents: $0.20 per 1,000,000 units
    assert price["recurring"]["usage_type"] == "metered"

    start = (two_hours_ago - timedelta(hours=1)).isoformat()
    end = (two_hours_ago + timedelta(hours=1)).isoformat()
    report = runner.invoke(cli, ["stripe", "report", "--from", start, "--to", end, "-c", str(config)])
    assert report.exit_code == 0, report.output
    line = next(x for x in report.output.splitlines() if x.startswith("cus_"))
    customer, price_id, meter, sent, held_back, not_sent, not_reported, sent_from, sent_to, _ = line.split()
    assert (price_id, meter, sent, held_back, not_sent, not_reported) == (price["id"], "api_calls", "4", "0", "0", "0")
    assert sent_from.endswith("Z") and sent_to > sent_from
    assert "sent=1" in report.output

    reconcile = runner.invoke(cli, ["stripe", "reconcile", "--from", start, "--to", end, "-c", str(config)])
    assert reconcile.exit_code == 0, reconcile.output
    row = next(x for x in reconcile.output.splitlines() if x.startswith("api_calls ") and customer in x)
    assert row.split()[2:7] == [customer, "4", "4", "0", "4"]

    reports = runner.invoke(cli, ["stripe", "reports", "-c", str(config)])
    assert reports.exit_code == 0 and "SENT" in reports.output and "1 report(s)" in reports.output
    bad = runner.invoke(cli, ["stripe", "reconcile", "--from", "yesterday", "--to", end, "-c", str(config)])
    assert bad.exit_code == 2


def test_webhook_without_a_configured_secret_is_refused(
    stripe_env: StripeEnv, api: tuple[TestClient, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = api
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    stripe_env.reconfigure(webhook_secret=None)
    answer = client.post("/api/v1/stripe/webhook", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"})
    assert answer.status_code == 409 and answer.json()["type"].endswith("stripe-not-configured")
    assert "STRIPE_WEBHOOK_SECRET" in answer.json()["detail"]
