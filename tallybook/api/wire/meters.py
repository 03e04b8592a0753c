"""Meters and their usage (OpenMeter's Meter, MeterQueryResult, MeterQueryRow)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SkipValidation

from tallybook.api.openapi import SCHEMA_REF
from tallybook.api.wire.base import DATE_TIME, StringMap, Wire
from tallybook.api.wire.filters import FilterString, json_query_parameter
from tallybook.meters.models import Aggregation
from tallybook.meters.windows import WindowSize


class MeterAnnotations(Wire):
    managedBy: str = Field(alias="tallybook.managedBy", description="`config` (tallybook.yaml) or `api`")
    invalidEvents: int = Field(alias="tallybook.invalidEvents", description="events this meter cannot count")
    billedAt: str | None = Field(
        alias="tallybook.billedAt", json_schema_extra=DATE_TIME, description="locked since it was first billed"
    )


class Meter(Wire):
    id: str
    slug: str
    name: str | None
    description: str | None = None
    aggregation: Aggregation
    eventType: str
    eventFrom: str | None = Field(None, json_schema_extra=DATE_TIME)
    valueProperty: str | None = None
    groupBy: StringMap
    metadata: StringMap | None = None
    createdAt: str = Field(json_schema_extra=DATE_TIME)
    updatedAt: str = Field(json_schema_extra=DATE_TIME)
    deletedAt: str | None = Field(None, json_schema_extra=DATE_TIME, description="listed with includeDeleted=true")
    annotations: MeterAnnotations


class MeterProjection(Wire):
    """Where a meter's projection (the usage rows queries read) stands; see docs/meters.md, "Rebuilds"."""

    state: Literal["ready", "rebuilding"] = Field(
        description="`rebuilding`: a new or changed definition is being built in the background"
    )
    answersFrom: Literal["current", "previous", "none"] = Field(
        description="what queries answer meanwhile: the current definition, the previous one (until the "
        "rebuild is swapped in), or none (a new meter: 503 `meter-rebuilding` until its first build is done)"
    )
    generation: int = Field(description="the definition's number: 0 at creation, +1 per change that needs a rebuild")
    eventsProcessed: int = Field(
        description="stored events the build has read past (its position in the event log, all event types)"
    )
    eventsTotal: int = Field(description="stored events now (the end of the event log)")
    percent: float = Field(description="eventsProcessed / eventsTotal, in percent")
    startedAt: str = Field(json_schema_extra=DATE_TIME, description="when this generation's build started")
    readyAt: str | None = Field(None, json_schema_extra=DATE_TIME, description="when it was swapped in")
    etaSeconds: int | None = Field(
        None, description="while rebuilding: seconds left at the rate since the build started (null before it has one)"
    )


class MeterQueryRow(Wire):
    value: float
    windowStart: str = Field(json_schema_extra=DATE_TIME)
    windowEnd: str = Field(json_schema_extra=DATE_TIME)
    subject: str | None = Field(description="set when grouped by subject (a `subject` filter groups by it)")
    customerId: str | None = Field(
        None, description="present when grouped by customer_id (a `filterCustomerId` filter groups by it)"
    )
    groupBy: dict[str, str | None]


class MeterQueryResult(Wire):
    from_: str | None = Field(None, alias="from", json_schema_extra=DATE_TIME, description="as sent, if sent")
    to: str | None = Field(None, json_schema_extra=DATE_TIME, description="as sent, if sent")
    windowSize: WindowSize | None = Field(None, description="as sent, if sent")
    data: list[MeterQueryRow] = Field(description="only windows and groups that have events")


CSV_CONTENT: dict[str, Any] = {
    "text/csv": {
        "schema": {
            "type": "string",
            "description": "with `Accept: text/csv`: window_start,window_end[,subject][,<other groupBy keys>],value; "
            "subject only when grouped by it",
        }
    }
}


_INSTANT = {"type": "string", "description": "RFC 3339 date-time with an offset, e.g. 2026-01-05T00:00:00Z"}
_STRINGS = {"type": "array", "items": {"type": "string"}, "explode": True}
METER_QUERY_PARAMETERS: dict[str, dict[str, Any]] = {
    "from": {**_INSTANT, "description": "start (inclusive); with windowSize, on a window boundary. Default: no limit"},
    "to": {**_INSTANT, "description": "end (exclusive); with windowSize, on a window boundary. Default: no limit"},
    "windowSize": {"type": "string", "enum": [w.value for w in WindowSize]},
    "windowTimeZone": {"type": "string", "description": "IANA time zone of the windows (default UTC)"},
    "subject": {**_STRINGS, "description": "only these subjects; also groups by subject"},
    "filterCustomerId": {**_STRINGS, "description": "only these customers (id or key); also groups by customer_id"},
    "groupBy": _STRINGS,
    "filterGroupBy": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "style": "deepObject",
        "explode": True,
        "description": "filterGroupBy[key]=value, repeatable",
    },
    "asOf": {**_INSTANT, "description": "the figures as they were at this instant"},
}
SUBJECT_PARAMETERS: dict[str, dict[str, Any]] = {
    "from": {**_INSTANT, "description": "event time from (inclusive)"},
    "to": {**_INSTANT, "description": "event time to (exclusive)"},
}

_FILTER_STRING = FilterString.model_json_schema(ref_template=SCHEMA_REF)
_ADVANCED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"$ref": SCHEMA_REF.format(model="FilterString")},
    "$defs": {**_FILTER_STRING.pop("$defs", {}), "FilterString": _FILTER_STRING},
    "description": 'groupBy key to an OpenMeter FilterString, e.g. {"model": {"$in": ["gpt-4", "gpt-4o"]}}; '
    "a missing group value compares as the empty string. Not together with filterGroupBy.",
}
# The body field: documented as OpenMeter's shape, kept as the JSON it is (tallybook/filters parses
# it and names what to fix).
ADVANCED_FILTERS = Annotated[dict[str, FilterString] | None, SkipValidation]
ADVANCED_FILTERS_PARAMETER = json_query_parameter(
    "advancedMeterGroupByFilters", _ADVANCED_SCHEMA, "Filters on groupBy values, as JSON text (OpenMeter's shape)."
)
