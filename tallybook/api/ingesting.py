"""Shared path from validated events to a committed group-commit transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fastapi import Request

from tallybook import jsonutil
from tallybook.api.body import decode_json
from tallybook.api.problems import Problem
from tallybook.ingest.events import BatchTooLarge, Event, FieldError, InvalidEvents
from tallybook.ingest.limits import MAX_JSON_DEPTH
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


def field_error(path: jsonutil.Path, message: str) -> FieldError:
    """A problem found at `path` in an ingest body, as (event index, field): (3, data.usage.input)."""
    index = path[0] if path and isinstance(path[0], int) else None
    rest = path[1:] if index is not None else path
    field = ""
    for part in rest:
        name = jsonutil.printable(part) if isinstance(part, str) else str(part)
        field += f"[{part}]" if isinstance(part, int) else (f".{name}" if field else name)
    return FieldError(index, field or ("(event)" if index is not None else "(body)"), message)


def decode_events(runtime: Runtime, body: bytes, nested: str) -> Any:
    """Decode an ingest body: refusals name the event index and field, as validation does."""
    try:
        payload = decode_json(body, max_depth=None, keep_refusals=True)
    except jsonutil.JsonRefused as exc:
        raise reject(runtime, InvalidEvents([field_error(p, m) for p, m in exc.problems]), 1) from None
    errors = nesting_errors(payload, body, nested)
    if errors:
        raise reject(runtime, InvalidEvents(errors), len(payload) if isinstance(payload, list) else 1)
    return payload


def nesting_errors(payload: Any, body: bytes, nested: str) -> list[FieldError]:
    """Events of a decoded body that nest deeper than MAX_JSON_DEPTH, by index and field.

    Nesting is checked here, per event, rather than in the decoder: every event opens an object
    and usually a `nested` one (data, metadata), so a count of the body's brackets proves most
    batches shallow without walking them; only the rest are walked.
    """
    opened = jsonutil.openings(body)
    if not isinstance(payload, dict | list) or opened <= MAX_JSON_DEPTH:
        return []
    batch = isinstance(payload, list)
    items = payload if batch else [payload]
    # Containers every event brings on the first levels: the batch array, each event, its `nested`.
    levels = 3 if batch else 2
    known = int(batch) + sum(1 for item in items if type(item) is dict)
    known += sum(1 for item in items if type(item) is dict and type(item.get(nested)) in (dict, list))
    if levels + opened - known <= MAX_JSON_DEPTH:
        return []
    errors = []
    for index, item in enumerate(items):
        deep = jsonutil.too_deep(item, MAX_JSON_DEPTH - int(batch))
        if deep is not None:
            path = (index, *deep) if batch else deep
            message = f"nests deeper than the limit of {MAX_JSON_DEPTH} levels of arrays and objects (whole body)"
            errors.append(field_error(path, message))
    return errors


async def commit(runtime: Runtime, events: Sequence[Event], indexed: bool = True) -> IngestResult:
    """Store validated events; `indexed` False for a single-event request (errors carry no index)."""
    try:
        future = runtime.ingest.submit(events, indexed)
        return await asyncio.wrap_future(future)
    except InvalidEvents as exc:
        raise reject(runtime, exc, len(events)) from None
    except IngestUnavailable:
        raise Problem(503, "unavailable", "the server is shutting down; retry the request") from None
    except Exception:
        raise Problem(503, "store-unavailable", "the events could not be stored; retry the request") from None
