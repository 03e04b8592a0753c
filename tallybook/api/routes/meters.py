"""OpenMeter-compatible meters API: /api/v1/meters, queries and subjects.

One job, kept in one file (~500 lines): the meter routes, each with OpenMeter's own parameters,
so a difference between two routes' parameter handling is seen on one page."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from decimal import Context, Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from tallybook.api.body import decode_json, read_limited_body
from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import json_body, merged, query_parameters, responses
from tallybook.api.params import Instant, decode_json_parameter
from tallybook.api.problems import Problem
from tallybook.api.render import json_response
from tallybook.api.security import require
from tallybook.api.wire.meters import (
    ADVANCED_FILTERS,
    ADVANCED_FILTERS_PARAMETER,
    CSV_CONTENT,
    METER_QUERY_PARAMETERS,
    SUBJECT_PARAMETERS,
    MeterProjection,
    MeterQueryResult,
)
from tallybook.api.wire.meters import (
    Meter as MeterShape,
)
from tallybook.auth.model import ApiKeyRecord
from tallybook.clock import format_rfc3339
from tallybook.filters.model import InvalidFilter, StringFilter, parse_string_filter
from tallybook.ingest.events import parse_time
from tallybook.ingest.limits import MAX_PAGE, MAX_PAGE_SIZE
from tallybook.meters.models import (
    Aggregation,
    InvalidQuery,
    Meter,
    MeterError,
    MeterSpec,
    UsageQuery,
    UsageResult,
)
from tallybook.meters.windows import WindowSize

router = APIRouter(prefix="/api/v1", tags=["meters"])
MAX_BODY = 1024 * 1024
# How deep $and / $or may nest in advancedMeterGroupByFilters (OpenMeter sets no limit; the JSON
# depth limit of requests bounds it anyway, and this keeps every tree far inside it).
METER_FILTER_DEPTH = 8
QUERY_PARAMETERS = merged(query_parameters(METER_QUERY_PARAMETERS), {"parameters": [ADVANCED_FILTERS_PARAMETER]})


class MeterCreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: str = Field(min_length=1, max_length=64)
    name: str | None = Field(None, min_length=1, max_length=256)
    description: str | None = Field(None, max_length=1024)
    metadata: dict[str, str] | None = None
    aggregation: Aggregation
    eventType: str = Field(min_length=1)
    eventFrom: Instant | None = None
    valueProperty: str | None = Field(None, min_length=1)
    groupBy: dict[str, str] = Field(default_factory=dict)


class MeterUpdateBody(BaseModel):
    """OpenMeter's MeterUpdate (name, description, metadata, groupBy) plus Tallybook's extension:
    aggregation, eventType, eventFrom and valueProperty may change too, unless the meter is billed."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=256)
    description: str | None = Field(None, max_length=1024)
    metadata: dict[str, str] | None = None
    groupBy: dict[str, str] | None = None
    aggregation: Aggregation | None = None
    eventType: str | None = Field(None, min_length=1)
    eventFrom: Instant | None = None
    valueProperty: str | None = Field(None, min_length=1)


class MeterQueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clientId: str | None = Field(None, max_length=36)
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    windowSize: WindowSize | None = None
    windowTimeZone: str = "UTC"
    subject: list[str] = Field(default_factory=list, max_length=100)
    filterCustomerId: list[str] = Field(default_factory=list, max_length=100)
    filterGroupBy: dict[str, list[str] | str] = Field(default_factory=dict)
    advancedMeterGroupByFilters: ADVANCED_FILTERS = None
    groupBy: list[str] = Field(default_factory=list, max_length=100)
    asOf: str | None = None


def _problem(exc: MeterError) -> Problem:
    return Problem(exc.status, exc.code, exc.detail, **exc.extra)


def _invalid_body(exc: ValidationError) -> Problem:
    errors = [
        {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]}
        for err in exc.errors(include_url=False)
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return Problem(400, "invalid-parameters", detail, errors=errors)


async def _json_body(request: Request, model: type[BaseModel]) -> Any:
    payload = decode_json(await read_limited_body(request, MAX_BODY))
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise _invalid_body(exc) from None


def meter_json(meter: Meter) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": meter.id,
        "slug": meter.slug,
        "name": meter.name,
        "aggregation": meter.aggregation.value,
        "eventType": meter.event_type,
        "groupBy": meter.group_by,
        "createdAt": format_rfc3339(meter.created_at),
        "updatedAt": format_rfc3339(meter.updated_at),
        "annotations": {
            "tallybook.managedBy": meter.managed_by,
            "tallybook.invalidEvents": meter.invalid_events,
            "tallybook.billedAt": format_rfc3339(meter.locked_at) if meter.locked_at else None,
        },
    }
    if meter.description is not None:
        body["description"] = meter.description
    if meter.value_property is not None:
        body["valueProperty"] = meter.value_property
    if meter.event_from is not None:
        body["eventFrom"] = format_rfc3339(meter.event_from)
    if meter.metadata is not None:
        body["metadata"] = meter.metadata
    if meter.deleted_at is not None:
        body["deletedAt"] = format_rfc3339(meter.deleted_at)
    return body


@router.get("/meters", response_model=list[MeterShape])
async def list_meters(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    page: Annotated[int | None, Query(ge=1, le=MAX_PAGE, description="page index (default 1)")] = None,
    pageSize: Annotated[int | None, Query(ge=1, le=MAX_PAGE_SIZE, description="meters per page (default 100)")] = None,
    order: Literal["ASC", "DESC"] = "ASC",
    orderBy: Literal["key", "name", "aggregation", "createdAt", "updatedAt"] = "key",
    includeDeleted: bool = False,
) -> Response:
    """Meters sorted by `orderBy` (`key` is the slug). Always a plain array, as OpenMeter's; without
    `page` and `pageSize` it holds every meter."""
    meters = await run_in_threadpool(
        runtime_of(request).meters.listing, orderBy, order == "DESC", includeDeleted, page, pageSize
    )
    return json_response([meter_json(m) for m in meters])


@router.post(
    "/meters",
    status_code=201,
    responses=responses(MeterShape, 409, 413, status=201),
    openapi_extra=json_body(("application/json", MeterCreateBody)),
)
async def create_meter(request: Request, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]) -> Response:
    body: MeterCreateBody = await _json_body(request, MeterCreateBody)
    spec = MeterSpec(
        slug=body.slug,
        event_type=body.eventType,
        aggregation=body.aggregation,
        name=body.name,
        description=body.description,
        value_property=body.valueProperty,
        group_by=body.groupBy,
        event_from=body.eventFrom,
        metadata=body.metadata,
    )
    try:
        meter = await run_in_threadpool(runtime_of(request).meters.create, spec)
    except MeterError as exc:
        raise _problem(exc) from None
    return json_response(meter_json(meter), status=201)


@router.get("/meters/{meterIdOrSlug}", responses=responses(MeterShape, 404))
async def get_meter(
    meterIdOrSlug: str, request: Request, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    try:
        meter = await run_in_threadpool(runtime_of(request).meters.get, meterIdOrSlug)
    except MeterError as exc:
        raise _problem(exc) from None
    return json_response(meter_json(meter))


@router.get("/meters/{meterIdOrSlug}/projection", responses=responses(MeterProjection, 404))
async def get_meter_projection(
    meterIdOrSlug: str, request: Request, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    """Where the meter's projection stands: `ready`, or `rebuilding` with progress (a new or changed
    definition is built in the background; queries meanwhile answer from the previous definition, or
    503 `meter-rebuilding` for a new meter)."""
    try:
        status = await run_in_threadpool(runtime_of(request).meters.projection, meterIdOrSlug)
    except MeterError as exc:
        raise _problem(exc) from None
    return json_response(status.to_json())


@router.put(
    "/meters/{meterIdOrSlug}",
    responses=responses(MeterShape, 404, 409, 413),
    openapi_extra=json_body(("application/json", MeterUpdateBody)),
)
async def update_meter(
    meterIdOrSlug: str, request: Request, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    body: MeterUpdateBody = await _json_body(request, MeterUpdateBody)
    service = runtime_of(request).meters
    given = body.model_fields_set

    def apply() -> Meter:
        current = service.get(meterIdOrSlug)
        spec = MeterSpec(
            slug=current.slug,
            event_type=body.eventType if "eventType" in given and body.eventType else current.event_type,
            aggregation=body.aggregation if "aggregation" in given and body.aggregation else current.aggregation,
            name=body.name if "name" in given else current.name,
            description=body.description if "description" in given else current.description,
            value_property=body.valueProperty if "valueProperty" in given else current.value_property,
            group_by=body.groupBy if "groupBy" in given and body.groupBy is not None else current.group_by,
            event_from=body.eventFrom if "eventFrom" in given else current.event_from,
            metadata=body.metadata if "metadata" in given else current.metadata,
        )
        return service.update(current.id, spec)

    try:
        meter = await run_in_threadpool(apply)
    except MeterError as exc:
        raise _problem(exc) from None
    return json_response(meter_json(meter))


@router.delete("/meters/{meterIdOrSlug}", status_code=204, response_class=Response, responses=responses(None, 404, 409))
async def delete_meter(
    meterIdOrSlug: str, request: Request, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    try:
        await run_in_threadpool(runtime_of(request).meters.delete, meterIdOrSlug)
    except MeterError as exc:
        raise _problem(exc) from None
    return Response(status_code=204)


def _instant(value: str | None, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    # An unencoded '+' in a query string arrives as a space: 2026-01-01T00:00:00 01:00.
    if " " in value and "+" not in value:
        value = value.replace(" ", "+")
    try:
        return parse_time(value)
    except ValueError as exc:
        raise Problem(400, "invalid-parameters", f"{name}: {exc}") from None


def _list_param(request: Request, name: str) -> list[str]:
    params = request.query_params
    return [*params.getlist(name), *params.getlist(f"{name}[]")]


def _query_from_params(meter: str, request: Request) -> UsageQuery:
    params = request.query_params
    filters: dict[str, list[str]] = {}
    for key, value in params.multi_items():
        if key.startswith("filterGroupBy[") and key.endswith("]"):
            name = key[len("filterGroupBy[") : -1]
            filters.setdefault(name, []).append(value)
    raw_advanced = params.get("advancedMeterGroupByFilters")
    advanced = (
        advanced_filters(decode_json_parameter("advancedMeterGroupByFilters", raw_advanced)) if raw_advanced else {}
    )
    window = params.get("windowSize")
    try:
        size = WindowSize(window) if window else None
    except ValueError:
        raise Problem(
            400,
            "invalid-parameters",
            f"windowSize must be one of {', '.join(w.value for w in WindowSize)}, got {window!r}",
        ) from None
    subjects = tuple(_list_param(request, "subject"))
    customer_ids = tuple(_list_param(request, "filterCustomerId"))
    return UsageQuery(
        meter=meter,
        from_=_instant(params.get("from"), "from"),
        to=_instant(params.get("to"), "to"),
        window_size=size,
        window_time_zone=params.get("windowTimeZone") or "UTC",
        subjects=subjects,
        customer_ids=customer_ids,
        filter_group_by=_group_filters({k: (v[0] if len(v) == 1 else tuple(v)) for k, v in filters.items()}, advanced),
        group_by=_implied_group_by(_list_param(request, "groupBy"), subjects, customer_ids),
        as_of=_instant(params.get("asOf"), "asOf"),
    )


def advanced_filters(raw: Any) -> dict[str, StringFilter]:
    """advancedMeterGroupByFilters: {groupBy key: FilterString}; an empty filter object is no filter."""
    if not isinstance(raw, dict):
        raise InvalidFilter(
            'advancedMeterGroupByFilters: must be an object of groupBy key to filter, e.g. {"model": {"$in": ["a"]}}'
        )
    parsed = {
        key: parse_string_filter(value, f"advancedMeterGroupByFilters.{key}", METER_FILTER_DEPTH)
        for key, value in raw.items()
    }
    return {key: flt for key, flt in parsed.items() if flt is not None}


def _group_filters(
    simple: dict[str, str | tuple[str, ...]], advanced: dict[str, StringFilter]
) -> dict[str, str | tuple[str, ...] | StringFilter]:
    if simple and advanced:
        raise Problem(
            400,
            "invalid-parameters",
            "advancedMeterGroupByFilters and filterGroupBy cannot be used together (as in OpenMeter); "
            'write filterGroupBy[k]=v as {"k": {"$eq": "v"}} in advancedMeterGroupByFilters',
        )
    return {**simple, **advanced}


def _implied_group_by(group_by: list[str], subjects: tuple[str, ...], customer_ids: tuple[str, ...]) -> tuple[str, ...]:
    """As in OpenMeter, `subject` filters and groups by subject, `filterCustomerId` filters and
    groups by customer_id: each row says whose usage it is."""
    keys = list(group_by)
    if subjects and "subject" not in keys:
        keys.append("subject")
    if customer_ids and "customer_id" not in keys:
        keys.append("customer_id")
    return tuple(keys)


def _query_from_body(meter: str, body: MeterQueryBody) -> UsageQuery:
    filters: dict[str, str | tuple[str, ...]] = {
        k: (v if isinstance(v, str) else tuple(v)) for k, v in body.filterGroupBy.items()
    }
    advanced = advanced_filters(body.advancedMeterGroupByFilters) if body.advancedMeterGroupByFilters else {}
    return UsageQuery(
        meter=meter,
        from_=_instant(body.from_, "from"),
        to=_instant(body.to, "to"),
        window_size=body.windowSize,
        window_time_zone=body.windowTimeZone,
        subjects=tuple(body.subject),
        customer_ids=tuple(body.filterCustomerId),
        filter_group_by=_group_filters(filters, advanced),
        group_by=_implied_group_by(body.groupBy, tuple(body.subject), tuple(body.filterCustomerId)),
        as_of=_instant(body.asOf, "asOf"),
    )


def _result_response(request: Request, result: UsageResult, q: UsageQuery) -> Response:
    if "text/csv" in request.headers.get("accept", ""):
        return _csv_response(result, q)
    # As OpenMeter: from, to and windowSize only when the request gave them; customerId only when set.
    body: dict[str, Any] = {}
    if result.from_ is not None:
        body["from"] = format_rfc3339(result.from_)
    if result.to is not None:
        body["to"] = format_rfc3339(result.to)
    if result.window_size is not None:
        body["windowSize"] = result.window_size.value
    data = []
    for row in result.rows:
        item: dict[str, Any] = {
            "value": row.value,
            "windowStart": format_rfc3339(row.window_start),
            "windowEnd": format_rfc3339(row.window_end),
            "subject": row.subject,
        }
        if row.customer_id is not None:
            item["customerId"] = row.customer_id
        item["groupBy"] = row.group_by
        data.append(item)
    body["data"] = data
    return json_response(body)


def _csv_response(result: UsageResult, q: UsageQuery) -> Response:
    """OpenMeter's CSV: window_start, window_end, subject (when grouped by it), the other groupBy
    keys in the order asked (customer_id among them), value."""
    keys = list(dict.fromkeys(q.group_by))
    by_subject = "subject" in keys
    others = [k for k in keys if k != "subject"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["window_start", "window_end", *(["subject"] if by_subject else []), *others, "value"])
    for row in result.rows:
        cells = [format_rfc3339(row.window_start), format_rfc3339(row.window_end)]
        if by_subject:
            cells.append(row.subject or "")
        for key in others:
            cells.append((row.customer_id if key == "customer_id" else row.group_by.get(key)) or "")
        cells.append(csv_value(row.value))
        writer.writerow(cells)
    headers = {
        "content-type": "text/csv",
        "content-disposition": f"attachment; filename={result.meter_slug or 'usage'}.csv",
    }
    return Response(out.getvalue().encode(), headers=headers)


def csv_value(value: Decimal) -> str:
    """Six decimals, as OpenMeter's %f, when that is exact; otherwise every digit (an average)."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= -6:
        return f"{value.quantize(_MICRO, context=_WIDE):f}"
    return f"{value:f}"


_MICRO = Decimal("0.000001")
_WIDE = Context(prec=80)  # room for six more digits on any total (the default 28 could round)


async def _run_query(request: Request, q: UsageQuery) -> Response:
    service = runtime_of(request).meters

    def run() -> UsageResult:
        advanced = [key for key, wanted in q.filter_group_by.items() if isinstance(wanted, StringFilter)]
        if advanced:
            meter = service.get(q.meter)
            for key in advanced:
                if key not in meter.group_by:
                    known = ", ".join(sorted(meter.group_by)) or "none"
                    raise InvalidQuery(
                        f"advancedMeterGroupByFilters.{key}: {key!r} is not a groupBy key of meter "
                        f"{meter.slug!r} (its keys: {known})"
                    )
        return service.query_result(q)

    try:
        result = await run_in_threadpool(run)
    except MeterError as exc:
        raise _problem(exc) from None
    return _result_response(request, result, q)


@router.get(
    "/meters/{meterIdOrSlug}/query",
    responses=responses(MeterQueryResult, 404, 503, content=CSV_CONTENT),
    openapi_extra=QUERY_PARAMETERS,
)
async def query_meter(
    meterIdOrSlug: str, request: Request, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    """Usage in windows. `from` inclusive, `to` exclusive; with windowSize, both on window boundaries.
    Without them the query covers every event; only windows and groups with events are answered."""
    return await _run_query(request, _query_from_params(meterIdOrSlug, request))


@router.post(
    "/meters/{meterIdOrSlug}/query",
    responses=responses(MeterQueryResult, 404, 413, 503, content=CSV_CONTENT),
    openapi_extra=json_body(("application/json", MeterQueryBody)),
)
async def query_meter_post(
    meterIdOrSlug: str, request: Request, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    body: MeterQueryBody = await _json_body(request, MeterQueryBody)
    return await _run_query(request, _query_from_body(meterIdOrSlug, body))


@router.get(
    "/meters/{meterIdOrSlug}/subjects",
    responses=responses(list[str], 404, 503),
    openapi_extra=query_parameters(SUBJECT_PARAMETERS),
)
async def meter_subjects(
    meterIdOrSlug: str, request: Request, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    """Subjects that have events for this meter (event time in [from, to) when given)."""
    start = _instant(request.query_params.get("from"), "from")
    end = _instant(request.query_params.get("to"), "to")
    try:
        subjects = await run_in_threadpool(runtime_of(request).meters.subjects, meterIdOrSlug, start, end)
    except MeterError as exc:
        raise _problem(exc) from None
    return json_response(subjects)
