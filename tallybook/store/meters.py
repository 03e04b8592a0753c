"""Meter tables and the SQL behind usage queries.

`meters` holds definitions. `meter_usage` is the projection: one row per (meter, event) for every
event of the meter's type, holding the extracted value, group values and ingest time, clustered
for per-subject range reads. A materializer (tallybook.meters.materializer) fills it behind
ingest by `events.seq` cursor, so the hot ingest path stays append-only on `events`.

Values are exact. PostgreSQL stores NUMERIC. SQLite has no exact decimal type and its SUM over
REAL rounds, so the `num` column has no type affinity: integral values are stored as INTEGER
(SQLite sums those exactly, in C) and every other value as its decimal text, which Python
aggregates (`tb_dsum`, `tb_dmin`, `tb_dmax`) add up with `Decimal`.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

import msgspec
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    Numeric,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    distinct,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import UserDefinedType

from tallybook import jsonutil
from tallybook.customers.sql import customer_subjects, customers
from tallybook.exact import CONTEXT as EXACT
from tallybook.exact import total as exact_total
from tallybook.filters.model import StringFilter
from tallybook.filters.sql import string_condition
from tallybook.store.schema import events, metadata

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

# usage_key = meter key + generation * 2**32: generation 0 keeps the meter's own key (the rows
# stored before 0019 stay where they are) and no two projections of any meters share a key.
GENERATION_SHIFT = 32
PROJECTION_STATES = ("building", "ready", "retired")
DEFINITION_COLUMNS = ("event_type", "aggregation", "value_property", "group_by", "event_from_us")


def usage_key_of(meter_key: int, generation: int) -> int:
    return meter_key + (generation << GENERATION_SHIFT)


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

# Serialises materializers across PostgreSQL server processes (any fixed 64-bit number).
PG_MATERIALIZER_LOCK = 7_310_220_452
EVENT_PAGE = 5_000


class UsageRecord(NamedTuple):
    """One projected row, as the materializer produces it. A named tuple, not a dataclass: the
    materializer builds one per (meter, event), and a tuple is several times cheaper to build."""

    meter_key: int
    event_seq: int
    subject: str
    time_us: int
    ingested_us: int
    num: Decimal | None
    ukey: str | None
    groups: dict[str, str] | None
    error: str | None
    voided_us: int | None = None


class StoredEvent(NamedTuple):
    """An event as the materializer reads it (a named tuple for the same reason)."""

    seq: int
    type: str
    subject: str
    time_us: int
    ingested_us: int
    data: Any
    voided_us: int | None = None


@dataclass(frozen=True, slots=True)
class AggregateSpec:
    """What to compute for one usage query, already resolved to store terms."""

    meter_key: int
    aggregation: str
    start_us: int | None
    end_us: int | None
    step_us: int | None  # fixed-length windows
    bounds_us: tuple[int, ...]  # calendar windows (one more than windows)
    subjects: tuple[str, ...] | None  # None: all subjects
    as_of_us: int | None
    group_filters: dict[str, str | tuple[str, ...] | StringFilter]
    group_keys: tuple[str, ...]  # meter groupBy keys to group by
    by_subject: bool
    by_customer: bool
    through_seq: int | None = None  # only events stored with a seq at or below this
    # Also report each group's first and last counted event time (a total without from or to
    # reports the span of its data, as OpenMeter does).
    span: bool = False


@dataclass(frozen=True, slots=True)
class AggregateRow:
    window: int
    subject: str | None
    customer_id: str | None
    groups: tuple[str | None, ...]
    value: Decimal | None
    count: int
    first_us: int | None = None  # set when AggregateSpec.span
    last_us: int | None = None


# -- SQLite helpers -----------------------------------------------------------------------------------


class _DecimalSum:
    def __init__(self) -> None:
        self.total = Decimal(0)
        self.seen = False

    def step(self, value: Any) -> None:
        if value is not None:
            # Exact: a sum of many in-domain values can need more than the default 28 digits.
            self.total = EXACT.add(self.total, Decimal(value))
            self.seen = True

    def finalize(self) -> str | None:
        return str(self.total) if self.seen else None


class _DecimalMin:
    def __init__(self) -> None:
        self.best: Decimal | None = None

    def step(self, value: Any) -> None:
        if value is not None:
            candidate = Decimal(value)
            if self.best is None or candidate < self.best:
                self.best = candidate

    def finalize(self) -> str | None:
        return None if self.best is None else str(self.best)


class _DecimalMax(_DecimalMin):
    def step(self, value: Any) -> None:
        if value is not None:
            candidate = Decimal(value)
            if self.best is None or candidate > self.best:
                self.best = candidate


def _sqlite_register(conn: Connection, bounds: Sequence[int] | None) -> None:
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.create_aggregate("tb_dsum", 1, _DecimalSum)
    raw.create_aggregate("tb_dmin", 1, _DecimalMin)
    raw.create_aggregate("tb_dmax", 1, _DecimalMax)
    if bounds is not None:
        edges = list(bounds)
        raw.create_function("tb_bucket", 1, lambda t: bisect_right(edges, t) - 1, deterministic=True)


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


# -- definitions ----------------------------------------------------------------------------------------


def insert_meter(conn: Connection, row: dict[str, Any]) -> int:
    result = conn.execute(insert(meters).values(**row).returning(meters.c.key))
    return int(result.scalar_one())


def update_meter(conn: Connection, key: int, values: dict[str, Any]) -> None:
    conn.execute(update(meters).where(meters.c.key == key).values(**values))


def live_meter_rows(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(select(meters).where(meters.c.deleted_us.is_(None)).order_by(meters.c.key))
    return [dict(r._mapping) for r in rows]


def all_meter_rows(conn: Connection) -> list[dict[str, Any]]:
    """Live and deleted meters (a slug can appear more than once: deleted meters free theirs)."""
    return [dict(r._mapping) for r in conn.execute(select(meters).order_by(meters.c.key))]


def meter_row(conn: Connection, id_or_slug: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(meters).where(meters.c.deleted_us.is_(None), or_(meters.c.id == id_or_slug, meters.c.slug == id_or_slug))
    ).first()
    return dict(row._mapping) if row else None


def invalid_counts(conn: Connection, keys: Sequence[int]) -> dict[int, int]:
    if not keys:
        return {}
    rows = conn.execute(
        select(meter_usage.c.meter_key, func.count())
        .where(meter_usage.c.error.isnot(None), meter_usage.c.meter_key.in_(list(keys)), counts_as_of(None))
        .group_by(meter_usage.c.meter_key)
    )
    return {int(k): int(n) for k, n in rows}


# -- projections (generations) -------------------------------------------------------------------------


def add_projection(conn: Connection, meter_key: int, definition: dict[str, Any], now_us: int) -> int:
    """Start building a projection of the meter under `definition`; return its usage key.

    A build still running for an earlier definition is superseded (retired). The ready projection,
    if any, keeps answering queries until this one has caught up (`swap_in`)."""
    p = meter_projections.c
    generation = int(
        conn.execute(select(func.coalesce(func.max(p.generation) + 1, 0)).where(p.meter_key == meter_key)).scalar_one()
    )
    key = usage_key_of(meter_key, generation)
    _set_state(conn, meter_key, "building", "retired")
    conn.execute(
        insert(meter_projections).values(
            usage_key=key,
            meter_key=meter_key,
            generation=generation,
            state="building",
            projected_seq=0,
            started_us=now_us,
            **{name: definition[name] for name in DEFINITION_COLUMNS},
        )
    )
    return key


def _set_state(conn: Connection, meter_key: int, old: str, new: str) -> None:
    p = meter_projections.c
    conn.execute(update(meter_projections).where(p.meter_key == meter_key, p.state == old).values(state=new))


def retire_building(conn: Connection, meter_key: int) -> None:
    """Drop a build that is no longer wanted (the definition went back to the ready one's)."""
    _set_state(conn, meter_key, "building", "retired")


def retire_projections(conn: Connection, meter_key: int) -> None:
    """A deleted meter's projections: their rows are deleted in the background (`purge_retired`)."""
    p = meter_projections.c
    conn.execute(update(meter_projections).where(p.meter_key == meter_key).values(state="retired"))
    conn.execute(update(meters).where(meters.c.key == meter_key).values(usage_key=None))


def swap_in(conn: Connection, usage_keys: Sequence[int], now_us: int) -> None:
    """Make caught-up builds the projections queries read, in one transaction: each meter's previous
    ready projection is retired and `meters.usage_key` points at the new one."""
    p = meter_projections.c
    for key in usage_keys:
        meter_key = conn.execute(
            select(p.meter_key).where(p.usage_key == key, p.state == "building")
        ).scalar_one_or_none()
        if meter_key is None:
            continue
        _set_state(conn, meter_key, "ready", "retired")
        conn.execute(update(meter_projections).where(p.usage_key == key).values(state="ready", ready_us=now_us))
        cursor = select(p.projected_seq).where(p.usage_key == key).scalar_subquery()
        conn.execute(update(meters).where(meters.c.key == meter_key).values(usage_key=key, projected_seq=cursor))


def projection_rows(
    conn: Connection, states: Sequence[str] = ("building", "ready"), meter_key: int | None = None
) -> list[dict[str, Any]]:
    """Projections in these states of live meters, with the meter's id and slug, by usage key."""
    p = meter_projections.c
    query = (
        select(meter_projections, meters.c.id.label("meter_id"), meters.c.slug.label("meter_slug"))
        .select_from(meter_projections.join(meters, meters.c.key == p.meter_key))
        .where(p.state.in_(list(states)), meters.c.deleted_us.is_(None))
        .order_by(p.usage_key)
    )
    if meter_key is not None:
        query = query.where(p.meter_key == meter_key)
    return [dict(r._mapping) for r in conn.execute(query)]


def has_retired(conn: Connection) -> bool:
    p = meter_projections.c
    return conn.execute(select(p.usage_key).where(p.state == "retired").limit(1)).first() is not None


def purge_retired(conn: Connection, limit: int) -> int:
    """Delete up to `limit` rows of one retired projection (the projection itself once it has
    none left); return how many rows went, so callers know whether to go on."""
    p = meter_projections.c
    key = conn.execute(select(p.usage_key).where(p.state == "retired").order_by(p.usage_key).limit(1)).scalar()
    if key is None:
        return 0
    u = meter_usage.c
    # A page in event time order, bounded through ix_meter_usage_time: the (limit+1)th row's time.
    # Rows sharing that time go with it, so a page always shrinks the rest.
    bound = conn.execute(
        select(u.time_us).where(u.meter_key == key).order_by(u.time_us).offset(limit).limit(1)
    ).scalar()
    if bound is None:  # the last page: the projection goes with it
        deleted = conn.execute(delete(meter_usage).where(u.meter_key == key)).rowcount
        conn.execute(delete(meter_projections).where(p.usage_key == key))
    else:
        deleted = conn.execute(delete(meter_usage).where(u.meter_key == key, u.time_us <= bound)).rowcount
    return max(int(deleted), 1)


# -- materializer -----------------------------------------------------------------------------------------


def lock_materializer(conn: Connection) -> None:
    """On PostgreSQL, make concurrent materializers (other processes) take turns."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MATERIALIZER_LOCK})


def live_meter_reads(conn: Connection) -> list[tuple[str, str, str, str | None, Any]]:
    """(slug, event type, aggregation, valueProperty, groupBy) of every live meter, in `conn`'s
    transaction: what ingest checks the values of (tallybook.ingest.metered)."""
    query = select(
        meters.c.slug, meters.c.event_type, meters.c.aggregation, meters.c.value_property, meters.c.group_by
    ).where(meters.c.deleted_us.is_(None))
    return [tuple(row) for row in conn.execute(query)]


def visible_max_seq(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(events.c.seq), 0))).scalar_one())


def settled_horizon(conn: Connection) -> int:
    """The highest seq such that every event with a lower or equal seq is committed or never will be.

    PostgreSQL allocates seqs before commit, so a transaction still in flight may hold a seq below
    the highest visible one. A SHARE lock on `events` waits for in-flight inserts to finish (and
    holds new ones back for the instant it takes to read the maximum); run this in its own short
    transaction. SQLite has one writer at a time, so what is visible is settled.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE events IN SHARE MODE"))
    return visible_max_seq(conn)


def cursors(conn: Connection, state: str = "ready") -> dict[int, int]:
    """{usage key: cursor} of live meters' projections in `state`."""
    p = meter_projections.c
    rows = conn.execute(
        select(p.usage_key, p.projected_seq)
        .select_from(meter_projections.join(meters, meters.c.key == p.meter_key))
        .where(p.state == state, meters.c.deleted_us.is_(None))
    )
    return {int(k): int(s) for k, s in rows}


@dataclass(frozen=True, slots=True)
class UnreadableData:
    """Stands in for event data that cannot be decoded, so one such row fails only itself."""

    reason: str


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every event (json.loads with options would build a new one per call). Exact
# numbers as in tallybook.jsonutil: fractions become Decimal, integers int, NaN/Infinity refused.
_DATA_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


# The same reading in C (msgspec calls back only for numbers with a fraction or exponent, with
# their literal text); what it refuses goes through the decoders above and below.
_FAST_DATA_DECODER = msgspec.json.Decoder(float_hook=Decimal)


def _decode_data(raw: Any) -> Any:
    if raw is None or isinstance(raw, dict):
        return raw
    try:
        return _FAST_DATA_DECODER.decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError):
        pass
    try:
        return _DATA_DECODER.decode(raw)
    except (ValueError, RecursionError):
        pass
    # Integers past Python's 4,300-digit int(str) limit need jsonutil's decoder; data that not
    # even it reads fails only its own row (see UnreadableData).
    try:
        return jsonutil.loads(raw)
    except ValueError as exc:
        return UnreadableData(str(exc)[:200])


def events_after(
    conn: Connection, after_seq: int, up_to_seq: int, types: Iterable[str], page: int = EVENT_PAGE
) -> Iterator[list[StoredEvent]]:
    """Events with after_seq < seq <= up_to_seq of the given types, in seq order, page by page.

    Read through the driver's own cursor: this is the materializer's hot loop, and SQLAlchemy's
    Row objects cost more per event than the read itself."""
    wanted = sorted(set(types))
    if not wanted:
        return
    columns = "seq, type, subject, time_us, ingested_us, {data}, voided_us FROM events"
    if conn.dialect.name == "sqlite":
        # The data as stored: the JSON text jsonutil.dumps wrote.
        where = f"seq > ? AND seq <= ? AND type IN ({', '.join('?' * len(wanted))}) ORDER BY seq LIMIT ?"
        sql = f"SELECT {columns.format(data='data')} WHERE {where}"

        def bind(cursor_seq: int) -> tuple[Any, ...]:
            return (cursor_seq, up_to_seq, *wanted, page)
    else:
        # JSONB rendered as text keeps every digit of its numbers.
        where = "seq > %s AND seq <= %s AND type = ANY(%s) ORDER BY seq LIMIT %s"
        sql = f"SELECT {columns.format(data='data::text')} WHERE {where}"

        def bind(cursor_seq: int) -> tuple[Any, ...]:
            return (cursor_seq, up_to_seq, wanted, page)

    driver = conn.connection.driver_connection
    assert driver is not None
    decode = _decode_data
    cursor = after_seq
    while cursor < up_to_seq:
        raw = driver.cursor()
        try:
            raw.execute(sql, bind(cursor))
            rows = raw.fetchall()
        finally:
            raw.close()
        if not rows:
            return
        yield [StoredEvent(r[0], r[1], r[2], r[3], r[4], decode(r[5]), r[6]) for r in rows]
        cursor = int(rows[-1][0])
        if len(rows) < page:
            return


_USAGE_COLUMNS = (
    "meter_key",
    "subject",
    "time_us",
    "event_seq",
    "ingested_us",
    "num",
    "ukey",
    "groups",
    "error",
    "voided_us",
)


def insert_usage(conn: Connection, records: Sequence[UsageRecord]) -> None:
    """Append projection rows (plain DB-API executemany: this is the materializer's hot loop)."""
    if not records:
        return
    dialect = conn.dialect.name
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO meter_usage ({', '.join(_USAGE_COLUMNS)}) VALUES ({', '.join([marker] * len(_USAGE_COLUMNS))})"
    rows = [
        (
            r.meter_key,
            r.subject,
            r.time_us,
            r.event_seq,
            r.ingested_us,
            to_store_value(dialect, r.num),
            r.ukey,
            None if r.groups is None else jsonutil.dumps(r.groups),
            r.error,
            r.voided_us,
        )
        for r in records
    ]
    # In primary-key order: the projection is clustered by (meter, subject, time, seq) while
    # events arrive in seq order, spread over every subject; sorted rows fill each B-tree page
    # once instead of touching a page per row.
    rows.sort(key=_primary_key)
    if dialect == "postgresql":
        # COPY: one stream for the whole chunk instead of a statement per row.
        driver = conn.connection.driver_connection
        assert driver is not None
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY meter_usage ({', '.join(_USAGE_COLUMNS)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        return
    for start in range(0, len(rows), 5_000):
        conn.exec_driver_sql(sql, rows[start : start + 5_000])


def _primary_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row[:4]


def mark_usage_voided(conn: Connection, voided: Sequence[tuple[int, str, str, int]], voided_us: int) -> int:
    """Stamp the projected rows of voided events, given as (seq, type, subject, time_us).

    Each row is found by its primary key (meter, subject, time, seq), one lookup per projection
    (ready or building) of the event's type. Events not projected yet get the stamp from `events`
    when the materializer reaches them; callers hold the materializer lock so the two cannot interleave.
    """
    if not voided:
        return 0
    by_type: dict[str, list[int]] = {}
    # Every projection that is read or being built: a build that already passed the event must
    # get the stamp too, or the voided event would count again once the build is swapped in.
    for row in projection_rows(conn):
        by_type.setdefault(row["event_type"], []).append(int(row["usage_key"]))
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"UPDATE meter_usage SET voided_us = {marker} WHERE meter_key = {marker} AND subject = {marker} "
        f"AND time_us = {marker} AND event_seq = {marker}"
    )
    rows = [
        (voided_us, key, subject, time_us, seq)
        for seq, event_type, subject, time_us in voided
        for key in by_type.get(event_type, ())
    ]
    for start in range(0, len(rows), 5_000):
        conn.exec_driver_sql(sql, rows[start : start + 5_000])
    return len(rows)


def counts_as_of(as_of_us: int | None) -> ColumnElement[bool]:
    """Rows that count for a query as of `as_of_us` (None: now): not voided by then."""
    voided = meter_usage.c.voided_us
    if as_of_us is None:
        return voided.is_(None)
    return or_(voided.is_(None), voided > as_of_us)


def set_cursor(conn: Connection, keys: Sequence[int], seq: int) -> None:
    p = meter_projections.c
    conn.execute(
        update(meter_projections).where(p.usage_key.in_(list(keys)), p.projected_seq < seq).values(projected_seq=seq)
    )
    conn.execute(
        update(meters).where(meters.c.usage_key.in_(list(keys)), meters.c.projected_seq < seq).values(projected_seq=seq)
    )


# -- queries ------------------------------------------------------------------------------------------------


def customer_subject_map(conn: Connection, customer_refs: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Resolve customer ids (or keys) to their subjects: ({subject: customer_id}, unknown refs)."""
    if not customer_refs:
        return {}, []
    refs = list(dict.fromkeys(customer_refs))
    found = conn.execute(
        select(customers.c.id, customers.c.key).where(
            customers.c.deleted_us.is_(None), or_(customers.c.id.in_(refs), customers.c.key.in_(refs))
        )
    ).all()
    known = {r[0] for r in found} | {r[1] for r in found if r[1] is not None}
    ids = [r[0] for r in found]
    rows = conn.execute(
        select(customer_subjects.c.subject, customer_subjects.c.customer_id).where(
            customer_subjects.c.customer_id.in_(ids)
        )
    )
    return {r[0]: r[1] for r in rows}, [ref for ref in refs if ref not in known]


def time_extent(conn: Connection, meter_key: int, start_us: int | None, end_us: int | None) -> tuple[int, int] | None:
    """(earliest, latest) event time of the meter's projection rows in [start, end), or None.

    Two index seeks on ix_meter_usage_time, whatever the number of rows: each bound is its own
    scalar subquery because SQLite answers a lone min() or max() from the index but scans the range
    for both in one SELECT. Rows voided or invalid are included: the extent only has to cover what a
    query may count.
    """
    u = meter_usage
    conditions: list[Any] = [u.c.meter_key == meter_key]
    if start_us is not None:
        conditions.append(u.c.time_us >= start_us)
    if end_us is not None:
        conditions.append(u.c.time_us < end_us)
    first = select(func.min(u.c.time_us)).where(*conditions).scalar_subquery()
    last = select(func.max(u.c.time_us)).where(*conditions).scalar_subquery()
    row = conn.execute(select(first, last)).one()
    if row[0] is None or row[1] is None:
        return None
    return int(row[0]), int(row[1])


def _single_window(spec: AggregateSpec) -> bool:
    return spec.step_us is None and not spec.bounds_us


def _bucket(spec: AggregateSpec) -> ColumnElement[Any]:
    time_us = meter_usage.c.time_us
    if spec.step_us is not None:
        return literal_column(f"(meter_usage.time_us - {int(spec.start_us or 0)}) / {int(spec.step_us)}")
    return func.tb_bucket(time_us)


def _pg_bucket(spec: AggregateSpec) -> ColumnElement[Any]:
    if spec.step_us is not None:
        return _bucket(spec)
    edges = bindparam("tb_bounds", list(spec.bounds_us), type_=postgresql.ARRAY(BigInteger))
    return func.width_bucket(meter_usage.c.time_us, edges) - 1


def aggregate(conn: Connection, spec: AggregateSpec) -> list[AggregateRow]:
    """Run one usage query against the projection; values come back exact."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        _sqlite_register(conn, spec.bounds_us if spec.step_us is None else None)
    bucket: Any
    if _single_window(spec):
        bucket = literal_column("0").label("w")
    elif dialect == "sqlite":
        bucket = _bucket(spec).label("w")
    else:
        bucket = _pg_bucket(spec).label("w")
    u = meter_usage
    conditions: list[Any] = [u.c.meter_key == spec.meter_key]
    if spec.start_us is not None:
        conditions.append(u.c.time_us >= spec.start_us)
    if spec.end_us is not None:
        conditions.append(u.c.time_us < spec.end_us)
    if spec.as_of_us is not None:
        conditions.append(u.c.ingested_us <= spec.as_of_us)
    conditions.append(counts_as_of(spec.as_of_us))
    if spec.through_seq is not None:
        conditions.append(u.c.event_seq <= spec.through_seq)
    if spec.subjects is not None:
        conditions.append(u.c.subject.in_(list(spec.subjects)))
    for key, wanted in spec.group_filters.items():
        if isinstance(wanted, StringFilter):
            # advancedMeterGroupByFilters: a missing value compares as '' (OpenMeter's JSON_VALUE).
            conditions.append(string_condition(func.coalesce(u.c.groups[key].as_string(), ""), wanted, dialect))
        elif isinstance(wanted, str):
            conditions.append(u.c.groups[key].as_string() == wanted)
        else:
            conditions.append(u.c.groups[key].as_string().in_(list(wanted)))

    constant: Any = literal_column("NULL")
    dims: list[Any] = [bucket]
    grouping: list[Any] = [] if _single_window(spec) else [bucket]
    source: Any = u
    if spec.by_subject:
        dims.append(u.c.subject.label("s"))
        grouping.append(u.c.subject)
    else:
        dims.append(constant.label("s"))
    if spec.by_customer:
        source = u.outerjoin(customer_subjects, customer_subjects.c.subject == u.c.subject)
        dims.append(customer_subjects.c.customer_id.label("c"))
        grouping.append(customer_subjects.c.customer_id)
    else:
        dims.append(constant.label("c"))
    group_cols = [u.c.groups[k].as_string().label(f"g{i}") for i, k in enumerate(spec.group_keys)]
    dims.extend(group_cols)
    grouping.extend(u.c.groups[k].as_string() for k in spec.group_keys)

    agg = spec.aggregation
    if agg in ("LATEST", "FIRST"):
        return _latest_or_first(conn, spec, source, conditions, dims, grouping)
    num = u.c.num
    measures: list[Any]
    if dialect == "sqlite":
        is_int = func.typeof(num) == "integer"
        is_text = func.typeof(num) == "text"
        if agg == "MIN":
            measures = [func.min(num).filter(is_int), func.tb_dmin(num).filter(is_text)]
        elif agg == "MAX":
            measures = [func.max(num).filter(is_int), func.tb_dmax(num).filter(is_text)]
        elif agg == "UNIQUE_COUNT":
            measures = [func.count(distinct(u.c.ukey))]
        else:
            measures = [func.sum(num).filter(is_int), func.tb_dsum(num).filter(is_text)]
    elif agg == "MIN":
        measures = [func.min(num)]
    elif agg == "MAX":
        measures = [func.max(num)]
    elif agg == "UNIQUE_COUNT":
        measures = [func.count(distinct(u.c.ukey))]
    else:
        measures = [func.sum(num)]
    counted = u.c.ukey if agg == "UNIQUE_COUNT" else num
    # The span covers the events that count (those with a usable value), like the value does.
    spans: list[Any] = []
    if spec.span:
        counted_time = case((counted.isnot(None), u.c.time_us))
        spans = [func.min(counted_time), func.max(counted_time)]
    # Group by the output names: the same JSON path written twice would be two bound parameters
    # to PostgreSQL, which then would not see the select-list expression as grouped.
    by_name: list[Any] = [literal_column(name) for name in _grouped_names(spec)]
    query = select(*dims, *measures, func.count(counted), *spans).select_from(source).where(*conditions)
    if by_name:
        query = query.group_by(*by_name)
    try:
        result = conn.execute(query).all()
    except OperationalError as exc:
        # SQLite's integer SUM refuses to overflow 64 bits; add those rows up in Python instead.
        if dialect != "sqlite" or "integer overflow" not in str(exc):
            raise
        exact = select(*dims, func.tb_dsum(num), func.count(counted), *spans).select_from(source).where(*conditions)
        result = conn.execute(exact.group_by(*by_name) if by_name else exact).all()
    out: list[AggregateRow] = []
    for row in result:
        window, subject, customer = row[0], row[1], row[2]
        groups: tuple[Any, ...] = tuple(row[3 : 3 + len(group_cols)])
        rest = row[3 + len(group_cols) :]
        first_us = last_us = None
        if spans:
            first_us, last_us = _opt_int(rest[-2]), _opt_int(rest[-1])
            rest = rest[:-2]
        count = int(rest[-1])
        value = _combine(agg, rest[:-1])
        if count == 0 and agg != "COUNT" and agg != "UNIQUE_COUNT":
            continue  # only invalid events in this group: nothing to report
        out.append(AggregateRow(int(window), subject, customer, groups, value, count, first_us, last_us))
    return out


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _grouped_names(spec: AggregateSpec) -> list[str]:
    names = [] if _single_window(spec) else ["w"]
    if spec.by_subject:
        names.append("s")
    if spec.by_customer:
        names.append("c")
    names.extend(f"g{i}" for i in range(len(spec.group_keys)))
    return names


def _combine(agg: str, parts: Sequence[Any]) -> Decimal | None:
    values = [v for v in (from_store_value(p) for p in parts) if v is not None]
    if agg == "UNIQUE_COUNT":
        return Decimal(int(parts[0] or 0))
    if not values:
        return None
    if agg == "MIN":
        return min(values)
    if agg == "MAX":
        return max(values)
    return exact_total(values)


def _latest_or_first(
    conn: Connection,
    spec: AggregateSpec,
    source: Any,
    conditions: list[Any],
    dims: list[Any],
    grouping: list[Any],
) -> list[AggregateRow]:
    u = meter_usage
    if spec.aggregation == "LATEST":
        order = [u.c.time_us.desc(), u.c.event_seq.desc()]
    else:
        order = [u.c.time_us.asc(), u.c.event_seq.asc()]
    spans: list[Any] = []
    if spec.span:
        spans = [
            func.min(u.c.time_us).over(partition_by=grouping).label("first_us"),
            func.max(u.c.time_us).over(partition_by=grouping).label("last_us"),
        ]
    ranked = (
        select(
            *dims,
            u.c.num.label("v"),
            func.row_number().over(partition_by=grouping, order_by=order).label("rn"),
            func.count().over(partition_by=grouping).label("n"),
            *spans,
        )
        .select_from(source)
        .where(*conditions, u.c.num.isnot(None))
        .subquery()
    )
    query = select(ranked).where(ranked.c.rn == 1)
    out = []
    group_count = len(dims) - 3
    for row in conn.execute(query):
        mapping = row._mapping
        groups = tuple(mapping[f"g{i}"] for i in range(group_count))
        out.append(
            AggregateRow(
                int(mapping["w"]),
                mapping["s"],
                mapping["c"],
                groups,
                from_store_value(mapping["v"]),
                int(mapping["n"]),
                _opt_int(mapping["first_us"]) if spec.span else None,
                _opt_int(mapping["last_us"]) if spec.span else None,
            )
        )
    return out


def subjects_in(conn: Connection, meter_keys: Sequence[int], start_us: int | None, end_us: int | None) -> list[str]:
    if not meter_keys:
        return []
    u = meter_usage
    conditions: list[Any] = [u.c.meter_key.in_(list(meter_keys)), counts_as_of(None)]
    if start_us is not None:
        conditions.append(u.c.time_us >= start_us)
    if end_us is not None:
        conditions.append(u.c.time_us < end_us)
    rows = conn.execute(select(u.c.subject).distinct().where(*conditions).order_by(u.c.subject))
    return [r[0] for r in rows]


def group_values_in(
    conn: Connection, meter_key: int, group_key: str, start_us: int | None, end_us: int | None
) -> list[str]:
    """The distinct values of one groupBy key in the meter's events with time in [start, end),
    in code point order (COLLATE "C" on PostgreSQL, as SQLite's BINARY). Missing values are left out."""
    u = meter_usage
    value = u.c.groups[group_key].as_string()
    conditions: list[Any] = [u.c.meter_key == meter_key, counts_as_of(None), value.isnot(None)]
    if start_us is not None:
        conditions.append(u.c.time_us >= start_us)
    if end_us is not None:
        conditions.append(u.c.time_us < end_us)
    found = select(value.label("v")).distinct().where(*conditions).subquery()
    order = found.c.v.collate("C") if conn.dialect.name == "postgresql" else found.c.v
    return [r[0] for r in conn.execute(select(found.c.v).order_by(order))]


def validation_errors(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """{(source, id): [(meter slug, error)]} for the given events that a meter could not count."""
    if not keys:
        return {}
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for start in range(0, len(keys), 500):
        page = list(keys[start : start + 500])
        rows = conn.execute(
            select(events.c.source, events.c.event_id, meters.c.slug, meter_usage.c.error)
            .select_from(
                events.join(
                    meter_usage, and_(meter_usage.c.event_seq == events.c.seq, meter_usage.c.error.isnot(None))
                ).join(meters, meters.c.usage_key == meter_usage.c.meter_key)
            )
            .where(tuple_(events.c.source, events.c.event_id).in_(page), meters.c.deleted_us.is_(None))
            .order_by(meters.c.slug)
        )
        for source, event_id, slug, error in rows:
            found.setdefault((source, event_id), []).append((slug, error))
    return found
