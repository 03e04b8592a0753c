"""`tallybook stripe report` and `reconcile` explain themselves, on SQLite and PostgreSQL, through
the real SDK against the fake Stripe: the window-rounded range and why, what was sent, what is held
back (the unfinished window is not counted as sent), what was never reported (the one-day
`stripe.backfill` of a meter's first run) and what not sent. The session in docs/stripe.md
("Reading report and reconcile") is run here and its output compared line by line."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fakestripe import FakeStripeServer
from tallybook.cli.main import app as cli
from tallybook.clock import FixedClock, to_micros
from tallybook.config import DatabaseSettings, Settings
from tallybook.customers.model import CustomerInput
from tallybook.ingest.events import Event
from tallybook.meters.models import Aggregation, MeterSpec
from tallybook.runtime import Runtime
from tallybook.stripe.explain import report_text
from tests.conftest import empty_all_tables
from tests.test_docs_examples import examples_of, output_matches
from tests.test_stripe_support import StripeEnv, fake_fixture, hour, stripe_env_fixture  # noqa: F401  (fixtures)

DOC = Path(__file__).resolve().parent.parent / "docs" / "stripe.md"
MARKER = "<!-- stripe-cli-session: run by tests/test_stripe_explain.py -->"


def test_report_does_not_count_the_unfinished_window_as_sent(stripe_env: StripeEnv) -> None:
    env = stripe_env  # now: 2026-03-10T12:00:00Z, settle_delay 5 minutes
    env.meter("api_calls")
    alice, alice_stripe = env.customer("alice")
    env.events("api_calls", "alice", (hour(9, 5), 2), (hour(10, 30), 4), (hour(11, 30), 100))
    now = env.clock.now()
    summary = env.service.report(now=now)
    [line] = env.service.explain_report(summary, now)
    assert (line.customer_id, line.stripe_customer_id) == (alice, alice_stripe)
    assert (line.sent, line.held_back, line.not_sent, line.not_reported) == (6, 100, 0, 0)
    assert (line.sent_from, line.sent_to, line.held_back_to) == (hour(11, day=9), hour(11), now)
    assert env.stripe_total("api_calls", alice_stripe, hour(0), now) == line.sent
    [reported] = summary.ranges
    assert (reported.start, reported.end, reported.start_reason, reported.end_reason) == (
        hour(11, day=9),
        hour(11),
        "first",
        "settle",
    )
    text = report_text(summary, [line], env.settings)
    assert text[0] == "api_calls (sum meter, HOUR windows): reported 2026-03-09T11:00:00Z -> 2026-03-10T11:00:00Z"
    assert "stripe.backfill P1D" in text[1] and "stripe.settle_delay PT5M" in text[2]
    row = text[4].split("  ")
    assert row[3:] == ["6", "100", "0", "0", "2026-03-09T11:00:00Z", "2026-03-10T11:00:00Z", "2026-03-10T12:00:00Z"]

    # An hour later the 11:00 window is whole and settled: sent, nothing held back.
    env.advance(timedelta(hours=1))
    now = env.clock.now()
    summary = env.service.report(now=now)
    [line] = env.service.explain_report(summary, now)
    assert (line.sent, line.held_back, line.sent_to) == (106, 0, hour(12))
    assert summary.ranges[0].start_reason == "lookback"


def test_reconcile_explains_a_drift_by_its_parts(stripe_env: StripeEnv) -> None:
    env = stripe_env
    env.meter("api_calls")
    _, alice_stripe = env.customer("alice")
    env.events("api_calls", "alice", (hour(9, day=8), 235), (hour(9, 5), 1000), (hour(11, 40), 7))
    env.service.report()
    # Pending: a window whose send is refused by a 503 until the next attempt.
    env.events("api_calls", "alice", (hour(10, 10), 30))
    env.fake.faults.server_error("/v1/billing/meter_events", status=503, times=3)
    env.advance(timedelta(minutes=1))
    env.service.report()
    [drift] = env.service.reconcile(hour(0, day=8), hour(12, 30))
    assert (drift.start, drift.end) == (hour(0, day=8), hour(12))  # rounded down to whole hours
    assert (drift.tallybook, drift.stripe, drift.ledger) == (1272, 1000, 1000)
    assert (drift.not_reported, drift.not_sent, drift.held_back, drift.other) == (235, 30, 7, 0)
    assert drift.drift == drift.other - drift.not_reported - drift.not_sent - drift.held_back == -272
    assert drift.needs_action
    # Something else in Stripe's meter shows as `other`.
    env.fake.client().v1.billing.meter_events.create(
        {"event_name": "api_calls", "payload": {"stripe_customer_id": alice_stripe, "value": "5"},
         "timestamp": int(hour(10, 1).timestamp())}
    )  # fmt: skip
    [drift] = env.service.reconcile(hour(0, day=8), hour(12, 30))
    assert (drift.stripe, drift.other, drift.drift) == (1005, 5, -267)


# -- the documented session ---------------------------------------------------------------------------

SETUP_AT = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 3, 10, 12, 20, tzinfo=UTC)
# The commands of the documented session, in order, and when each runs.
SESSION = [
    ("tallybook stripe report", NOW),
    ("tallybook stripe reconcile --from 2026-03-01T00:00:00Z --to 2026-03-10T12:30:00Z", NOW),
    ("tallybook stripe report --from 2026-03-01T00:00:00Z --to 2026-03-09T12:00:00Z", NOW + timedelta(minutes=2)),
    ("tallybook stripe reconcile --from 2026-03-01T00:00:00Z --to 2026-03-10T12:30:00Z", NOW + timedelta(minutes=3)),
]
EXIT_CODES = [0, 1, 0, 0]


@pytest.fixture
def session_fake() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        yield server
    assert not server.state.server_errors, "\n".join(server.state.server_errors)


def _documented_session() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    assert MARKER in text, f"{DOC.name} lost its marker {MARKER}"
    block = text[text.index(MARKER) :]
    block = block[: block.index("\n```\n", block.index("```console")) + 5]
    return [(e.command, e.expected) for e in examples_of(block)]


def test_the_documented_report_and_reconcile_session(
    database_url: str, session_fake: FakeStripeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = session_fake
    config = tmp_path / "tallybook.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {"url": database_url},
                "webhooks": {"scheduler": {"run_in_server": False}},
                "stripe": {"api_base": fake.url, "max_network_retries": 1},
            }
        )
    )
    monkeypatch.setenv("STRIPE_API_KEY", fake.api_key)

    def at(when: datetime) -> None:  # the CLI's clock (and Stripe's)
        monkeypatch.setattr("tallybook.runtime.SystemClock", lambda: FixedClock(when))
        fake.clock.set(when.timestamp())

    runtime = Runtime.build(Settings(database=DatabaseSettings(url=database_url)), clock=FixedClock(SETUP_AT))
    try:
        empty_all_tables(runtime)
        runtime.meters.create(MeterSpec("api_calls", "api_calls", Aggregation.SUM, value_property="$.value"))
        runtime.customers.create(CustomerInput(name="Acme", key="acme"))
    finally:
        runtime.stop()
    runner = CliRunner()
    at(SETUP_AT)
    setup = runner.invoke(cli, ["stripe", "setup", "--meter", "api_calls", "--customer", "acme", "-c", str(config)])
    assert setup.exit_code == 0, setup.output
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=database_url)), clock=FixedClock(NOW))
    try:
        runtime.ingest.start()
        usage = [
            (datetime(2026, 3, 8, 9, 10, tzinfo=UTC), 100),  # before the first run's one-day backfill
            (datetime(2026, 3, 8, 17, 40, tzinfo=UTC), 135),
            (datetime(2026, 3, 9, 15, 20, tzinfo=UTC), 400),  # inside it
            (datetime(2026, 3, 10, 8, 5, tzinfo=UTC), 600),
            (datetime(2026, 3, 10, 12, 10, tzinfo=UTC), 7),  # the window that has not ended
        ]
        runtime.ingest.ingest(
            [Event("svc", f"e{i}", "api_calls", "acme", to_micros(t), {"value": v}) for i, (t, v) in enumerate(usage)]
        )
    finally:
        runtime.stop()

    documented = _documented_session()
    assert [command for command, _ in documented] == [command for command, _ in SESSION]
    for (command, expected), (_, when), code in zip(documented, SESSION, EXIT_CODES, strict=True):
        at(when)
        args = [*command.split()[1:], "-c", str(config)]
        result = runner.invoke(cli, args)
        actual = "\n".join(line.rstrip() for line in result.stdout.rstrip("\n").splitlines())
        assert result.exit_code == code, f"{command}\n{result.output}"
        assert output_matches(expected, actual), f"{command}\n--- documented:\n{expected}\n--- actual:\n{actual}"
    assert fake.state.summarize(
        fake.state.all("billing.meter")[0]["id"], fake.state.all("customer")[0]["id"], 0, 2**40
    ) == Decimal(1235)
