"""Events in, signed webhooks out: period close (aggregation.completed), grace delay, corrections
(aggregation.corrected) and usage reports (report.meter), with a real HTTP receiver."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from tallybook import jsonutil
from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tests.test_webhook_helpers import (
    SECRET,
    Receiver,
    api,
    build_runtime,
    codehooks_signature_ok,
    standard_signature_ok,
)

METERS = [
    {"slug": "api_calls", "eventType": "api.calls", "aggregation": "SUM", "valueProperty": "$.value"},
    {"slug": "storage_bytes", "eventType": "storage.bytes", "aggregation": "MAX", "valueProperty": "$.value"},
]
T0 = datetime(2026, 1, 12, 10, 15, tzinfo=UTC)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


def make(database_url: str, clock: FixedClock, receiver: Receiver, **settings: Any) -> Runtime:
    settings.setdefault("endpoints", [{"url": receiver.url, "secret": SECRET, "enabled": True}])
    settings.setdefault("periods", ["hourly", "daily"])
    return build_runtime(database_url, clock, meters=METERS, **settings)


def usage(client: Any, event_type: str, customer: str, value: Any) -> None:
    """The codehooks template's capture call (event time = now)."""
    response = client.post(f"/usage/{event_type}", json={"customerId": customer, "value": value})
    assert response.status_code == 202, response.text


def late_event(client: Any, event_id: str, event_type: str, subject: str, time: str, value: Any) -> None:
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": "test",
        "type": event_type,
        "subject": subject,
        "time": time,
        "data": {"value": value},
    }
    response = client.post("/api/v1/events", json=event, headers={"Content-Type": "application/cloudevents+json"})
    assert response.status_code == 204, response.text


def run_jobs(client: Any) -> dict[str, Any]:
    response = client.post("/api/v1/jobs/run")
    assert response.status_code == 200, response.text
    return {job["name"]: job for job in response.json()["jobs"]}


def completed_body(customer: str, period: str, start: str, end: str, events: str, count: int, created: int) -> bytes:
    return (
        f'{{"type":"aggregation.completed","customerId":"{customer}","period":"{period}","data":'
        f'{{"periodStart":"{start}","periodEnd":"{end}","events":{events},"eventCount":{count}}},'
        f'"created":{created}}}'
    ).encode()


def test_period_is_sent_once_per_endpoint_after_the_grace_delay(database_url, clock, receiver):
    runtime = make(database_url, clock, receiver)
    client = api(runtime)
    try:
        usage(client, "api.calls", "cust_123", 2)
        usage(client, "api.calls", "cust_123", 3)
        usage(client, "storage.bytes", "cust_123", 1048576)
        usage(client, "api.calls", "cust_456", 1)
        run_jobs(client)
        assert receiver.requests == []  # the hour is not over

        clock.set(datetime(2026, 1, 12, 11, 59, 59, tzinfo=UTC))  # over, but inside the grace delay
        run_jobs(client)
        assert receiver.requests == []

        clock.set(datetime(2026, 1, 12, 12, 0, tzinfo=UTC))
        jobs = run_jobs(client)
        assert jobs["aggregation.close"]["result"]["completed"] == 2
        assert jobs["webhooks.deliver"]["result"]["delivered"] == 2
        got = {jsonutil.loads(r.body)["customerId"]: r for r in receiver.wait_for(2)}
        created = int(clock.now().timestamp())
        assert got["cust_123"].body == completed_body(
            "cust_123",
            "hourly",
            "2026-01-12T10:00:00.000Z",
            "2026-01-12T10:59:59.999Z",
            '{"api.calls":5,"storage.bytes":1048576}',
            3,
            created,
        )
        assert got["cust_456"].body == completed_body(
            "cust_456",
            "hourly",
            "2026-01-12T10:00:00.000Z",
            "2026-01-12T10:59:59.999Z",
            '{"api.calls":1}',
            1,
            created,
        )
        for request in got.values():
            assert standard_signature_ok(SECRET, request)
            assert codehooks_signature_ok(SECRET, request)

        # Running again, later, sends nothing new for that hour.
        clock.advance(timedelta(minutes=30))
        run_jobs(client)
        run_jobs(client)
        assert len(receiver.requests) == 2

        # The day closes an hour after midnight.
        clock.set(datetime(2026, 1, 13, 1, 0, tzinfo=UTC))
        run_jobs(client)
        daily = [jsonutil.loads(r.body) for r in receiver.wait_for(4)[2:]]
        assert sorted((d["customerId"], d["period"]) for d in daily) == [
            ("cust_123", "daily"),
            ("cust_456", "daily"),
        ]
        assert {d["customerId"]: d["data"]["periodEnd"] for d in daily} == {
            "cust_123": "2026-01-12T23:59:59.999Z",
            "cust_456": "2026-01-12T23:59:59.999Z",
        }
        listed = client.get("/api/v1/notification/events", params={"subject": "cust_123"}).json()
        assert listed["totalCount"] == 2
        assert {item["payload"]["period"] for item in listed["items"]} == {"hourly", "daily"}
        assert all(item["deliveryStatus"][0]["state"] == "SUCCESS" for item in listed["items"])
    finally:
        client.close()
        runtime.stop()


def test_each_endpoint_gets_each_period_once(database_url, clock, receiver):
    with Receiver() as second:
        endpoints = [{"url": receiver.url, "secret": SECRET}, {"url": second.url, "secret": SECRET}]
        runtime = make(database_url, clock, receiver, endpoints=endpoints, periods=["hourly"])
        client = api(runtime)
        try:
            usage(client, "api.calls", "cust_1", 1)
            clock.set(datetime(2026, 1, 12, 12, 0, tzinfo=UTC))
            run_jobs(client)
            run_jobs(client)
            [first_got] = receiver.wait_for(1)
            [second_got] = second.wait_for(1)
            assert first_got.body == second_got.body
            assert first_got.headers["webhook-id"] == second_got.headers["webhook-id"]
            with runtime.store.read() as conn:
                sent = conn.execute(text("SELECT count(*) FROM aggregation_sent")).scalar_one()
            assert sent == 2
        finally:
            client.close()
            runtime.stop()


def test_late_events_send_a_correction_with_previous_figures(database_url, clock, receiver):
    runtime = make(database_url, clock, receiver, periods=["hourly", "daily"])
    client = api(runtime)
    try:
        usage(client, "api.calls", "cust_123", 5)
        clock.set(datetime(2026, 1, 12, 12, 0, tzinfo=UTC))
        run_jobs(client)
        [first] = receiver.wait_for(1)
        assert jsonutil.loads(first.body)["data"]["events"] == {"api.calls": 5}

        # Two late events for 10:xx arrive after the hour was sent; one for a new subject.
        clock.set(datetime(2026, 1, 12, 12, 30, tzinfo=UTC))
        late_event(client, "late-1", "api.calls", "cust_123", "2026-01-12T10:40:00Z", 7)
        late_event(client, "late-2", "storage.bytes", "cust_123", "2026-01-12T10:41:00Z", 10)
        late_event(client, "late-3", "api.calls", "cust_789", "2026-01-12T10:42:00Z", 1)
        clock.set(datetime(2026, 1, 12, 12, 33, tzinfo=UTC))
        jobs = run_jobs(client)
        assert jobs["aggregation.close"]["result"]["corrected"] == 1
        assert jobs["aggregation.close"]["result"]["completed"] == 1
        bodies = {
            (b["type"], b["customerId"]): (b, r) for r in receiver.wait_for(3)[1:] for b in [jsonutil.loads(r.body)]
        }
        _corrected, request = bodies[("aggregation.corrected", "cust_123")]
        assert request.body == (
            b'{"type":"aggregation.corrected","customerId":"cust_123","period":"hourly","data":'
            b'{"periodStart":"2026-01-12T10:00:00.000Z","periodEnd":"2026-01-12T10:59:59.999Z",'
            b'"events":{"api.calls":12,"storage.bytes":10},"eventCount":3},'
            b'"previous":{"events":{"api.calls":5},"eventCount":1},'
            b'"created":' + str(int(clock.now().timestamp())).encode() + b"}"
        )
        assert codehooks_signature_ok(SECRET, request) and standard_signature_ok(SECRET, request)
        assert request.headers["webhook-id"] != first.headers["webhook-id"]
        newcomer, _ = bodies[("aggregation.completed", "cust_789")]
        assert newcomer["data"]["events"] == {"api.calls": 1}

        # Nothing changed since: no more corrections.
        clock.advance(timedelta(minutes=10))
        run_jobs(client)
        assert len(receiver.requests) == 3

        # A second late event corrects the corrected figures.
        late_event(client, "late-4", "api.calls", "cust_123", "2026-01-12T10:50:00Z", 1)
        clock.advance(timedelta(minutes=3))
        run_jobs(client)
        again = jsonutil.loads(receiver.wait_for(4)[3].body)
        assert again["type"] == "aggregation.corrected"
        assert again["data"]["events"] == {"api.calls": 13, "storage.bytes": 10}
        assert again["previous"] == {"events": {"api.calls": 12, "storage.bytes": 10}, "eventCount": 3}

        # The day was not sent yet: it closes once, with the late events in it, and no correction.
        clock.set(datetime(2026, 1, 13, 1, 0, tzinfo=UTC))
        run_jobs(client)
        daily = [jsonutil.loads(r.body) for r in receiver.wait_for(6)[4:]]
        assert {d["type"] for d in daily} == {"aggregation.completed"}
        by_customer = {d["customerId"]: d["data"]["events"] for d in daily}
        assert by_customer == {"cust_123": {"api.calls": 13, "storage.bytes": 10}, "cust_789": {"api.calls": 1}}
    finally:
        client.close()
        runtime.stop()


def test_without_listeners_periods_pass_and_a_new_endpoint_starts_fresh(database_url, clock, receiver):
    runtime = make(database_url, clock, receiver, endpoints=[], periods=["hourly"])
    client = api(runtime)
    try:
        usage(client, "api.calls", "cust_1", 1)
        clock.set(datetime(2026, 1, 12, 12, 0, tzinfo=UTC))
        assert run_jobs(client)["aggregation.close"]["result"]["completed"] == 0
        channel = client.post(
            "/api/v1/notification/channels", json={"type": "WEBHOOK", "name": "late joiner", "url": receiver.url}
        ).json()
        rule = client.post(
            "/api/v1/notification/rules",
            json={"type": "aggregation.completed", "name": "usage", "channels": [channel["id"]]},
        )
        assert rule.status_code == 201
        run_jobs(client)
        assert receiver.requests == []  # the 10:00 hour closed before anyone listened
        usage(client, "api.calls", "cust_1", 4)  # 12:00, in the 12:00 hour
        clock.set(datetime(2026, 1, 12, 14, 0, tzinfo=UTC))
        run_jobs(client)
        [got] = receiver.wait_for(1)
        body = jsonutil.loads(got.body)
        assert body["data"]["periodStart"] == "2026-01-12T12:00:00.000Z"
        assert standard_signature_ok(channel["signingSecret"], got)
        event = client.get(f"/api/v1/notification/events/{got.headers['webhook-id']}").json()
        assert event["rule"]["id"] == rule.json()["id"]
    finally:
        client.close()
        runtime.stop()


def test_meter_reports_are_sent_per_meter_and_subject_with_a_stable_id(database_url, clock, receiver):
    endpoint = {"url": receiver.url, "secret": SECRET, "events": ["report.meter"]}
    runtime = make(database_url, clock, receiver, endpoints=[endpoint], grace="10m", reports={"interval": "hourly"})
    client = api(runtime)
    try:
        run_jobs(client)  # first run: starts with the last finished hour (09:00), which is empty
        usage(client, "api.calls", "cust_1", 2)
        usage(client, "api.calls", "cust_1", 3)
        usage(client, "api.calls", "cust_2", 1)
        clock.set(datetime(2026, 1, 12, 11, 10, tzinfo=UTC))
        jobs = run_jobs(client)
        assert jobs["report.meter"]["result"]["reports"] == 2
        got = sorted(receiver.wait_for(2), key=lambda r: r.body)
        meter = client.get("/api/v1/meters/api_calls").json()
        assert got[0].body == (
            b'{"type":"report.meter","meter":{"id":"' + meter["id"].encode() + b'","slug":"api_calls",'
            b'"name":"' + meter["name"].encode() + b'","eventType":"api.calls","aggregation":"SUM",'
            b'"valueProperty":"$.value"},"query":{"subject":"cust_1","from":"2026-01-12T10:00:00Z",'
            b'"to":"2026-01-12T11:00:00Z","windowSize":"HOUR"},"usage":[{"value":5,'
            b'"windowStart":"2026-01-12T10:00:00Z","windowEnd":"2026-01-12T11:00:00Z"}]}'
        )
        assert jsonutil.loads(got[1].body)["query"]["subject"] == "cust_2"
        assert all(standard_signature_ok(SECRET, r) and codehooks_signature_ok(SECRET, r) for r in got)
        ids = sorted(r.headers["webhook-id"] for r in got)

        # The same report computed again has the same id (a receiver's idempotency key) and is not
        # queued twice while the first is on record.
        with runtime.store.write() as conn:
            conn.execute(text("DELETE FROM job_cursors WHERE name = 'report.meter:hourly'"))
        assert run_jobs(client)["report.meter"]["result"]["reports"] == 0
        with runtime.store.write() as conn:
            conn.execute(text("DELETE FROM job_cursors WHERE name = 'report.meter:hourly'"))
            conn.execute(text("DELETE FROM notification_attempts"))
            conn.execute(text("DELETE FROM notification_deliveries"))
            conn.execute(text("DELETE FROM notification_events"))
        clock.advance(timedelta(minutes=1))
        assert run_jobs(client)["report.meter"]["result"]["reports"] == 2
        again = receiver.wait_for(4)[2:]
        assert sorted(r.headers["webhook-id"] for r in again) == ids
        assert sorted(r.body for r in again) == [r.body for r in got]
    finally:
        client.close()
        runtime.stop()


def test_periods_follow_the_configured_time_zone(database_url, clock, receiver):
    runtime = make(database_url, clock, receiver, periods=["daily"], timezone="Europe/Budapest", grace="30m")
    client = api(runtime)
    try:
        usage(client, "api.calls", "cust_1", 1)  # 10:15 UTC = 11:15 in Budapest, on 12 January
        clock.set(datetime(2026, 1, 12, 23, 29, tzinfo=UTC))  # Budapest midnight + 29 minutes
        run_jobs(client)
        assert receiver.requests == []
        clock.set(datetime(2026, 1, 12, 23, 30, tzinfo=UTC))
        run_jobs(client)
        [got] = receiver.wait_for(1)
        data = jsonutil.loads(got.body)["data"]
        assert (data["periodStart"], data["periodEnd"]) == ("2026-01-11T23:00:00.000Z", "2026-01-12T22:59:59.999Z")
    finally:
        client.close()
        runtime.stop()


def test_a_backfill_into_closed_periods_is_sent_on_the_next_run(database_url, clock, receiver):
    """Corrections follow the commit watermark, not a wall-clock margin: events backfilled into
    periods that closed before they arrived (a new install, an import) are reported by the very next
    run. It used to wait a fixed two minutes of ingest settle."""
    runtime = make(database_url, clock, receiver, periods=["hourly"])
    client = api(runtime)
    try:
        clock.set(datetime(2026, 1, 12, 12, 0, tzinfo=UTC))
        assert run_jobs(client)["aggregation.close"]["result"]["completed"] == 0  # hours close, empty
        late_event(client, "old-1", "api.calls", "cust_1", "2026-01-12T08:10:00Z", 4)
        late_event(client, "old-2", "api.calls", "cust_1", "2026-01-12T09:20:00Z", 6)
        clock.advance(timedelta(seconds=5))
        jobs = run_jobs(client)
        assert jobs["aggregation.close"]["result"]["completed"] == 2
        sent = sorted(
            (body["data"]["periodStart"], body["data"]["events"]["api.calls"])
            for body in (jsonutil.loads(r.body) for r in receiver.wait_for(2))
        )
        assert sent == [("2026-01-12T08:00:00.000Z", 4), ("2026-01-12T09:00:00.000Z", 6)]
        # Sent once: the next runs find nothing new.
        clock.advance(timedelta(minutes=5))
        run_jobs(client)
        assert len(receiver.requests) == 2
    finally:
        client.close()
        runtime.stop()


def test_an_install_that_followed_ingest_time_continues_by_seq(database_url, clock, receiver):
    """Upgrading from the ingest-time cursor: the commit-watermark cursor starts where that one stood,
    so nothing is sent twice and nothing after it is missed."""
    from tallybook.jobs.sql import job_cursors

    runtime = make(database_url, clock, receiver, periods=["hourly"])
    client = api(runtime)
    try:
        clock.set(datetime(2026, 1, 12, 12, 0, tzinfo=UTC))
        late_event(client, "before", "api.calls", "cust_1", "2026-01-12T08:10:00Z", 4)
        run_jobs(client)
        assert len(receiver.wait_for(1)) == 1
        # As an older version left it: only the time cursor, at this instant.
        with runtime.store.write() as conn:
            conn.execute(job_cursors.delete().where(job_cursors.c.name == "aggregation.corrections.seq"))
        clock.advance(timedelta(minutes=3))
        late_event(client, "after", "api.calls", "cust_1", "2026-01-12T09:20:00Z", 6)
        clock.advance(timedelta(seconds=5))
        assert run_jobs(client)["aggregation.close"]["result"]["completed"] == 1
        hours = [jsonutil.loads(r.body)["data"]["periodStart"] for r in receiver.wait_for(2)]
        assert hours == ["2026-01-12T08:00:00.000Z", "2026-01-12T09:00:00.000Z"]
    finally:
        client.close()
        runtime.stop()
