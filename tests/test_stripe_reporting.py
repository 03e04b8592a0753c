"""Stripe usage reporting end to end through the real SDK against the fake Stripe: Billing Meters
(v1 and the v2 stream), corrections, `last` meters, range errors and legacy usage records."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from fakestripe import FakeStripeServer
from tallybook.meters.models import Aggregation
from tallybook.stripe.model import CANCEL, EVENT, OUT_OF_RANGE, SENT, USAGE_RECORD
from tallybook.stripe.reporter import make_identifier, stripe_formula
from tallybook.stripe.settings import LEGACY_API_VERSION, StripeMeterMapping
from tests.test_stripe_support import NOW, StripeEnv, build_env, fake_fixture, hour, stripe_env_fixture  # noqa: F401  (fixtures)


def test_billing_meter_v1_reports_each_window_once(stripe_env: StripeEnv) -> None:
    env = stripe_env
    env.meter("api_calls")
    alice, alice_stripe = env.customer("alice")
    bob, bob_stripe = env.customer("bob")
    env.events("api_calls", "alice", (hour(9, 5), 2), (hour(9, 50), "1.5"), (hour(10, 30), 4))
    env.events("api_calls", "bob", (hour(10, 1), 7))
    env.events("api_calls", "alice", (hour(11, 30), 100))  # window 11:00 has not ended: not yet

    summary = env.service.report()
    assert summary.sent == 3 and summary.rejected == 0 and summary.halted is None
    assert env.stripe_total("api_calls", alice_stripe, hour(9), hour(10)) == Decimal("3.5")
    assert env.stripe_total("api_calls", alice_stripe, hour(10), hour(11)) == Decimal(4)
    assert env.stripe_total("api_calls", bob_stripe, hour(10), hour(11)) == Decimal(7)
    assert env.stripe_total("api_calls", alice_stripe, hour(11), hour(12)) == 0
    rows = env.ledger()
    assert {(r.customer_id, r.window_start_us, r.status, r.kind) for r in rows} == {
        (alice, int(hour(9).timestamp()) * 1_000_000, SENT, EVENT),
        (alice, int(hour(10).timestamp()) * 1_000_000, SENT, EVENT),
        (bob, int(hour(10).timestamp()) * 1_000_000, SENT, EVENT),
    }
    first = next(r for r in rows if r.customer_id == alice)
    assert first.identifier == make_identifier("e", "api_calls", alice, first.window_start_us, 1)
    assert first.request["payload"] == {"stripe_customer_id": alice_stripe, "value": "3.5"}
    assert first.timestamp_us == first.window_start_us
    assert first.response["identifier"] == first.identifier

    # A second run with nothing new sends nothing.
    posts = len(env.stripe_posts("/v1/billing/meter_events"))
    assert env.service.report().sent == 0
    assert len(env.stripe_posts("/v1/billing/meter_events")) == posts

    # An hour later the 11:00 window is reported, and only it.
    env.advance(timedelta(hours=1))
    assert env.service.report().sent == 1
    assert env.stripe_total("api_calls", alice_stripe, hour(11), hour(12)) == Decimal(100)


def test_late_event_inside_cancel_window_replaces_the_amount(stripe_env: StripeEnv) -> None:
    env = stripe_env
    env.meter("api_calls")
    alice, alice_stripe = env.customer("alice")
    env.events("api_calls", "alice", (hour(9, 5), 2))
    env.service.report()
    env.advance(timedelta(hours=2))
    env.events("api_calls", "alice", (hour(9, 40), 3))  # late: its window was reported already

    summary = env.service.report()
    assert summary.corrections == 2  # the cancel and the replacement
    assert env.stripe_total("api_calls", alice_stripe, hour(9), hour(10)) == Decimal(5)
    window = [r for r in env.ledger(customer_id=alice) if r.window_start_us == int(hour(9).timestamp()) * 1_000_000]
    assert [(r.kind, r.version, r.value, r.status) for r in window] == [
        (EVENT, 1, Decimal(2), SENT),
        (CANCEL, 2, Decimal(-2), SENT),
        (EVENT, 3, Decimal(5), SENT),
    ]
    assert window[0].cancelled and window[1].cancels == window[0].identifier
    assert len(env.stripe_posts("/v1/billing/meter_event_adjustments")) == 1


def test_late_event_after_cancel_window_sends_only_the_difference(stripe_env: StripeEnv) -> None:
    env = stripe_env
    env.meter("api_calls")
    alice, alice_stripe = env.customer("alice")
    env.events("api_calls", "alice", (hour(9, 5), 2))
    env.service.report()
    env.advance(timedelta(hours=25))
    env.events("api_calls", "alice", (hour(9, 40), 3))

    env.service.report()
    assert env.stripe_total("api_calls", alice_stripe, hour(9), hour(10)) == Decimal(5)
    window = [r for r in env.ledger(customer_id=alice) if r.window_start_us == int(hour(9).timestamp()) * 1_000_000]
    assert [(r.kind, r.value, r.target) for r in window] == [(EVENT, Decimal(2), Decimal(2)), (EVENT, 3, 5)]
    assert not env.stripe_posts("/v1/billing/meter_event_adjustments")


def test_v2_stream_batches_and_renews_the_session(database_url: str, fake: FakeStripeServer) -> None:
    env = build_env(
        database_url, fake, [StripeMeterMapping(meter="tokens", event_name="tokens", transport="v2_stream")]
    )
    try:
        env.meter("tokens")
        links = [env.customer(f"c{i}") for i in range(3)]
        for i in range(3):
            env.events("tokens", f"c{i}", *[(hour(h, 10, day=9), i + 1) for h in range(12, 24)])
            env.events("tokens", f"c{i}", *[(hour(h, 10), i + 1) for h in range(0, 11)])
        summary = env.service.report()
        assert summary.sent == 3 * 23
        stream_posts = env.stripe_posts("/v2/billing/meter_event_stream")
        assert len(stream_posts) == 1  # 69 events in one request of at most 100
        assert len(env.stripe_posts("/v2/billing/meter_event_session")) == 1
        for i, (_, stripe_id) in enumerate(links):
            assert env.stripe_total("tokens", stripe_id, hour(12, day=9), hour(11)) == Decimal(23 * (i + 1))
        assert not env.fake.state.meter_error_reports

        # 16 minutes later the token has expired; the reporter renews it before sending.
        env.advance(timedelta(hours=1))
        env.events("tokens", "c0", (hour(11, 20), 10))
        env.service.report()
        assert len(env.stripe_posts("/v2/billing/meter_event_session")) == 2
        assert env.stripe_total("tokens", links[0][1], hour(11), hour(12)) == Decimal(10)
    finally:
        env.runtime.stop()


def test_last_meter_reports_the_period_to_date_figure(database_url: str, fake: FakeStripeServer) -> None:
    env = build_env(database_url, fake, [StripeMeterMapping(meter="seats", event_name="seats")])
    try:
        assert stripe_formula(Aggregation.MAX) == "last" and stripe_formula(Aggregation.COUNT) == "sum"
        env.meter("seats", Aggregation.MAX, formula="last")
        _, stripe_id = env.customer("alice")
        env.events("seats", "alice", (hour(1, day=2), 5), (hour(3, day=9), 8), (hour(9), 6))
        env.service.report(from_=hour(0, day=1))
        assert env.stripe_total("seats", stripe_id, hour(0, day=1), NOW) == Decimal(8)
        assert env.service.report().sent == 0  # unchanged figure: nothing new
        env.advance(timedelta(hours=2))
        env.events("seats", "alice", (hour(12, 30), 11))
        env.service.report()
        assert env.stripe_total("seats", stripe_id, hour(0, day=1), NOW + timedelta(hours=2)) == Decimal(11)
        sent = [r for r in env.ledger() if r.status == SENT]
        assert [r.value for r in sent] == [Decimal(8), Decimal(11)]
        assert sent[1].timestamp_us > sent[0].timestamp_us
    finally:
        env.runtime.stop()


def test_windows_outside_stripes_range_are_recorded_as_errors(stripe_env: StripeEnv) -> None:
    env = stripe_env
    env.meter("api_calls")
    _, alice_stripe = env.customer("alice")
    old = NOW - timedelta(days=40)
    env.events("api_calls", "alice", (old, 9), (hour(9, 5), 1))
    summary = env.service.report(from_=old - timedelta(hours=1))
    assert summary.out_of_range == 1 and summary.sent == 1
    bad = env.ledger(status=OUT_OF_RANGE)
    assert len(bad) == 1 and "35 days" in (bad[0].error or "") and bad[0].value == 9
    assert env.stripe_total("api_calls", alice_stripe, old - timedelta(hours=1), NOW) == Decimal(1)
    # Not retried every run: it waits for a person, visible in the ledger.
    assert env.service.report(from_=old - timedelta(hours=1)).out_of_range == 0
    assert len(env.ledger(status=OUT_OF_RANGE)) == 1


def test_period_boundary_inside_a_window_moves_usage_to_the_next_period(stripe_env: StripeEnv) -> None:
    env = stripe_env
    env.meter("api_calls")
    alice, _ = env.customer("alice")
    boundary = hour(9, 30)
    env.service.db.set_period_start(alice, int(boundary.timestamp()) * 1_000_000, 0)
    env.events("api_calls", "alice", (hour(9, 10), 1), (hour(10, 10), 1))
    env.service.report()
    stamps = {r.window_start_us: r.timestamp_us for r in env.ledger()}
    assert stamps[int(hour(9).timestamp()) * 1_000_000] == int(boundary.timestamp()) * 1_000_000
    assert stamps[int(hour(10).timestamp()) * 1_000_000] == int(hour(10).timestamp()) * 1_000_000


def _legacy_price(fake: FakeStripeServer) -> str:
    client = fake.client()
    price = client.v1.prices.create(
        {"currency": "usd", "product_data": {"name": "Calls"}, "unit_amount": 2,
         "recurring": {"interval": "month", "usage_type": "metered"}},
        {"stripe_version": LEGACY_API_VERSION},
    )  # fmt: skip
    return str(price.id)


def test_legacy_usage_records_set_the_period_total(database_url: str, fake: FakeStripeServer) -> None:
    price = _legacy_price(fake)
    env = build_env(database_url, fake, [StripeMeterMapping(meter="calls", mode="usage_record", price=price)])
    try:
        env.meter("calls")
        _, stripe_id = env.customer("alice")
        legacy = {"stripe_version": LEGACY_API_VERSION}
        sub = fake.client().v1.subscriptions.create({"customer": stripe_id, "items": [{"price": price}]}, legacy)  # type: ignore[arg-type]
        item = sub["items"].data[0]
        start = int(item.current_period_start)
        env.advance(timedelta(hours=3))
        env.events("calls", "alice", (hour(12, 10), 3), (hour(13, 20), "4.4"))
        summary = env.service.report()
        assert summary.sent == 1
        assert summary.items[0]["usage"] == 7 and summary.items[0]["customer"] == stripe_id
        url = f"/v1/subscription_items/{item.id}/usage_record_summaries"
        totals = env.client.deserialize(
            env.client.raw_request("get", url, stripe_version=LEGACY_API_VERSION), api_mode="V1"
        )
        assert totals["data"][0]["total_usage"] == 7
        posts = env.stripe_posts(f"/v1/subscription_items/{item.id}/usage_records")
        assert posts[-1].stripe_version == LEGACY_API_VERSION
        assert posts[-1].idempotency_key == f"tallybook-usage-{item.id}-{start}-{int(item.current_period_end)}-v1"
        row = env.ledger()[0]
        assert row.kind == USAGE_RECORD and row.request["action"] == "set"
        assert row.timestamp_us == (start + 1) * 1_000_000

        assert env.service.report().sent == 0  # same figure: nothing sent
        env.advance(timedelta(hours=1))
        env.events("calls", "alice", (hour(14, 5), 5))
        env.service.report()
        totals = env.client.deserialize(
            env.client.raw_request("get", url, stripe_version=LEGACY_API_VERSION), api_mode="V1"
        )
        assert totals["data"][0]["total_usage"] == 12  # `set` replaced 7: no double count
    finally:
        env.runtime.stop()


def test_job_is_registered_and_runs_once_across_processes(stripe_env: StripeEnv) -> None:
    env = stripe_env
    env.meter("api_calls")
    _, alice_stripe = env.customer("alice")
    env.events("api_calls", "alice", (hour(9, 5), 2))
    job = next(j for j in env.runtime.jobs.jobs if j.name == "stripe.report")
    assert job.interval == timedelta(hours=1) and job.exclusive
    result = env.runtime.jobs.run_job(job, force=False)
    assert result.ran and result.error is None
    assert env.stripe_total("api_calls", alice_stripe, hour(9), hour(10)) == Decimal(2)
    assert env.runtime.jobs.run_job(job, force=False).skipped_reason == "not due"
