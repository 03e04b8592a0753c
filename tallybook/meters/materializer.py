"""Keeps `meter_usage` up to date behind ingest.

Ingest only appends to `events`. The materializer reads new events by `seq` cursor (one cursor per
projection, in `meter_projections.projected_seq`), extracts each meter's value and group values,
and appends one `meter_usage` row per (projection, event). It runs in a background thread every
`interval` seconds and also on demand before every query, so a query always sees every event
committed before it began.

A new or changed meter definition gets its own projection (a new generation, state "building"),
built from seq 0 one chunk per background pass beside the projection queries read; once its cursor
reaches the settled horizon it is swapped in, in one transaction, and the old one's rows are
deleted in the background. See docs/meters.md, "Rebuilds".

Work is done in chunks, each in its own transaction together with the cursor move, so a crash
loses nothing and never double counts. On PostgreSQL an advisory lock makes materializers in
several server processes take turns, and the cursor only advances to a "settled" seq (see
`ports.ProjectionWriter.settled_horizon`), so an event whose transaction commits late is not
skipped.

A store may compute a projection's rows itself (`ProjectionWriter.project_in_store`: PostgreSQL,
meters/projection_sql.py) for the events whose row it writes exactly as `Projector.project`
would; it hands the rest of the chunk back, and those go through the `Projector` here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from tallybook.meters.extract import (
    as_decimal,
    as_text,
    compile_path,
    metered_number_problem,
    metered_text_problem,
    missing,
    show_number,
)
from tallybook.meters.models import Aggregation, Meter
from tallybook.meters.ports import EVENT_PAGE, MeterStorage, MeterTransaction, StoredEvent, UnreadableData, UsageRecord

log = logging.getLogger(__name__)

CHUNK_EVENTS = 20_000  # events per transaction (bounds how long ingest waits on SQLite)
PROGRESS_WAIT = 0.5  # seconds a caller waits for another thread's chunk before looking again
PENDING_RECHECK = 0.05  # seconds before the next pass when another thread did this one's work


class Projector:
    """Turns an event into a meter's usage row (value, group values, or why it is not counted)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.event_from_us = None if meter.event_from is None else _micros(meter.event_from)
        self.value = compile_path(meter.value_property) if meter.value_property else None
        self.groups = [(name, compile_path(path)) for name, path in sorted(meter.group_by.items())]

    def project(self, event: StoredEvent) -> UsageRecord | None:
        """The event's usage row; a value the meter must not count becomes the row's `error`.

        Ingest refuses out-of-domain values in fields meters read, but a meter created or changed
        later may read a key ingest did not check, and rows stored before a limit existed are
        still there. Such a row is recorded as not counted, with the reason, like any bad value.
        """
        if self.event_from_us is not None and event.time_us < self.event_from_us:
            return None
        if isinstance(event.data, UnreadableData):
            return self._record(event, None, None, None, f"the event data cannot be read: {event.data.reason}")
        data = event.data if isinstance(event.data, dict) else {}
        groups: dict[str, str] | None = None
        error = None
        if self.groups:
            groups = {}
            for name, extract in self.groups:
                found = extract(data)
                text = None if missing(found) else as_text(found)
                if text is not None:
                    problem = metered_text_problem(text)
                    if problem:
                        error = error or f"groupBy {name} value {problem}"
                        continue
                    groups[name] = text
        num: Decimal | None = None
        ukey = None
        aggregation = self.meter.aggregation
        if error is not None:
            pass
        elif aggregation is Aggregation.COUNT or self.value is None:
            num = Decimal(1)
        else:
            raw = self.value(data)
            path = self.meter.value_property
            if missing(raw):
                error = f"valueProperty {path} is missing from the event data"
            elif aggregation is Aggregation.UNIQUE_COUNT:
                ukey = as_text(raw)
                if ukey is None:
                    error = f"valueProperty {path} must be a string or number for UNIQUE_COUNT, got {_kind(raw)}"
                elif problem := metered_text_problem(ukey):
                    ukey, error = None, f"valueProperty {path} {problem}"
            else:
                number = as_decimal(raw)
                if number is None:
                    error = f"valueProperty {path} is {_show(raw)}, not a number or numeric string"
                elif problem := metered_number_problem(number):
                    number, error = None, f"valueProperty {path} is {show_number(raw)}, which {problem}"
                num = number
        return self._record(event, num, ukey, groups, error)

    def _record(
        self,
        event: StoredEvent,
        num: Decimal | None,
        ukey: str | None,
        groups: dict[str, str] | None,
        error: str | None,
    ) -> UsageRecord:
        return UsageRecord(
            meter_key=self.meter.key,
            event_seq=event.seq,
            subject=event.subject,
            time_us=event.time_us,
            ingested_us=event.ingested_us,
            num=num,
            ukey=ukey,
            groups=groups,
            error=error,
            voided_us=event.voided_us,
        )

    def project_safely(self, event: StoredEvent) -> UsageRecord | None:
        """`project`, but a failure on one event becomes that row's error instead of stopping every
        meter behind it: the materializer must go on for everyone else."""
        try:
            return self.project(event)
        except Exception as exc:
            log.exception(
                "meter could not project an event; it is recorded as not counted",
                extra={"meter": self.meter.slug, "event_seq": event.seq, "subject": event.subject},
            )
            return self._record(event, None, None, None, f"the event could not be read: {type(exc).__name__}")


def _micros(when: Any) -> int:
    from tallybook.clock import to_micros

    return to_micros(when)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:40])
    return _kind(value) if not isinstance(value, bool) else str(value).lower()


class Materializer:
    """Projects events into every meter's projections.

    `load_projections(tx, state)` gives the live meters' projections in `state` ("ready": those
    queries read; "building": new or changed definitions), each as a `Meter` whose `key` is the
    projection's usage key and whose definition is the one it is built with.

    Queries only wait for the ready projections (`catch_up`). Builds advance one chunk per
    background pass (`build_step`), after the ready projections are current, so a rebuild of
    millions of events never holds back the freshness of the other meters or of queries.
    """

    def __init__(
        self,
        storage: MeterStorage,
        load_projections: Callable[[MeterTransaction, str], Sequence[Meter]],
        interval: float = 1.0,
        chunk_events: int = CHUNK_EVENTS,
        now_us: Callable[[], int] | None = None,
    ) -> None:
        self.storage = storage
        self.load_projections = load_projections
        self.interval = interval
        self.chunk_events = chunk_events
        self.now_us = now_us or _system_now_us
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one catch-up at a time within this process
        self._progress = threading.Condition()  # notified after each chunk commits

    # -- background thread --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tallybook-meter-materializer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()

    def _run(self) -> None:
        # After a pass that found work, the next starts at once: under sustained ingest the
        # projection follows as fast as it can instead of falling a whole interval behind. A pass
        # can also find its work done by another thread (a query's catch-up, the rebuild job) while
        # events are still pending: it looks again soon rather than after a whole interval, or
        # every query would do the catch-up itself, a second behind.
        wait = self.interval
        while not self._stop.wait(wait):
            try:
                worked = self.background_pass()
                wait = 0.0 if worked else PENDING_RECHECK if self.pending() else self.interval
            except Exception:
                wait = self.interval
                log.exception("meter materializer pass failed; it will retry")

    def background_pass(self) -> int:
        """Ready projections up to date, then one chunk of a build and one of cleanup; the work done."""
        read, purged = self._pass()
        return read + purged

    def _pass(self) -> tuple[int, int]:
        """(events read, other work: swaps and retired rows deleted) by one background pass."""
        read = self.catch_up()  # the ready projections first: queries never wait behind a rebuild
        built, swapped = self._build_step(None)
        return read + built, int(swapped) + self.purge_step()

    def run_builds(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Run passes until every build is swapped in and every retired projection deleted (or
        `should_stop`); return the events read. Interrupted, the next run resumes at the cursors."""
        total = 0
        while not should_stop():
            read, purged = self._pass()
            total += read
            if read == 0 and purged == 0:
                return total
        return total

    # -- work -------------------------------------------------------------------------------------------
    def pending(self) -> bool:
        with self.storage.reading() as tx:
            return pending_in(tx)

    def catch_up(self) -> int:
        """Project every settled event not yet projected into the ready projections; return how
        many events were read here.

        On return, every event committed before the call is projected. When another thread of
        this process is already projecting (the background thread, under sustained ingest), the
        caller waits for its progress instead of queueing for the lock behind it: Python's locks
        are not fair, and a busy background thread would take the lock again first each time.
        """
        if not self.pending():
            return 0
        with self.storage.reading() as tx:
            target = tx.visible_max_seq()  # every event committed before this call
        while True:
            if self._lock.acquire(blocking=False):
                try:
                    return self._catch_up_locked()
                finally:
                    self._lock.release()
            with self._progress:
                self._progress.wait(timeout=PROGRESS_WAIT)
            if self._reached(target):
                return 0

    def _reached(self, target: int) -> bool:
        with self.storage.reading() as tx:
            cursors = tx.cursors()
        return not cursors or min(cursors.values()) >= target

    def _catch_up_locked(self) -> int:
        with self.storage.reading() as tx:
            horizon = tx.settled_horizon()
        total = 0
        while True:
            done, read = self._chunk(horizon)
            total += read
            with self._progress:
                self._progress.notify_all()
            if done:
                return total

    def build_step(self, only: Sequence[int] | None = None) -> int:
        """One chunk of the build furthest behind (of the builds with usage keys in `only`, if
        given); builds that reach the settled horizon are swapped in. Returns the work done: events
        read, or 1 for a swap that read none, 0 when no build is left."""
        read, swapped = self._build_step(only)
        return read or int(swapped)

    def _build_step(self, only: Sequence[int] | None) -> tuple[int, bool]:
        """(events read, whether a build was swapped in) by one build chunk."""
        with self.storage.reading() as tx:
            # Most passes find no build: they must not take PostgreSQL's SHARE lock on events for it.
            if not tx.cursors("building"):
                return 0, False
        with self._lock:
            with self.storage.reading() as tx:
                horizon = tx.settled_horizon()
            done, read = self._advance(horizon, "building", only)
        with self._progress:
            self._progress.notify_all()
        return read, not done and read == 0

    def finish_builds(self, only: Sequence[int]) -> None:
        """Run these builds to the end here (create and update do, when little is left to read)."""
        while self.build_step(only):
            pass

    def purge_step(self, rows: int | None = None) -> int:
        """Delete one batch of a retired projection's rows; the rows deleted (0: none left)."""
        with self.storage.reading() as tx:
            if not tx.has_retired():  # the common case, without a write transaction
                return 0
        with self.storage.writing() as tx:
            tx.lock_materializer()
            return tx.purge_retired(rows or self.chunk_events)

    def _chunk(self, horizon: int) -> tuple[bool, int]:
        return self._advance(horizon, "ready", None)

    def _advance(self, horizon: int, state: str, only: Sequence[int] | None) -> tuple[bool, int]:
        with self.storage.writing() as tx:
            tx.lock_materializer()
            meters = {m.key: m for m in self.load_projections(tx, state)}
            cursors = tx.cursors(state)
            lagging = {key: seq for key, seq in cursors.items() if key in meters and (only is None or key in only)}
            if state == "building":
                caught_up = [key for key, seq in lagging.items() if seq >= horizon]
                if caught_up:
                    tx.swap_in(caught_up, self.now_us())
                    return False, 0
            lagging = {key: seq for key, seq in lagging.items() if seq < horizon}
            if not lagging:
                return True, 0
            low = min(lagging.values())
            group = [meters[key] for key, seq in lagging.items() if seq == low]
            # Stop where the next-lowest cursor is, so that projection joins the group from there on.
            stop = min([seq for seq in lagging.values() if seq > low] + [horizon])
            in_store = [meter for meter in group if tx.projects_in_store(meter)]
            in_store_keys = {meter.key for meter in in_store}
            if in_store:  # a chunk of at most chunk_events events of their types, as in Python
                stop = tx.chunk_end(low, stop, {meter.event_type for meter in in_store}, self.chunk_events)
            projectors: dict[str, list[Projector]] = {}
            for meter in group:
                if meter.key not in in_store_keys:
                    projectors.setdefault(meter.event_type, []).append(Projector(meter))
            # The Python path first: it may stop the chunk early (chunk_events), and the store's
            # statements must cover exactly the range the cursor moves over.
            stop, read, records = self._project(tx, projectors, low, stop, bounded=True)
            for meter in in_store:
                done_in_store = tx.project_in_store(meter, low, stop)
                if done_in_store is None:  # the store could not: this projection's range in Python
                    _, again, more = self._project(tx, {meter.event_type: [Projector(meter)]}, low, stop, bounded=False)
                    read, records = read + again, records + more
                    continue
                considered, left = done_in_store
                read += considered
                projector = Projector(meter)
                records.extend(r for r in map(projector.project_safely, left) if r is not None)
            tx.insert_usage(records)
            tx.set_cursor([m.key for m in group], stop)
            if state == "building" and stop == horizon:
                # Swapped in by the chunk that reaches the horizon, not by a later pass: under
                # sustained ingest the next pass's horizon has always moved on, and a build that
                # waited to find its cursor at the horizon would never be served.
                tx.swap_in([m.key for m in group], self.now_us())
        return False, read

    def _project(
        self, tx: MeterTransaction, projectors: dict[str, list[Projector]], low: int, stop: int, bounded: bool
    ) -> tuple[int, int, list[UsageRecord]]:
        """Project the events with low < seq <= stop of `projectors`' types in Python; with
        `bounded`, stop after about `chunk_events`. Returns (where it stopped, events read, rows)."""
        read = 0
        records: list[UsageRecord] = []
        if not projectors:
            return stop, read, records
        pages = tx.events_after(low, stop, projectors, page=min(EVENT_PAGE, self.chunk_events))
        for page in pages:
            for event in page:
                for projector in projectors[event.type]:
                    record = projector.project_safely(event)
                    if record is not None:
                        records.append(record)
            read += len(page)
            if bounded and read >= self.chunk_events and page[-1].seq < stop:
                return page[-1].seq, read, records
        return stop, read, records


# -- projection in the ingest transaction (SQLite) ----------------------------------------------------


def pending_in(tx: MeterTransaction) -> bool:
    """Whether a settled event is not yet in every ready projection, as this read sees the store."""
    visible = tx.visible_max_seq()
    cursors = tx.cursors()
    return bool(cursors) and min(cursors.values()) < visible


def _system_now_us() -> int:
    from tallybook.clock import SystemClock, to_micros

    return to_micros(SystemClock().now())
