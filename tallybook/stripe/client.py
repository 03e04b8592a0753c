"""Building the official SDK client, and the rate budget every request passes through."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import stripe

from tallybook.stripe.settings import StripeSettings


class StripeNotConfigured(RuntimeError):
    pass


class BudgetedRequestsClient(stripe.RequestsClient):
    """stripe-python's requests client, taking a token from the rate budget before every attempt
    (the SDK's own retries included). `retry_sleep` overrides the SDK's backoff (tests)."""

    def __init__(self, budget: TokenBucket | None, timeout: float, retry_sleep: float | None = None) -> None:
        super().__init__(timeout=timeout)
        self.budget = budget
        self.retry_sleep = retry_sleep

    def request(  # type: ignore[override]  # the SDK's own subclass narrows it the same way
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
    ) -> tuple[bytes, int, Mapping[str, str]]:
        if self.budget is not None:
            self.budget.acquire()
        return super().request(method, url, headers, post_data)

    def _sleep_time_seconds(self, num_retries: int) -> float:
        if self.retry_sleep is not None:
            return self.retry_sleep
        return float(super()._sleep_time_seconds(num_retries))


def build_client(
    settings: StripeSettings,
    api_key: str | None = None,
    budget: TokenBucket | None = None,
    retry_sleep: float | None = None,
) -> stripe.StripeClient:
    """A StripeClient with the pinned API version, configured base addresses, SDK retries for
    connection errors, 409 and 5xx, and every request (retries too) inside the rate budget."""
    key = api_key or settings.secret_key()
    if not key:
        raise StripeNotConfigured("no Stripe secret key: set STRIPE_API_KEY (or stripe.api_key in tallybook.yaml)")
    addresses: dict[str, str] = {}
    if settings.api_base:
        addresses["api"] = settings.api_base.rstrip("/")
    if settings.meter_events_base or settings.api_base:
        addresses["meter_events"] = (settings.meter_events_base or settings.api_base or "").rstrip("/")
    return stripe.StripeClient(
        key,
        stripe_version=settings.api_version,
        base_addresses=addresses,  # type: ignore[arg-type]
        max_network_retries=settings.max_network_retries,
        http_client=BudgetedRequestsClient(budget, settings.timeout_seconds, retry_sleep),
    )


@dataclass
class TokenBucket:
    """At most `rate` requests per second on average, bursts of at most `burst`.

    `monotonic` and `sleep` are the time source; tests pass a fake one and never wait.
    """

    rate: float
    burst: float = 1.0
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _tokens: float = field(init=False)
    _last: float = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    waited: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("rate must be positive")
        self.burst = max(self.burst, 1.0)
        self._tokens = self.burst
        self._last = self.monotonic()

    def acquire(self, tokens: float = 1.0) -> None:
        """Take `tokens`, waiting until the budget allows it."""
        with self._lock:
            while True:
                now = self.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= tokens:
                    self._tokens -= tokens
                    return
                wait = (tokens - self._tokens) / self.rate
                self.waited += wait
                self.sleep(wait)

    def pause(self, seconds: float) -> None:
        """Spend the budget for `seconds` (after a 429: the next request waits that long)."""
        with self._lock:
            self._tokens = min(self._tokens, 0.0) - seconds * self.rate


def budget_for(settings: StripeSettings) -> TokenBucket:
    # A burst of one second's budget would let a fresh bucket plus a full second exceed the limit
    # in a sliding window; a small burst keeps every 1 s span within the budget.
    rate = settings.budget()
    return TokenBucket(rate=rate * 0.9, burst=1.0)


def error_json(exc: stripe.StripeError) -> dict[str, Any]:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return {
        "http_status": exc.http_status,
        "code": exc.code or (error or {}).get("code"),
        "message": (error or {}).get("message") or str(exc),
        "type": type(exc).__name__,
    }
