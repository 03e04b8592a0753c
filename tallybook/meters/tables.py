"""The meters room's tables: definitions (`meters`), projections (`meter_projections`) and the
projected usage rows (`meter_usage`).

`meter_usage` holds one row per (projection, event) for every event of the meter's type, with the
extracted value, group values and ingest time, clustered for per-subject range reads. The
materializer (meters/materializer.py, SQL in meters/materializer_sql.py) fills it behind ingest by
`events.seq` cursor, so the hot ingest path stays append-only on `events`.

Values are exact. PostgreSQL stores NUMERIC. SQLite has no exact decimal type and its SUM over
REAL rounds, so the `num` column has no type affinity: integral values are stored as INTEGER
(SQLite sums those exactly, in C) and every other value as its decimal text, which Python
aggregates (`tb_dsum`, `tb_dmin`, `tb_dmax`, meters/usage_sql.py) add up with `Decimal`.

Other rooms' SQL modules join these tables (shared schema); domain modules never import this one.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, Numeric, Table, Text, or_, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import UserDefinedType

from tallybook.meters.ports import DEFINITION_COLUMNS, GENERATION_SHIFT, usage_key_of
from tallybook.store.schema import metadata

SEQUENCE_TYPE = BigInteger().with_variant(Integer(), "sqlite")
JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")


class SqliteAnyValue(UserDefinedType[Any]):
    """A SQLite column declared BLOB: no type affinity, so 7 stays INTEGER and "0.1" stays TEXT."""

    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return "BLOB"


VALUE_TYPE = Numeric(asdecimal=True).with_variant(SqliteAnyValue(), "sqlite")

meters = Table(
    "meters",
    metadata,
    Column("key", SEQUENCE_TYPE, primary_key=True, autoincrement=True),
    Column("id", Text, nullable=False, unique=True),  # ULID
    Column("slug", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("event_type", Text, nullable=False),
    Column("aggregation", Text, nullable=False),
    Column("value_property", Text, nullable=True),
    Column("group_by", JSON_TYPE, nullable=False),
    Column("event_from_us", BigInteger, nullable=True),
    Column("metadata", JSON_TYPE, nullable=True),
    Column("managed_by", Text, nullable=False),  # "api" or "config"
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("deleted_us", BigInteger, nullable=True),
    # Set by invoicing once a bill used this meter: its aggregation and value may not change.
    Column("locked_us", BigInteger, nullable=True),
    # The cursor of the projection queries read (usage_key), mirrored from meter_projections, where
    # the materializer keeps every projection's cursor since 0019 (`tallybook verify` reads it here).
    Column("projected_seq", BigInteger, nullable=False, server_default=text("0")),
    # meter_usage.meter_key of the projection queries read (meter_projections, state "ready"); NULL
    # while a new meter's first build runs. Other rooms join meter_usage on it.
    Column("usage_key", BigInteger, nullable=True),
)
Index(
    "uq_meters_live_slug",
    meters.c.slug,
    unique=True,
    sqlite_where=meters.c.deleted_us.is_(None),
    postgresql_where=meters.c.deleted_us.is_(None),
)

# One projection of a meter's events under one definition (generation). A meter has at most one
# "ready" projection (the one queries read) and at most one "building" one (a new or changed
# definition, built beside it in the background); "retired" projections wait for their rows to be
# deleted in the background. The definition columns are the ones the projection was built with, so
# queries read a ready projection with its own definition while a changed one builds.
meter_projections = Table(
    "meter_projections",
    metadata,
    Column("usage_key", BigInteger, primary_key=True, autoincrement=False),  # meter_usage.meter_key
    Column("meter_key", BigInteger, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("state", Text, nullable=False),  # building | ready | retired
    Column("event_type", Text, nullable=False),
    Column("aggregation", Text, nullable=False),
    Column("value_property", Text, nullable=True),
    Column("group_by", JSON_TYPE, nullable=False),
    Column("event_from_us", BigInteger, nullable=True),
    # Materializer cursor: every event with seq <= projected_seq is in meter_usage.
    Column("projected_seq", BigInteger, nullable=False, server_default=text("0")),
    Column("started_us", BigInteger, nullable=False),
    Column("ready_us", BigInteger, nullable=True),
)
Index("uq_meter_projections_generation", meter_projections.c.meter_key, meter_projections.c.generation, unique=True)

PROJECTION_STATES = ("building", "ready", "retired")


meter_usage = Table(
    "meter_usage",
    metadata,
    Column("meter_key", BigInteger, primary_key=True),
    Column("subject", Text, primary_key=True),
    Column("time_us", BigInteger, primary_key=True),
    Column("event_seq", BigInteger, primary_key=True),
    Column("ingested_us", BigInteger, nullable=False),
    Column("num", VALUE_TYPE, nullable=True),  # NULL: the event's value was missing or not a number
    Column("ukey", Text, nullable=True),  # UNIQUE_COUNT meters: the value as text
    Column("groups", JSON_TYPE, nullable=True),  # {groupBy key: string value}
    Column("error", Text, nullable=True),  # why the event is not counted
    # When the event was voided (tallybook/voids), copied here so queries skip it without a join:
    # a row counts for a query as of T unless it was voided at or before T.
    Column("voided_us", BigInteger, nullable=True),
    sqlite_with_rowid=False,
)
# The primary key clusters rows per (meter, subject, time): one customer's month is one range.
# This index serves whole-period scans over every subject (the billing run); it carries the value,
# the UNIQUE_COUNT key, the ingest and the void time, so those scans never touch the table.
Index(
    "ix_meter_usage_time",
    meter_usage.c.meter_key,
    meter_usage.c.time_us,
    meter_usage.c.ingested_us,
    meter_usage.c.num,
    meter_usage.c.ukey,
    meter_usage.c.voided_us,
)
# Events a meter could not count are rare: two small partial indexes find them by event (for the
# event list) and by meter (for the per-meter counter) without scanning the projection.
Index(
    "ix_meter_usage_errors",
    meter_usage.c.event_seq,
    sqlite_where=meter_usage.c.error.isnot(None),
    postgresql_where=meter_usage.c.error.isnot(None),
)
Index(
    "ix_meter_usage_error_meters",
    meter_usage.c.meter_key,
    sqlite_where=meter_usage.c.error.isnot(None),
    postgresql_where=meter_usage.c.error.isnot(None),
)


def counts_as_of(as_of_us: int | None) -> ColumnElement[bool]:
    """Rows that count for a query as of `as_of_us` (None: now): not voided by then."""
    voided = meter_usage.c.voided_us
    if as_of_us is None:
        return voided.is_(None)
    return or_(voided.is_(None), voided > as_of_us)


def to_store_value(dialect: str, value: Decimal | None) -> Any:
    """The representation `num` gets: Decimal on PostgreSQL; int or decimal text on SQLite."""
    if value is None or dialect != "sqlite":
        return value
    if value == value.to_integral_value() and abs(value) < 2**62:
        return int(value)
    return str(value)


def from_store_value(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):  # never written; guard against foreign rows
        return Decimal(repr(value))
    return Decimal(value)


__all__ = [
    "DEFINITION_COLUMNS",
    "GENERATION_SHIFT",
    "PROJECTION_STATES",
    "counts_as_of",
    "from_store_value",
    "meter_projections",
    "meter_usage",
    "meters",
    "to_store_value",
    "usage_key_of",
]
