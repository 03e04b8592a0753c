"""Webhooks: notification channels, rules routing event types to them, and the outbox of events.

The rows here are what the storage port (`ports.py`) reads and writes; the service decides what
they hold. Errors are `DomainError`s, answered by the API's one handler: `NotFound` is 404
`not-found` and `InvalidInput` 400 `invalid-parameters`, as the notification API always answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tallybook.errors import DomainError

# Delivery states, as OpenMeter names them.
PENDING = "PENDING"
SENDING = "SENDING"
SUCCESS = "SUCCESS"
FAILED = "FAILED"
RESENDING = "RESENDING"

SOURCE_API = "api"
SOURCE_CONFIG = "config"
CHANNEL_TYPE = "WEBHOOK"


class NotFound(DomainError, LookupError):
    status = 404
    code = "not-found"


class InvalidInput(DomainError, ValueError):
    # Still a ValueError: callers (e.g. entitlements rule settings) and the routes' ValueError
    # mapping treat it as bad input.
    status = 400
    code = "invalid-parameters"


@dataclass(frozen=True, slots=True)
class ChannelRow:
    id: str
    name: str
    type: str
    url: str
    signing_secret: str
    custom_headers: dict[str, str]
    disabled: bool
    disabled_reason: str | None
    metadata: dict[str, Any] | None
    source: str
    event_types: list[str] | None
    created_us: int
    updated_us: int
    deleted_us: int | None


@dataclass(frozen=True, slots=True)
class RuleRow:
    id: str
    name: str
    type: str
    disabled: bool
    channel_ids: list[str]
    metadata: dict[str, Any] | None
    created_us: int
    updated_us: int
    deleted_us: int | None


@dataclass(frozen=True, slots=True)
class EventRow:
    id: str
    type: str
    dedup_key: str
    subject: str | None
    rule_id: str | None
    body: str
    created_us: int


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    event_id: str
    channel_id: str
    state: str
    attempt_count: int
    next_attempt_us: int | None
    lease_until_us: int | None
    claim_token: str | None
    reason: str | None
    updated_us: int


@dataclass(frozen=True, slots=True)
class AttemptRow:
    id: int
    delivery_id: int
    attempted_us: int
    state: str
    status_code: int | None
    duration_ms: int
    url: str
    error: str | None
    response_body: str | None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery taken by one worker, with everything needed to send it."""

    delivery: DeliveryRow
    event: EventRow
    channel: ChannelRow


@dataclass(frozen=True, slots=True)
class EventFilter:
    from_us: int | None = None
    to_us: int | None = None
    subjects: Sequence[str] = ()
    rules: Sequence[str] = ()
    channels: Sequence[str] = ()
    types: Sequence[str] = ()
    descending: bool = True
    order_by: str = "createdAt"
    offset: int = 0
    limit: int = 100


@dataclass(frozen=True, slots=True)
class ChannelInput:
    name: str
    url: str
    disabled: bool = False
    signing_secret: str | None = None
    custom_headers: dict[str, str] | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RuleInput:
    type: str
    name: str
    channels: Sequence[str]
    disabled: bool = False
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class EventDetail:
    """An outbox event with its deliveries (per channel), their attempts, and its rule."""

    event: EventRow
    deliveries: list[tuple[DeliveryRow, list[AttemptRow]]]
    rule: RuleRow | None


@dataclass(frozen=True, slots=True)
class Destination:
    channel_id: str
    rule_id: str | None


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """An event to write: its type, a key naming what it is about, and the JSON payload."""

    type: str
    dedup_key: str
    payload: dict[str, Any]
    subject: str | None = None
    # A stable id (the `webhook-id`) for events that must keep theirs across re-runs.
    stable_id: bool = False
