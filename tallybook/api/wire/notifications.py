"""Notifications (OpenMeter's NotificationChannel, NotificationRule, NotificationEvent)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tallybook.api.wire.base import DATE_TIME, StringMap, Wire


class _Timestamps(Wire):
    createdAt: str = Field(json_schema_extra=DATE_TIME)
    updatedAt: str = Field(json_schema_extra=DATE_TIME)
    deletedAt: str | None = Field(None, json_schema_extra=DATE_TIME)


class Channel(_Timestamps):
    id: str
    type: Literal["WEBHOOK"]
    name: str
    disabled: bool
    annotations: dict[str, Any] = Field(description="tallybook.source, tallybook.events, tallybook.disabledReason")
    url: str
    customHeaders: StringMap | None
    signingSecret: str
    metadata: StringMap | None = None


class ChannelMeta(Wire):
    id: str
    type: Literal["WEBHOOK"]


class Rule(_Timestamps):
    id: str
    type: Literal[
        "aggregation.completed",
        "aggregation.corrected",
        "report.meter",
        "billing.unbilled_usage",
        "entitlements.balance.threshold",
        "entitlements.reset",
    ]
    name: str
    disabled: bool
    channels: list[ChannelMeta]
    metadata: StringMap | None = None
    features: list[str] | None = Field(None, description="entitlements rules: the features it watches (all if absent)")
    thresholds: list[dict[str, Any]] | None = Field(
        None, description='entitlements.balance.threshold: [{"value": 80, "type": "PERCENT" | "NUMBER"}]'
    )


class DeliveryAttemptResponse(Wire):
    body: str
    durationMs: int | None
    url: str | None
    statusCode: int | None = None


class DeliveryAttempt(Wire):
    state: str
    response: DeliveryAttemptResponse
    timestamp: str = Field(json_schema_extra=DATE_TIME)
    error: str | None = None


class DeliveryStatus(Wire):
    state: str
    reason: str
    updatedAt: str = Field(json_schema_extra=DATE_TIME)
    channel: ChannelMeta
    attempts: list[DeliveryAttempt]
    nextAttempt: str | None = Field(None, json_schema_extra=DATE_TIME)


class NotificationEvent(Wire):
    id: str
    type: str
    createdAt: str = Field(json_schema_extra=DATE_TIME)
    deliveryStatus: list[DeliveryStatus]
    payload: dict[str, Any]
    annotations: dict[str, Any]
    rule: Rule | None = None


class ChannelPage(Wire):
    totalCount: int
    page: int
    pageSize: int
    items: list[Channel]


class RulePage(Wire):
    totalCount: int
    page: int
    pageSize: int
    items: list[Rule]


class NotificationEventPage(Wire):
    totalCount: int
    page: int
    pageSize: int
    items: list[NotificationEvent]
