"""Webhook signing (exactly Stripe's scheme) and delivery of recorded events to endpoints."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time

import httpx

from .state import FakeState, WebhookDelivery


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """``Stripe-Signature`` header value: ``t=<unix>,v1=<hex HMAC-SHA256 of "{t}.{payload}">``."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def event_payload(event: dict) -> bytes:
    return json.dumps(event, indent=2).encode()


def deliver_pending(state: FakeState, *, timeout: float = 5.0) -> list[WebhookDelivery]:
    """POST every queued event to its endpoint, signed; returns (and records) the attempts.

    Deliveries that fail (connection error or non-2xx) are recorded but not retried automatically;
    call :func:`redeliver` to send an event again.
    """
    with state.lock:
        queue, state.webhook_queue = state.webhook_queue, []
    results = []
    with httpx.Client(timeout=timeout) as client:
        for endpoint_id, event_id in queue:
            results.append(_deliver(state, client, endpoint_id, event_id))
    return results


def redeliver(state: FakeState, event_id: str, endpoint_id: str, *, timeout: float = 5.0) -> WebhookDelivery:
    with httpx.Client(timeout=timeout) as client:
        return _deliver(state, client, endpoint_id, event_id)


def _deliver(state: FakeState, client: httpx.Client, endpoint_id: str, event_id: str) -> WebhookDelivery:
    with state.lock:
        endpoint = state.get("webhook_endpoint", endpoint_id)
        event = state.get("event", event_id)
        payload = event_payload(event)
    ts = int(time.time()) if state.webhook_timestamp_source == "real" else state.now()
    header = sign(payload, endpoint["secret"], ts)
    status: int | None = None
    error: str | None = None
    try:
        response = client.post(
            endpoint["url"],
            content=payload,
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": header,
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            },
        )
        status = response.status_code
        if not 200 <= status < 300:
            error = f"HTTP {status}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    delivery = WebhookDelivery(endpoint_id, event_id, endpoint["url"], status, error, header, payload)
    with state.lock:
        state.webhook_deliveries.append(delivery)
        if error is None and event.get("pending_webhooks", 0) > 0:
            event["pending_webhooks"] -= 1
    return delivery
