"""Webhook delivery against a real HTTP receiver: exact bytes, both signatures, retries with backoff,
timeouts, 410 Gone, giving up and re-sending, dry run. Time moves only when the test moves it."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tallybook import jsonutil
from tallybook.runtime import Runtime
from tallybook.webhooks.delivery import DeliveryWorker
from tallybook.webhooks.model import EventRow
from tallybook.webhooks.service import OutboxMessage
from tallybook.webhooks.settings import WebhookSettings
from tests.test_webhook_helpers import (
    SECRET,
    TEMPLATE_SECRET,
    Receiver,
    api,
    build_runtime,
    codehooks_signature_ok,
    now_clock,
    standard_signature_ok,
)

PAYLOAD = {
    "type": "aggregation.completed",
    "customerId": "cust_123",
    "period": "daily",
    "data": {
        "periodStart": "2026-01-12T00:00:00.000Z",
        "periodEnd": "2026-01-12T23:59:59.999Z",
        "events": {"api.calls": 1543, "response.time": jsonutil.loads("245.50")},
        "eventCount": 1544,
    },
    "created": 1736726100,
}
EXPECTED_BODY = (
    b'{"type":"aggregation.completed","customerId":"cust_123","period":"daily","data":'
    b'{"periodStart":"2026-01-12T00:00:00.000Z","periodEnd":"2026-01-12T23:59:59.999Z",'
    b'"events":{"api.calls":1543,"response.time":245.50},"eventCount":1544},"created":1736726100}'
)


def enqueue(runtime: Runtime, key: str = "test|1", payload: dict[str, Any] | None = None) -> EventRow:
    now = runtime.clock.now()
    with runtime.store.write() as conn:
        destinations = runtime.webhooks.destinations(conn, "aggregation.completed")
        message = OutboxMessage("aggregation.completed", key, payload or PAYLOAD, subject="cust_123")
        event = runtime.webhooks.enqueue(conn, message, destinations, now)
    assert event is not None
    return event


def deliver(runtime: Runtime) -> dict[str, Any]:
    results = {r.name: r for r in runtime.jobs.run_once()}
    return results["webhooks.deliver"].result


@pytest.fixture
def clock():
    return now_clock()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def make(database_url: str, clock, receiver: Receiver, secret: str = SECRET, **settings: Any) -> Runtime:
    endpoint = {"url": receiver.url, "secret": secret, "enabled": True}
    return build_runtime(database_url, clock, endpoints=[endpoint], **settings)


def test_body_is_sent_byte_for_byte_with_both_signatures(database_url, clock, receiver):
    runtime = make(database_url, clock, receiver)
    try:
        event = enqueue(runtime)
        assert deliver(runtime)["delivered"] == 1
        [got] = receiver.wait_for(1)
        assert got.body == EXPECTED_BODY
        assert got.headers["content-type"] == "application/json"
        assert got.headers["webhook-id"] == event.id
        assert got.headers["webhook-timestamp"] == str(int(clock.now().timestamp()))
        assert got.headers["x-webhook-timestamp"] == got.headers["webhook-timestamp"]
        assert standard_signature_ok(SECRET, got)
        assert codehooks_signature_ok(SECRET, got)
        # What a Svix / Standard Webhooks receiver runs (it checks the timestamp against real time).
        assert Webhook(SECRET).verify(got.body, got.headers) == jsonutil.loads(EXPECTED_BODY)
    finally:
        runtime.stop()


def test_template_style_secret_signs_codehooks_header_with_the_whole_string(database_url, clock, receiver):
    runtime = make(database_url, clock, receiver, secret=TEMPLATE_SECRET)
    try:
        enqueue(runtime)
        deliver(runtime)
        [got] = receiver.wait_for(1)
        assert codehooks_signature_ok(TEMPLATE_SECRET, got)
        # Not base64: the Standard Webhooks key is the secret's bytes.
        assert Webhook(TEMPLATE_SECRET.encode()).verify(got.body, got.headers) is not None
    finally:
        runtime.stop()


def test_500s_and_other_4xx_are_retried_with_backoff_until_delivered(database_url, clock, receiver):
    receiver.statuses.extend([500, 404])
    runtime = make(database_url, clock, receiver, jitter=0)
    client = api(runtime)
    try:
        event = enqueue(runtime)
        assert deliver(runtime)["retrying"] == 1
        # Not due yet: nothing is sent, however often the jobs run.
        clock.advance(timedelta(seconds=4))
        assert deliver(runtime)["attempted"] == 0
        clock.advance(timedelta(seconds=1))  # the first retry waits 5 s
        assert deliver(runtime)["retrying"] == 1
        body = client.get(f"/api/v1/notification/events/{event.id}").json()
        [status] = body["deliveryStatus"]
        assert status["state"] == "PENDING"
        assert status["nextAttempt"] == (clock.now() + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        clock.advance(timedelta(minutes=5))
        assert deliver(runtime)["delivered"] == 1
        got = receiver.wait_for(3)
        assert len({r.body for r in got}) == 1  # every retry carries the same bytes
        assert {r.headers["webhook-id"] for r in got} == {event.id}
        body = client.get(f"/api/v1/notification/events/{event.id}").json()
        [status] = body["deliveryStatus"]
        assert status["state"] == "SUCCESS"
        assert "nextAttempt" not in status
        assert [a["response"]["statusCode"] for a in status["attempts"]] == [500, 404, 200]
        assert [a["state"] for a in status["attempts"]] == ["FAILED", "FAILED", "SUCCESS"]
        assert all(a["response"]["url"] == receiver.url for a in status["attempts"])
        assert all(a["response"]["durationMs"] >= 0 for a in status["attempts"])
        assert body["payload"] == jsonutil.loads(EXPECTED_BODY)
    finally:
        client.close()
        runtime.stop()


def test_timeouts_are_recorded_and_retried(database_url, clock, receiver):
    # The receiver holds the first request until released: a timeout however busy the machine, and
    # a 1 s timeout that a normal answer meets with room to spare.
    receiver.hold()
    runtime = make(database_url, clock, receiver, timeout=1.0, claim_lease=5, jitter=0)
    client = api(runtime)
    try:
        event = enqueue(runtime)
        assert deliver(runtime)["retrying"] == 1
        receiver.release()
        clock.advance(timedelta(seconds=5))
        assert deliver(runtime)["delivered"] == 1
        [status] = client.get(f"/api/v1/notification/events/{event.id}").json()["deliveryStatus"]
        first, second = status["attempts"]
        assert first["state"] == "FAILED"
        assert first["error"] == "timed out after 1s"
        assert "statusCode" not in first["response"]
        assert second["response"]["statusCode"] == 200
    finally:
        client.close()
        runtime.stop()


def test_410_disables_the_channel(database_url, clock, receiver):
    receiver.statuses.append(410)
    runtime = make(database_url, clock, receiver)
    client = api(runtime)
    try:
        event = enqueue(runtime)
        report = deliver(runtime)
        assert report["failed"] == 1 and len(report["disabledChannels"]) == 1
        [status] = client.get(f"/api/v1/notification/events/{event.id}").json()["deliveryStatus"]
        assert status["state"] == "FAILED"
        assert "410" in status["reason"]
        channel = client.get(f"/api/v1/notification/channels/{status['channel']['id']}").json()
        assert channel["disabled"] is True
        assert channel["annotations"]["tallybook.disabledReason"] == "the endpoint answered 410 Gone"
        # A disabled channel receives nothing new.
        with runtime.store.write() as conn:
            assert runtime.webhooks.destinations(conn, "aggregation.completed") == []
        clock.advance(timedelta(days=1))
        assert deliver(runtime)["attempted"] == 0
        assert len(receiver.requests) == 1
        # Re-enabled through the API (the endpoint comes from the config file; that works too).
        put = client.put(
            f"/api/v1/notification/channels/{channel['id']}",
            json={"type": "WEBHOOK", "name": channel["name"], "url": channel["url"], "disabled": False},
        )
        assert put.status_code == 200 and "tallybook.disabledReason" not in put.json()["annotations"]
        enqueue(runtime, key="after|1")
        assert deliver(runtime)["delivered"] == 1
    finally:
        client.close()
        runtime.stop()


def test_gives_up_after_the_schedule_and_resend_starts_over(database_url, clock, receiver):
    receiver.default_status = 500
    runtime = make(database_url, clock, receiver, retry_schedule=["1s", "2s"], jitter=0)
    client = api(runtime)
    try:
        event = enqueue(runtime)
        deliver(runtime)
        clock.advance(timedelta(seconds=1))
        deliver(runtime)
        clock.advance(timedelta(seconds=2))
        assert deliver(runtime)["failed"] == 1
        [status] = client.get(f"/api/v1/notification/events/{event.id}").json()["deliveryStatus"]
        assert status["state"] == "FAILED"
        assert status["reason"] == "HTTP 500; gave up after 3 attempts"
        clock.advance(timedelta(days=3))
        assert deliver(runtime)["attempted"] == 0

        receiver.default_status = 200
        response = client.post(f"/api/v1/notification/events/{event.id}/resend", json={})
        assert response.status_code == 202
        [status] = client.get(f"/api/v1/notification/events/{event.id}").json()["deliveryStatus"]
        assert status["state"] == "RESENDING"
        assert deliver(runtime)["delivered"] == 1
        got = receiver.wait_for(4)
        assert {r.headers["webhook-id"] for r in got} == {event.id}
        [status] = client.get(f"/api/v1/notification/events/{event.id}").json()["deliveryStatus"]
        assert status["state"] == "SUCCESS"
        assert len(status["attempts"]) == 4
    finally:
        client.close()
        runtime.stop()


def test_a_receiver_down_for_hours_gets_everything_when_back(database_url, clock, receiver):
    receiver.default_status = 503
    runtime = make(database_url, clock, receiver)
    try:
        events = [enqueue(runtime, key=f"down|{i}", payload={**PAYLOAD, "created": i}) for i in range(5)]
        for _ in range(8):  # eight hours of failing retries
            deliver(runtime)
            clock.advance(timedelta(hours=1))
        failed_attempts = len(receiver.requests)
        assert failed_attempts >= 5 * 4
        receiver.default_status = 200
        clock.advance(timedelta(hours=6))  # past the next retry (at most 5 h * 1.2 away)
        assert deliver(runtime)["delivered"] == 5
        delivered = receiver.requests[failed_attempts:]
        assert sorted(r.headers["webhook-id"] for r in delivered) == sorted(e.id for e in events)
        assert sorted(jsonutil.loads(r.body)["created"] for r in delivered) == [0, 1, 2, 3, 4]
    finally:
        runtime.stop()


def test_dry_run_logs_the_payload_and_sends_nothing(database_url, clock, receiver, caplog):
    runtime = make(database_url, clock, receiver, dry_run=True)
    client = api(runtime)
    try:
        event = enqueue(runtime)
        with caplog.at_level(logging.INFO, logger="tallybook.webhooks.delivery"):
            assert deliver(runtime)["delivered"] == 1
        assert receiver.requests == []
        [record] = [r for r in caplog.records if r.getMessage() == "webhook dry run: not sent"]
        assert record.payload == EXPECTED_BODY.decode()  # type: ignore[attr-defined]
        assert record.headers["webhook-id"] == event.id  # type: ignore[attr-defined]
        [status] = client.get(f"/api/v1/notification/events/{event.id}").json()["deliveryStatus"]
        assert status["state"] == "SUCCESS"
        assert status["reason"] == "dry run: not sent"
    finally:
        client.close()
        runtime.stop()


def test_custom_headers_are_sent_but_cannot_replace_signatures(database_url, clock, receiver):
    runtime = build_runtime(
        database_url,
        clock,
        endpoints=[{"url": receiver.url, "secret": SECRET, "headers": {"Authorization": "Bearer abc"}}],
    )
    client = api(runtime)
    try:
        enqueue(runtime)
        deliver(runtime)
        [got] = receiver.wait_for(1)
        assert got.headers["authorization"] == "Bearer abc"
        assert got.headers["user-agent"].startswith("Tallybook-Webhooks/")
        response = client.post(
            "/api/v1/notification/channels",
            json={"type": "WEBHOOK", "name": "x", "url": receiver.url, "customHeaders": {"Webhook-Signature": "x"}},
        )
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
    finally:
        client.close()
        runtime.stop()


def test_retry_delays_follow_the_schedule_within_the_jitter():
    settings = WebhookSettings(retry_schedule=["10s", "100s"], jitter=0.2)
    worker = DeliveryWorker(store=None, settings=settings, clock=now_clock(), rng=random.Random(7))
    try:
        delays = [worker.retry_delay(1) for _ in range(200)]
        assert all(timedelta(seconds=8) <= d <= timedelta(seconds=12) for d in delays if d is not None)
        assert len({d for d in delays}) > 100  # spread, not one value
        second = worker.retry_delay(2)
        assert second is not None and timedelta(seconds=80) <= second <= timedelta(seconds=120)
        assert worker.retry_delay(3) is None
    finally:
        worker.close()


def test_default_schedule_spans_about_three_days():
    total = sum(WebhookSettings().retry_schedule, timedelta())
    assert timedelta(days=2, hours=20) < total <= timedelta(days=3)


def test_the_server_process_delivers_in_the_background(database_url, clock, receiver):
    """With scheduler.run_in_server (the default), Runtime.start runs the jobs: no one calls them."""
    runtime = make(database_url, clock, receiver, scheduler={"run_in_server": True, "poll_interval": "0.1s"})
    try:
        assert runtime.jobs.running
        event = enqueue(runtime)
        [got] = receiver.wait_for(1, timeout=10)
        assert got.headers["webhook-id"] == event.id
    finally:
        runtime.stop()
    assert not runtime.jobs.running
