"""Run the fake on a free 127.0.0.1 port in a background thread (uvicorn), as a context manager.

Usage: ``with FakeStripeServer() as fake:`` then ``client = fake.client()`` (a real
``stripe.StripeClient`` whose base addresses point at the fake), ``fake.clock.advance(3600)``,
``fake.state.events_of_type("customer.created")``, ``fake.faults.rate_limit("/v1/customers")``...
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import stripe
import uvicorn
from stripe._base_address import BaseAddresses

from .app import FakeStripeApp
from .faults import Faults
from .resources.checkout import complete_session
from .resources.events import create_endpoint
from .resources.subscriptions import advance_period, render
from .routes import ROUTER, Router
from .state import FakeClock, FakeState, RequestRecord, WebhookDelivery
from .webhooks import deliver_pending

DEFAULT_API_KEY = "sk_test_fakestripe0000000000"


class FastRetryRequestsClient(stripe.RequestsClient):
    """stripe-python's requests-based client with near-zero retry backoff, so tests that exercise
    the SDK's automatic retries stay fast. Everything else (what is retried, headers, idempotency
    keys reused across retries) is the SDK's own behaviour."""

    retry_sleep = 0.01

    def _sleep_time_seconds(self, num_retries: int) -> float:
        return self.retry_sleep


class _QuickExitServer(uvicorn.Server):
    """uvicorn's server with a 10 ms (instead of 100 ms) main-loop tick, so tests stop it quickly."""

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864_000
            await asyncio.sleep(0.01)
            should_exit = await self.on_tick(counter)


class FakeStripeServer:
    def __init__(
        self,
        *,
        state: FakeState | None = None,
        api_key: str = DEFAULT_API_KEY,
        auto_deliver_webhooks: bool = False,
        log_level: str = "warning",
        router: Router = ROUTER,
    ) -> None:
        self.state = state or FakeState()
        self.faults = Faults()
        self.api_key = api_key
        self.app = FakeStripeApp(self.state, self.faults, router)
        self._log_level = log_level
        self._server: _QuickExitServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        if auto_deliver_webhooks:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fakestripe-webhooks")
            self.state.on_events = self._schedule_delivery

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> FakeStripeServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level=self._log_level,
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _QuickExitServer(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fakestripe", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake Stripe server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.faults.released.set()
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def __enter__(self) -> FakeStripeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses and clients ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the fake Stripe server is not running")
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_addresses(self) -> BaseAddresses:
        """Every stripe-python base address (``api``, ``meter_events``...) pointed at the fake."""
        return {"api": self.url, "meter_events": self.url, "files": self.url, "connect": self.url}

    def client(
        self,
        *,
        api_key: str | None = None,
        max_network_retries: int = 0,
        timeout: float = 10.0,
        fast_retries: bool = True,
        stripe_version: str | None = None,
    ) -> stripe.StripeClient:
        """A real ``stripe.StripeClient`` whose every base address points at the fake."""
        http_client: stripe.HTTPClient = (
            FastRetryRequestsClient(timeout=timeout) if fast_retries else stripe.RequestsClient(timeout=timeout)
        )
        return stripe.StripeClient(
            api_key or self.api_key,
            base_addresses=self.base_addresses,
            max_network_retries=max_network_retries,
            http_client=http_client,
            stripe_version=stripe_version,
        )

    # -- controls -------------------------------------------------------------------------------------

    @property
    def clock(self) -> FakeClock:
        return self.state.clock

    @property
    def requests(self) -> list[RequestRecord]:
        return self.state.requests

    def add_webhook_endpoint(self, url: str, enabled_events: list[str] | None = None) -> dict[str, Any]:
        """Register a webhook endpoint; the returned dict's ``secret`` is the ``whsec_...`` signing secret."""
        with self.state.lock:
            return dict(create_endpoint(self.state, url, enabled_events or ["*"]))

    def deliver_webhooks(self, *, timeout: float = 5.0) -> list[WebhookDelivery]:
        return deliver_pending(self.state, timeout=timeout)

    def advance_subscription(self, subscription_id: str, *, move_clock: bool = False) -> dict[str, Any]:
        """Renew a subscription into its next period (emits ``customer.subscription.updated``)."""
        with self.state.lock:
            if move_clock:
                period_end = self.state.internal["subscriptions"][subscription_id]["period_end"]
                if self.state.now() < period_end:
                    self.state.clock.set(period_end)
            sub = render(advance_period(self.state, subscription_id), self.state.account_api_version)
        self.state.notify()
        return sub

    def fail_next_invoice_payment(self, decline_code: str = "generic_decline") -> None:
        """The next invoice payment attempt declines (402 ``card_declined``, ``invoice.payment_failed``)."""
        with self.state.lock:
            self.state.invoice_payment_failures.append(decline_code)

    def complete_checkout_session(self, session_id: str, *, payment_method: str | None = None) -> dict[str, Any]:
        """Act as the customer finishing Checkout: a succeeded SetupIntent with a ``pm_...`` is created and
        ``setup_intent.succeeded`` + ``checkout.session.completed`` are recorded."""
        with self.state.lock:
            session = dict(complete_session(self.state, session_id, payment_method=payment_method))
        self.state.notify()
        return session

    def _schedule_delivery(self) -> None:
        if self._executor is not None:
            self._executor.submit(deliver_pending, self.state)
