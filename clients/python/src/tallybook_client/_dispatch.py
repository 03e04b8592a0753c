"""The sender: takes the oldest pending events in batches, sends them, and settles the answer.

Batches close at `batch_size` events, `max_batch_bytes`, or `flush_interval` seconds after the
oldest unsent event was tracked, whichever comes first. Only a 2xx removes events. A 400 with
per-event errors moves exactly those events aside (dead letters) and sends the rest at once;
a 400 without usable indexes, or a 413, splits the batch in halves until the culprit is alone.
Everything else is retried with backoff, behind a circuit breaker, for as long as it takes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tallybook_client._buffer import Buffer, Pending
from tallybook_client._events import decode_event
from tallybook_client._policy import Backoff, CircuitBreaker
from tallybook_client._transport import Outcome, Sender

log = logging.getLogger("tallybook_client")


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot for metrics. queue_depth: events this client tracked and the server has not yet
    acknowledged (or dead-lettered); spool_size: rows in the spool file (None without a spool);
    sent: events acknowledged; failed: send attempts that got no 2xx (each is retried);
    dead_lettered: events the server refused as invalid; dropped: events given up (overflow='drop',
    or unsent at close without a spool)."""

    queue_depth: int
    spool_size: int | None
    sent: int
    failed: int
    dead_lettered: int
    dropped: int
    breaker: str
    last_error: str


@dataclass(frozen=True, slots=True)
class Refused:
    """An event the server refused as invalid, with the status and problem it answered."""

    event: dict[str, Any]
    status: int
    problem: dict[str, Any]


class Span(Protocol):
    def set_attribute(self, key: str, value: Any) -> Any: ...


class Tracer(Protocol):
    """The part of opentelemetry.trace.Tracer the client uses."""

    def start_as_current_span(self, name: str, **kwargs: Any) -> Any: ...


def _safely(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        log.exception("tallybook: a callback (%s) raised; ignored", getattr(callback, "__name__", callback))


class Dispatcher:
    def __init__(
        self,
        buffer: Buffer,
        sender: Sender,
        *,
        batch_size: int,
        max_batch_bytes: int,
        flush_interval: float,
        backoff: Backoff,
        breaker: CircuitBreaker,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        tracer: Tracer | None,
        has_spool: bool,
        on_dead_letter: Callable[[Refused], None] | None,
        on_metrics: Callable[[Stats], None] | None,
    ) -> None:
        if batch_size < 1 or max_batch_bytes < 1 or flush_interval < 0:
            raise ValueError("batch_size and max_batch_bytes must be >= 1 and flush_interval >= 0")
        self.buffer = buffer
        self.sender = sender
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.flush_interval = flush_interval
        self.backoff = backoff
        self.breaker = breaker
        self._clock = clock
        self._sleep = sleep
        self._tracer = tracer
        self._has_spool = has_spool
        self._on_dead_letter = on_dead_letter
        self._on_metrics = on_metrics
        self.sent = self.failed = self.dead_lettered = self.dropped = 0
        self.last_error = ""
        self._reset_state()

    def _reset_state(self) -> None:
        self._cond = threading.Condition()
        self._step_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._unsent = self.buffer.depth()
        self._first_unsent_at: float | None = self._clock() if self._unsent else None
        self._retry_at = 0.0
        self._attempt = 0
        self._urgent = 0
        self._closing = False
        self._close_deadline = math.inf

    # -- called from track() -------------------------------------------------------------------

    def notify_put(self, count: int = 1) -> None:
        with self._cond:
            self._unsent += count
            if self._unsent == count:
                self._first_unsent_at = self._clock()
                self._cond.notify_all()
            elif self._unsent >= self.batch_size:
                self._cond.notify_all()

    def ensure_thread(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._cond:
            if self._closing or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._run, name="tallybook-sender", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- one send round --------------------------------------------------------------------------

    def step(self) -> bool:
        """Send the oldest pending batch once. True if it settled events; False if there was
        nothing to send or the send must be retried (then `retry_at` says when)."""
        with self._step_lock:
            batch = self.buffer.peek(self.batch_size, self.max_batch_bytes)
            if not batch:
                with self._cond:
                    self._unsent = 0
                    self._first_unsent_at = None
                    self._cond.notify_all()
                return False
            settled, failure = self._deliver(batch)
            self.buffer.maintain()
            with self._cond:
                self._unsent = max(0, self._unsent - settled)
                if self._unsent == 0:
                    self._first_unsent_at = None
                if failure is not None:
                    self._failed(failure)
                self._cond.notify_all()
        if self._on_metrics is not None:
            _safely(self._on_metrics, self.stats())
        return failure is None

    @property
    def retry_at(self) -> float:
        return self._retry_at

    def _failed(self, outcome: Outcome) -> None:
        self.failed += 1
        self._attempt += 1
        self.last_error = outcome.error or f"HTTP {outcome.status}"
        self.breaker.record_failure()
        delay = self.backoff.delay(self._attempt, outcome.retry_after)
        self._retry_at = max(self._clock() + delay, self.breaker.open_until())
        if self._attempt == 1:
            log.warning("tallybook: sending events failed (%s); retrying with backoff", self.last_error)

    def _succeeded(self) -> None:
        self._attempt = 0
        self._retry_at = 0.0
        self.breaker.record_success()

    def _deliver(self, batch: list[Pending]) -> tuple[int, Outcome | None]:
        settled = 0
        work = [batch]
        while work:
            part = work.pop()
            outcome = self._send(part)
            if outcome.verdict == "acknowledged":
                self.buffer.remove(p.key for p in part)
                settled += len(part)
                self.sent += len(part)
                self._succeeded()
                continue
            if outcome.verdict == "retry":
                return settled, outcome
            # The server answered: it is up, the events are the problem.
            self._succeeded()
            status = outcome.status or 400
            if outcome.verdict == "invalid" and outcome.invalid:
                for index in sorted(outcome.invalid):
                    problem = {**outcome.problem, "errors": outcome.invalid[index]}
                    self._dead_letter(part[index], status, problem)
                    settled += 1
                rest = [p for i, p in enumerate(part) if i not in outcome.invalid]
                if rest:
                    work.append(rest)
            elif len(part) == 1:
                self._dead_letter(part[0], status, outcome.problem)
                settled += 1
            else:
                middle = len(part) // 2
                work.append(part[middle:])
                work.append(part[:middle])
        return settled, None

    def _send(self, part: list[Pending]) -> Outcome:
        bodies = [p.body for p in part]
        if self._tracer is None:
            return self.sender.send(bodies)
        with self._tracer.start_as_current_span("tallybook.send_batch") as span:
            span.set_attribute("tallybook.batch.events", len(part))
            outcome = self.sender.send(bodies)
            span.set_attribute("tallybook.outcome", outcome.verdict)
            if outcome.status is not None:
                span.set_attribute("http.response.status_code", outcome.status)
            return outcome

    def _dead_letter(self, item: Pending, status: int, problem: dict[str, Any]) -> None:
        self.buffer.dead_letter(item, status, problem)
        self.dead_lettered += 1
        event = decode_event(item.body)
        where = "kept in the spool's dead_letters table" if self._has_spool else "not kept (no spool)"
        log.error(
            "tallybook: the server refused event %s (HTTP %d: %s); %s",
            event.get("id"),
            status,
            problem.get("errors") or problem.get("detail"),
            where,
        )
        _safely(self._on_dead_letter, Refused(event, status, problem))

    # -- the background thread -------------------------------------------------------------------

    def _wait_for(self, now: float) -> float | None:
        """Seconds until the next send may start; None: nothing to send until notified."""
        if now < self._retry_at:
            return self._retry_at - now
        if self._unsent == 0:
            return None
        if self._urgent or self._closing or self._unsent >= self.batch_size or self._first_unsent_at is None:
            return 0.0
        return max(0.0, self._first_unsent_at + self.flush_interval - now)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = self._clock()
                    if self._closing and (self._unsent == 0 or now >= self._close_deadline):
                        return
                    wait = self._wait_for(now)
                    if wait == 0:
                        break
                    if self._closing:
                        wait = min(math.inf if wait is None else wait, self._close_deadline - now)
                    self._cond.wait(wait)
            try:
                self.step()
            except Exception as exc:  # e.g. the spool's disk is full: keep the thread alive, retry later
                log.exception("tallybook: the sender failed unexpectedly; retrying")
                with self._cond:
                    self._failed(Outcome("retry", error=f"{type(exc).__name__}: {exc}"))

    # -- flush and close ---------------------------------------------------------------------------

    def wait_settled(self, target: int, timeout: float | None) -> bool:
        """Wait (background thread mode) until every event with key <= target is settled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._urgent += 1
            self._cond.notify_all()
            try:
                while True:
                    oldest = self.buffer.oldest_key()
                    if oldest is None or oldest > target:
                        return True
                    if not self.running:
                        return False
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(1.0 if remaining is None else min(remaining, 1.0))
            finally:
                self._urgent -= 1

    def drain_inline(self, target: int, deadline: float | None) -> bool:
        """Send in the caller's thread until every event with key <= target is settled.
        Gives up (False) at the deadline, or at once while the circuit breaker is open."""
        while True:
            oldest = self.buffer.oldest_key()
            if oldest is None or oldest > target:
                return True
            now = self._clock()
            if now < self._retry_at:
                if self.breaker.state == CircuitBreaker.OPEN:
                    return False
                if deadline is not None and self._retry_at > deadline:
                    return False
                self._sleep(self._retry_at - now)
                continue
            if deadline is not None and now >= deadline:
                return False
            self.step()

    def close(self, timeout: float | None) -> bool:
        """Stop the thread after it has sent what it can within `timeout`. True if all settled."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            deadline = None if timeout is None else self._clock() + timeout
            with self._cond:
                self._closing = True
            return self.drain_inline(self.buffer.newest_key(), deadline)
        with self._cond:
            self._closing = True
            self._close_deadline = math.inf if timeout is None else self._clock() + timeout
            self._cond.notify_all()
        thread.join()
        return self.buffer.oldest_key() is None

    def after_fork_in_child(self) -> None:
        self.buffer.after_fork_in_child()
        self.sender.after_fork_in_child()
        self.sent = self.failed = self.dead_lettered = self.dropped = 0
        self._reset_state()

    def stats(self) -> Stats:
        return Stats(
            queue_depth=self._unsent,
            spool_size=self.buffer.depth() if self._has_spool else None,
            sent=self.sent,
            failed=self.failed,
            dead_lettered=self.dead_lettered,
            dropped=self.dropped,
            breaker=self.breaker.state,
            last_error=self.last_error,
        )
