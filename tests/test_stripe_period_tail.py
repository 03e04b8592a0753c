"""Legacy usage records across a billing-period boundary, through the real SDK against the fake
Stripe, on SQLite and PostgreSQL.

Stripe closes a period to usage records the moment the subscription renews ("timestamps must be
after the subscription's last invoice period"), and only whole windows are reported, so what follows
the last whole window of a period (its tail) cannot reach that period. Tallybook carries it into the
next period's `set` quantity: billed one period late, never lost and never billed twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakestripe import FakeStripeServer
from fakestripe.resources.subscriptions import legacy_usage_total
from tallybook.stripe.model import SENT, USAGE_RECORD
from tallybook.stripe.settings import LEGACY_API_VERSION, StripeMeterMapping
from tests.conftest import LiveServer
from tests.test_stripe_support import NOW, StripeEnv, build_env, fake_fixture  # noqa: F401  (fixtures)

LEGACY = {"stripe_version": LEGACY_API_VERSION}


class Legacy:
    """A legacy metered price, a linked customer and its subscription (created at NOW)."""

    def __init__(self, env: StripeEnv) -> None:
        self.env = env
        env.meter("calls")
        self.customer, self.stripe_customer = env.customer("alice")
        client = env.fake.client()
        sub = client.v1.subscriptions.create(
            {"customer": self.stripe_customer, "items": [{"price": env.settings.meters[0].price}]},  # type: ignore[typeddict-item]
            LEGACY,  # type: ignore[arg-type]
        )
        self.subscription = str(sub.id)
        item = sub["items"].data[0]
        self.item = str(item.id)
        self.periods = [(int(item.current_period_start), int(item.current_period_end))]

    def renew(self) -> None:
        """Stripe renews the subscription at its period end (its clock and ours move there)."""
        sub = self.env.fake.advance_subscription(self.subscription, move_clock=True)
        item = sub["items"]["data"][0]
        self.periods.append((int(item["current_period_start"]), int(item["current_period_end"])))
        self.env.clock.set(datetime.fromtimestamp(self.env.fake.clock.now(), UTC))

    def at(self, when: datetime) -> None:
        self.env.advance(when - self.env.clock.now())

    def billed(self) -> list[int]:
        """What Stripe bills for each period so far (usage records inside each period)."""
        return [legacy_usage_total(self.env.fake.state, self.item, start, end) for start, end in self.periods]


def _env(database_url: str, fake: FakeStripeServer, **extra: Any) -> StripeEnv:
    price = fake.client().v1.prices.create(
        {"currency": "usd", "product_data": {"name": "Calls"}, "unit_amount": 2,
         "recurring": {"interval": "month", "usage_type": "metered"}},
        LEGACY,  # type: ignore[arg-type]
    )  # fmt: skip
    mapping = StripeMeterMapping(meter="calls", mode="usage_record", price=str(price.id))
    return build_env(database_url, fake, [mapping], **extra)


@pytest.fixture
def legacy(database_url: str, fake: FakeStripeServer) -> Iterator[Legacy]:
    env = _env(database_url, fake)
    try:
        yield Legacy(env)
    finally:
        env.runtime.stop()


def _end(legacy: Legacy, period: int = 0) -> datetime:
    return datetime.fromtimestamp(legacy.periods[period][1], UTC)


def test_the_period_end_webhook_bills_the_ended_periods_tail(legacy: Legacy) -> None:
    env = legacy.env
    end = _end(legacy)  # 2026-04-10T12:00:00Z
    legacy.at(end - timedelta(minutes=30))
    env.events("calls", "alice", (end - timedelta(hours=2), 30))  # a whole window, reported at once
    assert env.service.report().sent == 1
    legacy.at(end - timedelta(minutes=5))
    env.events("calls", "alice", (end - timedelta(minutes=20), 30))  # the tail: its window ends at `end`
    assert env.service.report().sent == 0  # the 11:00 window has not ended

    with LiveServer(env.runtime) as server:
        endpoint = env.fake.add_webhook_endpoint(
            f"{server.url}/api/v1/stripe/webhook", ["customer.subscription.updated"]
        )
        env.reconfigure(webhook_secret=endpoint["secret"])
        legacy.renew()
        env.advance(timedelta(seconds=20))  # the webhook comes a little after the renewal
        deliveries = env.fake.deliver_webhooks()
        assert deliveries and deliveries[-1].status == 200, deliveries
    # Stripe closed the ended period when it renewed; the tail is billed in the new one, at once.
    assert legacy.billed() == [30, 30]
    tail = env.ledger()[-1]
    assert (tail.kind, tail.status, tail.value, tail.carried) == (USAGE_RECORD, SENT, 30, 30)
    assert tail.window_start_us == legacy.periods[1][0] * 1_000_000

    legacy.at(end + timedelta(hours=1, minutes=30))
    env.events("calls", "alice", (end + timedelta(minutes=20), 30))
    env.service.report()
    assert legacy.billed() == [30, 60]  # 90 of 90 units billed across the two periods
    assert sum(legacy.billed()) == 90
    now = env.clock.now()
    summary = env.service.report(now=now)
    assert summary.sent == 0  # nothing changed: nothing resent
    [line] = env.service.explain_report(summary, now)  # what `tallybook stripe report` prints
    assert (line.mode, line.price, line.period_from) == ("usage_record", env.settings.meters[0].price, end)
    assert (line.sent, line.carried, line.held_back, line.not_sent) == (60, 30, 0, 0)
    assert (line.sent_from, line.sent_to, line.held_back_to) == (end, end + timedelta(hours=1), now)


def test_the_hourly_job_alone_carries_the_tail_and_late_events(legacy: Legacy) -> None:
    env = legacy.env
    end = _end(legacy)
    legacy.at(end - timedelta(minutes=30))
    env.events("calls", "alice", (end - timedelta(minutes=40), "12.5"))  # only tail usage: no record yet
    assert env.service.report().sent == 0
    legacy.renew()  # no webhook configured: the next hourly run finds the new period
    legacy.at(end + timedelta(hours=1, minutes=10))
    env.events("calls", "alice", (end + timedelta(minutes=5), 4))
    env.service.report()
    assert legacy.billed() == [0, 17]  # 12.5 + 4 = 16.5, rounded half up
    # A late event of the ended period is billed too, and the half unit is not billed twice.
    env.events("calls", "alice", (end - timedelta(days=3), "1.5"))
    legacy.at(end + timedelta(hours=2, minutes=10))
    env.service.report()
    assert legacy.billed() == [0, 18]
    legacy.renew()
    legacy.at(_end(legacy, 1) + timedelta(hours=1, minutes=10))
    env.events("calls", "alice", (_end(legacy, 1) + timedelta(minutes=1), 2))
    env.service.report()
    assert legacy.billed() == [0, 18, 2]  # 18 + 2 = 20 = 12.5 + 4 + 1.5 + 2
    sent = [r for r in env.ledger() if r.status == SENT]
    assert [(r.value, r.carried) for r in sent] == [(17, Decimal("12.5")), (18, 14), (2, Decimal("0.0"))]


# -- property: whatever the usage and whenever the job runs, the periods add up to the usage -------

USAGE = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 47), st.integers(1, 9)), min_size=1, max_size=8)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(usage=USAGE, runs=st.lists(st.integers(0, 47), max_size=6))
def test_property_no_unit_is_lost_or_billed_twice_across_periods(
    database_url: str, usage: list[tuple[int, int, int]], runs: list[int]
) -> None:
    """Usage in the last two days of 3 periods (half-hour slots) and hourly runs at random slots:
    after a final run, Stripe's periods together bill exactly the usage up to the last whole window."""
    with FakeStripeServer() as fake:
        fake.clock.set(NOW.timestamp())
        env = _env(database_url, fake)
        try:
            legacy = Legacy(env)
            expected = 0
            for period in range(3):
                end = _end(legacy, period)
                first = end - timedelta(days=1)
                slots = sorted({*runs, 47})
                for slot in slots:
                    now = first + timedelta(minutes=30 * slot + 29)
                    for p, at, units in usage:
                        when = first + timedelta(minutes=30 * at + 10)
                        if p == period and env.clock.now() <= when < now:
                            env.events("calls", "alice", (when, units))
                            expected += units
                    legacy.at(now)
                    env.service.report()
                legacy.renew()
            legacy.at(env.clock.now() + timedelta(hours=1, minutes=10))
            env.service.report()
            assert sum(legacy.billed()) == expected
        finally:
            env.runtime.stop()
