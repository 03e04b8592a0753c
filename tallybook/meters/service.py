"""Meter definitions and usage queries.

Events are the source of truth; `meter_usage` is a projection of them that the materializer keeps
current. Creating a meter, or changing how it reads events (event type, aggregation, value,
group-by, eventFrom), starts a new projection of every stored event under the new definition (a
generation). It is built within the call when few events are stored (`rebuild_inline_events`),
else in the background; meanwhile queries answer from the previous definition's projection, or,
for a new meter, with `MeterRebuilding` (503). The swap is one transaction (docs/meters.md).

Query paths read "served" meters: the `Meter` with `key` set to its ready projection's usage key
(meter_usage.meter_key) and the definition that projection was built with (`_served`).
"""

from __future__ import annotations

import builtins
import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, select

from tallybook.clock import Clock, SystemClock, from_micros, to_micros
from tallybook.exact import total as exact_total
from tallybook.ids import new_ulid
from tallybook.meters import materializer_sql, usage_sql
from tallybook.meters import sql as meter_sql
from tallybook.meters import tables as meter_tables
from tallybook.meters.config import MeterSettings
from tallybook.meters.extract import InvalidPath, compile_path
from tallybook.meters.materializer import Materializer
from tallybook.meters.models import (
    GROUP_KEY_PATTERN,
    METER_ORDERS,
    RESERVED_GROUP_KEYS,
    SLUG_PATTERN,
    Aggregation,
    InvalidMeter,
    InvalidQuery,
    Meter,
    MeterConflict,
    MeterNotFound,
    MeterRebuilding,
    MeterSpec,
    PeriodUsage,
    ProjectionStatus,
    UsageQuery,
    UsageResult,
    UsageRow,
)
from tallybook.meters.ports import AggregateRow, AggregateSpec
from tallybook.meters.tables import meter_usage
from tallybook.meters.windows import (
    PERIODS,
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
from tallybook.store.base import SqlStore

log = logging.getLogger(__name__)

# Fields whose change alters what a meter counts: refused once the meter has been billed.
BILLING_FIELDS = ("aggregation", "value_property", "event_type", "event_from")
# listMeterGroupByValues without from and to: the last day, as OpenMeter.
GROUP_VALUES_DEFAULT_SPAN = timedelta(hours=24)
# Fields whose change needs the projection rebuilt.
PROJECTION_FIELDS = (*BILLING_FIELDS, "group_by")
# The scheduler job that advances rebuilds in `worker` and `jobs run` (a few seconds per run).
REBUILD_JOB = "meters.rebuild"
REBUILD_INTERVAL = timedelta(seconds=10)


@dataclass(frozen=True, slots=True)
class CountedRow:
    row: UsageRow
    count: int  # events behind the value


class MeterService:
    def __init__(self, store: SqlStore, clock: Clock | None = None, settings: MeterSettings | None = None) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.settings = settings or MeterSettings()
        self.materializer = Materializer(
            store,
            self._projection_meters,
            interval=self.settings.materialize_interval_seconds,
            chunk_events=self.settings.materialize_chunk_events,
            now_us=lambda: to_micros(self.clock.now()),
        )

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.materializer.start()

    def stop(self) -> None:
        self.materializer.stop()

    def catch_up(self) -> int:
        """Bring the projection up to every committed event (queries call this themselves)."""
        return self.materializer.catch_up()

    def run_builds(self, should_stop: Any = lambda: False) -> int:
        """Finish every pending build and cleanup here (`tallybook meters rebuild`, the rebuild job)."""
        return self.materializer.run_builds(should_stop)

    def rebuild_job(self, _now: datetime, budget_seconds: float = 5.0) -> dict[str, Any]:
        """The scheduler's job (worker, jobs run): a few seconds of build work; the next run resumes."""
        deadline = time.monotonic() + budget_seconds
        read = self.materializer.run_builds(lambda: time.monotonic() >= deadline)
        with self.store.read() as conn:
            building = len(meter_sql.projection_rows(conn, ("building",)))
        return {"eventsRead": read, "building": building}

    # -- definitions ------------------------------------------------------------------------------------
    def list(self) -> list[Meter]:
        with self.store.read() as conn:
            meters = self._live_meters(conn)
            return self._with_status(conn, meters)

    def _with_status(self, conn: Connection, meters: Sequence[Meter]) -> builtins.list[Meter]:
        """The meters with their invalid-event counts (from the projection queries read) and
        projection status."""
        rows = meter_sql.projection_rows(conn, ("building", "ready"))
        visible = meter_sql.visible_max_seq(conn)
        now_us = to_micros(self.clock.now())
        by_meter: dict[int, builtins.list[dict[str, Any]]] = {}
        for row in rows:
            by_meter.setdefault(int(row["meter_key"]), []).append(row)
        served = {m.key: _ready_key(by_meter.get(m.key, [])) for m in meters if m.deleted_at is None}
        counts = meter_sql.invalid_counts(conn, [k for k in served.values() if k is not None])
        out = []
        for m in meters:
            if m.deleted_at is not None:
                out.append(m)
                continue
            key = served.get(m.key)
            status = _status(by_meter.get(m.key, []), visible, now_us)
            out.append(replace(m, invalid_events=counts.get(key, 0) if key else 0, projection=status))
        return out

    def listing(
        self,
        order_by: str = "key",
        descending: bool = False,
        include_deleted: bool = False,
        page: int | None = None,
        page_size: int | None = None,
    ) -> builtins.list[Meter]:
        """OpenMeter's listMeters: sorted by `order_by` (METER_ORDERS; ties by id), optionally with
        the deleted meters, and one page of them when `page`/`page_size` are given (else all)."""
        if order_by not in METER_ORDERS:
            raise InvalidQuery(f"orderBy must be one of {', '.join(METER_ORDERS)}, got {order_by!r}")
        with self.store.read() as conn:
            rows = meter_sql.all_meter_rows(conn) if include_deleted else meter_sql.live_meter_rows(conn)
            found = self._with_status(conn, [_meter_from_row(row) for row in rows])
        field = {
            "key": lambda m: m.slug,
            "name": lambda m: m.name,
            "aggregation": lambda m: m.aggregation.value,
            "createdAt": lambda m: m.created_at,
            "updatedAt": lambda m: m.updated_at,
        }[order_by]
        found.sort(key=lambda m: m.id, reverse=descending)
        found.sort(key=field, reverse=descending)
        if page is not None or page_size is not None:
            size = page_size or 100
            start = ((page or 1) - 1) * size
            found = found[start : start + size]
        return found

    def get(self, id_or_slug: str) -> Meter:
        with self.store.read() as conn:
            return self._with_status(conn, [self._find(conn, id_or_slug)])[0]

    def projection(self, id_or_slug: str) -> ProjectionStatus:
        """Where the meter's projection stands: ready, or rebuilding with progress."""
        status = self.get(id_or_slug).projection
        assert status is not None  # every live meter has a ready or a building projection
        return status

    def _served(self, conn: Connection, id_or_slug: str) -> Meter:
        """The meter as queries read it: its ready projection's key and definition. A meter whose
        first build is still running has none: `MeterRebuilding`."""
        meter = self._find(conn, id_or_slug)
        rows = meter_sql.projection_rows(conn, ("building", "ready"), meter.key)
        ready = [r for r in rows if r["state"] == "ready"]
        if not ready:
            status = _status(rows, meter_sql.visible_max_seq(conn), to_micros(self.clock.now()))
            raise _rebuilding(
                f"meter {meter.slug!r} is being built from the stored events ({status.percent}% done); "
                "its usage can be queried once the build is done",
                status,
            )
        return _serve(meter, ready[0])

    def _check_keys_served(self, conn: Connection, served: Meter, keys: Sequence[str]) -> None:
        """A groupBy key only the definition being built has: say so (503), not "unknown key" (400)."""
        current = self._find(conn, served.id)
        for key in keys:
            if key in current.group_by and key not in served.group_by:
                rows = meter_sql.projection_rows(conn, ("building",), current.key)
                status = _status(rows, meter_sql.visible_max_seq(conn), to_micros(self.clock.now()))
                raise _rebuilding(
                    f"groupBy key {key!r} is new in meter {served.slug!r}'s changed definition, which is being "
                    f"rebuilt ({status.percent}% done); until it is done queries answer from the previous "
                    f"definition (its keys: {', '.join(sorted(served.group_by)) or 'none'})",
                    status,
                )

    def _find(self, conn: Connection, id_or_slug: str) -> Meter:
        row = meter_sql.meter_row(conn, id_or_slug)
        if row is None:
            raise MeterNotFound(f"no meter has the id or slug {id_or_slug!r}")
        return _meter_from_row(row)

    def create(self, spec: MeterSpec, managed_by: str = "api") -> Meter:
        _validate_spec(spec)
        now_us = to_micros(self.clock.now())
        with self.store.write() as conn:
            materializer_sql.lock_materializer(conn)
            if meter_sql.meter_row(conn, spec.slug) is not None:
                raise MeterConflict(f"a meter with slug {spec.slug!r} already exists; pick another slug")
            meter_sql.insert_meter(
                conn,
                {
                    "id": new_ulid(self.clock.now()),
                    "slug": spec.slug,
                    "created_us": now_us,
                    "updated_us": now_us,
                    "managed_by": managed_by,
                    **_spec_columns(spec),
                },
            )
            key = int(meter_sql.meter_row(conn, spec.slug)["key"])  # type: ignore[index]
            build = meter_sql.add_projection(conn, key, _spec_columns(spec), now_us)
        self._build_if_small(build)
        return self.get(spec.slug)

    def _build_if_small(self, usage_key: int | None) -> None:
        """Finish a build within the call when little is left to read; else the background does."""
        if usage_key is None:
            return
        with self.store.read() as conn:
            left = meter_sql.visible_max_seq(conn) - meter_sql.cursors(conn, "building").get(usage_key, 0)
        if left <= self.settings.rebuild_inline_events:
            self.materializer.finish_builds([usage_key])

    def update(self, id_or_slug: str, spec: MeterSpec, managed_by: str = "api") -> Meter:
        """Replace a meter's definition (the slug stays). Rebuilds the projection when needed."""
        _validate_spec(spec)
        with self.store.write() as conn:
            materializer_sql.lock_materializer(conn)
            row = meter_sql.meter_row(conn, id_or_slug)
            if row is None:
                raise MeterNotFound(f"no meter has the id or slug {id_or_slug!r}")
            current = _meter_from_row(row)
            if current.managed_by != managed_by:
                raise MeterConflict(f"meter {current.slug!r} is defined in tallybook.yaml; change it there and restart")
            wanted = _spec_columns(spec)
            present = _spec_columns(_spec_of(current))
            changed = [name for name in wanted if wanted[name] != present[name]]
            billing_changes = [name for name in changed if name in BILLING_FIELDS]
            if current.locked_at is not None and billing_changes:
                raise MeterConflict(
                    f"meter {current.slug!r} has been billed, so its "
                    f"{', '.join(_api_name(n) for n in billing_changes)} cannot change: invoices must stay "
                    "reproducible. Create a new meter (e.g. slug "
                    f"{current.slug}_v2) with the new definition and move prices to it from the next period.",
                    fields=[_api_name(n) for n in billing_changes],
                )
            build = None
            if changed:
                now_us = to_micros(self.clock.now())
                meter_sql.update_meter(conn, current.key, {**wanted, "updated_us": now_us})
                if any(name in PROJECTION_FIELDS for name in changed):
                    build = self._rebuild(conn, current.key, wanted, now_us)
        self._build_if_small(build)
        return self.get(current.id)

    def _rebuild(self, conn: Connection, meter_key: int, wanted: dict[str, Any], now_us: int) -> int | None:
        """Start a build for the changed definition, unless the ready projection already has it (a
        change reverted while its build ran): then only the build stops."""
        ready = [r for r in meter_sql.projection_rows(conn, ("ready",), meter_key)]
        if ready and all(_same_definition(ready[0], wanted, name) for name in meter_tables.DEFINITION_COLUMNS):
            meter_sql.retire_building(conn, meter_key)
            return None
        return meter_sql.add_projection(conn, meter_key, wanted, now_us)

    def delete(self, id_or_slug: str, managed_by: str = "api") -> None:
        with self.store.write() as conn:
            materializer_sql.lock_materializer(conn)
            row = meter_sql.meter_row(conn, id_or_slug)
            if row is None:
                raise MeterNotFound(f"no meter has the id or slug {id_or_slug!r}")
            meter = _meter_from_row(row)
            if meter.managed_by != managed_by:
                raise MeterConflict(f"meter {meter.slug!r} is defined in tallybook.yaml; remove it there")
            if meter.locked_at is not None:
                raise MeterConflict(
                    f"meter {meter.slug!r} has been billed; it cannot be deleted while invoices refer to it"
                )
            meter_sql.retire_projections(conn, meter.key)  # rows deleted in the background
            meter_sql.update_meter(conn, meter.key, {"deleted_us": to_micros(self.clock.now())})

    def lock(self, id_or_slug: str, at: datetime | None = None) -> Meter:
        """Mark a meter as billed (invoicing calls this). Its counting rules are frozen from now on."""
        when = to_micros(at or self.clock.now())
        with self.store.write() as conn:
            row = meter_sql.meter_row(conn, id_or_slug)
            if row is None:
                raise MeterNotFound(f"no meter has the id or slug {id_or_slug!r}")
            if row["locked_us"] is None:
                meter_sql.update_meter(conn, row["key"], {"locked_us": when})
        return self.get(id_or_slug)

    def sync_config(self, settings: MeterSettings | None = None) -> None:
        """Create or update the meters defined in tallybook.yaml (and codehooks systemconfig.json)."""
        settings = settings or self.settings
        wanted = {d.slug: d.spec() for d in settings.all_definitions()}
        existing = {m.slug: m for m in self.list()}
        for slug, spec in wanted.items():
            meter = existing.get(slug)
            if meter is None:
                self.create(spec, managed_by="config")
            elif _spec_columns(_spec_of(meter)) != _spec_columns(spec) or meter.managed_by != "config":
                if meter.managed_by != "config":
                    raise MeterConflict(
                        f"meter {slug!r} in tallybook.yaml already exists as an API-created meter; rename one of them"
                    )
                self.update(slug, spec, managed_by="config")
        for slug, meter in existing.items():
            if meter.managed_by == "config" and slug not in wanted:
                if meter.locked_at is not None:
                    log.warning("billed meter removed from tallybook.yaml is kept", extra={"meter": slug})
                    continue
                self.delete(slug, managed_by="config")

    def validation_errors(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Why meters did not count these events: {(source, id): "meter slug: reason; ..."}."""
        if not keys:
            return {}
        self.catch_up()
        with self.store.read() as conn:
            found = usage_sql.validation_errors(conn, keys)
        return {key: "; ".join(f"meter {slug}: {error}" for slug, error in items) for key, items in found.items()}

    # -- queries -----------------------------------------------------------------------------------------
    def query(self, q: UsageQuery) -> builtins.list[UsageRow]:
        return self.query_result(q).rows

    def query_result(self, q: UsageQuery) -> UsageResult:
        with self.store.read() as conn:
            meter = self._served(conn, q.meter)
            self._check_keys_served(conn, meter, [*q.group_by, *q.filter_group_by])
        counted = self._run(meter, q)
        return UsageResult(
            q.from_.astimezone(UTC) if q.from_ else None,
            q.to.astimezone(UTC) if q.to else None,
            q.window_size,
            [c.row for c in counted],
            meter.slug,
        )

    def subjects(
        self, id_or_slug: str, start: datetime | None = None, end: datetime | None = None
    ) -> builtins.list[str]:
        """Subjects seen in the meter's events (optionally with event time in [start, end))."""
        _check_range(start, end)
        with self.store.read() as conn:
            meter = self._served(conn, id_or_slug)
        self.catch_up()
        with self.store.read() as conn:
            return usage_sql.subjects_in(conn, [meter.key], _opt_micros(start), _opt_micros(end))

    def group_by_values(
        self, id_or_slug: str, group_key: str, start: datetime | None = None, end: datetime | None = None
    ) -> builtins.list[str]:
        """The values one groupBy key took in the meter's events with time in [start, end), sorted;
        events without the value add none. Without either bound, the last 24 hours (OpenMeter's
        default)."""
        if start is None and end is None:
            start = self.clock.now() - GROUP_VALUES_DEFAULT_SPAN
        _check_range(start, end)
        with self.store.read() as conn:
            meter = self._served(conn, id_or_slug)
            self._check_keys_served(conn, meter, [group_key])
        if group_key not in meter.group_by:
            known = ", ".join(sorted(meter.group_by)) or "none"
            hint = (
                "; its subjects are listed by GET /api/v1/meters/{meterIdOrSlug}/subjects"
                if group_key == "subject"
                else ""
            )
            raise InvalidQuery(
                f"groupByKey: {group_key!r} is not a groupBy key of meter {meter.slug!r} (its keys: {known}){hint}"
            )
        self.catch_up()
        with self.store.read() as conn:
            return usage_sql.group_values_in(conn, meter.key, group_key, _opt_micros(start), _opt_micros(end))

    def subjects_with_events(self, start: datetime, end: datetime) -> builtins.list[str]:
        """Subjects with events of any metered type in [start, end)."""
        self.catch_up()
        with self.store.read() as conn:
            keys = [m.key for m in self._served_meters(conn)]
            return usage_sql.subjects_in(conn, keys, to_micros(start), to_micros(end))

    def period_usage(self, subject: str, start: datetime, end: datetime, as_of: datetime | None = None) -> PeriodUsage:
        """Every meter's value for one subject over [start, end), codehooks style (see PeriodUsage)."""
        with self.store.read() as conn:
            meters = self._served_meters(conn)
        names = usage_keys(meters)
        self.catch_up()
        values: dict[str, Decimal] = {}
        counts: dict[str, int] = {}
        for meter in meters:
            q = UsageQuery(meter=meter.id, from_=start, to=end, subjects=(subject,), as_of=as_of)
            counted = self._run(meter, q, catch_up=False, check_alignment=False)
            name = names[meter.key]
            values[name] = exact_total(c.row.value for c in counted)
            counts[name] = sum(c.count for c in counted)
        with self.store.read() as conn:
            total = _distinct_events(conn, [m.key for m in meters], subject, start, end, as_of)
        return PeriodUsage(subject, start, end, values, counts, total)

    def period_documents(
        self,
        period: str,
        start: datetime,
        end: datetime,
        subject: str | None = None,
        tz_name: str = "UTC",
        as_of: datetime | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """codehooks aggregation documents: one per (subject, period) with events in [start, end).

        Runs one query per meter (grouped by subject and period window), not one per customer.
        """
        if period not in PERIODS:
            raise InvalidQuery(f"period must be one of {', '.join(PERIODS)}, got {period!r}")
        size = PERIODS[period]
        tz = _zone(tz_name)
        first = window_start(size, start, tz)
        last = window_end(size, end - _ONE_US if end > start else start, tz)
        with self.store.read() as conn:
            meters = self._served_meters(conn)
        names = usage_keys(meters)
        self.catch_up()
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
            counted = self._run(meter, q, catch_up=False)
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

    def usage_in_ranges(
        self,
        meter: str,
        bounds: Sequence[datetime],
        subjects: Sequence[str],
        filter_group_by: dict[str, str] | None = None,
    ) -> builtins.list[Decimal]:
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
        self.catch_up()
        with self.store.read() as conn:
            found = self._served(conn, meter)
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
            rows = usage_sql.aggregate(conn, spec)
        for row in rows:
            if 0 <= row.window < len(values):
                if found.aggregation is Aggregation.COUNT:
                    values[row.window] += Decimal(row.count)
                elif row.value is not None:
                    values[row.window] += row.value
        return values

    # -- internals ---------------------------------------------------------------------------------------
    def _live_meters(self, conn: Connection) -> builtins.list[Meter]:
        return [_meter_from_row(row) for row in meter_sql.live_meter_rows(conn)]

    def _served_meters(self, conn: Connection) -> builtins.list[Meter]:
        """Live meters as queries read them (see `_served`); meters in their first build are left
        out: billing and period documents count them once they are built."""
        return self._projection_meters(conn, "ready")

    def _projection_meters(self, conn: Connection, state: str) -> builtins.list[Meter]:
        """Every live meter's projection in `state`, as the meter with that projection's usage key
        and definition (what the materializer projects with and queries read)."""
        meters = {m.key: m for m in self._live_meters(conn)}
        return [
            _serve(meters[int(row["meter_key"])], row)
            for row in meter_sql.projection_rows(conn, (state,))
            if int(row["meter_key"]) in meters
        ]

    def _run(
        self, meter: Meter, q: UsageQuery, catch_up: bool = True, check_alignment: bool = True
    ) -> builtins.list[CountedRow]:
        """The query's rows (windows and groups with events only), sorted.

        Without `from` the query starts at the meter's first event, without `to` it runs past the
        last one (future-dated events included), as OpenMeter's does. A total without one of them
        reports the span of each group's data: from the minute of its first counted event to the
        end of the minute of its last.
        """
        tz = _zone(q.window_time_zone)
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
        with self.store.read() as conn:
            if q.customer_ids:
                customer_of, unknown = usage_sql.customer_subject_map(conn, list(q.customer_ids))
                if unknown:
                    raise InvalidQuery(f"unknown customer(s) in filterCustomerId: {', '.join(unknown)}")
                allowed_subjects = set(customer_of)
                subjects = tuple(s for s in (subjects or tuple(sorted(allowed_subjects))) if s in allowed_subjects)
            if subjects is not None and not subjects:
                return []
            windows: Windows | None = None
            start_us, end_us = _opt_micros(start), _opt_micros(end)
            if size is not None:
                windows = _windows_with_events(conn, meter.key, size, tz, start, end)
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
                as_of_us=_opt_micros(q.as_of),
                group_filters=dict(q.filter_group_by),
                group_keys=group_keys,
                by_subject="subject" in q.group_by,
                by_customer="customer_id" in q.group_by,
                through_seq=q.through_seq,
                span=windows is None and (start is None or end is None),
            )
            rows = usage_sql.aggregate(conn, spec)
        single_customer = None
        if len(set(customer_of.values())) == 1:
            single_customer = next(iter(customer_of.values()))
        out = [
            _usage_row(meter, row, windows, (start, end), group_keys, q, single_customer)
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


_ONE_US = from_micros(1) - from_micros(0)
_MINUTE_US = 60_000_000
# Up to this many calendar windows between from and to are listed without looking at the data;
# beyond it, only those between the first and the last event in range.
_LIST_FREELY = 1_000


def _windows_with_events(
    conn: Connection, meter_key: int, size: WindowSize, tz: Any, start: datetime | None, end: datetime | None
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
        extent = usage_sql.time_extent(conn, meter_key, _opt_micros(start), _opt_micros(end))
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


def _usage_row(
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


def _distinct_events(
    conn: Connection, keys: Sequence[int], subject: str, start: datetime, end: datetime, as_of: datetime | None
) -> int:
    if not keys:
        return 0
    u = meter_usage
    conditions = [
        u.c.meter_key.in_(list(keys)),
        u.c.subject == subject,
        u.c.time_us >= to_micros(start),
        u.c.time_us < to_micros(end),
        u.c.error.is_(None),
        meter_tables.counts_as_of(_opt_micros(as_of)),
    ]
    if as_of is not None:
        conditions.append(u.c.ingested_us <= to_micros(as_of))
    return int(conn.execute(select(func.count(func.distinct(u.c.event_seq))).where(*conditions)).scalar_one())


def _serve(meter: Meter, projection: dict[str, Any]) -> Meter:
    return replace(
        meter,
        key=int(projection["usage_key"]),
        event_type=projection["event_type"],
        aggregation=Aggregation(projection["aggregation"]),
        value_property=projection["value_property"],
        group_by=dict(projection["group_by"] or {}),
        event_from=None if projection["event_from_us"] is None else from_micros(projection["event_from_us"]),
    )


def _same_definition(projection: dict[str, Any], wanted: dict[str, Any], name: str) -> bool:
    if name == "group_by":
        return dict(projection[name] or {}) == dict(wanted[name] or {})
    return bool(projection[name] == wanted[name])


def _ready_key(rows: Sequence[dict[str, Any]]) -> int | None:
    return next((int(r["usage_key"]) for r in rows if r["state"] == "ready"), None)


def _status(rows: Sequence[dict[str, Any]], visible_seq: int, now_us: int) -> ProjectionStatus:
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


def _rebuilding(detail: str, status: ProjectionStatus) -> MeterRebuilding:
    retry = max(1, min(status.eta_seconds or 5, 60))
    return MeterRebuilding(detail, projection=status.to_json(), retryAfterSeconds=retry)


def _check_range(start: datetime | None, end: datetime | None) -> None:
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            raise InvalidQuery(f"{name} needs a time zone offset, e.g. 2026-01-05T00:00:00Z")
    if start is not None and end is not None and start >= end:
        raise InvalidQuery(f"from ({start.isoformat()}) must be before to ({end.isoformat()})")


def _zone(name: str) -> Any:
    try:
        return zone(name)
    except UnknownTimeZone as exc:
        raise InvalidQuery(f"windowTimeZone: {exc}") from None


def _opt_micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def _api_name(field: str) -> str:
    return {
        "aggregation": "aggregation",
        "value_property": "valueProperty",
        "event_type": "eventType",
        "event_from": "eventFrom",
        "group_by": "groupBy",
    }.get(field, field)


def _validate_spec(spec: MeterSpec) -> None:
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


def _spec_columns(spec: MeterSpec) -> dict[str, Any]:
    return {
        "name": spec.name or spec.slug,
        "description": spec.description,
        "event_type": spec.event_type,
        "aggregation": spec.aggregation.value,
        "value_property": spec.value_property,
        "group_by": dict(sorted(spec.group_by.items())),
        "event_from_us": _opt_micros(spec.event_from),
        "metadata": spec.metadata,
    }


def _spec_of(meter: Meter) -> MeterSpec:
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


def _meter_from_row(row: Any) -> Meter:
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


__all__ = [
    "CountedRow",
    "MeterService",
    "PeriodUsage",
    "UsageQuery",
    "UsageRow",
    "WindowSize",
    "period_key",
    "usage_keys",
]
