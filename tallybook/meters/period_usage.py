"""Usage by period for billing and codehooks clients: every meter's value for one subject
(`period_usage`) and aggregation documents per (subject, period) (`period_documents`), each one
query per meter over the served projections."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from tallybook.clock import to_micros
from tallybook.exact import total as exact_total
from tallybook.meters.definitions import opt_micros
from tallybook.meters.models import InvalidQuery, Meter, PeriodUsage, UsageQuery
from tallybook.meters.queries import ONE_US, MeterQueries, zone_named
from tallybook.meters.windows import PERIODS, window_end, window_start


def period_usage(
    queries: MeterQueries, subject: str, start: datetime, end: datetime, as_of: datetime | None = None
) -> PeriodUsage:
    """Every meter's value for one subject over [start, end), codehooks style (see PeriodUsage)."""
    with queries.storage.reading() as tx:
        meters = queries.served_meters(tx)
    names = usage_keys(meters)
    queries.catch_up()
    values: dict[str, Decimal] = {}
    counts: dict[str, int] = {}
    for meter in meters:
        q = UsageQuery(meter=meter.id, from_=start, to=end, subjects=(subject,), as_of=as_of)
        counted = queries.run(meter, q, catch_up=False, check_alignment=False)
        name = names[meter.key]
        values[name] = exact_total(c.row.value for c in counted)
        counts[name] = sum(c.count for c in counted)
    with queries.storage.reading() as tx:
        total = tx.distinct_events(
            [m.key for m in meters], subject, to_micros(start), to_micros(end), opt_micros(as_of)
        )
    return PeriodUsage(subject, start, end, values, counts, total)


def period_documents(
    queries: MeterQueries,
    period: str,
    start: datetime,
    end: datetime,
    subject: str | None = None,
    tz_name: str = "UTC",
    as_of: datetime | None = None,
) -> list[dict[str, Any]]:
    """codehooks aggregation documents: one per (subject, period) with events in [start, end).

    Runs one query per meter (grouped by subject and period window), not one per customer.
    """
    if period not in PERIODS:
        raise InvalidQuery(f"period must be one of {', '.join(PERIODS)}, got {period!r}")
    size = PERIODS[period]
    tz = zone_named(tz_name)
    first = window_start(size, start, tz)
    last = window_end(size, end - ONE_US if end > start else start, tz)
    with queries.storage.reading() as tx:
        meters = queries.served_meters(tx)
    names = usage_keys(meters)
    queries.catch_up()
    documents: dict[tuple[str, datetime], dict[str, Any]] = {}
    for meter in meters:
        q = UsageQuery(
            meter=meter.id,
            from_=first,
            to=last,
            window_size=size,
            window_time_zone=tz_name,
            subjects=(subject,) if subject else (),
            group_by=("subject",),
            as_of=as_of,
        )
        counted = queries.run(meter, q, catch_up=False)
        for item in counted:
            row = item.row
            assert row.subject is not None
            doc = documents.setdefault(
                (row.subject, row.window_start),
                {
                    "customerId": row.subject,
                    "period": period,
                    "periodStart": row.window_start,
                    "periodEnd": row.window_end,
                    "periodKey": period_key(period, row.window_start, tz),
                    "events": {},
                    "eventCounts": {},
                },
            )
            doc["events"][names[meter.key]] = row.value
            doc["eventCounts"][names[meter.key]] = item.count
    return [documents[k] for k in sorted(documents, key=lambda k: (k[1], k[0]))]


def usage_keys(meters: Sequence[Meter]) -> dict[int, str]:
    """codehooks `events` keys: the event type when one meter uses it, else the meter's slug."""
    per_type: dict[str, int] = {}
    for meter in meters:
        per_type[meter.event_type] = per_type.get(meter.event_type, 0) + 1
    return {m.key: m.event_type if per_type[m.event_type] == 1 else m.slug for m in meters}


def period_key(period: str, start: datetime, tz: Any) -> str:
    local = start.astimezone(tz)
    if period == "hourly":
        return local.strftime("%Y-%m-%dT%H")
    if period == "daily":
        return local.strftime("%Y-%m-%d")
    if period == "weekly":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "monthly":
        return local.strftime("%Y-%m")
    return local.strftime("%Y")
