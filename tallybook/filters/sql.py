"""Filter trees (filters/model.py) as SQL conditions, with one meaning on SQLite and PostgreSQL.

- Order (`$gt` …): PostgreSQL compares text under the database's collation, which need not be code
  point order; comparisons use `COLLATE "C"` there. SQLite's default BINARY collation already is.
- `$like` (case-sensitive): PostgreSQL's LIKE, whose escape character is `\\` by default. SQLite's
  LIKE ignores ASCII case, so the pattern is translated to GLOB (case-sensitive, in C, no Python
  per row) with the same meaning.
- `$ilike`: PostgreSQL's ILIKE; SQLite's LIKE with `ESCAPE '\\'`, which folds ASCII letters.
  (PostgreSQL also folds other letters as its locale says; SQLite does not.)
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, false, literal, not_, or_, true
from sqlalchemy.sql.elements import ColumnElement

from tallybook.filters.model import StringFilter, TimeFilter


def string_condition(column: ColumnElement[Any], flt: StringFilter, dialect: str) -> ColumnElement[bool]:
    """`flt` over a text column (or expression). A NULL never matches: callers that compare
    missing values as '' wrap the column in COALESCE first."""
    op = flt.op
    if op == "$and":
        return and_(*(string_condition(column, child, dialect) for child in flt.children))
    if op == "$or":
        return or_(*(string_condition(column, child, dialect) for child in flt.children))
    if op == "$in":
        return column.in_(list(flt.values)) if flt.values else false()
    if op == "$nin":
        return column.not_in(list(flt.values)) if flt.values else column.is_not(None)
    value = flt.value
    assert value is not None
    if op == "$eq":
        return column == value
    if op == "$ne":
        return column != value
    if op in ("$like", "$nlike"):
        matched = _like(column, value, dialect)
        return matched if op == "$like" else not_(matched)
    if op in ("$ilike", "$nilike"):
        matched = _ilike(column, value, dialect)
        return matched if op == "$ilike" else not_(matched)
    ordered = column.collate("C") if dialect == "postgresql" else column
    if op == "$gt":
        return ordered > value
    if op == "$gte":
        return ordered >= value
    if op == "$lt":
        return ordered < value
    return ordered <= value


def time_condition(column: ColumnElement[Any], flt: TimeFilter) -> ColumnElement[bool]:
    """`flt` over a column of epoch microseconds."""
    if flt.op == "$and":
        return and_(true(), *(time_condition(column, child) for child in flt.children))
    if flt.op == "$or":
        return or_(false(), *(time_condition(column, child) for child in flt.children))
    if flt.op == "$gt":
        return column > flt.value_us
    if flt.op == "$gte":
        return column >= flt.value_us
    if flt.op == "$lt":
        return column < flt.value_us
    return column <= flt.value_us


def _like(column: ColumnElement[Any], pattern: str, dialect: str) -> ColumnElement[bool]:
    if dialect == "sqlite":
        return column.op("GLOB", is_comparison=True)(literal(glob_pattern(pattern)))
    return column.like(pattern)


def _ilike(column: ColumnElement[Any], pattern: str, dialect: str) -> ColumnElement[bool]:
    if dialect == "sqlite":
        return column.like(pattern, escape="\\")
    return column.ilike(pattern)


_GLOB_LITERAL = {"*": "[*]", "?": "[?]", "[": "[[]"}


def glob_pattern(pattern: str) -> str:
    """A LIKE pattern (escape `\\`) as the SQLite GLOB pattern that matches the same strings."""
    out: list[str] = []
    escaped = False
    for char in pattern:
        if escaped:
            out.append(_GLOB_LITERAL.get(char, char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            out.append("*")
        elif char == "_":
            out.append("?")
        else:
            out.append(_GLOB_LITERAL.get(char, char))
    return "".join(out)


__all__ = ["glob_pattern", "string_condition", "time_condition"]
