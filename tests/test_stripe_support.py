"""Shared set-up for the Stripe tests: a Tallybook runtime (fixed clock) wired to the fake Stripe.

Holds no tests itself; the `stripe_env` fixture is imported by the test_stripe_* modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import stripe

from fakestripe import FakeStripeServer
from tallybook.clock import FixedClock, to_micros
from tallybook.config import DatabaseSettings, Settings
from tallybook.customers.model import CustomerInput
from tallybook.ingest.events import Event
from tallybook.meters.models import Aggregation, MeterSpec
from tallybook.runtime import Runtime
from tallybook.stripe.client import TokenBucket, build_client
from tallybook.stripe.model import ReportFilter, ReportRow
from tallybook.stripe.service import StripeService
from tallybook.stripe.settings import StripeMeterMapping, StripeSettings
from tallybook.stripe.sql import SqlStripeStorage
from tests.conftest import empty_all_tables

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
WEBHOOK_SECRET = "whsec_test_tallybook_secret"


@dataclass
class StripeEnv:
    runtime: Runtime
    fake: FakeStripeServer
    clock: FixedClock
    settings: StripeSettings
    budget: TokenBucket | None = None
    event_seq: int = 0
    stripe_meters: dict[str, str] = field(default_factory=dict)

    @property
    def service(self) -> StripeService:
        return self.runtime.stripe

    @property
    def client(self) -> stripe.StripeClient:
        return self.service.client()

    def reconfigure(self, **changes: Any) -> StripeService:
        """Replace the Stripe service with one built from changed settings (fresh reporter state)."""
        self.settings = self.settings.model_copy(update=changes)
        self.runtime.use_stripe(make_service(self.runtime, self.settings, self.budget))
        return self.runtime.stripe

    def restart(self) -> StripeService:
        """A new service over the same database: what a crashed and restarted process sees."""
        self.runtime.use_stripe(make_service(self.runtime, self.settings, self.budget))
        return self.runtime.stripe

    def advance(self, delta: timedelta) -> None:
        self.clock.advance(delta)
        self.fake.clock.set(self.clock.now().timestamp())

    def meter(self, slug: str, aggregation: Aggregation = Aggregation.SUM, formula: str = "sum") -> str:
        """A Tallybook meter on event type `slug` and a Stripe meter with event_name `slug`."""
        self.runtime.meters.create(
            MeterSpec(
                slug=slug,
                event_type=slug,
                aggregation=aggregation,
                value_property=None if aggregation is Aggregation.COUNT else "$.value",
            )
        )
        created = self.fake.client().v1.billing.meters.create(
            {"display_name": slug, "event_name": slug, "default_aggregation": {"formula": formula}}  # type: ignore[typeddict-item]
        )
        self.stripe_meters[slug] = created.id
        return str(created.id)

    def customer(self, key: str) -> tuple[str, str]:
        """A Tallybook customer (its key is its subject) linked to a new Stripe customer."""
        customer = self.runtime.customers.create(CustomerInput(name=key, key=key))
        stripe_customer = self.fake.client().v1.customers.create({"name": key})
        self.service.put_customer_stripe(customer.id, {"stripeCustomerId": stripe_customer.id})
        return customer.id, str(stripe_customer.id)

    def events(self, event_type: str, subject: str, *items: tuple[datetime, str | int]) -> None:
        batch = []
        for when, value in items:
            self.event_seq += 1
            batch.append(
                Event(
                    source="test",
                    id=f"e{self.event_seq}",
                    type=event_type,
                    subject=subject,
                    time_us=to_micros(when),
                    data={"value": Decimal(str(value))},
                )
            )
        self.runtime.ingest.ingest(batch)

    def stripe_total(self, slug: str, stripe_customer: str, start: datetime, end: datetime) -> Decimal:
        return Decimal(
            self.fake.state.summarize(
                self.stripe_meters[slug], stripe_customer, int(start.timestamp()), int(end.timestamp())
            )
        )

    def ledger(self, **filters: Any) -> list[ReportRow]:
        _, rows = self.service.list_reports(ReportFilter(limit=10_000, **filters))
        return list(reversed(rows))

    def stripe_posts(self, path: str) -> list[Any]:
        return [r for r in self.fake.requests if r.path == path and r.method == "POST"]


def make_service(runtime: Runtime, settings: StripeSettings, budget: TokenBucket | None = None) -> StripeService:
    def factory(key: str | None) -> stripe.StripeClient:
        return build_client(settings, key, budget, retry_sleep=0.005)

    return StripeService(
        SqlStripeStorage(runtime.store),
        runtime.jobs.failures,
        runtime.customers,
        runtime.meters,
        settings,
        runtime.clock,
        client_factory=factory,
        budget=budget,
    )


def stripe_settings(fake: FakeStripeServer, meters: list[StripeMeterMapping], **extra: Any) -> StripeSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "api_key": fake.api_key,
        "webhook_secret": WEBHOOK_SECRET,
        "api_base": fake.url,
        "max_network_retries": 2,
        "timeout_seconds": 5.0,
        "meters": meters,
    }
    values.update(extra)
    return StripeSettings(**values)


@pytest.fixture(name="fake")
def fake_fixture() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        server.clock.set(NOW.timestamp())
        yield server
    assert not server.state.server_errors, "\n".join(server.state.server_errors)


def build_env(database_url: str, fake: FakeStripeServer, meters: list[StripeMeterMapping], **extra: Any) -> StripeEnv:
    clock = FixedClock(NOW)
    settings = stripe_settings(fake, meters, **extra)
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=database_url), stripe=settings), clock=clock)
    empty_all_tables(runtime)
    runtime.ingest.start()
    env = StripeEnv(runtime, fake, clock, settings)
    env.runtime.use_stripe(make_service(runtime, settings))
    return env


@pytest.fixture(name="stripe_env")
def stripe_env_fixture(database_url: str, fake: FakeStripeServer) -> Iterator[StripeEnv]:
    env = build_env(database_url, fake, [StripeMeterMapping(meter="api_calls", event_name="api_calls")])
    try:
        yield env
    finally:
        env.runtime.stop()


def hour(h: int, minute: int = 0, day: int = 10) -> datetime:
    return datetime(2026, 3, day, h, minute, tzinfo=UTC)
