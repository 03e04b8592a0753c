"""Shared path from validated events to a committed group-commit transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import Request

from tallybook.api.problems import Problem
from tallybook.ingest.events import BatchTooLarge, Event, FieldError, InvalidEvents
from tallybook.ingest.service import IngestResult, IngestUnavailable
from tallybook.runtime import Runtime

MAX_ERRORS_REPORTED = 100


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def reject(runtime: Runtime, exc: InvalidEvents | BatchTooLarge, event_count: int) -> Problem:
    """Count the refusal and turn it into the problem answer."""
    if isinstance(exc, BatchTooLarge):
        runtime.metrics.events_rejected.labels(reason="too_large").inc(event_count)
        return Problem(413, "too-large", str(exc))
    runtime.metrics.events_rejected.labels(reason="invalid").inc(max(event_count, 1))
    errors: list[FieldError] = exc.errors
    return Problem(
        400,
        "invalid-events",
        f"{len(errors)} problem(s) found; nothing from this request was stored. {exc}",
        errors=[e.as_dict() for e in errors[:MAX_ERRORS_REPORTED]],
    )


async def commit(runtime: Runtime, events: Sequence[Event]) -> IngestResult:
    try:
        future = runtime.ingest.submit(events)
        return await asyncio.wrap_future(future)
    except IngestUnavailable:
        raise Problem(503, "unavailable", "the server is shutting down; retry the request") from None
    except Exception:
        raise Problem(503, "store-unavailable", "the events could not be stored; retry the request") from None
