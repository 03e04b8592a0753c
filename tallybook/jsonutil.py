"""JSON that keeps numbers exact.

Usage values are money-adjacent, so floats never enter: numbers are parsed as Decimal (ints stay
int) and written back with their exact digits.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(digits: str) -> int | Decimal:
    # orjson writes only 64-bit ints; larger ones travel as Decimal, which keeps every digit.
    return int(digits) if len(digits) < 19 else Decimal(digits)


def loads(text: str | bytes) -> Any:
    """Parse JSON; numbers with a fraction or exponent become Decimal, NaN/Infinity are refused."""
    return json.loads(text, parse_float=Decimal, parse_int=_parse_int, parse_constant=_reject_constant)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError("non-finite decimal cannot be written as JSON")
        # orjson.Fragment writes the digits verbatim, so 0.1 stays 0.1 and 1.50 stays 1.50.
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> str:
    return orjson.dumps(value, default=_default).decode()


def dumpb(value: Any) -> bytes:
    return orjson.dumps(value, default=_default)
