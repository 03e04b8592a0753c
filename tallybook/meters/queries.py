"""Usage queries against the served projections: a `UsageQuery` checked, windowed in its time zone
and turned into one `AggregateSpec` for the storage (`ports.UsageReader.aggregate`), and the rows
it answers turned into `UsageRow`s.

Query paths read "served" meters: the `Meter` with `key` set to its ready projection's usage key
(meter_usage.meter_key) and the definition that projection was built with (`served`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tallybook.clock import Clock, from_micros, to_micros
from tallybook.meters.definitions import find, meter_from_row, opt_micros, projection_status, rebuilding, serve
from tallybook.meters.materializer import pending_in
from tallybook.meters.models import RESERVED_GROUP_KEYS, Aggregation, InvalidQuery, Meter, UsageQuery, UsageRow
from tallybook.meters.ports import AggregateRow, AggregateSpec, MeterStorage, MeterTransaction
from tallybook.meters.windows import (
    TYPICAL_LENGTH,
    TooManyWindows,
    UnknownTimeZone,
    Windows,
    WindowSize,
    alignment_rule,
    is_aligned,
    window_end,
    window_start,
    windows_between,
    zone,
)


@dataclass(frozen=True, slots=True)
class CountedRow:
    row: UsageRow
    count: int  # events behind the value


class MeterQueries:
    """Reads usage for MeterService (and its period documents); `catch_up` brings the projections up
    to every committed event before a query reads them."""

    def __init__(self, storage: MeterStorage, clock: Clock, catch_up: Callable[[], int]) -> None:
        self.storage = storage
        self.clock = clock
        self.catch_up = catch_up

    def served(self, tx: MeterTransaction, id_or_slug: str) -> Meter:
        """The meter as queries read it: its ready projection's key and definition. A meter whose
        first build is still running has none: `MeterRebuilding`."""
        meter = find(tx, id_or_slug)
        rows = tx.projection_rows(("building", "ready"), meter.key)
        ready = [r for r in rows if r["state"] == "ready"]
        if not ready:
            status = projection_status(rows, tx.visible_max_seq(), to_micros(self.clock.now()))
            raise rebuilding(
                f"meter {meter.slug!r} is being built from the stored events ({status.percent}% done); "
                "its usage can be queried once the build is done",
                status,
            )
        return serve(meter, ready[0])

    def check_keys_served(self, tx: MeterTransaction, served: Meter, keys: Sequence[str]) -> None:
        """A groupBy key only the definition being built has: say so (503), not "unknown key" (400)."""
        current = find(tx, served.id)
        for key in keys:
            if key in current.group_by and key not in served.group_by:
                rows = tx.projection_rows(("building",), current.key)
                status = projection_status(rows, tx.visible_max_seq(), to_micros(self.clock.now()))
                raise rebuilding(
                    f"groupBy key {key!r} is new in meter {served.slug!r}'s changed definition, which is being "
                    f"rebuilt ({status.percent}% done); until it is done queries answer from the previous "
                    f"definition (its keys: {', '.join(sorted(served.group_by)) or 'none'})",
                    status,
                )

    def live_meters(self, tx: MeterTransaction) -> list[Meter]:
        return [meter_from_row(row) for row in tx.live_meter_rows()]

    def served_meters(self, tx: MeterTransaction) -> list[Meter]:
        """Live meters as queries read them (see `served`); meters in their first build are left
        out: billing and period documents count them once they are built."""
        return self.projection_meters(tx, "ready")

    def projection_meters(self, tx: MeterTransaction, state: str) -> list[Meter]:
        """Every live meter's projection in `state`, as the meter with that projection's usage key
        and definition (what the materializer projects with and queries read)."""
        meters = {m.key: m for m in self.live_meters(tx)}
        return [
            serve(meters[int(row["meter_key"])], row)
            for row in tx.projection_rows((state,))
            if int(row["meter_key"]) in meters
        ]

    def run(self, meter: Meter, q: UsageQuery, catch_up: bool = True, check_alignment: bool = True) -> list[CountedRow]:
        """The query's rows (windows and groups with events only), sorted.

        Without `from` the query starts at the meter's first event, without `to` it runs past the
        last one (future-dated events included), as OpenMeter's does. A total without one of them
        reports the span of each group's data: from the minute of its first counted event to the
        end of the minute of its last.
        """
        tz = zone_named(q.window_time_zone)
        size = q.window_size
        allowed = set(meter.group_by) | RESERVED_GROUP_KEYS
        for key in q.group_by:
            if key not in allowed:
                raise InvalidQuery(
                    f"groupBy {key!r} is not a groupBy key of meter {meter.slug!r}; "
                    f"use one of {', '.join(sorted(allowed))}"
                )
        for key in q.filter_group_by:
            if key not in meter.group_by:
                known = ", ".join(sorted(meter.group_by)) or "none"
                raise InvalidQuery(
                    f"filterGroupBy[{key}]: {key!r} is not a groupBy key of meter {meter.slug!r} (its keys: {known})"
                )
        for name, value in (("from", q.from_), ("to", q.to), ("asOf", q.as_of)):
            if value is not None and value.tzinfo is None:
                raise InvalidQuery(f"{name} needs a time zone offset, e.g. 2026-01-05T00:00:00Z")
        if check_alignment and size is not None:
            for name, value in (("from", q.from_), ("to", q.to)):
                if value is not None and not is_aligned(size, value, tz):
                    raise InvalidQuery(
                        f"{name}={value.isoformat()} is not aligned to windowSize={size.value} in "
                        f"{q.window_time_zone}: with this window size it must fall on {alignment_rule(size)} "
                        f"in {q.window_time_zone}, e.g. {window_start(size, value, tz).astimezone(tz).isoformat()}",
                        rule=alignment_rule(size),
                    )
        start = q.from_.astimezone(UTC) if q.from_ else None
        end = q.to.astimezone(UTC) if q.to else None
        if start is not None and end is not None and start >= end:
            raise InvalidQuery(f"from ({start.isoformat()}) must be before to ({end.isoformat()})")
        if catch_up:
            self.catch_up()

        subjects: tuple[str, ...] | None = tuple(dict.fromkeys(q.subjects)) if q.subjects else None
        customer_of: dict[str, str] = {}
        with self.storage.reading() as tx:
            if q.customer_ids:
                customer_of, unknown = tx.customer_subject_map(list(q.customer_ids))
                if unknown:
                    raise InvalidQuery(f"unknown customer(s) in filterCustomerId: {', '.join(unknown)}")
                allowed_subjects = set(customer_of)
                subjects = tuple(s for s in (subjects or tuple(sorted(allowed_subjects))) if s in allowed_subjects)
            if subjects is not None and not subjects:
                return []
            windows: Windows | None = None
            start_us, end_us = opt_micros(start), opt_micros(end)
            if size is not None:
                windows = windows_with_events(tx, meter.key, size, tz, start, end)
                if windows is None:
                    return []
                start_us, end_us = windows.start_us, windows.end_us
            group_keys = tuple(k for k in dict.fromkeys(q.group_by) if k not in RESERVED_GROUP_KEYS)
            spec = AggregateSpec(
                meter_key=meter.key,
                aggregation=meter.aggregation.value,
                start_us=start_us,
                end_us=end_us,
                step_us=windows.step_us if windows is not None else None,
                bounds_us=windows.bounds_us if windows is not None else (),
                subjects=subjects,
                as_of_us=opt_micros(q.as_of),
                group_filters=dict(q.filter_group_by),
                group_keys=group_keys,
                by_subject="subject" in q.group_by,
                by_customer="customer_id" in q.group_by,
                through_seq=q.through_seq,
                span=windows is None and (start is None or end is None),
            )
            rows = tx.aggregate(spec)
        single_customer = None
        if len(set(customer_of.values())) == 1:
            single_customer = next(iter(customer_of.values()))
        out = [
            usage_row(meter, row, windows, (start, end), group_keys, q, single_customer)
            for row in rows
            if row.count > 0
        ]
        if (
            not out
            and size is None
            and start is not None
            and end is not None
            and not q.group_by
            and meter.aggregation in (Aggregation.COUNT, Aggregation.UNIQUE_COUNT)
        ):
            # OpenMeter answers an ungrouped count over a range without events with one row of 0
            # (an aggregate without GROUP BY); the other aggregations have no value to report.
            out = [CountedRow(UsageRow(Decimal(0), start, end, None, single_customer, {}), 0)]
        out.sort(
            key=lambda c: (
                c.row.window_start,
                c.row.subject or "",
                c.row.customer_id or "",
                tuple((v or "") for v in c.row.group_by.values()),
            )
        )
        return out

    def usage_in_ranges(
        self,
        meter: str,
        bounds: Sequence[datetime],
        subjects: Sequence[str],
        filter_group_by: dict[str, str] | None = None,
    ) -> list[Decimal]:
        """The meter's value in each [bounds[i], bounds[i+1]) for these subjects, in one query.

        For entitlements (tallybook/entitlements), whose burn-down segments have arbitrary edges
        (resets, grant changes): one bucketed aggregate instead of one query per segment. Only
        additive aggregations (SUM, COUNT) make sense per segment; the caller checks that.
        """
        edges = [to_micros(b) for b in bounds]
        if len(edges) < 2:
            return []
        if any(later <= earlier for earlier, later in itertools.pairwise(edges)):
            raise InvalidQuery("usage ranges must be in strictly increasing order")
        values = [Decimal(0)] * (len(edges) - 1)
        # Entitlements call this on every `value`: one read transaction when the projections are
        # caught up (checked inside it, so the read sees at least what was committed before the
        # call); otherwise catch up first and read again.
        with self.storage.reading() as tx:
            if not pending_in(tx):
                return self._usage_in_ranges(tx, meter, edges, values, subjects, filter_group_by)
        self.catch_up()
        with self.storage.reading() as tx:
            return self._usage_in_ranges(tx, meter, edges, values, subjects, filter_group_by)

    def _usage_in_ranges(
        self,
        tx: MeterTransaction,
        meter: str,
        edges: list[int],
        values: list[Decimal],
        subjects: Sequence[str],
        filter_group_by: dict[str, str] | None,
    ) -> list[Decimal]:
        found = self.served(tx, meter)
        if not subjects:
            return values
        spec = AggregateSpec(
            meter_key=found.key,
            aggregation=found.aggregation.value,
            start_us=edges[0],
            end_us=edges[-1],
            step_us=None,
            bounds_us=tuple(edges),
            subjects=tuple(dict.fromkeys(subjects)),
            as_of_us=None,
            group_filters=dict(filter_group_by or {}),
            group_keys=(),
            by_subject=False,
            by_customer=False,
        )
        for row in tx.aggregate(spec):
            if 0 <= row.window < len(values):
                if found.aggregation is Aggregation.COUNT:
                    values[row.window] += Decimal(row.count)
                elif row.value is not None:
                    values[row.window] += row.value
        return values


ONE_US = from_micros(1) - from_micros(0)
_MINUTE_US = 60_000_000
# Up to this many calendar windows between from and to are listed without looking at the data;
# beyond it, only those between the first and the last event in range.
_LIST_FREELY = 1_000


def windows_with_events(
    tx: MeterTransaction, meter_key: int, size: WindowSize, tz: Any, start: datetime | None, end: datetime | None
) -> Windows | None:
    """The windows of `size` to bucket a query by: [start, end), narrowed to the windows holding the
    meter's first and last event in that range when a bound is missing or the range holds many
    calendar windows. None when the range has no events.

    Only windows with events are answered either way; narrowing keeps an unbounded MINUTE query over
    years of data or an HOUR query in a half-hour zone from listing windows that hold nothing.
    """
    lo, hi = start, end
    wide = (
        lo is not None
        and hi is not None
        and size is not WindowSize.MINUTE
        and (hi - lo) / TYPICAL_LENGTH[size] > _LIST_FREELY
    )
    if lo is None or hi is None or wide:
        extent = tx.time_extent(meter_key, opt_micros(start), opt_micros(end))
        if extent is None:
            return None
        first = window_start(size, from_micros(extent[0]), tz)
        last = window_end(size, from_micros(extent[1]), tz)
        lo = first if lo is None else max(lo, first)
        hi = last if hi is None else min(hi, last)
    try:
        return windows_between(size, lo, hi, tz)
    except TooManyWindows as exc:
        raise InvalidQuery(str(exc)) from None


def usage_row(
    meter: Meter,
    row: AggregateRow,
    windows: Windows | None,
    bounds: tuple[datetime | None, datetime | None],
    group_keys: tuple[str, ...],
    q: UsageQuery,
    single_customer: str | None,
) -> CountedRow:
    begin: datetime | None
    finish: datetime | None
    if windows is not None:
        begin_us, end_us = windows.window(row.window)
        begin, finish = from_micros(begin_us), from_micros(end_us)
    else:
        begin, finish = bounds
        if begin is None:
            assert row.first_us is not None
            begin = from_micros(row.first_us - row.first_us % _MINUTE_US)
        if finish is None:
            assert row.last_us is not None
            finish = from_micros(row.last_us - row.last_us % _MINUTE_US + _MINUTE_US)
    value = row.value if row.value is not None else Decimal(0)
    if meter.aggregation is Aggregation.AVG:
        value = value / row.count
    elif meter.aggregation is Aggregation.COUNT:
        value = Decimal(row.count)
    groups: dict[str, str | None] = dict(zip(group_keys, row.groups, strict=True))
    customer = row.customer_id if "customer_id" in q.group_by else single_customer
    return CountedRow(
        UsageRow(
            value=value,
            window_start=begin,
            window_end=finish,
            subject=row.subject if "subject" in q.group_by else None,
            customer_id=customer,
            group_by=groups,
        ),
        row.count,
    )


def check_range(start: datetime | None, end: datetime | None) -> None:
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            raise InvalidQuery(f"{name} needs a time zone offset, e.g. 2026-01-05T00:00:00Z")
    if start is not None and end is not None and start >= end:
        raise InvalidQuery(f"from ({start.isoformat()}) must be before to ({end.isoformat()})")


def zone_named(name: str) -> Any:
    try:
        return zone(name)
    except UnknownTimeZone as exc:
        raise InvalidQuery(f"windowTimeZone: {exc}") from None
