"""`Tallybook`: track usage events from any thread, cheaply, without losing them."""

from __future__ import annotations

import atexit
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tallybook_client import _reads
from tallybook_client._buffer import Buffer, DeadLetter, MemoryQueue, Overflow, SpoolSync, SqliteSpool
from tallybook_client._dispatch import Dispatcher, Refused, Stats, Tracer
from tallybook_client._events import decode_event, encode_event
from tallybook_client._policy import Backoff, CircuitBreaker
from tallybook_client._reads import EntitlementValue, MeterQueryResult, TallybookError
from tallybook_client._transport import Sender

log = logging.getLogger("tallybook_client")
USER_AGENT = "tallybook-client-python/0.1.0"


class ClientClosed(TallybookError):
    """`track` was called after `close`."""


class NotAcknowledged(TallybookError):
    """sync_mode: the server did not acknowledge the event in time. The event is not lost: it stays
    queued (in the spool when there is one) and is sent by a later `track`, `flush` or `close`."""

    def __init__(self, event_id: str, reason: str) -> None:
        self.event_id = event_id
        super().__init__(f"event {event_id} is queued but not acknowledged yet: {reason}")


def _default_tracer() -> Tracer | None:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    tracer: Any = trace.get_tracer("tallybook_client")
    return tracer


# Open clients, held strongly until `close`: a client dropped without closing still has queued
# events, and the atexit hook must still find it to send them.
_live: set[Tallybook] = set()


def _after_fork_in_child() -> None:
    for client in list(_live):
        client._after_fork_in_child()


def _close_all_at_exit() -> None:
    for client in list(_live):
        try:
            client.close(timeout=client.atexit_timeout)
        except Exception:
            log.exception("tallybook: closing the client at exit failed")


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)


class Tallybook:
    """A usage-event client: `track` queues an event and returns; a background thread sends batches.

    With `spool=` (a directory) every event is committed to a local SQLite file before `track`
    returns and is deleted only after the server acknowledged it (HTTP 2xx): see the README for
    exactly what survives what. Without a spool, events wait in a bounded memory queue.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        spool: str | Path | None = None,
        spool_sync: SpoolSync = "normal",
        source: str = "tallybook-python",
        max_queue: int = 10_000,
        overflow: Overflow = "block",
        block_timeout: float | None = None,
        batch_size: int = 500,
        max_batch_bytes: int = 1_000_000,
        flush_interval: float = 0.5,
        timeout: float = 10.0,
        gzip: bool = False,
        sync_mode: bool = False,
        sync_timeout: float = 10.0,
        backoff: Backoff | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_dead_letter: Callable[[Refused], None] | None = None,
        on_drop: Callable[[dict[str, Any], str], None] | None = None,
        on_metrics: Callable[[Stats], None] | None = None,
        tracer: Tracer | None = None,
        http_transport: httpx.BaseTransport | None = None,
        atexit_timeout: float = 5.0,
    ) -> None:
        if not source:
            raise ValueError("source must be a non-empty string")
        self.url = url.rstrip("/")
        self.source = source
        self.sync_mode = sync_mode
        self.sync_timeout = sync_timeout
        self.atexit_timeout = atexit_timeout
        self._on_drop = on_drop
        self._closed = False
        self._clock = clock
        self.spool: SqliteSpool | None = SqliteSpool(spool, spool_sync) if spool is not None else None
        self._memory: MemoryQueue | None = None
        buffer: Buffer
        if self.spool is not None:
            buffer = self.spool
        else:
            # sync_mode has no sender thread to make room, so a full queue can only raise.
            policy: Overflow = "raise" if sync_mode and overflow == "block" else overflow
            self._memory = MemoryQueue(max_queue, policy, block_timeout, self._dropped_on_overflow)
            buffer = self._memory
        self._sender = Sender(url, api_key, timeout, gzip, http_transport, USER_AGENT)
        self._dispatcher = Dispatcher(
            buffer,
            self._sender,
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            flush_interval=flush_interval,
            backoff=backoff or Backoff(),
            breaker=breaker or CircuitBreaker(clock=clock),
            clock=clock,
            sleep=sleep,
            tracer=tracer if tracer is not None else _default_tracer(),
            has_spool=self.spool is not None,
            on_dead_letter=on_dead_letter,
            on_metrics=on_metrics,
        )
        _live.add(self)
        if self.spool is not None and self._dispatcher.stats().queue_depth and not sync_mode:
            # Events left by an earlier run (crash, kill -9, outage) start draining now, oldest first.
            self._dispatcher.ensure_thread()

    # -- writing ---------------------------------------------------------------------------------

    def track(
        self,
        type: str,
        subject: str,
        data: dict[str, Any] | None = None,
        *,
        time: datetime | None = None,
        id: str | None = None,
    ) -> str:
        """Queue one usage event and return its id. Never waits on the network (unless sync_mode).

        `id` defaults to a new UUIDv7; pass your own (e.g. a request id) to make your own retries
        idempotent too. `time` defaults to now; it must be timezone-aware.
        """
        if self._closed:
            raise ClientClosed("the client is closed; create a new one")
        event_id, body = encode_event(
            event_type=type, subject=subject, source=self.source, data=data, time=time, event_id=id
        )
        key = self._dispatcher.buffer.put(body)
        if key is None:
            return event_id  # dropped by overflow="drop": counted and reported to on_drop
        self._dispatcher.notify_put()
        if self.sync_mode:
            deadline = self._clock() + self.sync_timeout
            if not self._dispatcher.drain_inline(key, deadline):
                raise NotAcknowledged(event_id, self._dispatcher.last_error or "timed out")
        else:
            self._dispatcher.ensure_thread()
        return event_id

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event tracked before this call is acknowledged (or dead-lettered).
        Returns False if `timeout` seconds passed first (the events stay queued)."""
        target = self._dispatcher.buffer.newest_key()
        if self.sync_mode:
            deadline = None if timeout is None else self._clock() + timeout
            return self._dispatcher.drain_inline(target, deadline)
        if self._closed:
            return self._dispatcher.buffer.oldest_key() is None
        self._dispatcher.ensure_thread()
        return self._dispatcher.wait_settled(target, timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Send what can be sent within `timeout`, then stop. Returns True if nothing is left.

        With a spool, what is left stays in it for the next client. Without one, events still
        queued are lost: they are counted as dropped, logged, and passed to `on_drop`."""
        if self._closed:
            return True
        self._closed = True
        _live.discard(self)
        try:
            done = self._dispatcher.close(timeout)
            if not done and self._memory is not None:
                unsent = self._memory.drain_unsent()
                self._dispatcher.dropped += len(unsent)
                log.error("tallybook: closing with %d unsent events and no spool; they are lost", len(unsent))
                for body in unsent:
                    self._report_drop(body, "closed_unsent")
            elif not done:
                log.warning("tallybook: closing with %d events left in the spool", self._dispatcher.buffer.depth())
            return done
        finally:
            self._sender.close()
            self._dispatcher.buffer.close()

    def __enter__(self) -> Tallybook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads -----------------------------------------------------------------------------------

    def query(
        self,
        meter: str,
        *,
        from_: datetime | str | None = None,
        to: datetime | str | None = None,
        window_size: str | None = None,
        window_time_zone: str | None = None,
        subject: Iterable[str] = (),
        customer_id: Iterable[str] = (),
        group_by: Iterable[str] = (),
        filter_group_by: Mapping[str, str] | None = None,
        as_of: datetime | str | None = None,
    ) -> MeterQueryResult:
        """GET /api/v1/meters/{meter}/query. Raises ApiError with the server's problem on 4xx/5xx."""
        params = _reads.meter_query_params(
            from_=from_,
            to=to,
            window_size=window_size,
            window_time_zone=window_time_zone,
            subject=subject,
            customer_id=customer_id,
            group_by=group_by,
            filter_group_by=filter_group_by,
            as_of=as_of,
        )
        response = self._sender.http.get(_reads.meter_query_path(meter), params=params)
        return _reads.parse_meter_query(response)

    def entitlement_value(self, customer: str, feature: str, *, time: datetime | str | None = None) -> EntitlementValue:
        """GET /api/v1/customers/{customer}/entitlements/{feature}/value (OpenMeter's API; needs a
        server with entitlements)."""
        params = {"time": _reads._time(time)} if time is not None else None
        response = self._sender.http.get(_reads.entitlement_value_path(customer, feature), params=params)
        return _reads.parse_entitlement_value(response)

    # -- observability and repair ----------------------------------------------------------------

    def stats(self) -> Stats:
        return self._dispatcher.stats()

    def dead_letters(self) -> list[DeadLetter]:
        """Events the server refused as invalid, kept in the spool (empty without a spool)."""
        return self.spool.dead_letters() if self.spool is not None else []

    def requeue_dead_letters(self, seqs: Iterable[int] | None = None) -> int:
        """Send dead letters again (all, or those `seqs`), e.g. after the server side was fixed."""
        if self.spool is None:
            return 0
        moved = self.spool.requeue_dead_letters(seqs)
        if moved:
            self._dispatcher.notify_put(moved)
            if not self.sync_mode:
                self._dispatcher.ensure_thread()
        return moved

    # -- internals -------------------------------------------------------------------------------

    def _dropped_on_overflow(self, body: bytes) -> None:
        self._dispatcher.dropped += 1
        log.warning("tallybook: event queue full (overflow='drop'); event dropped")
        self._report_drop(body, "queue_full")

    def _report_drop(self, body: bytes, reason: str) -> None:
        if self._on_drop is None:
            return
        try:
            self._on_drop(decode_event(body), reason)
        except Exception:
            log.exception("tallybook: the on_drop callback raised; ignored")

    def _after_fork_in_child(self) -> None:
        if not self._closed:
            self._dispatcher.after_fork_in_child()
            # The thread starts on the child's first track/flush; a spool left with events starts it now.
            if self.spool is not None and self._dispatcher.stats().queue_depth and not self.sync_mode:
                self._dispatcher.ensure_thread()


__all__ = ["ClientClosed", "NotAcknowledged", "Tallybook"]
