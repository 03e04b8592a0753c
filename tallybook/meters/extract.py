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
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return None
