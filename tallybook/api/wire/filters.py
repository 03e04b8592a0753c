"""OpenMeter's filter objects (FilterString, FilterTime, FilterIDExact), as the API documents them.

Requests carry them as JSON text in a query parameter (`filter` of GET /api/v2/events,
`advancedMeterGroupByFilters` of meter queries) or inside a JSON body. tallybook/filters parses
and checks them; these models only describe the shapes.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from tallybook.api.wire.base import DATE_TIME, Wire

_ONE = "Give exactly one operator per object; combine several with `$and` or `$or`."


class FilterString(Wire):
    """A filter for a string field. `$like`/`$ilike` take SQL LIKE patterns (`%`, `_`, `\\` escapes)."""

    model_config = ConfigDict(populate_by_name=True, title="FilterString", json_schema_extra={"description": _ONE})

    eq: str | None = Field(None, alias="$eq", min_length=1)
    ne: str | None = Field(None, alias="$ne", min_length=1)
    in_: list[str] | None = Field(None, alias="$in", max_length=1000)
    nin: list[str] | None = Field(None, alias="$nin", max_length=1000)
    like: str | None = Field(None, alias="$like", min_length=1)
    nlike: str | None = Field(None, alias="$nlike", min_length=1)
    ilike: str | None = Field(None, alias="$ilike", min_length=1)
    nilike: str | None = Field(None, alias="$nilike", min_length=1)
    gt: str | None = Field(None, alias="$gt", min_length=1)
    gte: str | None = Field(None, alias="$gte", min_length=1)
    lt: str | None = Field(None, alias="$lt", min_length=1)
    lte: str | None = Field(None, alias="$lte", min_length=1)
    and_: list[FilterString] | None = Field(None, alias="$and")
    or_: list[FilterString] | None = Field(None, alias="$or")


class FilterTime(Wire):
    """A filter for a date-time field (RFC 3339 with an offset)."""

    model_config = ConfigDict(populate_by_name=True, title="FilterTime", json_schema_extra={"description": _ONE})

    gt: str | None = Field(None, alias="$gt", json_schema_extra=DATE_TIME)
    gte: str | None = Field(None, alias="$gte", json_schema_extra=DATE_TIME)
    lt: str | None = Field(None, alias="$lt", json_schema_extra=DATE_TIME)
    lte: str | None = Field(None, alias="$lte", json_schema_extra=DATE_TIME)
    and_: list[FilterTime] | None = Field(None, alias="$and")
    or_: list[FilterTime] | None = Field(None, alias="$or")


class FilterIDExact(Wire):
    """The customers (ids; keys work too) whose subjects' events to list."""

    in_: list[str] = Field(alias="$in", min_length=1, max_length=100)


class EventsFilter(Wire):
    """The `filter` of GET /api/v2/events (JSON text). `$and`/`$or` nest one level."""

    id: FilterString | None = None
    source: FilterString | None = None
    subject: FilterString | None = None
    customerId: FilterIDExact | None = None
    type: FilterString | None = None
    time: FilterTime | None = None
    ingestedAt: FilterTime | None = None


def json_query_parameter(name: str, schema: dict[str, object], description: str) -> dict[str, object]:
    """An OpenAPI query parameter whose value is JSON text (OpenAPI `content`, as OpenMeter's spec)."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
