"""GET /api/v2/events: OpenMeter's listEventsV2, with its filter objects and cursor pagination."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook import jsonutil
from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import responses, schema_of
from tallybook.api.params import decode_json_parameter
from tallybook.api.routes.events import listed_event_json
from tallybook.api.security import require
from tallybook.api.wire.events import IngestedEventCursorPaginatedResponse
from tallybook.api.wire.filters import EventsFilter, json_query_parameter
from tallybook.auth.model import ApiKeyRecord
from tallybook.eventlist.model import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Cursor,
    EventFilters,
    EventListQuery,
    EventPage,
    parse_event_filter,
)

router = APIRouter(prefix="/api/v2", tags=["events"])

_FILTER_PARAMETER = json_query_parameter(
    "filter",
    schema_of(EventsFilter),
    'The filter as JSON text, e.g. {"subject": {"$eq": "customer-1"}, "time": {"$gte": "2026-01-01T00:00:00Z"}}. '
    "One operator per object; `$and`/`$or` nest one level.",
)


def listed_json(page: EventPage, include_voided: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"items": [listed_event_json(listed, include_voided) for listed in page.items]}
    if page.next_cursor is not None:
        body["nextCursor"] = page.next_cursor.encode()
    return body


@router.get(
    "/events",
    responses=responses(IngestedEventCursorPaginatedResponse),
    openapi_extra={"parameters": [_FILTER_PARAMETER]},
)
async def list_events_v2(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    cursor: Annotated[str | None, Query(description="the nextCursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    clientId: Annotated[str | None, Query(min_length=1, max_length=36, description="accepted, not used")] = None,
    includeVoided: bool = False,
) -> Response:
    """Stored events, newest event time first (ties: the later stored first), a page at a time.

    Pass a page's `nextCursor` as `cursor` for the events that follow it: no event is listed twice
    or skipped while new ones arrive. Voided events are left out unless `includeVoided=true`."""
    raw = request.query_params.get("filter")
    filters = parse_event_filter(decode_json_parameter("filter", raw)) if raw else EventFilters()
    after = Cursor.decode(cursor) if cursor else None
    query = EventListQuery(filters=filters, after=after, limit=limit, include_voided=includeVoided)
    page = await run_in_threadpool(runtime_of(request).event_list.list, query)
    return Response(jsonutil.dumpb(listed_json(page, includeVoided)), media_type="application/json")
