"""A void is a change to the periods it touches, on SQLite and PostgreSQL: a period whose
aggregation webhook was sent gets `aggregation.corrected` with the lower figures. The invoice side
is in tests/billing/test_void_corrections.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tallybook import jsonutil
from tallybook.clock import FixedClock
from tests.billing_helpers import (
    ok,
)
from tests.test_webhook_helpers import SECRET, Receiver, api, build_runtime

HOURLY_METERS = [{"slug": "api_calls", "eventType": "api.calls", "aggregation": "SUM", "valueProperty": "$.value"}]


def void(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    return ok(client.post("/api/v1/events/void", json=body), 201)  # type: ignore[no-any-return]


def run_jobs(client: httpx.Client) -> dict[str, Any]:
    response = client.post("/api/v1/jobs/run")
    assert response.status_code == 200, response.text
    return {job["name"]: job for job in response.json()["jobs"]}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_voiding_an_event_of_a_sent_period_sends_aggregation_corrected(database_url: str, receiver: Receiver) -> None:
    clock = FixedClock(datetime(2026, 1, 12, 10, 15, tzinfo=UTC))
    runtime = build_runtime(
        database_url,
        clock,
        meters=HOURLY_METERS,
        endpoints=[{"url": receiver.url, "secret": SECRET, "enabled": True}],
        periods=["hourly"],
    )
    client = api(runtime)
    try:
        events = [
            {
                "specversion": "1.0",
                "id": f"call-{n}",
                "source": "app",
                "type": "api.calls",
                "subject": "cust_1",
                "time": f"2026-01-12T10:{10 + n:02d}:00Z",
                "data": {"value": value},
            }
            for n, value in ((1, 5), (2, 7))
        ]
        response = client.post(
            "/api/v1/events", json=events, headers={"Content-Type": "application/cloudevents-batch+json"}
        )
        assert response.status_code == 204, response.text
        clock.set(datetime(2026, 1, 12, 12, 0, tzinfo=UTC))
        run_jobs(client)
        [completed] = receiver.wait_for(1)
        assert jsonutil.loads(completed.body)["data"]["events"] == {"api.calls": 12}

        clock.set(datetime(2026, 1, 12, 12, 30, tzinfo=UTC))
        void(client, {"events": [{"source": "app", "id": "call-2"}], "reason": "sent twice by a retry bug"})
        clock.set(datetime(2026, 1, 12, 12, 33, tzinfo=UTC))
        jobs = run_jobs(client)
        assert jobs["aggregation.close"]["result"]["corrected"] == 1
        corrected = jsonutil.loads(receiver.wait_for(2)[1].body)
        assert corrected["type"] == "aggregation.corrected"
        assert corrected["customerId"] == "cust_1"
        assert corrected["data"]["periodStart"] == "2026-01-12T10:00:00.000Z"
        assert corrected["data"]["events"] == {"api.calls": 5}
        assert corrected["data"]["eventCount"] == 1
        assert corrected["previous"] == {"events": {"api.calls": 12}, "eventCount": 2}

        # Nothing changed since: no second correction.
        clock.advance(timedelta(minutes=10))
        run_jobs(client)
        assert len(receiver.requests) == 2
    finally:
        client.close()
        runtime.stop()
