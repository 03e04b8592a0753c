"""Meter definitions as rows and back: validation, the columns a spec is stored as, a stored
projection served as a `Meter`, and a projection's status (no storage here: pure functions and
`find`, one read through the port)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from tallybook.clock import from_micros, to_micros
from tallybook.meters.extract import InvalidPath, compile_path
from tallybook.meters.models import (
    GROUP_KEY_PATTERN,
    RESERVED_GROUP_KEYS,
    SLUG_PATTERN,
    Aggregation,
    InvalidMeter,
    Meter,
    MeterNotFound,
    MeterRebuilding,
    MeterSpec,
    ProjectionStatus,
)
from tallybook.meters.ports import MeterTransaction

# Fields whose change alters what a meter counts: refused once the meter has been billed.
BILLING_FIELDS = ("aggregation", "value_property", "event_type", "event_from")

# Fields whose change needs the projection rebuilt.
PROJECTION_FIELDS = (*BILLING_FIELDS, "group_by")


def find(tx: MeterTransaction, id_or_slug: str) -> Meter:
    row = tx.meter_row(id_or_slug)
    if row is None:
        raise MeterNotFound(f"no meter has the id or slug {id_or_slug!r}")
    return meter_from_row(row)


def serve(meter: Meter, projection: dict[str, Any]) -> Meter:
    return replace(
        meter,
        key=int(projection["usage_key"]),
        event_type=projection["event_type"],
        aggregation=Aggregation(projection["aggregation"]),
        value_property=projection["value_property"],
        group_by=dict(projection["group_by"] or {}),
        event_from=None if projection["event_from_us"] is None else from_micros(projection["event_from_us"]),
    )


def same_definition(projection: dict[str, Any], wanted: dict[str, Any], name: str) -> bool:
    if name == "group_by":
        return dict(projection[name] or {}) == dict(wanted[name] or {})
    return bool(projection[name] == wanted[name])


def ready_key(rows: Sequence[dict[str, Any]]) -> int | None:
    return next((int(r["usage_key"]) for r in rows if r["state"] == "ready"), None)


def projection_status(rows: Sequence[dict[str, Any]], visible_seq: int, now_us: int) -> ProjectionStatus:
    """A meter's projection status from its ready and building projections (see ProjectionStatus)."""
    building = max((r for r in rows if r["state"] == "building"), key=lambda r: r["generation"], default=None)
    ready = next((r for r in rows if r["state"] == "ready"), None)
    row = building or ready
    if row is None:  # not reachable for a live meter; answer something true rather than fail
        return ProjectionStatus("rebuilding", "none", 0, 0, visible_seq, from_micros(now_us), None, None)
    processed = min(int(row["projected_seq"]), visible_seq)
    eta = None
    elapsed = now_us - int(row["started_us"])
    if building is not None and processed > 0 and elapsed > 0:
        eta = math.ceil((visible_seq - processed) / (processed / elapsed) / 1_000_000)
    return ProjectionStatus(
        state="rebuilding" if building is not None else "ready",
        answers_from="current" if building is None else ("previous" if ready is not None else "none"),
        generation=int(row["generation"]),
        events_processed=processed,
        events_total=visible_seq,
        started_at=from_micros(int(row["started_us"])),
        ready_at=None if row["ready_us"] is None else from_micros(int(row["ready_us"])),
        eta_seconds=eta,
    )


def rebuilding(detail: str, status: ProjectionStatus) -> MeterRebuilding:
    retry = max(1, min(status.eta_seconds or 5, 60))
    return MeterRebuilding(detail, projection=status.to_json(), retryAfterSeconds=retry)


def opt_micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def api_name(field: str) -> str:
    return {
        "aggregation": "aggregation",
        "value_property": "valueProperty",
        "event_type": "eventType",
        "event_from": "eventFrom",
        "group_by": "groupBy",
    }.get(field, field)


def validate_spec(spec: MeterSpec) -> None:
    if not SLUG_PATTERN.match(spec.slug) or len(spec.slug) > 64:
        raise InvalidMeter(
            f"slug {spec.slug!r} must be 1-64 lower-case letters, digits and single underscores, e.g. tokens_total"
        )
    if not spec.event_type:
        raise InvalidMeter("eventType is required")
    if spec.aggregation is Aggregation.COUNT and spec.value_property:
        raise InvalidMeter("COUNT counts events and takes no valueProperty; remove it")
    if spec.aggregation.needs_value and not spec.value_property:
        raise InvalidMeter(f"{spec.aggregation.value} needs a valueProperty, a JSONPath such as $.tokens")
    paths = dict(spec.group_by)
    if spec.value_property:
        paths["valueProperty"] = spec.value_property
    for name, path in paths.items():
        if name != "valueProperty" and not GROUP_KEY_PATTERN.match(name):
            raise InvalidMeter(f"groupBy key {name!r} may only contain letters, digits and underscores")
        if name in RESERVED_GROUP_KEYS and name != "valueProperty":
            raise InvalidMeter(f"groupBy key {name!r} is reserved (it is always available); pick another name")
        try:
            compile_path(path)
        except InvalidPath as exc:
            raise InvalidMeter(f"{name if name == 'valueProperty' else 'groupBy.' + name}: {exc}") from None
    if spec.event_from is not None and spec.event_from.tzinfo is None:
        raise InvalidMeter("eventFrom needs a time zone offset, e.g. 2026-01-01T00:00:00Z")


def spec_columns(spec: MeterSpec) -> dict[str, Any]:
    return {
        "name": spec.name or spec.slug,
        "description": spec.description,
        "event_type": spec.event_type,
        "aggregation": spec.aggregation.value,
        "value_property": spec.value_property,
        "group_by": dict(sorted(spec.group_by.items())),
        "event_from_us": opt_micros(spec.event_from),
        "metadata": spec.metadata,
    }


def spec_of(meter: Meter) -> MeterSpec:
    return MeterSpec(
        slug=meter.slug,
        event_type=meter.event_type,
        aggregation=meter.aggregation,
        name=meter.name,
        description=meter.description,
        value_property=meter.value_property,
        group_by=dict(meter.group_by),
        event_from=meter.event_from,
        metadata=meter.metadata,
    )


def meter_from_row(row: Any) -> Meter:
    return Meter(
        id=row["id"],
        key=int(row["key"]),
        slug=row["slug"],
        name=row["name"],
        description=row["description"],
        event_type=row["event_type"],
        aggregation=Aggregation(row["aggregation"]),
        value_property=row["value_property"],
        group_by=dict(row["group_by"] or {}),
        event_from=None if row["event_from_us"] is None else from_micros(row["event_from_us"]),
        metadata=row["metadata"],
        managed_by=row["managed_by"],
        created_at=from_micros(row["created_us"]),
        updated_at=from_micros(row["updated_us"]),
        locked_at=None if row["locked_us"] is None else from_micros(row["locked_us"]),
        deleted_at=None if row["deleted_us"] is None else from_micros(row["deleted_us"]),
    )
