"""Helpers for tests that use the fake: a catalog/subscription set-up and a webhook receiver."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import stripe


def error_body(err: stripe.StripeError) -> dict[str, Any]:
    """The ``error`` object of the JSON body behind an SDK exception."""
    body = err.json_body
    assert isinstance(body, dict), body
    error = body["error"]
    assert isinstance(error, dict)
    return error


@dataclass
class MeteredSetup:
    customer: Any
    meter: Any
    price: Any
    subscription: Any

    @property
    def item(self) -> Any:
        return self.subscription["items"].data[0]


def metered_setup(
    client: stripe.StripeClient,
    *,
    event_name: str = "api_call",
    formula: str = "sum",
    unit_amount_decimal: str = "0.5",
) -> MeteredSetup:
    """A customer subscribed to a monthly metered price backed by a meter on ``event_name``."""
    customer = client.v1.customers.create({"email": "ops@example.com", "name": "Example Co"})
    meter = client.v1.billing.meters.create(
        {"display_name": event_name, "event_name": event_name, "default_aggregation": {"formula": formula}}
    )
    price = client.v1.prices.create(
        {
            "currency": "usd",
            "product_data": {"name": f"{event_name} usage"},
            "unit_amount_decimal": Decimal(unit_amount_decimal),
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    subscription = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
    return MeteredSetup(customer, meter, price, subscription)


@dataclass
class ReceivedWebhook:
    body: bytes
    headers: dict[str, str]


@dataclass
class WebhookReceiver:
    """A tiny HTTP server on 127.0.0.1 that records POSTed webhooks (answers ``status``)."""

    status: int = 200
    # Called with each webhook before answering (e.g. to call the fake back like a real handler would).
    on_receive: Callable[[ReceivedWebhook], None] | None = None
    received: list[ReceivedWebhook] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/webhooks/stripe"

    def __enter__(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                hook = ReceivedWebhook(body, {k: v for k, v in self.headers.items()})
                receiver.received.append(hook)
                if receiver.on_receive is not None:
                    receiver.on_receive(hook)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
