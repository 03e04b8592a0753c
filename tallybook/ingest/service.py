"""Durable, idempotent ingest with group commit.

Every request hands its validated events to one writer thread. The writer takes everything queued
while the previous commit ran and writes it in a single transaction, so N concurrent requests cost
one fsync instead of N. A request is answered only after its transaction committed: a 2xx means
the events are on disk.

Idempotency: an event is identified by (source, id). Inside a group the first occurrence wins; the
store's unique index (ON CONFLICT DO NOTHING) settles it against history and against other
processes sharing a PostgreSQL database.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tallybook.clock import Clock, SystemClock, to_micros
from tallybook.ingest.events import Event, FieldError, InvalidEvents
from tallybook.ingest.metered import MeteredFields, check_metered, metered_fields
from tallybook.ingest.ports import EventLog, EventWriter, EventWriteTransaction
from tallybook.observability.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    accepted: int = 0  # stored now
    duplicates: int = 0  # already known with the same content (a retry)
    conflicts: int = 0  # already known with different content; the first one was kept
    conflict_keys: list[tuple[str, str]] = field(default_factory=list)

    def add(self, other: IngestResult) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.conflicts += other.conflicts
        self.conflict_keys.extend(other.conflict_keys)


class IngestUnavailable(RuntimeError):
    """The writer is stopped; the caller should answer 503 so the client retries."""


@dataclass
class _Writer:
    """One writer thread's own state: its connection (`EventLog.writer`) and the value checks it
    built from the live meters' fingerprint (rebuilt only when a group's transaction sees other
    definitions)."""

    connection: EventWriter | None = None
    metered: tuple[list[tuple[Any, ...]], MeteredFields] | None = None


@dataclass
class _Request:
    events: Sequence[Event]
    future: Future[IngestResult]
    indexed: bool = True  # False for a single-event request: its errors carry no index


_STOP = object()


class IngestService:
    def __init__(
        self,
        log: EventLog,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        max_group_events: int = 20_000,
        writers: int = 1,
    ) -> None:
        """`writers`: threads committing groups at once, each on its own connection. More than one
        only where the database takes concurrent writers (PostgreSQL): while one transaction waits
        on the database, the next group is already being written. Keys settle as they do between
        processes sharing a database (the unique index, keys inserted in one order)."""
        self.log = log
        self.metrics = metrics or Metrics()
        self.clock = clock or SystemClock()
        self.max_group_events = max_group_events
        self.writers = writers
        self._queue: queue.SimpleQueue[_Request | object] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._writers: list[_Writer] = []  # one per thread, while running and after (tests read them)
        # Projects each group's new events in its transaction (SQLite; see
        # tallybook.meters.inline_sql.InlineProjection): `prepare(conn, types)` before the insert,
        # `apply(conn, plan, events, ingested_us)` after it, `conn` being the transaction's
        # `connection`. None: the materializer does it all.
        self.projection: Any = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if not self._threads:
                self._drop_stale_stops()
                self._writers = [_Writer() for _ in range(self.writers)]
                self._threads = [
                    threading.Thread(target=self._run, args=(writer,), name=f"tallybook-ingest-writer-{n}", daemon=True)
                    for n, writer in enumerate(self._writers, start=1)
                ]
                for thread in self._threads:
                    thread.start()

    def stop(self) -> None:
        """Finish everything already submitted, then stop the writers."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(_STOP)  # after everything submitted: each writer takes one and stops
        for thread in threads:
            thread.join()

    def _drop_stale_stops(self) -> None:
        """A stop meant for a writer that had already died stays queued; the next start must not
        hand it to a new writer. Requests queued while stopped keep their order."""
        kept: list[object] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                kept.append(item)
        for item in kept:
            self._queue.put(item)

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    # -- API ----------------------------------------------------------------------------------------
    def submit(self, events: Sequence[Event], indexed: bool = True) -> Future[IngestResult]:
        """Queue validated events; the future resolves once they are committed (or failed).

        It fails with InvalidEvents, storing nothing, when a field a meter reads holds a value
        outside the metered value domain (see tallybook.ingest.metered).
        """
        if not self.running:
            raise IngestUnavailable("the ingest writer is not running")
        request = _Request(events, Future(), indexed)
        self._queue.put(request)
        return request.future

    def ingest(self, events: Sequence[Event]) -> IngestResult:
        """Blocking form of `submit`, for the CLI and tests."""
        return self.submit(events).result()

    def ingest_skipping_refused(self, events: Sequence[Event]) -> tuple[IngestResult, list[FieldError]]:
        """Like `ingest`, but events a meter must not count are left out and returned as errors
        (index = position in `events`) instead of failing the whole batch: a file import goes on."""
        try:
            return self.ingest(events), []
        except InvalidEvents as exc:
            refused = {e.index for e in exc.errors}
            rest = [e for i, e in enumerate(events) if i not in refused]
            result = self.ingest(rest) if rest else IngestResult()
            return result, exc.errors

    # -- writer thread ------------------------------------------------------------------------------
    def _run(self, writer: _Writer) -> None:
        try:
            self._serve_queue(writer)
        finally:
            _close_connection(writer)

    def _serve_queue(self, writer: _Writer) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            assert isinstance(item, _Request)
            group = [item]
            size = len(item.events)
            while size < self.max_group_events:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Request)
                group.append(item)
                size += len(item.events)
            self._commit_group(writer, group, size)

    def _commit_group(self, writer: _Writer, group: list[_Request], size: int) -> None:
        started = time.perf_counter()
        try:
            results, refused = self._write(writer, group)
        except Exception as exc:
            if len(group) > 1:
                # One request's events must not fail everyone who shared its transaction: retry
                # each request on its own, so only the one that cannot be stored gets the error.
                log.warning("group commit failed; committing its requests one by one", extra={"requests": len(group)})
                for request in group:
                    self._commit_group(writer, [request], len(request.events))
                return
            log.exception("ingest commit failed", extra={"requests": 1, "events": size})
            group[0].future.set_exception(exc)
            return
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.metrics.commit_group_events.observe(size)
        total = IngestResult()
        for result in results:
            if result is not None:
                total.add(result)
        # Count before answering: a client that reads /metrics after its 2xx sees its own events.
        self.metrics.events_accepted.inc(total.accepted)
        if total.duplicates:
            self.metrics.events_duplicate.labels(kind="retry").inc(total.duplicates)
        if total.conflicts:
            self.metrics.events_duplicate.labels(kind="conflict").inc(total.conflicts)
            log.warning(
                "events with a known (source, id) but different content were ignored; the first is kept",
                extra={"count": total.conflicts, "sample": [list(k) for k in total.conflict_keys[:5]]},
            )
        for request, outcome in zip(group, results, strict=True):
            if outcome is None:
                request.future.set_exception(refused[id(request)])
            else:
                request.future.set_result(outcome)

    def _write(
        self, writer: _Writer, group: list[_Request]
    ) -> tuple[list[IngestResult | None], dict[int, InvalidEvents]]:
        """Commit the group; a request whose events meters must not count is left out of it
        (its result is None and its InvalidEvents is in the dict, by id of the request)."""
        ingested_us = to_micros(self.clock.now())
        refused: dict[int, InvalidEvents] = {}
        if writer.connection is None:
            writer.connection = self.log.writer()
        try:
            with writer.connection.transaction() as tx:
                return self._write_in(writer, tx, group, ingested_us, refused)
        except BaseException:
            # A failed transaction may leave the connection unusable (a lost PostgreSQL
            # connection): the next group starts on a fresh one.
            _close_connection(writer)
            raise

    def _write_in(
        self,
        writer: _Writer,
        tx: EventWriteTransaction,
        group: list[_Request],
        ingested_us: int,
        refused: dict[int, InvalidEvents],
    ) -> tuple[list[IngestResult | None], dict[int, InvalidEvents]]:
        """`_write` inside the transaction `tx` (the counting too: it is short)."""
        fields = _metered_fields(writer, tx)
        if fields:
            for request in group:
                errors = check_metered(request.events, fields, request.indexed)
                if errors:
                    refused[id(request)] = InvalidEvents(errors)
        accepted = [request for request in group if id(request) not in refused]
        events = [event for request in accepted for event in request.events]
        projection = self.projection
        conn = tx.connection
        plan = projection.prepare(conn, {event.type for event in events}) if projection and events else None
        results = self._insert_group(tx, accepted, events, ingested_us)
        if plan is not None:
            projection.apply(conn, plan, events, ingested_us)
        by_request = iter(results)
        return [None if id(request) in refused else next(by_request) for request in group], refused

    def _insert_group(
        self, tx: EventWriteTransaction, accepted: list[_Request], events: list[Event], ingested_us: int
    ) -> list[IngestResult]:
        """Insert the accepted requests' `events` (in order); one result per request."""
        # No key twice in the group (the common case): no first occurrence to pick. Distinct ids
        # mean distinct keys, and a set of the ids costs less than one of (source, id) tuples: this
        # runs on the writer thread, the critical path of batch ingest.
        count = len(events)
        if len({event.id for event in events}) == count or len({e.key for e in events}) == count:
            return self._insert_distinct(tx, accepted, events, ingested_us)
        # First occurrence of each key in this group, and who submitted it.
        first: dict[tuple[str, str], Event] = {}
        owner: dict[tuple[str, str], int] = {}
        results = [IngestResult() for _ in accepted]
        repeats: list[tuple[int, Event]] = []
        for position, request in enumerate(accepted):
            for event in request.events:
                key = (event.source, event.id)
                if key in first:
                    repeats.append((position, event))
                else:
                    first[key] = event
                    owner[key] = position
        unique = list(first.values())
        insertion = tx.insert_events(unique, ingested_us)
        inserted = insertion.inserted
        # Events whose key this group did not insert (it was stored before, or by a
        # concurrent transaction): one statement says whether each is a retry or a conflict
        # (for the first occurrences, the insert may have said it already).
        repeated = [e for _, e in repeats if (e.source, e.id) not in inserted]
        if insertion.verdicts is not None:
            same = insertion.verdicts + (tx.compare_stored(repeated) if repeated else [])
        else:
            doubtful = [e for e in unique if (e.source, e.id) not in inserted] + repeated
            same = tx.compare_stored(doubtful) if doubtful else []
        verdicts = iter(same)
        for key, event in first.items():
            result = results[owner[key]]
            if key in inserted:
                result.accepted += 1
            else:
                _count_duplicate(result, event, next(verdicts))
        for position, event in repeats:
            key = (event.source, event.id)
            if key in inserted:
                # Kept: the group's first occurrence, stored just now.
                _count_duplicate(results[position], event, event.same_content(first[key]))
            else:
                verdict = next(verdicts)
                # Not visible though not inserted (a concurrent transaction): against the first.
                _count_duplicate(
                    results[position], event, event.same_content(first[key]) if verdict is None else verdict
                )
        return results

    def _insert_distinct(
        self,
        tx: EventWriteTransaction,
        requests: list[_Request],
        events: list[Event],
        ingested_us: int,
    ) -> list[IngestResult]:
        """`_write` for a group whose events all have distinct keys: `events` (the requests'
        events in order); one result per request."""
        insertion = tx.insert_events(events, ingested_us)
        inserted = insertion.inserted
        if len(inserted) == len(events):
            return [IngestResult(accepted=len(request.events)) for request in requests]
        # Some keys were stored before (a retry), or by a concurrent transaction.
        keys = [(event.source, event.id) for event in events]
        if insertion.verdicts is not None:
            verdicts = iter(insertion.verdicts)
        else:
            doubtful = [event for event, key in zip(events, keys, strict=True) if key not in inserted]
            verdicts = iter(tx.compare_stored(doubtful))
        results = []
        position = 0
        for request in requests:
            result = IngestResult()
            for event in request.events:
                if keys[position] in inserted:
                    result.accepted += 1
                else:
                    _count_duplicate(result, event, next(verdicts))
                position += 1
            results.append(result)
        return results


def _count_duplicate(result: IngestResult, event: Event, same: bool | None) -> None:
    """Count a not-inserted event: `same` is whether the kept version has the same content (None:
    the kept version is not visible to this transaction, so it is counted as a retry)."""
    if same is None or same:
        result.duplicates += 1
    else:
        result.conflicts += 1
        result.conflict_keys.append((event.source, event.id))


def _metered_fields(writer: _Writer, tx: EventWriteTransaction) -> MeteredFields:
    """What live meters read, as this transaction sees them (a meter created a moment ago applies
    at once): one plain read per group, the SQLAlchemy read only after a change."""
    fingerprint = tx.live_meters_fingerprint()
    cached = writer.metered
    if cached is None or cached[0] != fingerprint:
        cached = writer.metered = (fingerprint, metered_fields(tx.live_meter_reads()))
    return cached[1]


def _close_connection(writer: _Writer) -> None:
    connection, writer.connection = writer.connection, None
    if connection is not None:
        try:
            connection.close()
        except Exception:
            log.warning("closing the ingest writer's connection failed", exc_info=True)
