"""The `stripe:` config section: secrets from the environment, defaults, and refusals naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import stripe

from tallybook.config import ConfigError, load_settings
from tallybook.stripe.client import StripeNotConfigured, build_client
from tallybook.stripe.settings import PINNED_API_VERSION, StripeSettings


def test_stripe_section_reads_secrets_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tallybook.yaml"
    config.write_text(
        "stripe:\n"
        "  enabled: true\n"
        "  api_base: http://127.0.0.1:12111\n"
        "  report_interval: PT30M\n"
        "  meters:\n"
        "    - {meter: api_calls, event_name: api_calls, transport: v2_stream, window: DAY}\n"
        "    - {meter: legacy, mode: usage_record, price: price_1}\n"
    )
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_abc")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_abc")
    settings = load_settings(config, env={}).stripe
    assert settings.enabled and settings.report_interval.total_seconds() == 1800
    assert settings.secret_key() == "sk_test_abc" and settings.signing_secret() == "whsec_abc"
    assert settings.api_version == PINNED_API_VERSION == stripe.api_version
    assert [m.transport for m in settings.meters] == ["v2_stream", "v1"]
    assert settings.budget() == 25.0
    monkeypatch.setenv("STRIPE_API_KEY", "sk_live_abc")
    assert settings.budget() == 100.0
    assert StripeSettings(requests_per_second=7).budget() == 7
    client = build_client(settings)
    assert isinstance(client, stripe.StripeClient)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{meter: a}", "billing_meter mode needs event_name"),
        ("{meter: a, mode: usage_record}", "usage_record mode needs price"),
        ("{meter: a, event_name: a, transport: v3}", "stripe.meters[0].transport"),
        ("{meter: a, event_name: a, colour: red}", "stripe.meters[0].colour"),
    ],
)
def test_bad_mappings_fail_at_start_naming_the_key(tmp_path: Path, entry: str, message: str) -> None:
    config = tmp_path / "tallybook.yaml"
    config.write_text(f"stripe:\n  meters:\n    - {entry}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config, env={})
    assert message in str(err.value)


def test_no_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    with pytest.raises(StripeNotConfigured, match="STRIPE_API_KEY"):
        build_client(StripeSettings())
