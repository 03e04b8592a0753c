"""Voids and amends (tallybook/voids): the request bodies and the audit records."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tallybook.api.wire.base import DATE_TIME, Wire
from tallybook.voids.model import MAX_KEYS


class EventKeyBody(BaseModel):
    """An event's identity: its source and id."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1)
    id: str = Field(min_length=1)


class VoidFilterBody(BaseModel):
    """Events by subject, type and/or source (at least one), with event time in [from, to)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    subject: str | None = None
    type: str | None = None
    source: str | None = None
    from_: str | None = Field(
        default=None, alias="from", description="RFC 3339, inclusive", json_schema_extra=DATE_TIME
    )
    to: str | None = Field(default=None, description="RFC 3339, exclusive", json_schema_extra=DATE_TIME)


class VoidBody(BaseModel):
    """Either `events` or `filter`; `reason` is required and kept in the audit trail."""

    model_config = ConfigDict(extra="forbid")
    events: list[EventKeyBody] | None = Field(default=None, max_length=MAX_KEYS)
    filter: VoidFilterBody | None = None
    reason: str
    dryRun: bool = False


class AmendBody(BaseModel):
    """The event to void (`source`, `id`) and its corrected version (`event`, a CloudEvent with a new id)."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1)
    id: str = Field(min_length=1)
    reason: str
    event: dict[str, Any]


class VoidActor(Wire):
    type: str = Field(description="apiKey or cli")
    id: str | None = Field(description="the API key's id (apiKey)")
    name: str | None = Field(description="the API key's name, or the CLI's operating-system user")


class EventKey(Wire):
    source: str
    id: str


class VoidRecord(Wire):
    """One void or amend: who, when, why and what."""

    id: str
    kind: str = Field(description="void or amend")
    createdAt: str = Field(description="when the events stopped counting", json_schema_extra=DATE_TIME)
    reason: str
    actor: VoidActor
    selection: dict[str, Any] = Field(description='what was asked: {"events": [...]} or {"filter": {...}}')
    eventCount: int
    events: list[EventKey] | None = Field(
        default=None, description="the first 1,000 voided events (left out of list items)"
    )
    replacement: EventKey | None = Field(description="amend: the corrected event's key")


class VoidPreview(Wire):
    dryRun: bool
    eventCount: int
    events: list[EventKey] = Field(description="the first 1,000 events a void would take out")


class VoidPage(Wire):
    totalCount: int
    page: int
    pageSize: int
    items: list[VoidRecord]
