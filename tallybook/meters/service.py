"""Meter definitions and usage queries.

Events are the source of truth; `meter_usage` is a projection of them that the materializer keeps
current. Creating a meter, or changing how it reads events (event type, aggregation, value,
group-by, eventFrom), starts a new projection of every stored event under the new definition (a
generation). It is built within the call when few events are stored (`rebuild_inline_events`),
else in the background; meanwhile queries answer from the previous definition's projection, or,
for a new meter, with `MeterRebuilding` (503). The swap is one transaction (docs/meters.md).

The service works through its storage port (ports.MeterStorage), never on SQL: definitions here,
queries in queries.py, usage by period in period_usage.py, rows to `Meter`s in definitions.py.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tallybook.clock import Clock, SystemClock, to_micros
from tallybook.ids import new_ulid
from tallybook.meters import period_usage as by_period
from tallybook.meters.config import MeterSettings
from tallybook.meters.definitions import (
    BILLING_FIELDS,
    PROJECTION_FIELDS,
    api_name,
    find,
    meter_from_row,
    opt_micros,
    projection_status,
    ready_key,
    same_definition,
    spec_columns,
    spec_of,
    validate_spec,
)
from tallybook.meters.materializer import Materializer
from tallybook.meters.models import (
    METER_ORDERS,
    InvalidQuery,
    Meter,
    MeterConflict,
    MeterNotFound,
    MeterSpec,
    PeriodUsage,
    ProjectionStatus,
    UsageQuery,
    UsageResult,
    UsageRow,
)
from tallybook.meters.period_usage import period_key, usage_keys
from tallybook.meters.ports import DEFINITION_COLUMNS, MeterStorage, MeterTransaction
from tallybook.meters.queries import CountedRow, MeterQueries, check_range
from tallybook.meters.windows import WindowSize

log = logging.getLogger(__name__)

# listMeterGroupByValues without from and to: the last day, as OpenMeter.
GROUP_VALUES_DEFAULT_SPAN = timedelta(hours=24)
# The scheduler job that advances rebuilds in `worker` and `jobs run` (a few seconds per run).
REBUILD_JOB = "meters.rebuild"
REBUILD_INTERVAL = timedelta(seconds=10)


class MeterService:
    def __init__(
        self, storage: MeterStorage, clock: Clock | None = None, settings: MeterSettings | None = None
    ) -> None:
        self.storage = storage
        self.clock = clock or SystemClock()
        self.settings = settings or MeterSettings()
        self.queries = MeterQueries(storage, self.clock, self.catch_up)
        self.materializer = Materializer(
            storage,
            self.queries.projection_meters,
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
        with self.storage.reading() as tx:
            building = len(tx.projection_rows(("building",)))
        return {"eventsRead": read, "building": building}

    # -- definitions ------------------------------------------------------------------------------------
    def list(self) -> list[Meter]:
        with self.storage.reading() as tx:
            meters = self.queries.live_meters(tx)
            return self._with_status(tx, meters)

    def _with_status(self, tx: MeterTransaction, meters: Sequence[Meter]) -> builtins.list[Meter]:
        """The meters with their invalid-event counts (from the projection queries read) and
        projection status."""
        rows = tx.projection_rows(("building", "ready"))
        visible = tx.visible_max_seq()
        now_us = to_micros(self.clock.now())
        by_meter: dict[int, builtins.list[dict[str, Any]]] = {}
        for row in rows:
            by_meter.setdefault(int(row["meter_key"]), []).append(row)
        served = {m.key: ready_key(by_meter.get(m.key, [])) for m in meters if m.deleted_at is None}
        counts = tx.invalid_counts([k for k in served.values() if k is not None])
        out = []
        for m in meters:
            if m.deleted_at is not None:
                out.append(m)
                continue
            key = served.get(m.key)
            status = projection_status(by_meter.get(m.key, []), visible, now_us)
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
        with self.storage.reading() as tx:
            rows = tx.all_meter_rows() if include_deleted else tx.live_meter_rows()
            found = self._with_status(tx, [meter_from_row(row) for row in rows])
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
        with self.storage.reading() as tx:
            return self._with_status(tx, [find(tx, id_or_slug)])[0]

    def projection(self, id_or_slug: str) -> ProjectionStatus:
        """Where the meter's projection stands: ready, or rebuilding with progress."""
        status = self.get(id_or_slug).projection
        assert status is not None  # every live meter has a ready or a building projection
        return status

    def create(self, spec: MeterSpec, managed_by: str = "api") -> Meter:
        validate_spec(spec)
        now_us = to_micros(self.clock.now())
        with self.storage.writing() as tx:
            tx.lock_materializer()
            if tx.meter_row(spec.slug) is not None:
                raise MeterConflict(f"a meter with slug {spec.slug!r} already exists; pick another slug")
            tx.insert_meter(
                {
                    "id": new_ulid(self.clock.now()),
                    "slug": spec.slug,
                    "created_us": now_us,
                    "updated_us": now_us,
                    "managed_by": managed_by,
                    **spec_columns(spec),
                },
            )
            key = int(tx.meter_row(spec.slug)["key"])  # type: ignore[index]
            build = tx.add_projection(key, spec_columns(spec), now_us)
        self._build_if_small(build)
        return self.get(spec.slug)

    def _build_if_small(self, usage_key: int | None) -> None:
        """Finish a build within the call when little is left to read; else the background does."""
        if usage_key is None:
            return
        with self.storage.reading() as tx:
            left = tx.visible_max_seq() - tx.cursors("building").get(usage_key, 0)
        if left <= self.settings.rebuild_inline_events:
            self.materializer.finish_builds([usage_key])

    def update(self, id_or_slug: str, spec: MeterSpec, managed_by: str = "api") -> Meter:
        """Replace a meter's definition (the slug stays). Rebuilds the projection when needed."""
        validate_spec(spec)
        with self.storage.writing() as tx:
            tx.lock_materializer()
            row = tx.meter_row(id_or_slug)
            if row is None:
                raise MeterNotFound(f"no meter has the id or slug {id_or_slug!r}")
            current = meter_from_row(row)
            if current.managed_by != managed_by:
                raise MeterConflict(f"meter {current.slug!r} is defined in tallybook.yaml; change it there and restart")
            wanted = spec_columns(spec)
            present = spec_columns(spec_of(current))
            changed = [name for name in wanted if wanted[name] != present[name]]
            billing_changes = [name for name in changed if name in BILLING_FIELDS]
            if current.locked_at is not None and billing_changes:
                raise MeterConflict(
                    f"meter {current.slug!r} has been billed, so its "
                    f"{', '.join(api_name(n) for n in billing_changes)} cannot change: invoices must stay "
                    "reproducible. Create a new meter (e.g. slug "
                    f"{current.slug}_v2) with the new definition and move prices to it from the next period.",
                    fields=[api_name(n) for n in billing_changes],
                )
            build = None
            if changed:
                now_us = to_micros(self.clock.now())
                tx.update_meter(current.key, {**wanted, "updated_us": now_us})
                if any(name in PROJECTION_FIELDS for name in changed):
                    build = self._rebuild(tx, current.key, wanted, now_us)
        self._build_if_small(build)
        return self.get(current.id)

    def _rebuild(self, tx: MeterTransaction, meter_key: int, wanted: dict[str, Any], now_us: int) -> int | None:
        """Start a build for the changed definition, unless the ready projection already has it (a
        change reverted while its build ran): then only the build stops."""
        ready = [r for r in tx.projection_rows(("ready",), meter_key)]
        if ready and all(same_definition(ready[0], wanted, name) for name in DEFINITION_COLUMNS):
            tx.retire_building(meter_key)
            return None
        return tx.add_projection(meter_key, wanted, now_us)

    def delete(self, id_or_slug: str, managed_by: str = "api") -> None:
        with self.storage.writing() as tx:
            tx.lock_materializer()
            row = tx.meter_row(id_or_slug)
            if row is None:
                raise MeterNotFound(f"no meter has the id or slug {id_or_slug!r}")
            meter = meter_from_row(row)
            if meter.managed_by != managed_by:
                raise MeterConflict(f"meter {meter.slug!r} is defined in tallybook.yaml; remove it there")
            if meter.locked_at is not None:
                raise MeterConflict(
                    f"meter {meter.slug!r} has been billed; it cannot be deleted while invoices refer to it"
                )
            tx.retire_projections(meter.key)  # rows deleted in the background
            tx.update_meter(meter.key, {"deleted_us": to_micros(self.clock.now())})

    def lock(self, id_or_slug: str, at: datetime | None = None) -> Meter:
        """Mark a meter as billed (invoicing calls this). Its counting rules are frozen from now on."""
        when = to_micros(at or self.clock.now())
        with self.storage.writing() as tx:
            row = tx.meter_row(id_or_slug)
            if row is None:
                raise MeterNotFound(f"no meter has the id or slug {id_or_slug!r}")
            if row["locked_us"] is None:
                tx.update_meter(row["key"], {"locked_us": when})
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
            elif spec_columns(spec_of(meter)) != spec_columns(spec) or meter.managed_by != "config":
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
        with self.storage.reading() as tx:
            found = tx.validation_errors(keys)
        return {key: "; ".join(f"meter {slug}: {error}" for slug, error in items) for key, items in found.items()}

    # -- queries -----------------------------------------------------------------------------------------
    def query(self, q: UsageQuery) -> builtins.list[UsageRow]:
        return self.query_result(q).rows

    def query_result(self, q: UsageQuery) -> UsageResult:
        with self.storage.reading() as tx:
            meter = self.queries.served(tx, q.meter)
            self.queries.check_keys_served(tx, meter, [*q.group_by, *q.filter_group_by])
        counted = self.queries.run(meter, q)
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
        check_range(start, end)
        with self.storage.reading() as tx:
            meter = self.queries.served(tx, id_or_slug)
        self.catch_up()
        with self.storage.reading() as tx:
            return tx.subjects_in([meter.key], opt_micros(start), opt_micros(end))

    def group_by_values(
        self, id_or_slug: str, group_key: str, start: datetime | None = None, end: datetime | None = None
    ) -> builtins.list[str]:
        """The values one groupBy key took in the meter's events with time in [start, end), sorted;
        events without the value add none. Without either bound, the last 24 hours (OpenMeter's
        default)."""
        if start is None and end is None:
            start = self.clock.now() - GROUP_VALUES_DEFAULT_SPAN
        check_range(start, end)
        with self.storage.reading() as tx:
            meter = self.queries.served(tx, id_or_slug)
            self.queries.check_keys_served(tx, meter, [group_key])
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
        with self.storage.reading() as tx:
            return tx.group_values_in(meter.key, group_key, opt_micros(start), opt_micros(end))

    def subjects_with_events(self, start: datetime, end: datetime) -> builtins.list[str]:
        """Subjects with events of any metered type in [start, end)."""
        self.catch_up()
        with self.storage.reading() as tx:
            keys = [m.key for m in self.queries.served_meters(tx)]
            return tx.subjects_in(keys, to_micros(start), to_micros(end))

    def period_usage(self, subject: str, start: datetime, end: datetime, as_of: datetime | None = None) -> PeriodUsage:
        """Every meter's value for one subject over [start, end), codehooks style (see PeriodUsage)."""
        return by_period.period_usage(self.queries, subject, start, end, as_of)

    def period_documents(
        self,
        period: str,
        start: datetime,
        end: datetime,
        subject: str | None = None,
        tz_name: str = "UTC",
        as_of: datetime | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """codehooks aggregation documents: one per (subject, period) with events in [start, end)."""
        return by_period.period_documents(self.queries, period, start, end, subject, tz_name, as_of)

    def usage_in_ranges(
        self,
        meter: str,
        bounds: Sequence[datetime],
        subjects: Sequence[str],
        filter_group_by: dict[str, str] | None = None,
    ) -> builtins.list[Decimal]:
        """The meter's value in each [bounds[i], bounds[i+1]) for these subjects, in one query
        (entitlements' burn-down segments; see MeterQueries.usage_in_ranges)."""
        return self.queries.usage_in_ranges(meter, bounds, subjects, filter_group_by)


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
