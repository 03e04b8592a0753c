"""Building one CloudEvent at `track` time: a client-side id, the event time, and its JSON bytes.

The event is validated and encoded once, in the caller's thread, so a bad event fails the `track`
call that made it instead of a batch minutes later; the sender only joins encoded bytes.
"""

from __future__ import annotations

import json
import os
import time as _time
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

_UUID_HEX = "{:032x}"
# Decimals are written as exact JSON numbers: `default` turns one into a marker string that cannot
# occur in user text (it holds a per-process random token), which is then unquoted.
_DECIMAL_TOKEN = os.urandom(8).hex()
_DECIMAL_MARK = f"\x00{_DECIMAL_TOKEN}:"


def uuid7() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits.

    Ids sort by creation time, and the random part makes a collision between two clients
    (or a forked child and its parent) practically impossible.
    """
    ms = _time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62 | (rand & (1 << 62) - 1)
    h = _UUID_HEX.format(value)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_second_prefix: tuple[int, str] = (-1, "")


def rfc3339_now() -> str:
    global _second_prefix
    seconds, rest = divmod(_time.time_ns(), 1_000_000_000)
    cached = _second_prefix  # one tuple, replaced whole: safe to share between threads
    if cached[0] != seconds:
        cached = _second_prefix = (seconds, _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(seconds)))
    return f"{cached[1]}.{rest // 1000:06d}Z"


def rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("time must be timezone-aware (e.g. datetime.now(UTC)); a naive time has no fixed instant")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        return _DECIMAL_MARK + str(value) + "\x00"
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"event data holds a {type(value).__name__}, which has no JSON form: {value!r}")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_default)


def _unmark_decimals(text: str) -> str:
    marker = '"\\u0000' + _DECIMAL_TOKEN + ":"
    while (start := text.find(marker)) >= 0:
        end = text.index('\\u0000"', start + len(marker))
        text = text[:start] + text[start + len(marker) : end] + text[end + len('\\u0000"') :]
    return text


def encode_event(
    *,
    event_type: str,
    subject: str,
    source: str,
    data: dict[str, Any] | None,
    time: datetime | None,
    event_id: str | None,
) -> tuple[str, bytes]:
    """Validate one event and return (id, its CloudEvents JSON as UTF-8 bytes)."""
    if not isinstance(event_type, str) or not event_type:
        raise ValueError("type must be a non-empty string (e.g. 'api.calls')")
    if not isinstance(subject, str) or not subject:
        raise ValueError("subject must be a non-empty string: who the usage is billed to")
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"data must be a dict (a JSON object) or None, not {type(data).__name__}")
    if event_id is not None and (not isinstance(event_id, str) or not event_id or len(event_id) > 1024):
        raise ValueError("id must be a non-empty string of at most 1024 characters")
    eid = event_id or uuid7()
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": eid,
        "source": source,
        "type": event_type,
        "subject": subject,
        "time": rfc3339(time) if time is not None else rfc3339_now(),
    }
    if data is not None:
        event["data"] = data
    try:
        text = _ENCODER.encode(event)
    except ValueError as exc:
        raise ValueError(f"event data is not valid JSON: {exc}") from None
    if "\\u0000" + _DECIMAL_TOKEN in text:
        text = _unmark_decimals(text)
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"event holds text that is not valid Unicode (a lone surrogate): {exc}") from None
    return eid, body


def decode_event(body: bytes) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(body, parse_float=Decimal)
    return event


def join_batch(bodies: list[bytes]) -> bytes:
    return b"[" + b",".join(bodies) + b"]"
