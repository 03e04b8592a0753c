"""Shared set-up for the subscription and invoice tests: a runtime on a fixed clock, the seed
meters and plan, events with chosen times, and a webhook route for invoice events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from scenarios.seed import SEED_METERS, SEED_PLAN
from tallybook.billing.invoicing import INVOICE_EVENT_TYPES
from tallybook.clock import FixedClock, to_micros
from tallybook.config import Settings
from tallybook.runtime import Runtime
from tallybook.webhooks.model import EventFilter
from tallybook.webhooks.service import ChannelInput, RuleInput
from tests.test_webhook_helpers import api, reset_database


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def build(database_url: str, clock: FixedClock, **billing: Any) -> Runtime:
    """A started runtime whose jobs run only when a test runs them."""
    reset_database(database_url)
    settings = Settings.model_validate(
        {
            "database": {"url": database_url},
            "webhooks": {"scheduler": {"run_in_server": False}},
            "meters": {"definitions": SEED_METERS},
            "billing": billing,
        }
    )
    runtime = Runtime.build(settings, clock=clock)
    runtime.start()
    return runtime


def attach(database_url: str, clock: FixedClock) -> Runtime:
    """Another started runtime on the same database (another process's view), without resetting it."""
    settings = Settings.model_validate(
        {
            "database": {"url": database_url},
            "webhooks": {"scheduler": {"run_in_server": False}},
            "meters": {"definitions": SEED_METERS},
        }
    )
    runtime = Runtime.build(settings, clock=clock)
    runtime.start()
    return runtime


def client_for(runtime: Runtime) -> httpx.Client:
    return api(runtime)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def create_plan(client: httpx.Client, body: dict[str, Any] | None = None) -> dict[str, Any]:
    plan = ok(client.post("/api/v1/plans", json=body or SEED_PLAN), 201)
    return ok(client.post(f"/api/v1/plans/{plan['id']}/publish"))  # type: ignore[no-any-return]


def create_customer(client: httpx.Client, key: str = "acme", **extra: Any) -> dict[str, Any]:
    body = {"key": key, "name": f"{key.title()} Inc.", "primaryEmail": f"billing@{key}.example", **extra}
    return ok(client.post("/api/v1/customers", json=body), 201)  # type: ignore[no-any-return]


def subscribe(client: httpx.Client, customer: str, **extra: Any) -> dict[str, Any]:
    body = {"customerKey": customer, "plan": {"key": extra.pop("plan", "pro")}, **extra}
    return ok(client.post("/api/v1/subscriptions", json=body), 201)  # type: ignore[no-any-return]


def send(client: httpx.Client, events: list[tuple[str, str, datetime, dict[str, Any]]]) -> None:
    """Ingest (type, subject, event time, data) events as one batch."""
    batch = [
        {
            "specversion": "1.0",
            "id": f"{etype}-{subject}-{to_micros(when)}-{i}",
            "source": "tests",
            "type": etype,
            "subject": subject,
            "time": when.isoformat().replace("+00:00", "Z"),
            "data": data,
        }
        for i, (etype, subject, when, data) in enumerate(events)
    ]
    for start in range(0, len(batch), 5000):
        response = client.post(
            "/api/v1/events",
            json=batch[start : start + 5000],
            headers={"Content-Type": "application/cloudevents-batch+json"},
        )
        assert response.status_code == 204, response.text


def run_billing(runtime: Runtime) -> dict[str, Any]:
    from tallybook.billing.wiring import INVOICE_JOB

    job = next(j for j in runtime.jobs.jobs if j.name == INVOICE_JOB)
    result = runtime.jobs.run_job(job, force=True)
    assert result.error is None, result.error
    return result.result


def route_invoice_events(runtime: Runtime) -> str:
    """A channel with one rule per invoice event type (through the public rule API)."""
    channel = runtime.webhooks.create_channel(ChannelInput(name="billing", url="http://127.0.0.1:9/hook"))
    for event_type in INVOICE_EVENT_TYPES:
        runtime.webhooks.create_rule(RuleInput(type=event_type, name=event_type, channels=[channel.id]))
    return channel.id


def outbox(runtime: Runtime, event_type: str | None = None) -> list[dict[str, Any]]:
    """Outbox events (oldest first) as {type, body}."""
    from tallybook import jsonutil

    _, rows = runtime.webhooks.list_events(
        EventFilter(types=(event_type,) if event_type else (), descending=False, limit=1000)
    )
    return [{"type": r.type, "body": jsonutil.loads(r.body)} for r in rows]


def a_month_of_events(subject: str = "acme") -> list[tuple[str, str, Any, dict[str, Any]]]:
    """31 days: 1000 API calls, storage rising from 11 to 41 GB, one compute hour per day."""
    events = []
    for day in range(1, 32):
        events.append(("api.calls", subject, utc(2026, 1, day, 10), {"value": 1000}))
        events.append(("storage.gb", subject, utc(2026, 1, day, 11), {"value": 10 + day}))
        events.append(("compute", subject, utc(2026, 1, day, 12), {"seconds": 3600}))
    return events
