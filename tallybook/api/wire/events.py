"""Events: the CloudEvents Tallybook ingests and lists (OpenMeter's Event and IngestedEvent), and the
codehooks metering template's usage records and aggregation documents."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tallybook.api.wire.base import DATE_TIME, Wire


class CloudEvent(Wire):
    """OpenMeter's Event (CloudEvents 1.0). `time` defaults to the moment of ingestion; `data`, when
    present, is a JSON object that meters read values and group-by keys from."""

    id: str = Field(min_length=1, examples=["5c10fade-1c9e-4d6c-8275-c52c36731d3c"])
    source: str = Field(min_length=1, examples=["service-name"])
    specversion: Literal["1.0"] = Field(examples=["1.0"])
    type: str = Field(min_length=1, examples=["prompt"])
    subject: str = Field(min_length=1, examples=["customer-id"])
    time: str | None = Field(None, json_schema_extra=DATE_TIME, examples=["2023-01-01T01:01:01.001Z"])
    datacontenttype: Literal["application/json"] | None = None
    dataschema: str | None = None
    data: dict[str, Any] | None = None


class StoredEvent(Wire):
    """An event as listed: `time` is always set."""

    id: str
    source: str
    specversion: Literal["1.0"]
    type: str
    subject: str
    time: str = Field(json_schema_extra=DATE_TIME)
    datacontenttype: str | None = None
    data: dict[str, Any] | None = None


class IngestedEvent(Wire):
    """OpenMeter's IngestedEvent; `validationError` says why a meter cannot count the event."""

    event: StoredEvent
    ingestedAt: str = Field(json_schema_extra=DATE_TIME)
    storedAt: str = Field(json_schema_extra=DATE_TIME)
    validationError: str | None = None
    voidedAt: str | None = Field(
        None, json_schema_extra=DATE_TIME, description="with includeVoided=true: when the event was voided"
    )
    voidId: str | None = Field(None, description="with includeVoided=true: the void that took the event out")


class ListedEvent(IngestedEvent):
    """An element of GET /api/v2/events: OpenMeter's IngestedEvent with `customerId`."""

    customerId: str | None = Field(None, description="the customer the event's subject is attributed to")


class IngestedEventCursorPaginatedResponse(Wire):
    """A page of GET /api/v2/events. `nextCursor` is set when the page is full; pass it as `cursor`
    to get the events that follow."""

    items: list[ListedEvent] = Field(max_length=100)
    nextCursor: str | None = None


class UsageRecord(Wire):
    """codehooks: POST /usage/{eventType}. It becomes an event with subject = customerId and
    data = {value, ...metadata}; send `id` to make retries idempotent."""

    customerId: str = Field(min_length=1)
    value: float
    metadata: dict[str, Any] | None = None
    id: str | None = Field(None, min_length=1, description="idempotency key (default: a new UUID)")
    timestamp: str | None = Field(None, json_schema_extra=DATE_TIME, description="event time (default: now)")


class UsageBatchRecord(UsageRecord):
    """codehooks: one element of POST /usagebatch."""

    eventType: str = Field(min_length=1)


class UsageCaptured(Wire):
    message: str
    eventType: str
    customerId: str
    id: str


class UsageBatchCaptured(Wire):
    message: str
    count: int
    accepted: int
    duplicates: int


class UsageEvent(Wire):
    """codehooks: an element of GET /events."""

    id: str
    source: str
    eventType: str
    customerId: str
    value: Any = None
    metadata: dict[str, Any]
    time: str = Field(json_schema_extra=DATE_TIME)
    receivedAt: str = Field(json_schema_extra=DATE_TIME)


class AggregationDocument(Wire):
    """codehooks: usage per customer and period (GET /aggregations). `periodEnd` is inclusive."""

    customerId: str | None
    period: str
    periodStart: str = Field(json_schema_extra=DATE_TIME)
    periodEnd: str = Field(json_schema_extra=DATE_TIME)
    periodKey: str
    events: dict[str, float]
    eventCounts: dict[str, int]


_INSTANT = {"type": "string", "description": "RFC 3339 date-time with an offset"}
AGGREGATION_PARAMETERS: dict[str, dict[str, Any]] = {
    "from": {**_INSTANT, "description": "the first period is the one holding this instant"},
    "to": {**_INSTANT, "description": "the last period is the one holding this instant (inclusive)"},
    "asOf": {**_INSTANT, "description": "the figures as they were at this instant"},
}
