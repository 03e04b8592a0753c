"""JSON that keeps numbers exact, and the checks a request body passes before anything uses it.

Usage values are money-adjacent, so floats never enter: numbers are parsed as Decimal (ints stay
int) and written back with their exact digits.

`loads` reads JSON Tallybook wrote itself (stored event data) and accepts every number. Request
bodies go through `loads_request`, which also refuses what either database engine cannot store or
what would break a later read: numbers outside PostgreSQL's `numeric`, U+0000, unpaired UTF-16
surrogates, and nesting beyond a limit. Its checks are cheap byte scans of the raw body; the
decoded document is walked only when a scan says it may hold something to refuse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec
import orjson

from tallybook.ingest.limits import MAX_JSON_DEPTH, MAX_NUMBER_FRACTION_DIGITS, MAX_NUMBER_INTEGER_DIGITS

Path = tuple[str | int, ...]
MAX_PROBLEMS = 100
# How deep the checks walk when the caller checks depth itself: far above any accepted document,
# far below Python's recursion limit.
WALK_DEPTH = 2 * MAX_JSON_DEPTH


class JsonRefused(ValueError):
    """Valid JSON that Tallybook does not accept; `problems` lists (path in the document, why)."""

    def __init__(self, problems: list[tuple[Path, str]]) -> None:
        self.problems = problems
        shown = "; ".join(f"{show_path(path)}: {why}" for path, why in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(shown + more)


def show_path(path: Path) -> str:
    """$[3].data.model style, for messages."""
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{printable(part)}"
    return out


def printable(text: str) -> str:
    """`text` safe to write into an answer: a lone surrogate (which no encoder writes) as \\udxxx."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(digits: str) -> int | Decimal:
    # orjson writes only 64-bit ints, and Python refuses int(str) beyond 4,300 digits; larger
    # integers travel as Decimal, which keeps every digit and has neither limit.
    return int(digits) if len(digits) < 19 else Decimal(digits)


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_int=_parse_int, parse_constant=_reject_constant)


def loads(text: str | bytes) -> Any:
    """Parse JSON; numbers with a fraction or exponent become Decimal, NaN/Infinity are refused."""
    try:
        return _DECODER.decode(_decode_text(text))
    except RecursionError:
        raise ValueError("the document nests arrays and objects too deeply") from None


# -- request bodies --------------------------------------------------------------------------------


def number_problem(number: Decimal) -> str | None:
    """Why PostgreSQL's numeric (JSONB numbers) cannot hold `number`, or None if it can."""
    if not number.is_finite():
        return "is not a finite number"
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > MAX_NUMBER_FRACTION_DIGITS:
        return (
            f"has {-exponent:,} digits after the decimal point; numbers may have at most {MAX_NUMBER_FRACTION_DIGITS:,}"
        )
    if not number.is_zero() and number.adjusted() >= MAX_NUMBER_INTEGER_DIGITS:
        return (
            f"has {number.adjusted() + 1:,} digits before the decimal point; "
            f"numbers may have at most {MAX_NUMBER_INTEGER_DIGITS:,}"
        )
    return None


class _OutOfRange(ValueError):
    pass


_UNSTORABLE = "PostgreSQL's numeric (and so Tallybook, on every engine) cannot store"


def _checked_int(digits: str) -> int | Decimal:
    if len(digits) < 19:
        return int(digits)
    number = Decimal(digits)
    if len(digits) > MAX_NUMBER_INTEGER_DIGITS and number_problem(number):
        raise _OutOfRange(digits[:20])
    return number


def _checked_float(literal: str) -> Decimal:
    number = Decimal(literal)
    # A literal of 7 characters or fewer ("1e99999", "1e-9999") always fits; longer ones are
    # checked only when their magnitude says they might not (exponent <= adjusted - length).
    if len(literal) > 7:
        adjusted = number.adjusted()
        if (adjusted >= MAX_NUMBER_INTEGER_DIGITS or adjusted - len(literal) < -MAX_NUMBER_FRACTION_DIGITS) and (
            number_problem(number)
        ):
            raise _OutOfRange(literal[:20])
    return number


class _Unstorable:
    """Stands in for a number `number_problem` refuses, while the slow path locates it."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _marking_number(literal: str) -> Any:
    number = Decimal(literal)
    problem = number_problem(number)
    return _Unstorable(problem) if problem else number


_STRICT = json.JSONDecoder(parse_float=_checked_float, parse_int=_checked_int, parse_constant=_reject_constant)
_MARKING = json.JSONDecoder(parse_float=_marking_number, parse_int=_marking_number, parse_constant=_reject_constant)

# JSON can carry U+0000 and UTF-16 surrogates only as \u escapes. Paired surrogates decode to one
# character; a lone one decodes to text no database can store.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
NUL_CHARACTER = "holds U+0000 (a \\u0000 escape), which PostgreSQL cannot store in text; remove it"
UNPAIRED_SURROGATE = "holds an unpaired UTF-16 surrogate (a \\ud800-\\udfff escape); send valid Unicode text"


def may_hold_bad_text(raw: bytes | str) -> bool:
    """Cheap pre-check: only bodies with a \\u0000 or surrogate escape can hold text to refuse."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    return b"\\u" in raw and _SUSPECT_ESCAPE.search(raw) is not None


def openings(raw: bytes | str) -> int:
    """How many arrays and objects the body opens at most (brackets inside strings count too)."""
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{")
    return raw.count(b"[") + raw.count(b"{")


def text_problem(text: str) -> str | None:
    if "\x00" in text:
        return NUL_CHARACTER
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return UNPAIRED_SURROGATE
    return None


def too_deep(value: Any, room: int, path: Path = ()) -> Path | None:
    """The path of a container nested more than `room` levels down in `value`, or None."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return None
    if room <= 0:
        return path
    items = value.items() if kind is dict else enumerate(value)
    for key, child in items:
        child_kind = type(child)
        if child_kind is dict or child_kind is list:
            found = too_deep(child, room - 1, (*path, key))
            if found is not None:
                return found
    return None


def _problems(value: Any, path: Path, room: int, limit: int | None, check_text: bool) -> Iterator[tuple[Path, str]]:
    """Everything `loads_request` refuses inside a decoded (marking) document. `room` counts the
    levels left; with `limit` None depth is not reported, but the walk still stops there."""
    if isinstance(value, _Unstorable):
        yield path, value.problem
    elif isinstance(value, str):
        problem = text_problem(value) if check_text else None
        if problem:
            yield path, problem
    elif isinstance(value, dict | list):
        if room <= 0:
            if limit is not None:
                yield path, _too_deep_message(limit)
            return
        if isinstance(value, dict):
            for key, child in value.items():
                problem = text_problem(key) if check_text else None
                if problem:
                    yield (*path, key), f"the key {problem}"
                yield from _problems(child, (*path, key), room - 1, limit, check_text)
        else:
            for index, child in enumerate(value):
                yield from _problems(child, (*path, index), room - 1, limit, check_text)


def _too_deep_message(limit: int | None) -> str:
    return f"nests deeper than the limit of {limit} levels of arrays and objects"


def _decode_text(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    return raw.decode(json.detect_encoding(raw), "surrogatepass")


def loads_request(raw: bytes | str, max_depth: int | None) -> Any:
    """Decode a request body, refusing (JsonRefused) what `loads` would store but must not.

    `max_depth=None` leaves the depth check to the caller (ingest checks it per event, which is
    cheaper for batches); decoding still refuses documents Python cannot decode at all.
    Other decode errors raise ValueError (json.JSONDecodeError, UnicodeDecodeError) as `loads`.
    """
    value = _fast_decode(raw)
    if value is _UNDECIDED:
        value = _strict_decode(raw, max_depth)
    found = []
    if may_hold_bad_text(raw):
        for problem in _problems(value, (), max_depth or WALK_DEPTH, max_depth, True):
            found.append(problem)
            if len(found) >= MAX_PROBLEMS:
                break
    elif max_depth is not None and openings(raw) > max_depth:
        deep = too_deep(value, max_depth)
        if deep is not None:
            found.append((deep, _too_deep_message(max_depth)))
    if found:
        raise JsonRefused(found)
    return value


_UNDECIDED = object()
# msgspec decodes in C and calls back only for numbers with a fraction or exponent (the same
# _checked_float, given the literal's own text). Integers come back as int: msgspec refuses those
# past 4,300 digits, far inside numeric's range, and an int writes the same digits a Decimal would.
_FAST = msgspec.json.Decoder(float_hook=_checked_float)


def _fast_decode(raw: bytes | str) -> Any:
    """The document, or _UNDECIDED when the fast decoder does not read it. Anything it refuses
    (invalid UTF-8, a lone surrogate, a number out of range, NaN, malformed JSON) is decoded again
    by the standard decoder, which says what is wrong in the words clients are used to."""
    if not isinstance(raw, bytes):
        return _UNDECIDED
    try:
        return _FAST.decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return _UNDECIDED


def _strict_decode(raw: bytes | str, max_depth: int | None) -> Any:
    text = _decode_text(raw)
    try:
        return _STRICT.decode(text)
    except RecursionError:
        limit = f"the limit is {max_depth} levels" if max_depth else "too deep to read"
        raise JsonRefused([((), f"nests arrays and objects too deeply ({limit})")]) from None
    except _OutOfRange as exc:
        # The slow path, for bad input only: decode again with markers to say where each one is.
        fallback: list[tuple[Path, str]] = [((), f"holds the number {exc}…, which {_UNSTORABLE}")]
        try:
            value = _MARKING.decode(text)
        except RecursionError:
            raise JsonRefused(fallback) from None
        found = []
        for problem in _problems(value, (), max_depth or WALK_DEPTH, max_depth, may_hold_bad_text(raw)):
            found.append(problem)
            if len(found) >= MAX_PROBLEMS:
                break
        raise JsonRefused(found or fallback) from None


# -- writing ---------------------------------------------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError("non-finite decimal cannot be written as JSON")
        # orjson.Fragment writes the digits verbatim, so 0.1 stays 0.1 and 1.50 stays 1.50.
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _widen(value: Any) -> Any:
    """`value` with every int beyond 64 bits as Decimal (orjson refuses those ints outright)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return Decimal(value) if not -(2**63) <= value < 2**64 else value
    if isinstance(value, dict):
        return {k: _widen(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_widen(v) for v in value]
    return value


def dumpb(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_default)
    except TypeError as exc:
        if "Integer exceeds" not in str(exc):
            raise
        return orjson.dumps(_widen(value), default=_default)


def dumps(value: Any) -> str:
    return dumpb(value).decode()
