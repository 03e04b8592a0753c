"""The dashboard's overview: ingest rate and counters, invalid events, webhook delivery health."""

from __future__ import annotations

from pydantic import Field

from tallybook.api.wire.base import DATE_TIME, Wire


class MinuteCount(Wire):
    minute: str = Field(json_schema_extra=DATE_TIME)
    events: int


class IngestCounters(Wire):
    accepted: int
    duplicateRetries: int
    duplicateConflicts: int
    rejected: dict[str, int]


class DisabledChannel(Wire):
    id: str
    name: str
    reason: str | None


class WebhookHealth(Wire):
    deliveries: dict[str, int] = Field(description="deliveries per state")
    disabledChannels: list[DisabledChannel]


class StripeStatus(Wire):
    enabled: bool


class Overview(Wire):
    generatedAt: str = Field(json_schema_extra=DATE_TIME)
    eventsPerMinute: list[MinuteCount]
    ingest: IngestCounters
    invalidEventsByMeter: dict[str, int]
    stripe: StripeStatus
    webhooks: WebhookHealth
