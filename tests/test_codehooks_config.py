"""Pointing at a codehooks `systemconfig.json` is all a codehooks user does: its `events` become
meters, its `periods` are the periods closed, and its `webhooks` receive them, signed."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tallybook import jsonutil
from tallybook.clock import FixedClock
from tallybook.config import ConfigError, load_settings
from tallybook.runtime import Runtime
from tests.test_webhook_helpers import SECRET, Receiver, api, codehooks_signature_ok, reset_database


def systemconfig(tmp_path, **fields):
    path = tmp_path / "systemconfig.json"
    path.write_text(json.dumps({"events": {"api.calls": {"op": "sum"}}, **fields}))
    return path


def config_file(tmp_path, text):
    path = tmp_path / "tallybook.yaml"
    path.write_text(text)
    return path


def test_periods_and_webhooks_come_from_the_systemconfig(tmp_path):
    system = systemconfig(
        tmp_path,
        periods=["hourly", "monthly"],
        webhooks=[{"url": "https://example.com/h", "secret": "s1", "enabled": True}],
    )
    settings = load_settings(config_file(tmp_path, f"meters:\n  from_codehooks: {system}\n"))
    assert settings.webhooks.periods == ["hourly", "monthly"]
    assert [(e.url, e.secret, e.enabled) for e in settings.webhooks.endpoints] == [
        ("https://example.com/h", "s1", True)
    ]
    assert [d.slug for d in settings.meters.all_definitions()] == ["api_calls"]


def test_what_tallybook_yaml_says_explicitly_wins(tmp_path):
    system = systemconfig(
        tmp_path,
        periods=["hourly"],
        webhooks=[{"url": "https://example.com/h", "secret": "from-json"}, {"url": "https://b.example.com/"}],
    )
    text = (
        f"meters:\n  from_codehooks: {system}\n"
        "webhooks:\n  periods: [daily]\n  grace: 5m\n"
        "  endpoints:\n    - {url: https://example.com/h, secret: from-yaml}\n"
    )
    settings = load_settings(config_file(tmp_path, text))
    assert settings.webhooks.periods == ["daily"]
    assert settings.webhooks.grace.total_seconds() == 300
    assert [(e.url, e.secret) for e in settings.webhooks.endpoints] == [
        ("https://example.com/h", "from-yaml"),
        ("https://b.example.com/", None),
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"webhooks": [{"url": "ftp://x"}]}, "webhooks[0]: url: must be an absolute http:// or https:// URL"),
        ({"webhooks": {"url": "https://x"}}, "`webhooks` must be a list of {url, secret, enabled} objects"),
        ({"periods": ["fortnightly"]}, "periods[0]: Input should be 'hourly', 'daily'"),
    ],
)
def test_a_bad_systemconfig_names_the_file_and_field(tmp_path, fields, message):
    system = systemconfig(tmp_path, **fields)
    with pytest.raises(ConfigError) as raised:
        load_settings(config_file(tmp_path, f"meters:\n  from_codehooks: {system}\n"))
    assert f"codehooks config {system}: " in str(raised.value)
    assert message in str(raised.value)


def test_a_codehooks_user_gets_signed_period_webhooks_from_the_systemconfig_alone(tmp_path, database_url):
    with Receiver() as receiver:
        system = systemconfig(
            tmp_path, periods=["hourly"], webhooks=[{"url": receiver.url, "secret": SECRET, "enabled": True}]
        )
        text = (
            f"database:\n  url: {database_url}\nmeters:\n  from_codehooks: {system}\n"
            "webhooks:\n  scheduler: {run_in_server: false}\n"
        )
        reset_database(database_url)
        clock = FixedClock(datetime(2026, 1, 12, 10, 15, tzinfo=UTC))
        runtime = Runtime.build(load_settings(config_file(tmp_path, text)), clock=clock)
        runtime.start()
        client = api(runtime)
        try:
            for value in (2, 3):
                response = client.post("/usage/api.calls", json={"customerId": "cust_1", "value": value})
                assert response.status_code == 202, response.text
            clock.set(datetime(2026, 1, 12, 12, 0, tzinfo=UTC))  # the hour is over, and so is the grace
            assert client.post("/api/v1/jobs/run").status_code == 200
            [request] = receiver.wait_for(1)
        finally:
            client.close()
            runtime.stop()
    body = jsonutil.loads(request.body)
    assert (body["type"], body["customerId"], body["period"]) == ("aggregation.completed", "cust_1", "hourly")
    assert body["data"]["events"] == {"api.calls": 5}
    assert codehooks_signature_ok(SECRET, request)
