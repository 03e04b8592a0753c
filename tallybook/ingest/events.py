"""The usage event model and its validation.

Events arrive as CloudEvents (OpenMeter's ingest API) or as codehooks usage records; both become
one `Event`. Validation is all-or-nothing per request: `InvalidEvents` lists every problem with the
event's index and field, so a client can fix a batch in one round trip.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tallybook.clock import to_micros

MAX_KEY_LENGTH = 1024  # id, source, type and subject are indexed; keep index entries bounded
REQUIRED_FIELDS = ("specversion", "id", "source", "type", "subject")
KNOWN_FIELDS = frozenset((*REQUIRED_FIELDS, "time", "data", "datacontenttype", "dataschema"))
CODEHOOKS_SOURCE = "codehooks"


@dataclass(frozen=True, slots=True)
class Event:
    """One usage event as stored. `time_us`/`ingested_us` are microseconds since the epoch (UTC)."""

    source: str
    id: str
    type: str
    subject: str
    time_us: int
    data: dict[str, Any] | None
    datacontenttype: str | None = None
    ingested_us: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.id)

    def same_content(self, other: Event) -> bool:
        """True when `other` is a retry of this event (ingest time aside)."""
        return (
            self.type == other.type
            and self.subject == other.subject
            and self.time_us == other.time_us
            and self.data == other.data
            and self.datacontenttype == other.datacontenttype
        )


@dataclass(frozen=True, slots=True)
class FieldError:
    index: int | None  # position in the batch; None for a single event or the request as a whole
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


@dataclass
class InvalidEvents(Exception):
    """The request carried at least one invalid event; nothing from it is stored."""

    errors: list[FieldError] = field(default_factory=list)

    def __str__(self) -> str:
        shown = "; ".join(
            (f"event {e.index}: " if e.index is not None else "") + f"{e.field}: {e.message}" for e in self.errors[:5]
        )
        more = f" (and {len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
        return shown + more


# A JSON escape of a UTF-16 surrogate (\\ud800-\\udfff). Paired ones decode to one character; a lone
# one decodes to a string no database can store, so such text is refused at validation.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
UNPAIRED_SURROGATE = "holds an unpaired UTF-16 surrogate (a \\ud800-\\udfff escape); send valid Unicode text"


def may_hold_surrogates(raw_json: bytes) -> bool:
    """Cheap pre-check on the raw body: only bodies with surrogate escapes need the full check."""
    return _SURROGATE_ESCAPE.search(raw_json) is not None


def _has_unpaired_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_unpaired_surrogate(k) or _has_unpaired_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_unpaired_surrogate(v) for v in value)
    return False


def check_text(raw: dict[str, Any], index: int | None, errors: list[FieldError]) -> None:
    """Add an error for every top-level field whose text holds an unpaired surrogate."""
    for name, value in raw.items():
        if _has_unpaired_surrogate(name) or _has_unpaired_surrogate(value):
            errors.append(FieldError(index, name, UNPAIRED_SURROGATE))


def parse_time(value: Any) -> datetime:
    """RFC 3339 timestamp with an explicit offset, returned in UTC."""
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string such as 2026-01-05T10:00:00Z")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp (e.g. 2026-01-05T10:00:00Z)") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone offset; add 'Z' or an offset like +01:00")
    return parsed.astimezone(UTC)


def _key_string(raw: Mapping[str, Any], name: str, index: int | None, errors: list[FieldError]) -> str:
    value = raw.get(name)
    if value is None:
        errors.append(FieldError(index, name, "is required"))
        return ""
    if not isinstance(value, str) or not value:
        errors.append(FieldError(index, name, "must be a non-empty string"))
        return ""
    if len(value) > MAX_KEY_LENGTH:
        errors.append(FieldError(index, name, f"is longer than {MAX_KEY_LENGTH} characters"))
        return ""
    return value


def cloudevent_from_json(
    raw: Any, index: int | None, now_us: int, errors: list[FieldError], text_checked: bool = True
) -> Event | None:
    """Validate one decoded CloudEvent; append problems to `errors` and return None if invalid.

    `text_checked=False` when the source held surrogate escapes (see `may_hold_surrogates`).
    """
    if not isinstance(raw, dict):
        errors.append(FieldError(index, "(event)", "must be a JSON object"))
        return None
    before = len(errors)
    if not text_checked:
        check_text(raw, index, errors)
    specversion = raw.get("specversion")
    if specversion is None:
        errors.append(FieldError(index, "specversion", "is required"))
    elif specversion != "1.0":
        errors.append(FieldError(index, "specversion", f'must be "1.0", got {specversion!r}'))
    event_id = _key_string(raw, "id", index, errors)
    source = _key_string(raw, "source", index, errors)
    event_type = _key_string(raw, "type", index, errors)
    subject = _key_string(raw, "subject", index, errors)

    time_us = now_us
    if raw.get("time") is not None:
        try:
            time_us = to_micros(parse_time(raw["time"]))
        except ValueError as exc:
            errors.append(FieldError(index, "time", str(exc)))

    data = raw.get("data")
    if data is not None and not isinstance(data, dict):
        errors.append(FieldError(index, "data", f"must be a JSON object, got {_json_kind(data)}"))

    content_type = raw.get("datacontenttype")
    if content_type is not None and content_type != "application/json":
        errors.append(FieldError(index, "datacontenttype", "only application/json data is supported"))

    if len(errors) > before:
        return None
    return Event(source, event_id, event_type, subject, time_us, data, content_type)


def codehooks_event(
    event_type: Any, raw: Any, index: int | None, now_us: int, errors: list[FieldError], text_checked: bool = True
) -> Event | None:
    """Map a codehooks usage record ({customerId, value, metadata?}) onto the event model.

    subject = customerId, data = {value, **metadata}. The template has no event id; clients that
    retry should send `id` (kept as the idempotency key), otherwise each call is a new event.
    """
    if not isinstance(raw, dict):
        errors.append(FieldError(index, "(body)", "must be a JSON object"))
        return None
    before = len(errors)
    if not text_checked:
        check_text({"eventType": event_type, **raw}, index, errors)
    if not isinstance(event_type, str) or not event_type:
        errors.append(FieldError(index, "eventType", "must be a non-empty string"))
    customer_id = raw.get("customerId")
    if not isinstance(customer_id, str) or not customer_id:
        errors.append(FieldError(index, "customerId", "is required and must be a non-empty string"))
    value = raw.get("value")
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        errors.append(FieldError(index, "value", "is required and must be a number"))
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        errors.append(FieldError(index, "metadata", "must be a JSON object"))
    event_id = raw.get("id")
    if event_id is not None and (not isinstance(event_id, str) or not event_id):
        errors.append(FieldError(index, "id", "must be a non-empty string"))
    time_us = now_us
    if raw.get("timestamp") is not None:
        try:
            time_us = to_micros(parse_time(raw["timestamp"]))
        except ValueError as exc:
            errors.append(FieldError(index, "timestamp", str(exc)))
    if len(errors) > before:
        return None
    assert isinstance(event_type, str) and isinstance(customer_id, str)
    data = {**metadata, "value": value}
    return Event(CODEHOOKS_SOURCE, event_id or str(uuid.uuid4()), event_type, customer_id, time_us, data)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def check_batch(events: Sequence[Any], max_events: int) -> None:
    if len(events) == 0:
        raise InvalidEvents([FieldError(None, "(body)", "the batch is empty; send at least one event")])
    if len(events) > max_events:
        raise BatchTooLarge(f"the batch has {len(events)} events; the limit is {max_events} per request")


class BatchTooLarge(Exception):
    """More events or bytes than the configured per-request limit."""
