"""The usage event model and its validation.

Events arrive as CloudEvents (OpenMeter's ingest API) or as codehooks usage records; both become
one `Event`. Validation is all-or-nothing per request: `InvalidEvents` lists every problem with the
event's index and field, so a client can fix a batch in one round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from tallybook.clock import format_rfc3339, from_micros, to_micros
from tallybook.ingest.limits import EVENT_TIME_MAX_EXCLUSIVE, EVENT_TIME_MIN, MAX_KEY_BYTES
from tallybook.jsonutil import NUL_CHARACTER, text_problem
from tallybook.meters.extract import metered_number_problem, show_number

REQUIRED_FIELDS = ("specversion", "id", "source", "type", "subject")
KNOWN_FIELDS = frozenset((*REQUIRED_FIELDS, "time", "data", "datacontenttype", "dataschema"))
CODEHOOKS_SOURCE = "codehooks"


class Event(msgspec.Struct, frozen=True):
    """One usage event as stored. `time_us`/`ingested_us` are microseconds since the epoch (UTC).

    A frozen msgspec Struct rather than a frozen dataclass: ingest builds one per event, and a
    frozen dataclass's __init__ sets each field through object.__setattr__ (~3.7 µs an event
    against ~0.4 µs). Equality compares every field, in order, as the dataclass did.
    """

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


def _rfc3339_shape(value: str) -> tuple[bool, bool]:
    """(is an RFC 3339 date-time, has an offset), by position: fromisoformat checks the digits.

    RFC 3339 (section 5.6): full date, 'T' (or a space), full time with an optional '.' fraction,
    then 'Z' or +hh:mm. Python's fromisoformat alone also takes ISO 8601 forms such as
    20260105T100000Z, week dates, 10:00Z without seconds, ',' fractions and +0100 or +01 offsets;
    those are refused so that every client is read the same way. No regex: this runs per event.
    """
    if len(value) < 19 or value[4] != "-" or value[7] != "-" or value[10] not in "Tt " or "," in value:
        return False, False
    if value[13] != ":" or value[16] != ":" or (len(value) > 19 and value[19] not in ".Zz+-"):
        return False, False
    if len(value) > 19 and value[19] == "." and not value[20:21].isdigit():
        return False, False
    if value[-1] in "Zz":
        return True, True
    if len(value) >= 25 and value[-6] in "+-" and value[-3] == ":":
        return True, True
    return "+" not in value[19:] and "-" not in value[19:], False


def parse_time(value: Any) -> datetime:
    """RFC 3339 timestamp with an explicit offset, returned in UTC."""
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string such as 2026-01-05T10:00:00Z")
    rfc3339, has_offset = _rfc3339_shape(value)
    if not rfc3339:
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise ValueError(f"{shown!r} is not an RFC 3339 timestamp (e.g. 2026-01-05T10:00:00Z)")
    if not has_offset:
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise ValueError(f"{shown!r} has no time zone offset; add 'Z' or an offset like +01:00")
    try:
        parsed = datetime.fromisoformat(value[:-1] + "Z" if value[-1] == "z" else value)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise ValueError(
            f"{shown!r} is not a valid date and time, or falls outside years 0001-9999 once its offset is applied"
        ) from None


_TIME_MIN_US = to_micros(EVENT_TIME_MIN)
_TIME_MAX_US = to_micros(EVENT_TIME_MAX_EXCLUSIVE)


def check_event_time(when: datetime) -> None:
    """An event's time must lie in the range limits.py declares."""
    if not EVENT_TIME_MIN <= when < EVENT_TIME_MAX_EXCLUSIVE:
        raise ValueError(
            f"{format_rfc3339(when)} is outside the event time range "
            f"[{format_rfc3339(EVENT_TIME_MIN)}, {format_rfc3339(EVENT_TIME_MAX_EXCLUSIVE)})"
        )


def key_problem(value: str) -> str | None:
    """Why `value` cannot be an id, source, type or subject (both engines index these)."""
    if len(value) * 4 > MAX_KEY_BYTES and len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes in UTF-8"
    if "\x00" in value:
        return NUL_CHARACTER
    return None if value.isascii() else text_problem(value)


_SHORT_KEY = MAX_KEY_BYTES // 4


def _key_string(raw: Mapping[str, Any], name: str, index: int | None, errors: list[FieldError]) -> str:
    value = raw.get(name)
    if value is None:
        errors.append(FieldError(index, name, "is required"))
        return ""
    if not isinstance(value, str) or not value:
        errors.append(FieldError(index, name, "must be a non-empty string"))
        return ""
    # Short ASCII keys without U+0000 (nearly all of them) need no closer look.
    if len(value) <= _SHORT_KEY and value.isascii() and "\x00" not in value:
        return value
    problem = key_problem(value)
    if problem:
        errors.append(FieldError(index, name, problem))
        return ""
    return value


# Microseconds of the whole seconds of recent "YYYY-MM-DDTHH:MM:SS" prefixes (see _utc_micros).
_SECONDS_US: dict[str, int] = {}
_SECONDS_CACHED = 4096


def _utc_micros(value: str) -> int | None:
    """The instant of the common UTC form, 2026-01-05T10:00:00Z or with a .f to .ffffff fraction,
    in microseconds, or None for any other form (parse_time then reads it and says what is wrong).

    Clients send events a few milliseconds apart, so most share their whole second with an event
    just before: that part is read by parse_time once and kept, and only the fraction is parsed
    per event. Equal to to_micros(parse_time(value)) wherever it answers (tests check this).
    """
    size = len(value)
    if size < 20 or size > 27 or value[-1] != "Z" or value[19] != ("Z" if size == 20 else "."):
        return None
    fraction = value[20:-1]
    if size > 20 and not (fraction.isdigit() and fraction.isascii()):
        return None
    prefix = value[:19]
    seconds = _SECONDS_US.get(prefix)
    if seconds is None:
        try:
            seconds = to_micros(parse_time(prefix + "Z"))
        except ValueError:
            return None
        if len(_SECONDS_US) >= _SECONDS_CACHED:
            _SECONDS_US.clear()
        _SECONDS_US[prefix] = seconds
    time_us = seconds + (int(fraction) * 10 ** (27 - size) if fraction else 0)
    return time_us if _TIME_MIN_US <= time_us < _TIME_MAX_US else None


def _event_time(raw: Mapping[str, Any], name: str, now_us: int, index: int | None, errors: list[FieldError]) -> int:
    value = raw.get(name)
    if value is None:
        return now_us
    if type(value) is str and (time_us := _utc_micros(value)) is not None:
        return time_us
    try:
        time_us = to_micros(parse_time(raw[name]))
        if not _TIME_MIN_US <= time_us < _TIME_MAX_US:
            check_event_time(from_micros(time_us))
    except ValueError as exc:
        errors.append(FieldError(index, name, str(exc)))
        return now_us
    return time_us


def cloudevent_from_json(raw: Any, index: int | None, now_us: int, errors: list[FieldError]) -> Event | None:
    """Validate one decoded CloudEvent; append problems to `errors` and return None if invalid.

    Text and numbers inside it were checked when the body was decoded (jsonutil.loads_request).
    """
    if not isinstance(raw, dict):
        errors.append(FieldError(index, "(event)", "must be a JSON object"))
        return None
    before = len(errors)
    specversion = raw.get("specversion")
    if specversion is None:
        errors.append(FieldError(index, "specversion", "is required"))
    elif specversion != "1.0":
        errors.append(FieldError(index, "specversion", f'must be "1.0", got {specversion!r}'))
    event_id = _key_string(raw, "id", index, errors)
    source = _key_string(raw, "source", index, errors)
    event_type = _key_string(raw, "type", index, errors)
    subject = _key_string(raw, "subject", index, errors)

    time_us = _event_time(raw, "time", now_us, index, errors)

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
    event_type: Any, raw: Any, index: int | None, now_us: int, errors: list[FieldError]
) -> Event | None:
    """Map a codehooks usage record ({customerId, value, metadata?}) onto the event model.

    subject = customerId, data = {value, **metadata}. The template has no event id; clients that
    retry should send `id` (kept as the idempotency key), otherwise each call is a new event.
    """
    if not isinstance(raw, dict):
        errors.append(FieldError(index, "(body)", "must be a JSON object"))
        return None
    before = len(errors)
    if not isinstance(event_type, str) or not event_type:
        errors.append(FieldError(index, "eventType", "must be a non-empty string"))
    elif problem := key_problem(event_type):
        errors.append(FieldError(index, "eventType", problem))
    customer_id = raw.get("customerId")
    if not isinstance(customer_id, str) or not customer_id:
        errors.append(FieldError(index, "customerId", "is required and must be a non-empty string"))
    elif problem := key_problem(customer_id):
        errors.append(FieldError(index, "customerId", problem))
    value = raw.get("value")
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        errors.append(FieldError(index, "value", "is required and must be a number"))
    elif problem := metered_number_problem(Decimal(value)):
        # The template's value is always what its meters count, whatever meters exist now.
        errors.append(FieldError(index, "value", f"{show_number(value)} {problem}"))
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        errors.append(FieldError(index, "metadata", "must be a JSON object"))
    event_id = raw.get("id")
    if event_id is not None and (not isinstance(event_id, str) or not event_id):
        errors.append(FieldError(index, "id", "must be a non-empty string"))
    elif isinstance(event_id, str) and (problem := key_problem(event_id)):
        errors.append(FieldError(index, "id", problem))
    time_us = _event_time(raw, "timestamp", now_us, index, errors)
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
