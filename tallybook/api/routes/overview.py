"""Tallybook extension for the dashboard's overview page: ingest rate, ingest counters, delivery health."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook import jsonutil
from tallybook.api.ingesting import runtime_of
from tallybook.api.security import require
from tallybook.api.wire.overview import Overview
from tallybook.auth.model import ApiKeyRecord
from tallybook.clock import format_rfc3339, from_micros, to_micros
from tallybook.observability.metrics import Metrics
from tallybook.runtime import Runtime
from tallybook.ui import stats_sql as stats

router = APIRouter(prefix="/api/v1", tags=["overview"])

Reader = Annotated[ApiKeyRecord, Depends(require("read"))]


def _counter(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> int:
    value = metrics.registry.get_sample_value(name, labels or {})
    return int(value or 0)


def _rejected(metrics: Metrics) -> dict[str, int]:
    found: dict[str, int] = {}
    for family in metrics.registry.collect():
        if family.name != "tallybook_events_rejected":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                found[sample.labels["reason"]] = int(sample.value)
    return found


def overview(runtime: Runtime, minutes: int) -> dict[str, Any]:
    now_us = to_micros(runtime.clock.now())
    per_minute = stats.events_per_minute(runtime.store, now_us, minutes)
    metrics = runtime.metrics
    meters = runtime.meters.list()
    return {
        "generatedAt": format_rfc3339(from_micros(now_us)),
        "eventsPerMinute": [
            {"minute": format_rfc3339(from_micros(m.minute_start_us)), "events": m.events} for m in per_minute
        ],
        # Counters of this server process since it started (as /metrics).
        "ingest": {
            "accepted": _counter(metrics, "tallybook_events_accepted_total"),
            "duplicateRetries": _counter(metrics, "tallybook_events_duplicate_total", {"kind": "retry"}),
            "duplicateConflicts": _counter(metrics, "tallybook_events_duplicate_total", {"kind": "conflict"}),
            "rejected": _rejected(metrics),
        },
        "invalidEventsByMeter": {m.slug: m.invalid_events for m in meters if m.invalid_events},
        # Stripe's routes are always there; whether this server talks to Stripe is a setting.
        "stripe": {"enabled": bool(runtime.settings.stripe.enabled)},
        "webhooks": {
            "deliveries": stats.delivery_states(runtime.store),
            "disabledChannels": stats.disabled_channels(runtime.store),
        },
    }


@router.get("/overview", response_model=Overview)
async def get_overview(request: Request, _key: Reader, minutes: Annotated[int, Query(ge=1, le=1440)] = 60) -> Response:
    """Events stored per minute (last `minutes`), ingest counters, invalid events, webhook delivery states."""
    body = await run_in_threadpool(overview, runtime_of(request), minutes)
    return Response(jsonutil.dumpb(body), media_type="application/json")
