"""Fault injection (429 / 5xx / hangs past the client's timeout) and request-rate measurement."""

from __future__ import annotations

import bisect
import fnmatch
import threading
import time
from dataclasses import dataclass


@dataclass
class Fault:
    """A queued fault, applied to the next ``remaining`` requests matching ``method``/``pattern``.

    ``kind``: ``"rate_limit"`` (HTTP 429), ``"server_error"`` (HTTP ``status``, default 500),
    ``"timeout"`` (hang ``hang_seconds`` before processing, so nothing happens server-side) or
    ``"timeout_after"`` (process the request, store its idempotent result, then hang: the client sees
    a timeout although the change was made, so a retry with the same key gets the replay),
    ``"drop"`` / ``"drop_after"`` (the connection breaks before the answer's body, without or after
    processing: the same lost answer as a timeout, but at once, so no test depends on how long a
    request takes on a busy machine), ``"still_running"`` (process the request and break the
    connection, while Stripe still counts the request as executing: the next ``conflicts`` requests
    with its idempotency key get 409 ``idempotency_error``; then its answer is saved and replayed).
    """

    kind: str
    pattern: str = "*"
    method: str | None = None
    remaining: int = 1
    status: int = 500
    should_retry: bool | None = None
    hang_seconds: float = 30.0
    saved: bool = False  # server_error only: store the error under the idempotency key (replayed on retry)
    skip: int = 0  # let this many matching requests through first (a failure mid-way through a sequence)
    conflicts: int = 0  # still_running only: retries with the same key answered 409 "in progress"

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method.upper()) and fnmatch.fnmatchcase(
            path, self.pattern
        )


class Faults:
    """Per-server fault queue plus a request-rate recorder and optional rate limiter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Fault] = []
        self._arrivals: list[tuple[float, str, str]] = []  # (monotonic time, method, path)
        self._admitted: list[tuple[float, str]] = []  # requests counted by the limiter
        self.limit_per_second: float | None = None
        self.limit_pattern = "*"
        self.released = threading.Event()  # set on shutdown so hanging requests end promptly

    # -- queueing -----------------------------------------------------------------------------

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._queue.append(fault)
        return fault

    def rate_limit(
        self, pattern: str = "*", *, times: int = 1, method: str | None = None, should_retry: bool | None = None
    ) -> Fault:
        """Answer the next ``times`` matching requests with 429 (``rate_limit``).

        Stripe does not ask clients to retry a 429 (no ``Stripe-Should-Retry: true``), so
        stripe-python does not retry it; ``should_retry=True`` sends that header to simulate a lock
        timeout that Stripe does mark retryable.
        """
        return self.add(Fault("rate_limit", pattern, method, times, 429, should_retry))

    def server_error(
        self,
        pattern: str = "*",
        *,
        times: int = 1,
        method: str | None = None,
        status: int = 500,
        should_retry: bool | None = None,
        saved: bool = False,
        skip: int = 0,
    ) -> Fault:
        """Answer the next ``times`` matching requests (after letting ``skip`` through) with a 5xx ``api_error``.

        ``saved=False`` (default) simulates a failure before the endpoint ran: nothing is stored under
        the idempotency key, so the SDK's automatic retry (same key) can succeed. ``saved=True``
        simulates an error after work began: Stripe stores it and replays it for the same key.
        """
        return self.add(Fault("server_error", pattern, method, times, status, should_retry, saved=saved, skip=skip))

    def timeout(
        self,
        pattern: str = "*",
        *,
        times: int = 1,
        method: str | None = None,
        seconds: float = 30.0,
        after_processing: bool = False,
    ) -> Fault:
        """Hang the next ``times`` matching requests for ``seconds`` (use a shorter client timeout)."""
        kind = "timeout_after" if after_processing else "timeout"
        return self.add(Fault(kind, pattern, method, times, hang_seconds=seconds))

    def drop(
        self, pattern: str = "*", *, times: int = 1, method: str | None = None, after_processing: bool = False
    ) -> Fault:
        """Break the connection of the next ``times`` matching requests mid-answer (the client reads a
        status line and headers, then end of stream). stripe-python raises ``APIConnectionError``
        with ``should_retry=False``: unlike a timeout, the SDK does not retry it by itself."""
        return self.add(Fault("drop_after" if after_processing else "drop", pattern, method, times))

    def still_running(
        self, pattern: str = "*", *, conflicts: int = 3, times: int = 1, method: str | None = None
    ) -> Fault:
        """Stripe runs the next ``times`` matching requests but the client never sees the answer (the
        connection breaks), and each stays "in progress" for the next ``conflicts`` requests with
        its idempotency key: they are answered 409 ``idempotency_error`` ("There is currently another
        in-progress request using the idempotency key …"), which stripe-python retries. After that the
        answer is saved under the key and replayed. A request with another key goes through at once
        (for a meter event: the duplicate identifier answer)."""
        return self.add(Fault("still_running", pattern, method, times, conflicts=conflicts))

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._queue:
                if fault.remaining > 0 and fault.matches(method, path):
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._queue.remove(fault)
                    return fault
        return None

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._queue)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self.limit_per_second = None

    # -- rate measurement and limiting ---------------------------------------------------------

    def enforce_rate_limit(self, per_second: float | None, pattern: str = "*") -> None:
        """Answer 429 to requests matching ``pattern`` beyond ``per_second`` in any 1-second window.
        ``None`` turns the limiter off. Requests refused by it do not count toward the window."""
        with self._lock:
            self.limit_per_second = per_second
            self.limit_pattern = pattern
            self._admitted.clear()

    def arrive(self, method: str, path: str, now: float | None = None) -> bool:
        """Record a request's arrival; returns False when the rate limiter refuses it."""
        t = time.monotonic() if now is None else now
        with self._lock:
            self._arrivals.append((t, method.upper(), path))
            if self.limit_per_second is None or not fnmatch.fnmatchcase(path, self.limit_pattern):
                return True
            recent = [a for a in self._admitted if a[0] > t - 1.0]
            self._admitted = recent
            if len(recent) >= self.limit_per_second:
                return False
            self._admitted.append((t, path))
            return True

    def arrival_times(self, pattern: str = "*", method: str | None = None) -> list[float]:
        with self._lock:
            return [
                t
                for t, m, p in self._arrivals
                if fnmatch.fnmatchcase(p, pattern) and (method is None or m == method.upper())
            ]

    def max_rate_per_second(self, pattern: str = "*", method: str | None = None, window: float = 1.0) -> int:
        """The largest number of matching requests that arrived within any ``window``-second span."""
        times = sorted(self.arrival_times(pattern, method))
        best = 0
        for i, start in enumerate(times):
            j = bisect.bisect_left(times, start + window)
            best = max(best, j - i)
        return best

    def reset_measurements(self) -> None:
        with self._lock:
            self._arrivals.clear()
            self._admitted.clear()
