"""The SQL behind usage queries: one aggregate per query over `meter_usage`, windowed and grouped
in SQL, values exact on both engines (see meters/tables.py)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    and_,
    bindparam,
    case,
    distinct,
    func,
    literal_column,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.elements import ColumnElement

from tallybook.customers.sql import customer_subjects, customers
from tallybook.exact import CONTEXT as EXACT
from tallybook.exact import total as exact_total
from tallybook.filters.model import StringFilter
from tallybook.filters.sql import string_condition
from tallybook.meters.ports import AggregateRow, AggregateSpec
from tallybook.meters.tables import counts_as_of, from_store_value, meter_usage, meters
from tallybook.store.schema import events

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
    if bounds is not None and len(bounds) - 2 >= _CASE_BUCKETS:
        edges = list(bounds)
        raw.create_function("tb_bucket", 1, lambda t: bisect_right(edges, t) - 1, deterministic=True)


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


# Up to this many ranges, SQLite buckets by arbitrary edges with a CASE in SQL (entitlements' few
# burn-down segments); beyond it, with a Python function (one call per row, but no huge statement).
_CASE_BUCKETS = 64


def _bucket(spec: AggregateSpec) -> ColumnElement[Any]:
    time_us = meter_usage.c.time_us
    if spec.step_us is not None:
        return literal_column(f"(meter_usage.time_us - {int(spec.start_us or 0)}) / {int(spec.step_us)}")
    inner = spec.bounds_us[1:-1]
    if len(inner) < _CASE_BUCKETS:
        # The rows are already limited to [first edge, last edge): only the inner edges split them.
        whens = " ".join(f"WHEN meter_usage.time_us < {int(edge)} THEN {i}" for i, edge in enumerate(inner))
        return literal_column(f"CASE {whens} ELSE {len(inner)} END" if whens else "0")
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


def distinct_events(
    conn: Connection, meter_keys: Sequence[int], subject: str, start_us: int, end_us: int, as_of_us: int | None
) -> int:
    """How many distinct events these projections count for one subject in [start, end) as of
    `as_of_us` (None: now): an event several meters read counts once."""
    if not meter_keys:
        return 0
    u = meter_usage
    conditions = [
        u.c.meter_key.in_(list(meter_keys)),
        u.c.subject == subject,
        u.c.time_us >= start_us,
        u.c.time_us < end_us,
        u.c.error.is_(None),
        counts_as_of(as_of_us),
    ]
    if as_of_us is not None:
        conditions.append(u.c.ingested_us <= as_of_us)
    return int(conn.execute(select(func.count(func.distinct(u.c.event_seq))).where(*conditions)).scalar_one())
