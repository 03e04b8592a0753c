"""Query-parameter conversions shared by routes."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from tallybook import jsonutil
from tallybook.api.problems import Problem
from tallybook.clock import to_micros
from tallybook.ingest.events import parse_time
from tallybook.ingest.limits import MAX_JSON_DEPTH


def _rfc3339(value: Any) -> Any:
    # Pydantic alone reads "0.067" or "1700000000" as Unix time and "2026-01-05" as midnight UTC:
    # a typo would silently filter on 1970. Only RFC 3339 with an offset is a date-time here.
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and " " in value and "+" not in value:
        value = value.replace(" ", "+")  # an unencoded '+' in a query string arrives as a space
    try:
        return parse_time(value)
    except ValueError as exc:
        raise PydanticCustomError("rfc3339", str(exc)) from None


# A query or body date-time: RFC 3339 with an offset (2026-01-05T10:00:00Z), anything else is a 400
# naming the parameter. OpenAPI still shows it as a string in date-time format.
Instant = Annotated[datetime, BeforeValidator(_rfc3339)]


def instant_micros(value: datetime | None, name: str) -> int | None:
    """An aware query date-time as epoch microseconds; naive ones are refused (ambiguous zone)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise Problem(
            400, "invalid-parameters", f"{name}: date-times need a time zone offset, e.g. 2026-01-05T10:00:00Z"
        )
    return to_micros(value)


def decode_json_parameter(name: str, raw: str) -> Any:
    """A query parameter holding JSON text, decoded with the limits request bodies have."""
    try:
        return jsonutil.loads_request(raw, MAX_JSON_DEPTH)
    except jsonutil.JsonRefused as exc:
        where, why = exc.problems[0]
        shown = jsonutil.show_path(where)
        raise Problem(400, "invalid-filter", f"{name}: {why}" + (f" (at {shown})" if where else "")) from None
    except (ValueError, UnicodeDecodeError) as exc:
        reason = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise Problem(400, "invalid-filter", f"{name}: not valid JSON ({reason}); send a JSON object") from None
