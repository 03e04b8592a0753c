"""Reading values out of event data with JSONPath.

Simple member paths (`$.tokens`, `$.usage.input_tokens`) are the common case and are looked up
directly; anything else (`$['odd key']`, `$.items[0].n`, filters) goes through jsonpath-ng. Both
give the same answer; the direct lookup only avoids jsonpath-ng's per-event overhead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from jsonpath_ng import parse as jsonpath_parse
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError

from tallybook.ingest.limits import (
    MAX_METERED_TEXT_BYTES,
    METERED_FRACTION_DIGITS,
    METERED_INTEGER_DIGITS,
    METERED_MAX_EXCLUSIVE,
    METERED_QUANTUM,
)

_SIMPLE = re.compile(r"^\$(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")
_MISSING = object()


class InvalidPath(ValueError):
    pass


Extractor = Callable[[Any], Any]  # returns _MISSING when the path matches nothing


@lru_cache(maxsize=1024)
def compile_path(path: str) -> Extractor:
    """An extractor for `path`; InvalidPath if it is not JSONPath."""
    if not isinstance(path, str) or not path.startswith("$"):
        raise InvalidPath(f"{path!r} is not a JSONPath expression; write it like $.tokens or $.usage.input")
    if _SIMPLE.match(path):
        names = tuple(path[2:].split("."))

        def member(data: Any) -> Any:
            for name in names:
                if not isinstance(data, dict) or name not in data:
                    return _MISSING
                data = data[name]
            return data

        return member
    try:
        expression = jsonpath_parse(path)
    except (JsonPathLexerError, JsonPathParserError, Exception) as exc:  # the parser raises plain Exception too
        raise InvalidPath(f"{path!r} is not valid JSONPath: {exc}") from None

    def general(data: Any) -> Any:
        matches = expression.find(data)
        if not matches:
            return _MISSING
        if len(matches) > 1:
            return [m.value for m in matches]
        return matches[0].value

    return general


def member_names(path: str) -> tuple[str, ...] | None:
    """The member names of a simple path (`$.usage.input` → ("usage", "input")); None for any other
    JSONPath. What `compile_path` looks up directly, for a store that extracts the same in SQL."""
    if isinstance(path, str) and _SIMPLE.match(path):
        return tuple(path[2:].split("."))
    return None


def missing(value: Any) -> bool:
    return value is _MISSING


def as_decimal(value: Any) -> Decimal | None:
    """A finite Decimal from a JSON number or numeric string; None if it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def as_text(value: Any) -> str | None:
    """Group-by and UNIQUE_COUNT values as text: strings as they are, numbers by their digits."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # str(int) refuses more than 4,300 digits; Decimal writes any int.
        return str(value) if -(10**18) < value < 10**18 else str(Decimal(value))
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return None


# -- the metered value domain (tallybook/ingest/limits.py says why these bounds) -------------------

METERED_DOMAIN = (
    f"meters count numbers with at most {METERED_INTEGER_DIGITS} digits before the decimal point "
    f"and {METERED_FRACTION_DIGITS} after it"
)


def metered_number_problem(number: Decimal) -> str | None:
    """Why a meter must not count `number`, or None when it is inside the metered value domain."""
    if not number.is_finite():
        return f"is not a finite number; {METERED_DOMAIN}"
    if number.is_zero():
        return None
    if not -METERED_MAX_EXCLUSIVE < number < METERED_MAX_EXCLUSIVE:
        return f"is too large: {METERED_DOMAIN}"
    # Trailing zeros do not count (1.5000000 is 1.5). With |number| < 10^12 the quantized value
    # has at most 18 digits, so quantize is exact in the default 28-digit context.
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -METERED_FRACTION_DIGITS and number.quantize(METERED_QUANTUM) != number:
        return f"has too many digits after the decimal point: {METERED_DOMAIN}"
    return None


def metered_text_problem(text: str) -> str | None:
    """Why a groupBy value or UNIQUE_COUNT key cannot be used, or None."""
    if len(text) * 4 > MAX_METERED_TEXT_BYTES and len(text.encode("utf-8", "surrogatepass")) > MAX_METERED_TEXT_BYTES:
        return f"is longer than {MAX_METERED_TEXT_BYTES} bytes in UTF-8, the limit for values meters group or count by"
    return None


def show_number(value: Any) -> str:
    """A number for a message: its digits, shortened when there are many."""
    text = as_text(value) if not isinstance(value, str) else value
    text = text if text is not None else repr(value)
    return text if len(text) <= 24 else f"{text[:12]}…{text[-6:]} ({len(text):,} characters)"
