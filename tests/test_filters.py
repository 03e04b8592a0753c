"""OpenMeter's filter objects (tallybook/filters): parsing, and one meaning on every evaluator.

A reference evaluator written here reads the raw JSON filter (LIKE through a regular expression)
and is compared with `StringFilter.matches`, SQLite's GLOB/LIKE translation, and the events list on
SQLite and PostgreSQL over random filters and texts chosen to hit the awkward cases: case, `%`, `_`,
`\\` escapes, GLOB's own `*?[`, non-ASCII text and code point order."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tallybook.clock import to_micros
from tallybook.config import Settings
from tallybook.eventlist.model import EventFilters, EventListQuery, parse_event_filter
from tallybook.filters.model import InvalidFilter, like, parse_string_filter, parse_time_filter
from tallybook.filters.sql import glob_pattern
from tallybook.ingest.events import Event
from tallybook.runtime import Runtime
from tests.conftest import empty_all_tables

ALPHABET = "aAbB%_\\*?[]é.z"
texts = st.text(alphabet=ALPHABET, min_size=0, max_size=6)
# Patterns are built from tokens so that none ends in a lone escape character.
pattern_tokens = st.sampled_from(["a", "A", "b", "B", "%", "_", "\\%", "\\_", "\\\\", "*", "?", "[", "]", "é", "\\a"])
patterns = st.lists(pattern_tokens, min_size=1, max_size=5).map("".join)


def reference_like(text: str, pattern: str, fold_case: bool) -> bool:
    """SQL LIKE (escape '\\') by a regular expression; ASCII letters folded when asked."""
    parts = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            parts.append(re.escape(next(chars)))
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    flags = re.DOTALL | (re.IGNORECASE | re.ASCII if fold_case else 0)
    return re.fullmatch("".join(parts), text, flags) is not None


def reference(flt: dict[str, Any], text: str) -> bool:
    """A FilterString object, evaluated as its JSON reads."""
    ((op, value),) = flt.items()
    if op == "$and":
        return all(reference(child, text) for child in value)
    if op == "$or":
        return any(reference(child, text) for child in value)
    if op in ("$in", "$nin"):
        return (text in value) == (op == "$in")
    if op in ("$like", "$ilike", "$nlike", "$nilike"):
        return reference_like(text, value, "ilike" in op) == (op in ("$like", "$ilike"))
    compare = {
        "$eq": text == value,
        "$ne": text != value,
        "$gt": text > value,
        "$gte": text >= value,
        "$lt": text < value,
        "$lte": text <= value,
    }
    return compare[op]


values = st.text(alphabet=ALPHABET, min_size=1, max_size=4).filter(lambda v: not v.endswith("\\"))
comparison = st.one_of(
    st.tuples(st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]), values).map(lambda t: {t[0]: t[1]}),
    st.tuples(st.sampled_from(["$like", "$nlike", "$ilike", "$nilike"]), patterns).map(lambda t: {t[0]: t[1]}),
    st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(values, max_size=3)).map(lambda t: {t[0]: t[1]}),
)
string_filters = st.one_of(
    comparison,
    st.tuples(st.sampled_from(["$and", "$or"]), st.lists(comparison, min_size=1, max_size=3)).map(
        lambda t: {t[0]: t[1]}
    ),
)


@settings(max_examples=400, deadline=None)
@given(text=texts, pattern=patterns, fold_case=st.booleans())
def test_like_agrees_with_the_regular_expression_reference(text: str, pattern: str, fold_case: bool) -> None:
    assert like(text, pattern, fold_case) == reference_like(text, pattern, fold_case)


def test_like_takes_polynomial_time_on_hostile_patterns() -> None:
    """A backtracking matcher would take ages here (2^40 ways to place the `%`s)."""
    assert not like("a" * 2000 + "b", "%a" * 40 + "%c")
    assert like("a" * 2000 + "c", "%a" * 40 + "%c")


@settings(max_examples=400, deadline=None)
@given(text=texts, pattern=patterns)
def test_sqlite_glob_and_like_translations_mean_what_like_means(text: str, pattern: str) -> None:
    db = sqlite3.connect(":memory:")
    (glob,) = db.execute("SELECT ? GLOB ?", (text, glob_pattern(pattern))).fetchone()
    (folded,) = db.execute("SELECT ? LIKE ? ESCAPE '\\'", (text, pattern)).fetchone()
    assert bool(glob) == like(text, pattern)
    assert bool(folded) == like(text, pattern, fold_case=True)


@settings(max_examples=300, deadline=None)
@given(flt=string_filters, text=texts)
def test_parsed_filters_match_as_their_json_reads(flt: dict[str, Any], text: str) -> None:
    parsed = parse_string_filter(flt, "f", max_depth=1)
    assert parsed is not None
    assert parsed.matches(text) == reference(flt, text)


@pytest.mark.parametrize(
    ("raw", "depth", "message"),
    [
        ("x", 1, "f: must be a filter object such as"),
        ({"$eq": "a", "$ne": "b"}, 1, "f: give exactly one operator per filter object (got $eq, $ne)"),
        ({"$exists": True}, 1, "f: unknown operator '$exists'"),
        ({"$eq": None}, 1, "f.$eq: must be a string"),
        ({"$eq": ""}, 1, "f.$eq: must not be empty"),
        ({"$eq": "x" * 1025}, 1, "f.$eq: is longer than 1024 bytes in UTF-8"),
        ({"$in": ["a", ""]}, 1, "f.$in[1]: must not be empty"),
        ({"$in": ["a"] * 1001}, 1, "f.$in: at most 1000 values"),
        ({"$like": "50\\"}, 1, "f.$like: the pattern ends with a lone escape character"),
        ({"$or": [{"$eq": "a"}, {"$or": [{"$eq": "b"}]}]}, 1, "f.$or[1].$or: $and and $or cannot nest this deep"),
        ({"$and": [{"$eq": "a"}]}, 0, "f.$and: $and and $or cannot nest this deep here"),
        ({"$and": {"$eq": "a"}}, 1, "f.$and: must be a non-empty array of filter objects"),
    ],
)
def test_string_filter_refusals(raw: Any, depth: int, message: str) -> None:
    with pytest.raises(InvalidFilter) as caught:
        parse_string_filter(raw, "f", depth)
    assert caught.value.detail.startswith(message)
    assert caught.value.status == 400


def test_time_filters() -> None:
    flt = parse_time_filter(
        {"$or": [{"$lt": "2026-01-01T00:00:00+01:00"}, {"$gte": "2026-02-01T00:00:00Z"}]}, "t", max_depth=1
    )
    assert flt is not None
    assert flt.matches(to_micros(datetime(2025, 12, 31, 22, 59, 59, tzinfo=UTC)))
    assert not flt.matches(to_micros(datetime(2025, 12, 31, 23, 0, tzinfo=UTC)))
    assert flt.matches(to_micros(datetime(2026, 2, 1, tzinfo=UTC)))
    assert parse_time_filter({}, "t", 1) is None
    with pytest.raises(InvalidFilter, match=r"t\.\$gt: 'soon' is not an RFC 3339 timestamp"):
        parse_time_filter({"$gt": "soon"}, "t", 1)
    with pytest.raises(InvalidFilter, match="unknown operator '\\$in'"):
        parse_time_filter({"$in": ["2026-01-01T00:00:00Z"]}, "t", 1)


# -- the same filters in SQL, on both engines ------------------------------------------------------------

SUBJECTS = ["a", "A", "ab", "aB", "%", "a%b", "_", "a_b", "\\", "a\\b", "*", "a?", "[a]", "é", "éa", "z", "b.a", "Ba"]


@pytest.fixture
def listing(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.build(settings)
    empty_all_tables(runtime)
    runtime.start()
    base = to_micros(datetime(2026, 1, 1, tzinfo=UTC))
    runtime.ingest.ingest(
        [Event("svc", f"e{i}", "t", subject, base + i * 1_000_000, None) for i, subject in enumerate(SUBJECTS)]
    )
    try:
        yield runtime
    finally:
        runtime.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flt=string_filters)
def test_the_engines_list_what_the_reference_selects(listing: Runtime, flt: dict[str, Any]) -> None:
    """SQLite (GLOB, LIKE … ESCAPE, BINARY order) and PostgreSQL (LIKE, ILIKE, COLLATE "C") select
    exactly the events the reference selects, in the list's order."""
    query = EventListQuery(filters=parse_event_filter({"subject": flt}), limit=100)
    listed = [item.event.subject for item in listing.event_list.list(query).items]
    expected = [subject for subject in reversed(SUBJECTS) if reference(flt, subject)]
    assert listed == expected


def test_an_empty_filter_lists_everything(listing: Runtime) -> None:
    assert len(listing.event_list.list(EventListQuery(filters=EventFilters())).items) == len(SUBJECTS)
