"""Faults at every step never lose or double-bill a window: 429s, 5xx (saved or not), timeouts after
Stripe processed the request, crashes between intent and send and between send and record, the
rate budget measured by the fake, and a property test mixing them all."""

from __future__ import annotations

import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from fakestripe import FakeStripeServer
from tallybook.meters.models import Aggregation, MeterSpec
from tallybook.stripe.client import TokenBucket
from tallybook.stripe.model import PENDING, REJECTED, SENT
from tallybook.stripe.reporter import Reporter
from tallybook.stripe.settings import StripeMeterMapping
from tests.test_stripe_support import NOW, StripeEnv, build_env, fake_fixture, hour, stripe_env_fixture  # noqa: F401  (fixtures)

EVENTS = "/v1/billing/meter_events"


class Crash(BaseException):
    """Stands for the process dying at that point: nothing in the process can catch it (the jobs'
    fault isolation catches Exception, so one failing item does not stop the others)."""


def _crash_once(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    original = getattr(Reporter, method)
    state = {"armed": True}

    def crashing(self: Reporter, *args: Any, **kwargs: Any) -> Any:
        if state["armed"]:
            state["armed"] = False
            if method == "_succeeded":
                raise Crash("died after Stripe answered, before the answer was recorded")
            raise Crash("died after the intent was written, before sending")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Reporter, method, crashing)


def _setup(env: StripeEnv) -> tuple[str, str]:
    env.meter("api_calls")
    alice, alice_stripe = env.customer("alice")
    env.events("api_calls", "alice", (hour(9, 5), 2), (hour(10, 5), 3))
    return alice, alice_stripe


def _totals(env: StripeEnv, stripe_id: str) -> tuple[Decimal, Decimal]:
    return (
        env.stripe_total("api_calls", stripe_id, hour(9), hour(10)),
        env.stripe_total("api_calls", stripe_id, hour(10), hour(11)),
    )


def test_429_halts_the_run_and_the_row_is_resent_later(stripe_env: StripeEnv) -> None:
    env = stripe_env
    _, stripe_id = _setup(env)
    env.fake.faults.rate_limit(EVENTS, times=1)
    summary = env.service.report()
    assert summary.halted and "429" in summary.halted
    assert summary.pending == 1 and summary.sent == 0  # stopped at the first 429
    assert len(env.stripe_posts(EVENTS)) == 1  # the SDK does not retry a 429; neither do we at once
    pending = env.ledger(status=PENDING)
    assert pending and pending[0].attempts == 1 and pending[0].next_attempt_us is not None
    assert pending[0].response["code"] == "rate_limit"
    env.service.report()  # not due yet: the persisted schedule says 30 s later
    assert _totals(env, stripe_id) == (0, 0) or env.ledger(status=PENDING)
    env.advance(timedelta(seconds=31))
    env.service.report()
    assert _totals(env, stripe_id) == (Decimal(2), Decimal(3))
    assert not env.ledger(status=PENDING)


def test_5xx_is_retried_by_the_sdk_then_by_the_schedule(stripe_env: StripeEnv) -> None:
    env = stripe_env
    _, stripe_id = _setup(env)
    env.fake.faults.server_error(EVENTS, status=503, times=2)  # the SDK's 2 retries absorb these
    env.service.report()
    assert _totals(env, stripe_id) == (Decimal(2), Decimal(3))
    env.advance(timedelta(hours=1))
    env.events("api_calls", "alice", (hour(11, 5), 4))
    env.fake.faults.server_error(EVENTS, status=500, times=3)  # outlasts them: persisted for later
    summary = env.service.report()
    assert summary.pending == 1
    env.advance(timedelta(minutes=5))
    env.service.report()
    assert env.stripe_total("api_calls", stripe_id, hour(11), hour(12)) == Decimal(4)


def test_a_saved_500_is_not_replayed_forever(stripe_env: StripeEnv) -> None:
    env = stripe_env
    _, stripe_id = _setup(env)
    env.fake.faults.server_error(EVENTS, status=500, saved=True, times=1)
    env.service.report()
    env.advance(timedelta(minutes=5))
    env.service.report()
    identifier = next(r.identifier for r in env.ledger() if r.window_start_us == int(hour(9).timestamp()) * 1_000_000)
    keys = [r.idempotency_key for r in env.stripe_posts(EVENTS) if (r.idempotency_key or "").startswith(identifier)]
    # The key is the identifier; the SDK's retries got the saved 500 replayed under it (spent), so the
    # next attempt, and only it, used a key of its own.
    assert keys == [identifier, identifier, identifier, f"{identifier}-a2"]
    assert _totals(env, stripe_id) == (Decimal(2), Decimal(3))


def test_timeout_after_stripe_processed_is_not_counted_twice(database_url: str, fake: FakeStripeServer) -> None:
    env = build_env(
        database_url,
        fake,
        [StripeMeterMapping(meter="api_calls", event_name="api_calls")],
        max_network_retries=0,
    )
    try:
        _, stripe_id = _setup(env)
        # The answer is lost on the way back (a dropped connection: no timing involved).
        env.fake.faults.drop(EVENTS, after_processing=True)
        summary = env.service.report()
        assert summary.pending == 1  # we do not know whether it arrived
        env.advance(timedelta(minutes=5))
        env.service.report()  # the resend carries the same key: Stripe replays its answer
        assert _totals(env, stripe_id) == (Decimal(2), Decimal(3))
        assert all(r.status == SENT for r in env.ledger())
        assert env.stripe_posts(EVENTS)[-1].outcome == "replayed"
    finally:
        env.runtime.stop()


@pytest.mark.parametrize("where", ["_send", "_succeeded"])
def test_crash_and_resume(stripe_env: StripeEnv, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    env = stripe_env
    _, stripe_id = _setup(env)
    _crash_once(monkeypatch, where)
    with pytest.raises(Crash):
        env.service.report()
    assert env.ledger(status=PENDING)  # the intents survived the crash
    env.restart()  # a new process over the same database
    summary = env.service.report()
    assert summary.halted is None
    assert _totals(env, stripe_id) == (Decimal(2), Decimal(3))
    assert {r.status for r in env.ledger()} == {SENT}
    # The cursor persisted: the next run starts from it, and sends nothing new.
    assert env.restart().report().sent == 0


def test_crash_during_a_correction_cancels_once(stripe_env: StripeEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    env = stripe_env
    _, stripe_id = _setup(env)
    env.service.report()
    env.advance(timedelta(hours=1))
    env.events("api_calls", "alice", (hour(9, 30), 10))
    _crash_once(monkeypatch, "_succeeded")  # the cancel reaches Stripe, its answer is lost
    with pytest.raises(Crash):
        env.service.report()
    env.restart().report()
    assert _totals(env, stripe_id) == (Decimal(12), Decimal(3))
    assert len(env.stripe_posts("/v1/billing/meter_event_adjustments")) == 2  # resent, answered "already"


def test_unconfirmed_intents_older_than_a_day_are_not_resent_blindly(
    stripe_env: StripeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = stripe_env
    _, stripe_id = _setup(env)
    _crash_once(monkeypatch, "_succeeded")
    with pytest.raises(Crash):
        env.service.report()
    env.advance(timedelta(hours=30))  # down for longer than Stripe remembers identifiers
    summary = env.restart().report()
    # Not resent blindly: Stripe's event summaries show both windows arrived.
    assert summary.rejected == 0 and {r.status for r in env.ledger()} == {SENT}
    assert _totals(env, stripe_id) == (Decimal(2), Decimal(3))  # not billed twice


def test_rate_budget_keeps_under_stripes_limit(database_url: str, fake: FakeStripeServer) -> None:
    env = build_env(
        database_url, fake, [StripeMeterMapping(meter="api_calls", event_name="api_calls")], requests_per_second=10
    )
    try:
        env.meter("api_calls")
        env.budget = TokenBucket(rate=10 * 0.9)
        env.reconfigure()
        links = [env.customer(f"c{i}") for i in range(6)]
        for i in range(6):
            env.events("api_calls", f"c{i}", *[(hour(h), 1) for h in range(6, 11)])
        env.fake.faults.enforce_rate_limit(10, "/v1/*")
        env.fake.faults.reset_measurements()  # count only what the reporter sends
        started = time.monotonic()
        summary = env.service.report()
        elapsed = time.monotonic() - started
        assert summary.sent == 30 and summary.halted is None
        assert not [r for r in env.fake.requests if r.status == 429]
        assert env.fake.faults.max_rate_per_second("/v1/*") <= 10
        assert elapsed >= 2.0  # 30 requests at 9/s take a while; the budget did wait
        for _, stripe_id in links:
            assert env.stripe_total("api_calls", stripe_id, hour(6), hour(11)) == Decimal(5)
    finally:
        env.runtime.stop()


def test_token_bucket_against_a_fake_time_source() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(rate=4, burst=2, monotonic=lambda: now[0], sleep=sleep)
    for _ in range(10):
        bucket.acquire()
    # 2 from the burst, 8 more at 4/s: 2 seconds of waiting, never more than the budget allows.
    assert now[0] == pytest.approx(2.0)
    bucket.pause(1.0)
    bucket.acquire()
    assert now[0] == pytest.approx(3.25)
    with pytest.raises(ValueError):
        TokenBucket(rate=0)


# -- property: any mix of late events, faults, crashes and time never loses or double-bills ---------

FAULTS = ["none", "429", "503x3", "saved500", "crash_send", "crash_record"]
ACTIONS: st.SearchStrategy[tuple[str, Any, int]] = st.one_of(
    st.tuples(st.just("event"), st.integers(0, 3), st.integers(1, 5)),
    st.tuples(st.just("run"), st.sampled_from(FAULTS), st.just(0)),
    st.tuples(st.just("hour"), st.just(0), st.just(0)),
    st.tuples(st.just("day"), st.just(0), st.just(0)),
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=st.lists(ACTIONS, min_size=3, max_size=12))
# Sent, the outcome lost (a crash), the resend's answer a replay, a late event a day on: the cancel
# window starts when Stripe received the event, not when the replay was recorded (else a refused cancel).
@example(actions=[("event", 0, 1), ("run", "crash_record", 0), ("day", 0, 0), ("event", 0, 1)])
def test_property_every_window_is_billed_exactly_once(
    fake: FakeStripeServer, monkeypatch: pytest.MonkeyPatch, actions: list[tuple[str, Any, int]]
) -> None:
    fake.clock.set(NOW.timestamp())
    fake.faults.clear()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'prop.db'}"
        env = build_env(
            url,
            fake,
            [StripeMeterMapping(meter="api_calls", event_name=f"calls_{time.monotonic_ns()}")],
            lookback=timedelta(days=10),
        )
        try:
            _property_run(env, monkeypatch, actions)
        finally:
            env.runtime.stop()
            monkeypatch.undo()


def _property_run(env: StripeEnv, monkeypatch: pytest.MonkeyPatch, actions: list[tuple[str, Any, int]]) -> None:
    event_name = env.settings.meters[0].event_name
    assert event_name is not None
    env.runtime.meters.create(
        MeterSpec(slug="api_calls", event_type="api_calls", aggregation=Aggregation.SUM, value_property="$.value")
    )
    meter = env.fake.client().v1.billing.meters.create(
        {"display_name": "calls", "event_name": event_name, "default_aggregation": {"formula": "sum"}}
    )
    env.stripe_meters["api_calls"] = meter.id
    _, stripe_id = env.customer("alice")
    windows = [hour(7 + i) for i in range(4)]
    expected = [Decimal(0)] * 4

    def run(fault: str) -> None:
        env.fake.faults.clear()
        if fault == "429":
            env.fake.faults.rate_limit("/v1/billing/*", times=1)
        elif fault == "503x3":
            env.fake.faults.server_error("/v1/billing/*", status=503, times=3)
        elif fault == "saved500":
            env.fake.faults.server_error("/v1/billing/*", status=500, saved=True, times=1)
        with monkeypatch.context() as patch:
            if fault.startswith("crash"):
                _crash_once(patch, "_send" if fault == "crash_send" else "_succeeded")
            try:
                env.service.report()
            except Crash:
                env.restart()
        env.fake.faults.clear()
        for i, start in enumerate(windows):  # never more than the truth, at any point
            assert env.stripe_total("api_calls", stripe_id, start, start + timedelta(hours=1)) <= expected[i]

    for kind, a, b in actions:
        if kind == "event":
            env.events("api_calls", "alice", (windows[a] + timedelta(minutes=7 * b), b))
            expected[a] += b
        elif kind == "run":
            run(str(a))
        elif kind == "hour":
            env.advance(timedelta(hours=1))
            run("none")
        else:
            for _ in range(5):  # a day passes with the hourly job running (fault free)
                env.advance(timedelta(hours=5))
                run("none")
    for _ in range(4):  # drain: retries come due, the job runs
        env.advance(timedelta(hours=1))
        run("none")
    for i, start in enumerate(windows):
        assert env.stripe_total("api_calls", stripe_id, start, start + timedelta(hours=1)) == expected[i]
    assert not env.ledger(status=PENDING) and not env.ledger(status=REJECTED)


# -- a lost answer: Stripe ran the meter event, Tallybook never saw the answer ------------------------


def _late_correction(env: StripeEnv, stripe_id: str) -> None:
    """A late event of 5 in the 09:00 window (3000 reported): Stripe must end up holding 3005."""
    env.advance(timedelta(hours=1))
    env.events("api_calls", "alice", (hour(9, 50), 5))
    summary = env.service.report()
    assert summary.rejected == 0, env.ledger()
    assert env.stripe_total("api_calls", stripe_id, hour(9), hour(10)) == Decimal(3005)


def test_answer_lost_while_stripe_still_runs_the_request_is_not_billed_twice(stripe_env: StripeEnv) -> None:
    env = stripe_env
    env.meter("api_calls")
    _, stripe_id = env.customer("alice")
    env.events("api_calls", "alice", (hour(9, 5), 3000))
    # Stripe runs the event; the answer is lost, and the request stays "in progress" for a while.
    env.fake.faults.still_running(EVENTS, conflicts=3)
    assert env.service.report().pending == 1
    assert env.stripe_total("api_calls", stripe_id, hour(9), hour(10)) == Decimal(3000)
    env.advance(timedelta(minutes=1))
    # The resend carries the same idempotency key: the SDK's retries get 409 "in progress".
    summary = env.service.report()
    assert summary.pending == 1 and summary.rejected == 0
    posts = env.stripe_posts(EVENTS)
    assert [p.status for p in posts[1:]] == [409, 409, 409]
    assert {p.idempotency_key for p in posts} == {env.ledger()[0].identifier}
    env.advance(timedelta(minutes=2))
    summary = env.service.report()  # Stripe finished: the same key replays its answer
    assert (summary.sent, summary.rejected) == (1, 0)
    assert env.stripe_posts(EVENTS)[-1].outcome == "replayed"
    assert [r.status for r in env.ledger()] == [SENT]
    _late_correction(env, stripe_id)


def test_an_event_stripe_already_holds_counts_as_delivered_whatever_the_answer_says(
    stripe_env: StripeEnv,
) -> None:
    env = stripe_env
    env.meter("api_calls")
    _, stripe_id = env.customer("alice")
    env.events("api_calls", "alice", (hour(9, 5), 3000))
    env.fake.faults.drop(EVENTS, after_processing=True)
    assert env.service.report().pending == 1
    # Keys are scoped to the API key: after a key rotation the resend runs again at Stripe, which
    # answers 400 "An event already exists with identifier …", without the duplicate_meter_event code.
    env.reconfigure(api_key=env.fake.api_key + "rotated")
    env.advance(timedelta(minutes=1))
    summary = env.service.report()
    assert (summary.sent, summary.rejected) == (1, 0)
    answer = env.stripe_posts(EVENTS)[-1]
    assert answer.status == 400
    [row] = env.ledger()
    assert row.status == SENT and "already exists" in row.response["alreadyReceived"]["message"]
    assert row.response["alreadyReceived"]["code"] is None
    _late_correction(env, stripe_id)


def test_a_coded_duplicate_answer_counts_as_delivered_too(stripe_env: StripeEnv) -> None:
    env = stripe_env
    env.meter("api_calls")
    _, stripe_id = env.customer("alice")
    env.fake.state.duplicate_identifier_code = "duplicate_meter_event"
    env.events("api_calls", "alice", (hour(9, 5), 3000))
    env.fake.faults.drop(EVENTS, after_processing=True)
    env.service.report()
    env.reconfigure(api_key=env.fake.api_key + "rotated")
    env.advance(timedelta(minutes=1))
    assert env.service.report().sent == 1
    assert env.ledger()[0].response["alreadyReceived"]["code"] == "duplicate_meter_event"
    _late_correction(env, stripe_id)


def test_unconfirmed_for_a_day_stripes_event_summaries_decide(stripe_env: StripeEnv) -> None:
    env = stripe_env
    env.meter("api_calls")
    alice, stripe_id = env.customer("alice")
    bob, bob_stripe = env.customer("bob")
    env.events("api_calls", "alice", (hour(9, 5), 3000))
    env.fake.faults.drop(EVENTS, after_processing=True)  # alice's arrived, its answer was lost
    assert env.service.report().pending == 1
    env.events("api_calls", "bob", (hour(9, 5), 40))
    env.fake.faults.drop(EVENTS)  # bob's never arrived
    assert env.service.report().pending == 1  # (alice's resend is not due yet)
    env.advance(timedelta(hours=30))  # down longer than Stripe remembers identifiers
    summary = env.restart().report()
    assert summary.rejected == 0
    by_customer = {r.customer_id: r for r in env.ledger() if r.version == 1}
    assert by_customer[alice].status == SENT
    assert "event summaries" in by_customer[alice].response["confirmed"]
    assert by_customer[bob].status == REJECTED and "did not reach Stripe" in (by_customer[bob].error or "")
    # bob's window is sent again under the next version; alice's is not sent twice.
    assert env.stripe_total("api_calls", stripe_id, hour(9), hour(10)) == Decimal(3000)
    assert env.stripe_total("api_calls", bob_stripe, hour(9), hour(10)) == Decimal(40)
    env.events("api_calls", "alice", (hour(9, 50), 5))
    env.service.report(from_=hour(9))
    assert env.stripe_total("api_calls", stripe_id, hour(9), hour(10)) == Decimal(3005)


def test_a_restored_ledger_meets_its_own_keys_and_stripes_summaries_decide(stripe_env: StripeEnv) -> None:
    env = stripe_env
    env.meter("api_calls")
    _, stripe_id = env.customer("alice")
    env.events("api_calls", "alice", (hour(9, 5), 2))
    env.service.report()
    # The database is restored from a backup taken before that send: the ledger forgot it.
    with env.runtime.store.write() as conn:
        conn.execute(text("DELETE FROM stripe_report_attempts"))
        conn.execute(text("DELETE FROM stripe_reports"))
    env.events("api_calls", "alice", (hour(9, 40), 3))
    env.advance(timedelta(minutes=10))
    summary = env.service.report()
    # Same window and version, so the same key, with another value: Stripe refuses the key.
    [row] = env.ledger()
    assert row.status == REJECTED and row.response["inDoubt"] and row.response["stripeWindowTotal"] == "2"
    assert "idempotency key" in (row.error or "") and summary.rejected == 1
    assert env.stripe_total("api_calls", stripe_id, hour(9), hour(10)) == Decimal(2)
    # The window goes on from Stripe's figure: 3 more, not 5.
    env.advance(timedelta(minutes=10))
    env.service.report()
    assert env.stripe_total("api_calls", stripe_id, hour(9), hour(10)) == Decimal(5)
    assert env.service.report().sent == 0


def test_a_last_meter_row_unconfirmed_for_a_day_is_decided_by_its_last_value(
    database_url: str, fake: FakeStripeServer
) -> None:
    env = build_env(database_url, fake, [StripeMeterMapping(meter="seats", event_name="seats")])
    try:
        env.meter("seats", Aggregation.MAX, formula="last")
        _, stripe_id = env.customer("alice")
        env.events("seats", "alice", (hour(9, 5), 5))
        assert env.service.report().sent == 1
        env.advance(timedelta(hours=2))
        env.events("seats", "alice", (hour(10, 30), 8))
        env.fake.faults.drop(EVENTS, after_processing=True)
        assert env.service.report().pending == 1
        env.advance(timedelta(hours=30))
        assert env.service.report().rejected == 0
        first, second = env.ledger()
        assert (first.value, first.status, second.value) == (5, SENT, 8)
        # Stripe bills the last value, 8: the row arrived (5 + 8 would be a sum meter's figure).
        assert second.status == SENT and "hold 8: it arrived" in second.response["confirmed"]
        assert env.stripe_total("seats", stripe_id, hour(0, day=1), env.clock.now()) == Decimal(8)
    finally:
        env.runtime.stop()
