"""The fake's in-memory, stateful store, its clock, and the Python-side controls tests use.

Objects are kept as Stripe-shaped JSON dicts per kind (``"customer"``, ``"price"``...), in
insertion order, so list endpoints can page newest-first like Stripe. Data that Stripe never shows
as an object (meter event bookkeeping, v2 session tokens, idempotency records) lives in typed
records next to them. Every state change that Stripe would announce records an Event
(``evt_...``) and queues it for the configured webhook endpoints.
"""

from __future__ import annotations

import calendar
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import stripe

from .errors import StripeAPIError

_ALPHABET = string.ascii_letters + string.digits
BASIL = "2025-03-31"  # first API version without legacy usage-based billing
SECONDS = {"day": 86_400, "week": 7 * 86_400}


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


class FakeClock:
    """The fake's notion of "now" (Unix seconds). Frozen unless a test moves it."""

    def __init__(self, start: float | None = None) -> None:
        self._now = float(int(time.time()) if start is None else start)
        self._lock = threading.Lock()

    def now(self) -> int:
        with self._lock:
            return int(self._now)

    def set(self, ts: float) -> None:
        with self._lock:
            self._now = float(ts)

    def advance(self, seconds: float) -> int:
        with self._lock:
            self._now += seconds
            return int(self._now)


def add_interval(anchor: int, interval: str, count: int) -> int:
    """``anchor`` moved forward by ``count`` intervals; months clamp to the anchor's day of month."""
    if interval in SECONDS:
        return anchor + SECONDS[interval] * count
    months = count * (12 if interval == "year" else 1)
    dt = datetime.fromtimestamp(anchor, UTC)
    month_index = dt.month - 1 + months
    year, month = dt.year + month_index // 12, month_index % 12 + 1
    day = min(dt.day, calendar.monthrange(year, month)[1])
    return int(dt.replace(year=year, month=month, day=day).timestamp())


def next_boundary(anchor: int, interval: str, count: int, after: int) -> int:
    """The first billing-cycle boundary (anchor + k intervals) strictly after ``after``."""
    if anchor > after:
        return anchor
    k = 1
    while True:
        candidate = add_interval(anchor, interval, count * k)
        if candidate > after:
            return candidate
        k += 1


@dataclass
class MeterEventRecord:
    """One accepted meter event (v1 or v2), with the bookkeeping summaries need."""

    identifier: str
    event_name: str
    payload: dict[str, str]
    timestamp: int
    received_at: int
    meter_id: str
    customer_id: str
    value: Decimal
    source: str  # "v1" | "v2"
    cancelled: bool = False


@dataclass
class UsageRecord:
    id: str
    subscription_item: str
    quantity: int
    timestamp: int
    action: str
    received_at: int


@dataclass
class MeterEventSession:
    id: str
    token: str
    created: int
    expires_at: int


@dataclass
class SavedResponse:
    """An answer stored under an idempotency key, replayed for retries with the same parameters."""

    fingerprint: str
    method: str
    path: str
    status: int
    body: bytes
    headers: dict[str, str]
    created: int


@dataclass
class RequestRecord:
    """One HTTP request the fake received (kept in arrival order in ``FakeState.requests``)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    received_monotonic: float
    fake_now: int
    status: int | None = None
    outcome: str = ""  # "ok", "error", "fault:429", "fault:500", "fault:timeout", "rate_limited", "replayed"

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")

    @property
    def stripe_version(self) -> str | None:
        return self.headers.get("stripe-version")


@dataclass
class WebhookDelivery:
    endpoint_id: str
    event_id: str
    url: str
    status: int | None
    error: str | None
    signature_header: str
    payload: bytes


@dataclass
class FakeState:
    """Everything the fake knows. Handlers run under ``lock``; tests may read it at any time."""

    clock: FakeClock = field(default_factory=FakeClock)
    account_api_version: str = stripe.api_version
    # When set, only these secret keys authenticate (others get 401); otherwise any sk_test_/rk_test_ key.
    api_keys: set[str] | None = None
    # v2 meter event session tokens live this long (Stripe: 15 minutes).
    session_ttl_seconds: int = 15 * 60
    # Webhook signing uses real time by default so receivers verifying with the default 300 s
    # tolerance accept it; set to "fake" to sign with the fake clock.
    webhook_timestamp_source: str = "real"
    # Account-level invoice numbering: finalized invoices get "{invoice_prefix}-0001", "-0002"...
    invoice_prefix: str = "TB"
    # Decline codes for the next invoice payments (consumed one per attempt; see fail_next_invoice_payment).
    invoice_payment_failures: list[str] = field(default_factory=list)
    # v1 meter events: Stripe answers a duplicate identifier with 400 "An event already exists with
    # identifier …" and no `code`; set this to answer with a code as well (e.g. "duplicate_meter_event").
    duplicate_identifier_code: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    meter_events: list[MeterEventRecord] = field(default_factory=list)
    # identifier -> its records, in arrival order; kept up to date lazily (meter_events is append-only)
    _identifier_index: dict[str, list[MeterEventRecord]] = field(default_factory=dict, repr=False)
    _identifier_indexed: int = field(default=0, repr=False)
    meter_error_reports: list[dict[str, Any]] = field(default_factory=list)
    usage_records: list[UsageRecord] = field(default_factory=list)
    sessions: dict[str, MeterEventSession] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], SavedResponse] = field(default_factory=dict)
    requests: list[RequestRecord] = field(default_factory=list)
    webhook_queue: list[tuple[str, str]] = field(default_factory=list)  # (endpoint id, event id)
    webhook_deliveries: list[WebhookDelivery] = field(default_factory=list)
    # Tracebacks of unexpected exceptions in handlers (bugs in the fake); answered as HTTP 500.
    server_errors: list[str] = field(default_factory=list)
    # Called after each request that recorded events (the server uses it for auto-delivery).
    on_events: Callable[[], None] | None = None
    # Internal per-object data not shown in the API (e.g. subscription billing anchors).
    internal: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- generic object storage ---------------------------------------------------------------

    def now(self) -> int:
        return self.clock.now()

    def table(self, kind: str) -> dict[str, dict[str, Any]]:
        return self.objects.setdefault(kind, {})

    def insert(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.table(kind)[obj["id"]] = obj
        return obj

    def get(self, kind: str, ident: str, *, label: str | None = None, param: str = "id") -> dict[str, Any]:
        obj = self.table(kind).get(ident)
        if obj is None:
            raise StripeAPIError.missing(label or kind, ident, param=param)
        return obj

    def find(self, kind: str, ident: str) -> dict[str, Any] | None:
        return self.table(kind).get(ident)

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Objects of ``kind``, newest first (Stripe's list order)."""
        return list(reversed(self.table(kind).values()))

    def base_object(self, prefix: str, object_name: str, **fields: Any) -> dict[str, Any]:
        obj: dict[str, Any] = {"id": new_id(prefix), "object": object_name}
        obj.update(fields)
        obj.setdefault("created", self.now())
        obj["livemode"] = False
        return obj

    # -- events -----------------------------------------------------------------------------------

    def record_event(
        self,
        type_: str,
        obj: dict[str, Any],
        *,
        previous_attributes: dict[str, Any] | None = None,
        request_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        endpoints = [
            ep
            for ep in self.all("webhook_endpoint")
            if ep["status"] == "enabled" and ("*" in ep["enabled_events"] or type_ in ep["enabled_events"])
        ]
        data: dict[str, Any] = {"object": deep_copy(obj)}
        if previous_attributes is not None:
            data["previous_attributes"] = deep_copy(previous_attributes)
        event: dict[str, Any] = {
            "id": new_id("evt"),
            "object": "event",
            "api_version": self.account_api_version,
            "created": self.now(),
            "data": data,
            "livemode": False,
            "pending_webhooks": len(endpoints),
            "request": {"id": request_id, "idempotency_key": idempotency_key},
            "type": type_,
        }
        self.events.append(event)
        self.insert("event", event)
        for ep in reversed(endpoints):
            self.webhook_queue.append((ep["id"], event["id"]))
        return event

    def events_of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    # -- meters -----------------------------------------------------------------------------------

    def active_meter_for(self, event_name: str) -> dict[str, Any] | None:
        for meter in self.table("billing.meter").values():
            if meter["event_name"] == event_name and meter["status"] == "active":
                return meter
        return None

    def meter_for_event_name(self, event_name: str) -> dict[str, Any] | None:
        found = None
        for meter in self.table("billing.meter").values():
            if meter["event_name"] == event_name:
                found = meter
                if meter["status"] == "active":
                    return meter
        return found

    def recent_identifier(self, identifier: str, *, within: int = 86_400) -> MeterEventRecord | None:
        """The event with ``identifier`` received within the last ``within`` seconds, if any."""
        cutoff = self.now() - within
        if self._identifier_indexed > len(self.meter_events):  # the list was replaced or cleared
            self._identifier_index, self._identifier_indexed = {}, 0
        for record in self.meter_events[self._identifier_indexed :]:
            self._identifier_index.setdefault(record.identifier, []).append(record)
        self._identifier_indexed = len(self.meter_events)
        for record in reversed(self._identifier_index.get(identifier, [])):
            if record.received_at > cutoff:
                return record
        return None

    def summarize(
        self,
        meter_id: str,
        customer: str,
        start_time: int,
        end_time: int,
    ) -> Decimal:
        """The meter's aggregate for ``customer`` over ``[start_time, end_time)`` (exact decimal)."""
        meter = self.get("billing.meter", meter_id)
        events = [
            r
            for r in self.meter_events
            if r.meter_id == meter_id
            and r.customer_id == customer
            and not r.cancelled
            and start_time <= r.timestamp < end_time
        ]
        formula = meter["default_aggregation"]["formula"]
        if formula == "count":
            return Decimal(len(events))
        if formula == "last":
            if not events:
                return Decimal(0)
            latest = max(enumerate(events), key=lambda pair: (pair[1].timestamp, pair[0]))[1]
            return latest.value
        return sum((r.value for r in events), Decimal(0))

    # -- subscriptions ----------------------------------------------------------------------------

    def advance_subscription(self, subscription_id: str) -> dict[str, Any]:
        """Move a subscription (and its items) to the next billing period.

        Emits ``customer.subscription.updated`` with the old period in ``previous_attributes``, like
        Stripe does when a period renews. Does not move the clock (use ``clock.set`` for that).
        """
        from .resources.subscriptions import advance_period

        with self.lock:
            sub = advance_period(self, subscription_id)
        self.notify()
        return sub

    def notify(self) -> None:
        if self.on_events is not None and self.webhook_queue:
            self.on_events()

    # -- requests ---------------------------------------------------------------------------------

    def requests_to(self, method: str | None = None, path_prefix: str = "") -> list[RequestRecord]:
        return [
            r
            for r in list(self.requests)
            if (method is None or r.method == method.upper()) and r.path.startswith(path_prefix)
        ]


def deep_copy(value: Any) -> Any:
    """Copy of a JSON-like value (dicts and lists copied, leaves shared)."""
    if isinstance(value, dict):
        return {k: deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy(v) for v in value]
    return value


def iso8601(ts: float) -> str:
    """Stripe v2 timestamp rendering: ``2024-06-01T12:00:00.000Z``."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso8601(text: str) -> int:
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError("timestamp needs a time zone")
    return int(dt.timestamp())


def version_before(version: str | None, cutoff: str) -> bool:
    """True when API ``version`` (``YYYY-MM-DD[.name]``) predates ``cutoff`` (``YYYY-MM-DD``)."""
    return bool(version) and str(version)[:10] < cutoff
