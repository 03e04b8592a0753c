"""Notification channels, rules and events over the API; the `webhooks:` config section."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tallybook.clock import FixedClock
from tallybook.config import ConfigError, load_settings
from tallybook.webhooks.service import OutboxMessage
from tallybook.webhooks.settings import WebhookSettings
from tests.test_webhook_helpers import SECRET, api, build_runtime

SECRET_FORMAT = re.compile(r"^whsec_[A-Za-z0-9+/=]{32}$")
CHANNELS = "/api/v1/notification/channels"
RULES = "/api/v1/notification/rules"
EVENTS = "/api/v1/notification/events"


@pytest.fixture
def setup(database_url):
    clock = FixedClock(datetime(2026, 2, 1, 12, 0, tzinfo=UTC))
    runtime = build_runtime(
        database_url,
        clock,
        endpoints=[{"url": "https://billing.example.com/hook", "secret": SECRET, "events": ["report.meter"]}],
    )
    client = api(runtime)
    try:
        yield runtime, client, clock
    finally:
        client.close()
        runtime.stop()


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


def test_channel_lifecycle(setup):
    _runtime, client, clock = setup
    created = client.post(
        CHANNELS,
        json={
            "type": "WEBHOOK",
            "name": "customer webhook",
            "url": "https://example.com/hook",
            "customHeaders": {"X-Team": "billing"},
            "metadata": {"owner": "ops"},
        },
    )
    assert created.status_code == 201, created.text
    channel = created.json()
    assert SECRET_FORMAT.match(channel["signingSecret"])
    assert re.match(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$", channel["id"])
    assert channel["createdAt"] == "2026-02-01T12:00:00Z"
    assert channel["disabled"] is False
    assert channel["customHeaders"] == {"X-Team": "billing"}
    assert channel["annotations"] == {"tallybook.source": "api"}

    clock.advance(timedelta(minutes=1))
    updated = client.put(
        f"{CHANNELS}/{channel['id']}",
        json={"type": "WEBHOOK", "name": "renamed", "url": "https://example.com/v2", "disabled": True},
    ).json()
    assert (updated["name"], updated["url"], updated["disabled"]) == ("renamed", "https://example.com/v2", True)
    assert updated["signingSecret"] == channel["signingSecret"]  # kept when not given
    assert updated["updatedAt"] == "2026-02-01T12:01:00Z"

    listed = client.get(CHANNELS).json()
    assert [c["id"] for c in listed["items"]] == [c["id"] for c in listed["items"] if not c["disabled"]]
    with_disabled = client.get(CHANNELS, params={"includeDisabled": "true"}).json()
    assert channel["id"] in [c["id"] for c in with_disabled["items"]]
    assert with_disabled["totalCount"] == 2  # plus the endpoint from the config file
    from_config = next(c for c in with_disabled["items"] if c["annotations"]["tallybook.source"] == "config")
    assert from_config["annotations"]["tallybook.events"] == ["report.meter"]
    assert from_config["signingSecret"] == SECRET
    problem(client.delete(f"{CHANNELS}/{from_config['id']}"), 400)  # the config file owns it

    assert client.delete(f"{CHANNELS}/{channel['id']}").status_code == 204
    problem(client.get(f"{CHANNELS}/unknown"), 404)
    problem(client.delete(f"{CHANNELS}/{channel['id']}"), 404)
    deleted = client.get(f"{CHANNELS}/{channel['id']}").json()
    assert deleted["deletedAt"] == "2026-02-01T12:01:00Z"


def test_channel_input_is_checked(setup):
    _, client, _ = setup
    body = {"type": "WEBHOOK", "name": "x", "url": "https://example.com/hook"}
    problem(client.post(CHANNELS, json={**body, "signingSecret": "too-short"}), 400)
    problem(client.post(CHANNELS, json={**body, "url": "ftp://example.com"}), 400)
    problem(client.post(CHANNELS, json={**body, "type": "EMAIL"}), 400)
    problem(client.post(CHANNELS, json={**body, "unknown": 1}), 400)
    given = client.post(CHANNELS, json={**body, "signingSecret": SECRET}).json()
    assert given["signingSecret"] == SECRET


def test_rules_route_event_types_to_channels(setup):
    runtime, client, _ = setup
    channel = client.post(CHANNELS, json={"type": "WEBHOOK", "name": "a", "url": "https://a.example.com"}).json()
    problem(client.post(RULES, json={"type": "invoice.created", "name": "r", "channels": [channel["id"]]}), 400)
    problem(
        client.post(RULES, json={"type": "report.meter", "name": "r", "channels": ["01ARZ3NDEKTSV4RRFFQ69G5FAV"]}), 400
    )
    problem(client.post(RULES, json={"type": "report.meter", "name": "r", "channels": []}), 400)
    rule = client.post(RULES, json={"type": "aggregation.completed", "name": "usage", "channels": [channel["id"]]})
    assert rule.status_code == 201, rule.text
    body = rule.json()
    assert body["channels"] == [{"id": channel["id"], "type": "WEBHOOK"}]
    with runtime.store.read() as conn:
        completed = runtime.webhooks.destinations(conn, "aggregation.completed")
        reports = runtime.webhooks.destinations(conn, "report.meter")
    assert [(d.channel_id, d.rule_id) for d in completed] == [(channel["id"], body["id"])]
    assert len(reports) == 1 and reports[0].rule_id is None  # the config endpoint
    # A channel in use by a rule cannot be deleted; a disabled rule routes nothing.
    problem(client.delete(f"{CHANNELS}/{channel['id']}"), 400)
    client.put(
        f"{RULES}/{body['id']}",
        json={"type": "aggregation.completed", "name": "usage", "channels": [channel["id"]], "disabled": True},
    )
    with runtime.store.read() as conn:
        assert runtime.webhooks.destinations(conn, "aggregation.completed") == []
    assert client.get(RULES).json()["totalCount"] == 0
    assert client.get(RULES, params={"includeDisabled": "true"}).json()["totalCount"] == 1
    assert client.delete(f"{RULES}/{body['id']}").status_code == 204
    problem(client.get(f"{RULES}/nope"), 404)


def test_events_are_listed_filtered_and_resent(setup):
    runtime, client, clock = setup
    ids = []
    for n, subject in enumerate(["cust_1", "cust_2", "cust_1"]):
        with runtime.store.write() as conn:
            destinations = runtime.webhooks.destinations(conn, "report.meter")
            message = OutboxMessage("report.meter", f"k{n}", {"type": "report.meter", "n": n}, subject=subject)
            event = runtime.webhooks.enqueue(conn, message, destinations, clock.now())
        assert event is not None
        ids.append(event.id)
        clock.advance(timedelta(minutes=1))
    listed = client.get(EVENTS).json()
    assert listed["totalCount"] == 3
    assert [e["id"] for e in listed["items"]] == list(reversed(ids))  # newest first
    first = listed["items"][-1]
    assert first["payload"] == {"type": "report.meter", "n": 0}
    assert first["type"] == "report.meter"
    assert first["deliveryStatus"][0]["state"] == "PENDING"
    assert first["deliveryStatus"][0]["attempts"] == []
    assert client.get(EVENTS, params={"subject": "cust_1"}).json()["totalCount"] == 2
    assert client.get(EVENTS, params={"from": "2026-02-01T12:01:00Z"}).json()["totalCount"] == 2
    page = client.get(EVENTS, params={"pageSize": 2, "page": 2, "order": "ASC"}).json()
    assert [e["id"] for e in page["items"]] == [ids[2]] and page["totalCount"] == 3
    channel_id = first["deliveryStatus"][0]["channel"]["id"]
    assert client.get(EVENTS, params={"channel": channel_id}).json()["totalCount"] == 3
    problem(client.get(EVENTS, params={"from": "2026-02-01T12:01:00"}), 400)
    problem(client.get(f"{EVENTS}/unknown"), 404)
    assert client.post(f"{EVENTS}/{ids[0]}/resend", json={"channels": [channel_id]}).status_code == 202
    problem(client.post(f"{EVENTS}/{ids[0]}/resend", json={"channels": ["unknown"]}), 400)
    problem(client.post(f"{EVENTS}/unknown/resend", json={}), 404)


def test_scopes(setup):
    runtime, client, _ = setup
    read_key = runtime.keys.create("reader", "read").plaintext
    headers = {"Authorization": f"Bearer {read_key}"}
    assert client.get(EVENTS, headers=headers).status_code == 200
    problem(client.get(CHANNELS, headers=headers), 403)  # channels hold signing secrets
    problem(client.post("/api/v1/jobs/run", headers=headers), 403)
    problem(client.post("/api/v1/jobs/run", headers={"Authorization": "Bearer nope"}), 401)
    ran = client.post("/api/v1/jobs/run").json()
    # Other domains (billing, Stripe) register jobs too; the webhook ones must all be there.
    assert {"aggregation.close", "report.meter", "webhooks.deliver"} <= {j["name"] for j in ran["jobs"]}
    assert all(j["ran"] for j in ran["jobs"])
    listed = client.get("/api/v1/jobs").json()["items"]
    assert {j["name"]: j["lastStartedAt"] for j in listed}["aggregation.close"] == "2026-02-01T12:00:00Z"


def test_config_accepts_the_codehooks_list_and_the_full_mapping(tmp_path: Path):
    config = tmp_path / "tallybook.yaml"
    config.write_text(
        "webhooks:\n  - url: https://your-system.com/webhooks/metering\n    secret: ${HOOK_SECRET}\n    enabled: true\n"
    )
    settings = load_settings(config, env={"HOOK_SECRET": "whsec_your_webhook_secret"})
    [endpoint] = settings.webhooks.endpoints
    assert endpoint.secret == "whsec_your_webhook_secret" and endpoint.enabled
    assert endpoint.event_types == ("aggregation.completed", "aggregation.corrected")
    assert settings.webhooks.periods == ["daily", "weekly", "monthly"]
    assert settings.webhooks.grace == timedelta(hours=1)

    config.write_text(
        "webhooks:\n"
        "  dry_run: true\n"
        "  periods: [hourly, monthly]\n"
        "  grace: 15m\n"
        "  retry_schedule: [10s, 1m, 2h]\n"
        "  reports: {interval: hourly, meters: [api_calls]}\n"
        "  endpoints: [{url: 'http://localhost:9000/hook', events: [report.meter]}]\n"
    )
    settings = load_settings(config, env={})
    assert settings.webhooks.dry_run and settings.webhooks.periods == ["hourly", "monthly"]
    assert settings.webhooks.grace == timedelta(minutes=15)
    assert settings.webhooks.retry_schedule == [timedelta(seconds=10), timedelta(minutes=1), timedelta(hours=2)]

    for bad, message in [
        ("webhooks: [{url: 'not a url'}]", "webhooks.endpoints[0].url"),
        ("webhooks: {periods: [fortnightly]}", "webhooks.periods[0]"),
        ("webhooks: {grace: soon}", "webhooks.grace"),
        ("webhooks: {timezone: Mars/Olympus}", "webhooks.timezone"),
        ("webhooks: [{url: 'http://a/'}, {url: 'http://a/'}]", "each url may appear once"),
    ]:
        config.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_settings(config, env={})


def test_config_endpoints_follow_the_file_across_restarts(database_url):
    clock = FixedClock(datetime(2026, 2, 1, 12, 0, tzinfo=UTC))
    first = build_runtime(database_url, clock, endpoints=[{"url": "https://a.example.com/hook"}])
    try:
        [channel] = first.webhooks.list_channels()
        generated = channel.signing_secret
        assert SECRET_FORMAT.match(generated)
    finally:
        first.stop()
    second = build_runtime(
        database_url,
        clock,
        reset=False,
        endpoints=[{"url": "https://a.example.com/hook", "enabled": False}, {"url": "https://b.example.com/hook"}],
    )
    try:
        channels = {c.url: c for c in second.webhooks.list_channels(include_disabled=True)}
        assert channels["https://a.example.com/hook"].signing_secret == generated  # kept
        assert channels["https://a.example.com/hook"].disabled
        assert not channels["https://b.example.com/hook"].disabled
    finally:
        second.stop()
    third = build_runtime(database_url, clock, reset=False, endpoints=[])
    try:
        assert third.webhooks.list_channels(include_disabled=True) == []
    finally:
        third.stop()


def test_settings_reject_a_lease_shorter_than_the_timeout():
    with pytest.raises(ValueError, match="claim_lease must be longer than timeout"):
        WebhookSettings(timeout="30s", claim_lease="10s")
