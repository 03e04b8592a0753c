"""Fault isolation in the Stripe loops, on SQLite and PostgreSQL: one meter whose reporting fails
(its Tallybook meter was deleted while Stripe still maps it) and one invoice whose sync fails inside
Tallybook (a stored line amount Stripe cannot take) are recorded and skipped; the others go on."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import text

from fakestripe import FakeStripeServer
from tallybook.meters.models import Aggregation, MeterSpec
from tallybook.stripe.reporter import REPORT_JOB
from tallybook.stripe.settings import StripeMeterMapping
from tests.billing_helpers import ok
from tests.test_stripe_invoicing import Env, make_env, seed, stripe_profile
from tests.test_stripe_support import NOW, build_env, hour
from tests.test_webhook_helpers import api as admin_api


@pytest.fixture
def fake() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        server.clock.set(NOW.timestamp())
        yield server
    assert not server.state.server_errors, "\n".join(server.state.server_errors)


def test_a_mapped_meter_that_fails_does_not_stop_reporting_the_others(
    database_url: str, fake: FakeStripeServer
) -> None:
    mappings = [
        StripeMeterMapping(meter="api_calls", event_name="api_calls"),
        StripeMeterMapping(meter="tokens", event_name="tokens"),
    ]
    env = build_env(database_url, fake, mappings)
    client = admin_api(env.runtime)
    try:
        env.meter("api_calls")
        env.meter("tokens")
        _, alice_stripe = env.customer("alice")
        env.events("api_calls", "alice", (hour(9, 5), 2))
        env.events("tokens", "alice", (hour(9, 6), 5))
        env.runtime.meters.delete("tokens")  # Stripe still maps it
        job = next(j for j in env.runtime.jobs.jobs if j.name == REPORT_JOB)
        result = env.runtime.jobs.run_job(job, force=True)
        assert (result.error, result.status, result.result["failedItems"]) == (None, "partial", 1), result
        assert result.result["sent"] == 1
        assert env.stripe_total("api_calls", alice_stripe, hour(9), hour(10)) == Decimal(2)
        [failure] = ok(client.get("/api/v1/jobs/failures", params={"job": REPORT_JOB}))["items"]
        assert (failure["itemKind"], failure["itemId"], failure["context"]["meter"]) == ("meter", "tokens", "tokens")
        assert "tokens" in failure["error"]
        # The meter is back (recreated): the next run reports it and the failure is cleared.
        env.runtime.meters.create(
            MeterSpec(slug="tokens", event_type="tokens", aggregation=Aggregation.SUM, value_property="$.value")
        )
        env.advance(timedelta(minutes=1))
        result = env.runtime.jobs.run_job(job, force=True)
        assert (result.error, result.status) == (None, "ok"), result
        assert env.stripe_total("tokens", alice_stripe, hour(9), hour(10)) == Decimal(5)
        assert ok(client.get("/api/v1/jobs/failures"))["totalCount"] == 0
    finally:
        client.close()
        env.runtime.stop()


@pytest.fixture
def invoicing_fake() -> Iterator[FakeStripeServer]:
    from tests.billing_helpers import utc

    with FakeStripeServer() as server:
        server.clock.set(utc(2026, 2, 1, 1).timestamp())
        yield server
    assert not server.state.server_errors, "\n".join(server.state.server_errors)


def test_an_invoice_whose_sync_fails_inside_tallybook_does_not_stop_the_others(
    database_url: str, invoicing_fake: FakeStripeServer
) -> None:
    env: Env = make_env(database_url, invoicing_fake)
    try:
        stripe_profile(env.api)
        opening, period = seed(env)
        # The opening invoice's stored line holds an amount finer than cents: Stripe cannot take it.
        with env.rt.store.write() as conn:
            conn.execute(text("UPDATE invoice_lines SET amount = '49.001' WHERE invoice_id = :i"), {"i": opening})
        result = env.sync()
        assert (result["due"], result["synced"], result["crashed"], result["failedItems"]) == (2, 1, 1, 1), result
        assert env.invoice(period)["sync"]["status"] == "synced"
        api: httpx.Client = env.api
        [failure] = ok(api.get("/api/v1/jobs/failures", params={"job": "stripe.invoices"}))["items"]
        assert (failure["itemKind"], failure["itemId"]) == ("invoice", opening)
        assert "49.001" in failure["error"] and "minor unit" in failure["error"]
        jobs = {j["name"]: j for j in ok(api.get("/api/v1/jobs"))["items"]}
        assert jobs["stripe.invoices"]["lastStatus"] == "partial"
        # Fixed, and once its backoff has passed, it syncs and the failure is cleared.
        with env.rt.store.write() as conn:
            conn.execute(text("UPDATE invoice_lines SET amount = '49.00' WHERE invoice_id = :i"), {"i": opening})
        env.clock.advance(timedelta(days=1))
        result = env.sync()
        assert result.get("failedItems") is None and result["synced"] == 1, result
        assert env.invoice(opening)["sync"]["status"] == "synced"
        assert ok(api.get("/api/v1/jobs/failures"))["totalCount"] == 0
    finally:
        env.api.close()
        env.rt.stop()
