"""Helpers for benchmarks that drive a `Runtime` in this process (the Stripe ones): an API client
on the app, batch ingest, the billing job. Kept here rather than imported from `tests/`, so a
benchmark never depends on the test package; the seed meters and plan are `scenarios/seed.py`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from scenarios.seed import SEED_METERS
from tallybook.clock import to_micros
from tallybook.runtime import Runtime

INGEST_BATCH = 5000  # events per request


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def client_for(runtime: Runtime) -> httpx.Client:
    """An HTTP client on the app (in process) with an admin key; the caller closes it."""
    from fastapi.testclient import TestClient

    from tallybook.api.app import create_app

    key = runtime.keys.create("benchmark", "admin").plaintext
    client = TestClient(create_app(runtime, manage_runtime=False), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {key}"
    return client


def ok(response: httpx.Response, status: int = 200) -> Any:
    if response.status_code != status:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response.json() if response.content else None


def send(client: httpx.Client, events: list[tuple[str, str, datetime, dict[str, Any]]]) -> None:
    """Ingest (type, subject, event time, data) events in batches."""
    batch = [
        {
            "specversion": "1.0",
            "id": f"{etype}-{subject}-{to_micros(when)}-{i}",
            "source": "benchmarks",
            "type": etype,
            "subject": subject,
            "time": when.isoformat().replace("+00:00", "Z"),
            "data": data,
        }
        for i, (etype, subject, when, data) in enumerate(events)
    ]
    for start in range(0, len(batch), INGEST_BATCH):
        response = client.post(
            "/api/v1/events",
            json=batch[start : start + INGEST_BATCH],
            headers={"Content-Type": "application/cloudevents-batch+json"},
        )
        ok(response, 204)


def run_billing(runtime: Runtime) -> dict[str, Any]:
    """Run the billing job now (as the scheduler would) and return its result."""
    from tallybook.billing.wiring import INVOICE_JOB

    job = next(j for j in runtime.jobs.jobs if j.name == INVOICE_JOB)
    result = runtime.jobs.run_job(job, force=True)
    if result.error is not None:
        raise RuntimeError(f"the billing job failed: {result.error}")
    return dict(result.result)


__all__ = ["SEED_METERS", "client_for", "ok", "run_billing", "send", "utc"]
