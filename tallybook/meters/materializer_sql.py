"""The materializer's SQL: the cross-process lock, the settled horizon, reading events by seq and
appending usage rows (through the driver: this is the projection's hot loop), cursors, voids."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy import Connection, select, text, update

from tallybook import jsonutil
from tallybook.meters.definitions_sql import projection_rows, visible_max_seq
from tallybook.meters.ports import EVENT_PAGE, StoredEvent, UnreadableData, UsageRecord
from tallybook.meters.tables import meter_projections, meters, to_store_value

# Serialises materializers across PostgreSQL server processes (any fixed 64-bit number).
PG_MATERIALIZER_LOCK = 7_310_220_452


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


# What the ingest writer reads once per group commit (straight on the driver, no statement building)
# to know whether its value checks are still those of the live meters (tallybook/ingest/service.py).
_LIVE_METERS_FINGERPRINT = (
    "SELECT key, slug, event_type, aggregation, value_property, CAST(group_by AS TEXT) "
    "FROM meters WHERE deleted_us IS NULL ORDER BY key"
)


def live_meters_fingerprint(conn: Connection) -> list[tuple[Any, ...]]:
    """The live meters' definitions as `conn`'s transaction sees them: the writer builds its value
    checks (`live_meter_reads`, through SQLAlchemy) again only when this changes."""
    driver = conn.connection.driver_connection
    assert driver is not None
    cursor = driver.cursor()
    try:
        cursor.execute(_LIVE_METERS_FINGERPRINT)
        return [tuple(row) for row in cursor.fetchall()]
    finally:
        cursor.close()


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


# An event as the materializer reads it; `{data}` is how the engine gives its data as JSON text.
EVENT_COLUMNS = "seq, type, subject, time_us, ingested_us, {data}, voided_us FROM events"


def stored_events(rows: Iterable[Sequence[Any]]) -> list[StoredEvent]:
    """Rows of EVENT_COLUMNS as `StoredEvent`s, their data decoded."""
    decode = _decode_data
    return [StoredEvent(r[0], r[1], r[2], r[3], r[4], decode(r[5]), r[6]) for r in rows]


def events_after(
    conn: Connection, after_seq: int, up_to_seq: int, types: Iterable[str], page: int = EVENT_PAGE
) -> Iterator[list[StoredEvent]]:
    """Events with after_seq < seq <= up_to_seq of the given types, in seq order, page by page.

    Read through the driver's own cursor: this is the materializer's hot loop, and SQLAlchemy's
    Row objects cost more per event than the read itself."""
    wanted = sorted(set(types))
    if not wanted:
        return
    columns = EVENT_COLUMNS
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
        yield stored_events(rows)
        cursor = int(rows[-1][0])
        if len(rows) < page:
            return


def chunk_end(conn: Connection, after_seq: int, up_to_seq: int, types: Iterable[str], events: int) -> int:
    """The seq of the `events`-th event of these types with after_seq < seq <= up_to_seq, else
    `up_to_seq` (one read of the seq index, no event data)."""
    wanted = sorted(set(types))
    if not wanted or events < 1:
        return up_to_seq
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    marks = ", ".join([marker] * len(wanted))
    sql = (
        f"SELECT seq FROM events WHERE seq > {marker} AND seq <= {marker} AND type IN ({marks}) "
        f"ORDER BY seq LIMIT 1 OFFSET {marker}"
    )
    found = conn.exec_driver_sql(sql, (after_seq, up_to_seq, *wanted, events - 1)).scalar()
    return up_to_seq if found is None else int(found)


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


def set_cursor(conn: Connection, keys: Sequence[int], seq: int) -> None:
    p = meter_projections.c
    conn.execute(
        update(meter_projections).where(p.usage_key.in_(list(keys)), p.projected_seq < seq).values(projected_seq=seq)
    )
    conn.execute(
        update(meters).where(meters.c.usage_key.in_(list(keys)), meters.c.projected_seq < seq).values(projected_seq=seq)
    )
