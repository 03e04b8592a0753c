"""The fields live meters read, and the ingest check that what they read is inside the value domain.

Ingest refuses an event when a field some meter of its type reads holds a value that meter must not
count: a number outside the metered value domain (tallybook/ingest/limits.py) as a value, or text
too long to group or count by. Other data is stored as sent; it reaches no arithmetic unless a
meter reads it later, and then the materializer records that row as not counted.

The check runs in the ingest writer's transaction, against the meters that transaction sees, so a
meter created a moment ago already applies; one read of the `meters` table per group commit.
Values that are not numbers at all ("lots", a missing key) are not refused: they are the meter's
ordinary "not counted" case, reported on the event (validationError) as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tallybook.ingest.events import CODEHOOKS_SOURCE, Event, FieldError
from tallybook.ingest.limits import METERED_INTEGER_DIGITS
from tallybook.meters.extract import (
    Extractor,
    InvalidPath,
    as_decimal,
    as_text,
    compile_path,
    metered_number_problem,
    metered_text_problem,
    missing,
    show_number,
)

NUMERIC = frozenset({"SUM", "AVG", "MIN", "MAX", "LATEST", "FIRST"})
IN_DOMAIN_INT = 10**METERED_INTEGER_DIGITS


@dataclass(frozen=True, slots=True)
class MeteredField:
    meter: str  # slug
    path: str  # JSONPath into the event data
    extract: Extractor
    role: str  # "value" (a number), "key" (UNIQUE_COUNT text) or "group" (groupBy text)
    group: str | None = None  # the groupBy name


MeteredFields = dict[str, list[MeteredField]]  # by event type


def metered_fields(definitions: Iterable[tuple[str, str, str, str | None, Any]]) -> MeteredFields:
    """What each event type's live meters read, from their definitions: (slug, event type,
    aggregation, valueProperty, groupBy) rows as `meters.materializer_sql.live_meter_reads` returns them."""
    fields: MeteredFields = {}
    for slug, event_type, aggregation, value_property, group_by in definitions:
        found = fields.setdefault(event_type, [])
        paths: list[tuple[str, str, str | None]] = []
        if value_property and aggregation in NUMERIC:
            paths.append((value_property, "value", None))
        elif value_property and aggregation == "UNIQUE_COUNT":
            paths.append((value_property, "key", None))
        paths.extend((path, "group", name) for name, path in sorted((group_by or {}).items()))
        for path, role, name in paths:
            try:
                found.append(MeteredField(slug, path, compile_path(path), role, name))
            except InvalidPath:
                continue  # meter validation refuses these; a foreign row must not stop ingest
    return {event_type: found for event_type, found in fields.items() if found}


def field_name(event: Event, path: str) -> str:
    """The request field a meter's JSONPath reads: data.tokens, or value / metadata.x for codehooks."""
    if event.source == CODEHOOKS_SOURCE:
        return "value" if path == "$.value" else "metadata" + path[1:]
    return "data" + path[1:]


def check_metered(events: Sequence[Event], fields: MeteredFields, indexed: bool) -> list[FieldError]:
    """Problems with values meters read; `indexed` False for a single-event request (index None)."""
    errors: list[FieldError] = []
    for position, event in enumerate(events):
        wanted = fields.get(event.type)
        if not wanted or not isinstance(event.data, dict):
            continue
        for metered in wanted:
            raw = metered.extract(event.data)
            if missing(raw):
                continue
            problem = _problem(metered, raw)
            if problem is not None:
                errors.append(FieldError(position if indexed else None, field_name(event, metered.path), problem))
    return errors


def _problem(metered: MeteredField, raw: object) -> str | None:
    if metered.role == "value":
        if type(raw) is int and -IN_DOMAIN_INT < raw < IN_DOMAIN_INT:
            return None  # the common case, without building a Decimal
        number = as_decimal(raw)
        if number is None:
            return None  # not a number: counted as a bad value by the meter, as before
        problem = metered_number_problem(number)
        if problem is None:
            return None
        return f"{show_number(raw)} {problem} (meter {metered.meter} counts this field)"
    text = as_text(raw)
    if text is None:
        return None
    problem = metered_text_problem(text)
    if problem is None:
        return None
    if metered.role == "key":
        return f"{problem} (meter {metered.meter} counts distinct values of this field)"
    return f"{problem} (meter {metered.meter} groups by this field as {metered.group})"
