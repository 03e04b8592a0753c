"""The SQL of meter definitions and their projections (generations): rows in, rows out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, or_, select, update

from tallybook.meters.ports import DEFINITION_COLUMNS
from tallybook.meters.tables import counts_as_of, meter_projections, meter_usage, meters, usage_key_of
from tallybook.store.schema import events

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


# Statements that every usage query and entitlement `value` runs, built once (bound parameters
# instead of a new expression per call: their construction was a measurable part of an answer).
_METER_BY_REF = select(meters).where(
    meters.c.deleted_us.is_(None), or_(meters.c.id == bindparam("ref"), meters.c.slug == bindparam("ref"))
)


def meter_row(conn: Connection, id_or_slug: str) -> dict[str, Any] | None:
    row = conn.execute(_METER_BY_REF, {"ref": id_or_slug}).first()
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


_PROJECTIONS = (
    select(meter_projections, meters.c.id.label("meter_id"), meters.c.slug.label("meter_slug"))
    .select_from(meter_projections.join(meters, meters.c.key == meter_projections.c.meter_key))
    .where(meter_projections.c.state.in_(bindparam("states", expanding=True)), meters.c.deleted_us.is_(None))
    .order_by(meter_projections.c.usage_key)
)
_METER_PROJECTIONS = _PROJECTIONS.where(meter_projections.c.meter_key == bindparam("meter_key"))


def projection_rows(
    conn: Connection, states: Sequence[str] = ("building", "ready"), meter_key: int | None = None
) -> list[dict[str, Any]]:
    """Projections in these states of live meters, with the meter's id and slug, by usage key."""
    if meter_key is None:
        result = conn.execute(_PROJECTIONS, {"states": list(states)})
    else:
        result = conn.execute(_METER_PROJECTIONS, {"states": list(states), "meter_key": meter_key})
    return [dict(r._mapping) for r in result]


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


_VISIBLE_MAX_SEQ = select(func.coalesce(func.max(events.c.seq), 0))
_CURSORS = (
    select(meter_projections.c.usage_key, meter_projections.c.projected_seq)
    .select_from(meter_projections.join(meters, meters.c.key == meter_projections.c.meter_key))
    .where(meter_projections.c.state == bindparam("state"), meters.c.deleted_us.is_(None))
)


def visible_max_seq(conn: Connection) -> int:
    return int(conn.execute(_VISIBLE_MAX_SEQ).scalar_one())


def cursors(conn: Connection, state: str = "ready") -> dict[int, int]:
    """{usage key: cursor} of live meters' projections in `state`."""
    return {int(k): int(s) for k, s in conn.execute(_CURSORS, {"state": state})}
