"""Retry timing: exponential backoff with jitter, and a circuit breaker for a server that is down."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

log = logging.getLogger("tallybook_client")


class Backoff:
    """Delay before retry number `attempt` (1, 2, …): exponential, capped, with "equal jitter".

    The delay is uniform in [d/2, d] with d = min(cap, base * 2**(attempt-1)), so clients that failed
    together do not retry together, and a delay never collapses to zero. A server's `Retry-After`
    is a floor: the client never retries sooner than the server asked.
    """

    def __init__(self, base: float = 0.25, cap: float = 30.0, rand: Callable[[], float] = random.random) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self._rand = rand

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(max(attempt, 1) - 1, 60))
        delay = ceiling / 2 + self._rand() * ceiling / 2
        if retry_after is not None and retry_after > delay:
            return retry_after
        return delay


class CircuitBreaker:
    """Closed → (threshold consecutive failures) → open → (reset_timeout) → half-open → one probe.

    While open the sender sends nothing; the first request after `reset_timeout` is a probe: success
    closes the breaker, failure opens it again for another `reset_timeout`. Events keep being
    accepted (and spooled) the whole time; the breaker only spares a down server and the network.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __init__(
        self, failure_threshold: int = 5, reset_timeout: float = 15.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failure_threshold < 1 or reset_timeout <= 0:
            raise ValueError("the breaker needs failure_threshold >= 1 and reset_timeout > 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self.opened_count = 0

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return self.CLOSED
        return self.HALF_OPEN if self._clock() >= self._opened_at + self.reset_timeout else self.OPEN

    def open_until(self) -> float:
        """Monotonic time before which nothing may be sent (0 when closed)."""
        return 0.0 if self._opened_at is None else self._opened_at + self.reset_timeout

    def record_success(self) -> None:
        if self._opened_at is not None:
            log.warning("tallybook: server reachable again; circuit breaker closed")
        self._failures = 0
        self._opened_at = None

    def record_failure(self) -> None:
        self._failures += 1
        was_probe = self._opened_at is not None
        if was_probe or self._failures >= self.failure_threshold:
            if not was_probe:
                log.warning(
                    "tallybook: %d consecutive failed sends; circuit breaker open, next probe in %.1fs",
                    self._failures,
                    self.reset_timeout,
                )
            self._opened_at = self._clock()
            self.opened_count += 1
