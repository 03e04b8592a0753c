"""OpenMeter's filter objects (FilterString, FilterTime) as values: parsed once, checked once.

The events list v2 (`filter`) and meter queries (`advancedMeterGroupByFilters`) take OpenMeter's
filter objects: `{"$eq": "a"}`, `{"$in": ["a", "b"]}`, `{"$like": "gpt-%"}`,
`{"$or": [{"$eq": "a"}, {"$gt": "m"}]}`. They are parsed here into small frozen trees, so every
refusal is worded once and every evaluator (SQL in `filters/sql.py`, Python in `matches`) reads the
same meaning:

- one operator per object (OpenMeter refuses more); `$and` / `$or` combine several;
- values are non-empty strings (OpenMeter refuses empty ones), never U+0000, at most 1,024 bytes
  (no stored key or group value is longer, so a longer one could match nothing);
- `$like` / `$ilike` patterns are SQL LIKE: `%` any run, `_` one character, `\\` escapes the next
  character; a pattern ending in a lone `\\` is refused (PostgreSQL would fail on it);
- string order (`$gt` …) is Unicode code point order on every engine;
- the size of a tree is bounded (`MAX_LEAVES`, `MAX_LIST_VALUES`) and so is its nesting, which the
  caller chooses: OpenMeter lets events filters nest one level of `$and`/`$or`.

Times are RFC 3339 with an offset, as everywhere in the API, held as epoch microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tallybook.clock import to_micros
from tallybook.errors import DomainError
from tallybook.ingest.events import parse_time
from tallybook.ingest.limits import MAX_KEY_BYTES
from tallybook.jsonutil import text_problem

# Comparison operators (value: a string) and list operators (value: a list of strings).
STRING_COMPARISONS = ("$eq", "$ne", "$like", "$nlike", "$ilike", "$nilike", "$gt", "$gte", "$lt", "$lte")
STRING_LISTS = ("$in", "$nin")
TIME_COMPARISONS = ("$gt", "$gte", "$lt", "$lte")
COMBINATIONS = ("$and", "$or")
STRING_OPERATORS = (*STRING_COMPARISONS, *STRING_LISTS, *COMBINATIONS)
TIME_OPERATORS = (*TIME_COMPARISONS, *COMBINATIONS)

MAX_LEAVES = 100  # comparisons in one filter tree (SQLite parses long AND/OR chains as deep trees)
MAX_LIST_VALUES = 1_000  # values of one $in / $nin
MAX_VALUE_BYTES = MAX_KEY_BYTES


class InvalidFilter(DomainError):
    status = 400
    code = "invalid-filter"


@dataclass(frozen=True, slots=True)
class StringFilter:
    """One node: a comparison (`op` with `value` or `values`) or a combination (`$and`/`$or` of
    `children`)."""

    op: str
    value: str | None = None
    values: tuple[str, ...] = ()
    children: tuple[StringFilter, ...] = ()

    def matches(self, text: str | None) -> bool:
        """Whether `text` passes (None: the field is absent, compared as the empty string, which
        is what OpenMeter's JSON_VALUE gives for a missing group-by value)."""
        subject = "" if text is None else text
        op = self.op
        if op == "$and":
            return all(child.matches(text) for child in self.children)
        if op == "$or":
            return any(child.matches(text) for child in self.children)
        if op == "$in":
            return subject in self.values
        if op == "$nin":
            return subject not in self.values
        value = self.value
        assert value is not None
        if op == "$eq":
            return subject == value
        if op == "$ne":
            return subject != value
        if op in ("$like", "$nlike", "$ilike", "$nilike"):
            found = like(subject, value, fold_case=op in ("$ilike", "$nilike"))
            return found if op in ("$like", "$ilike") else not found
        return _compare(op, subject, value)


@dataclass(frozen=True, slots=True)
class TimeFilter:
    """One node over an instant in epoch microseconds: `op` with `value_us`, or `$and`/`$or`."""

    op: str
    value_us: int = 0
    children: tuple[TimeFilter, ...] = ()

    def matches(self, at_us: int) -> bool:
        if self.op == "$and":
            return all(child.matches(at_us) for child in self.children)
        if self.op == "$or":
            return any(child.matches(at_us) for child in self.children)
        return _compare(self.op, at_us, self.value_us)


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "$gt":
        return bool(left > right)
    if op == "$gte":
        return bool(left >= right)
    if op == "$lt":
        return bool(left < right)
    return bool(left <= right)


def like(text: str, pattern: str, fold_case: bool = False) -> bool:
    """SQL LIKE with `\\` as the escape character, over whole strings. `fold_case` folds ASCII
    letters only (SQLite's LIKE does the same). Iterative with one backtrack point per `%`, so any
    pattern runs in O(len(text) * len(pattern)), never exponentially."""
    if fold_case:
        text, pattern = _ascii_lower(text), _ascii_lower(pattern)
    tokens = _like_tokens(pattern)
    t = p = 0
    star_p = -1
    star_t = 0
    while t < len(text):
        if p < len(tokens) and (tokens[p] == _ONE or (tokens[p] != _ANY and tokens[p] == text[t])):
            t += 1
            p += 1
        elif p < len(tokens) and tokens[p] == _ANY:
            star_p, star_t = p, t
            p += 1
        elif star_p >= 0:
            p = star_p + 1
            star_t += 1
            t = star_t
        else:
            return False
    while p < len(tokens) and tokens[p] == _ANY:
        p += 1
    return p == len(tokens)


# Wildcards as tokens that no one-character string equals.
_ANY = "%%"
_ONE = "__"


def _like_tokens(pattern: str) -> list[str]:
    tokens: list[str] = []
    escaped = False
    for char in pattern:
        if escaped:
            tokens.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            tokens.append(_ANY)
        elif char == "_":
            tokens.append(_ONE)
        else:
            tokens.append(char)
    return tokens


_ASCII_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}


def _ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


# -- parsing -------------------------------------------------------------------------------------------


class _Budget:
    """Counts the comparisons of one tree against MAX_LEAVES."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.leaves = 0

    def spend(self) -> None:
        self.leaves += 1
        if self.leaves > MAX_LEAVES:
            raise InvalidFilter(f"{self.path}: at most {MAX_LEAVES} comparisons in one filter")


def parse_string_filter(raw: Any, path: str, max_depth: int) -> StringFilter | None:
    """A FilterString object as a tree; None for `{}` (no condition, as in OpenMeter). `max_depth`
    is how many levels of `$and`/`$or` may nest (0: none)."""
    if isinstance(raw, dict) and not raw:
        return None
    return _string_node(raw, path, max_depth, _Budget(path))


def parse_time_filter(raw: Any, path: str, max_depth: int) -> TimeFilter | None:
    """A FilterTime object as a tree; None for `{}`."""
    if isinstance(raw, dict) and not raw:
        return None
    return _time_node(raw, path, max_depth, _Budget(path))


def _operator(raw: Any, path: str, operators: tuple[str, ...], example: str) -> tuple[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidFilter(f"{path}: must be a filter object such as {example}")
    unknown = [name for name in raw if name not in operators]
    if unknown:
        raise InvalidFilter(f"{path}: unknown operator {unknown[0]!r}; use one of {', '.join(operators)}")
    if len(raw) != 1:
        shown = ", ".join(raw) or "none"
        raise InvalidFilter(
            f"{path}: give exactly one operator per filter object (got {shown}); combine several with $and or $or"
        )
    ((op, value),) = raw.items()
    return op, value


def _children(value: Any, path: str, max_depth: int) -> list[Any]:
    if max_depth <= 0:
        raise InvalidFilter(f"{path}: $and and $or cannot nest this deep here")
    if not isinstance(value, list) or not value:
        raise InvalidFilter(f"{path}: must be a non-empty array of filter objects")
    for index, child in enumerate(value):
        if isinstance(child, dict) and not child:
            raise InvalidFilter(f"{path}[{index}]: an empty filter object; give one operator")
    return value


def _string_node(raw: Any, path: str, max_depth: int, budget: _Budget) -> StringFilter:
    op, value = _operator(raw, path, STRING_OPERATORS, '{"$eq": "value"}')
    where = f"{path}.{op}"
    if op in COMBINATIONS:
        children = _children(value, where, max_depth)
        return StringFilter(
            op,
            children=tuple(
                _string_node(child, f"{where}[{i}]", max_depth - 1, budget) for i, child in enumerate(children)
            ),
        )
    budget.spend()
    if op in STRING_LISTS:
        if not isinstance(value, list):
            raise InvalidFilter(f'{where}: must be an array of strings such as ["a", "b"]')
        if len(value) > MAX_LIST_VALUES:
            raise InvalidFilter(f"{where}: at most {MAX_LIST_VALUES} values")
        return StringFilter(op, values=tuple(_text(item, f"{where}[{i}]") for i, item in enumerate(value)))
    text = _text(value, where)
    if op in ("$like", "$nlike", "$ilike", "$nilike") and _ends_in_escape(text):
        raise InvalidFilter(f"{where}: the pattern ends with a lone escape character '\\'; escape it as '\\\\'")
    return StringFilter(op, value=text)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidFilter(f"{where}: must be a string")
    if not value:
        raise InvalidFilter(f"{where}: must not be empty")
    problem = text_problem(value)
    if problem:
        raise InvalidFilter(f"{where}: {problem}")
    if len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        raise InvalidFilter(f"{where}: is longer than {MAX_VALUE_BYTES} bytes in UTF-8")
    return value


def _ends_in_escape(pattern: str) -> bool:
    trailing = len(pattern) - len(pattern.rstrip("\\"))
    return trailing % 2 == 1


def _time_node(raw: Any, path: str, max_depth: int, budget: _Budget) -> TimeFilter:
    op, value = _operator(raw, path, TIME_OPERATORS, '{"$gte": "2026-01-01T00:00:00Z"}')
    where = f"{path}.{op}"
    if op in COMBINATIONS:
        children = _children(value, where, max_depth)
        return TimeFilter(
            op,
            children=tuple(
                _time_node(child, f"{where}[{i}]", max_depth - 1, budget) for i, child in enumerate(children)
            ),
        )
    budget.spend()
    try:
        instant = parse_time(value)
    except ValueError as exc:
        raise InvalidFilter(f"{where}: {exc}") from None
    return TimeFilter(op, value_us=to_micros(instant))


__all__ = [
    "MAX_LEAVES",
    "MAX_LIST_VALUES",
    "STRING_OPERATORS",
    "TIME_OPERATORS",
    "InvalidFilter",
    "StringFilter",
    "TimeFilter",
    "like",
    "parse_string_filter",
    "parse_time_filter",
]
