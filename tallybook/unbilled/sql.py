"""The report's sources over the real store: meter queries (tallybook/meters), customers and
subscriptions (tallybook/billing), and the notification outbox (tallybook/webhooks).

The report owns no table: it reads what metering and billing store, and queues its webhook in the
outbox like every other notification (signed delivery, retries, the events API).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from tallybook.billing.models import FlatPrice
from tallybook.billing.subscriptions import SubscriptionService
from tallybook.meters.models import UsageQuery
from tallybook.meters.service import MeterService
from tallybook.store import billing as billing_store
from tallybook.store.base import SqlStore
from tallybook.unbilled.model import Coverage, Customer, Span
from tallybook.webhooks.service import OutboxMessage, WebhookService

log = logging.getLogger(__name__)


class SqlUnbilledSources:
    """UsageSource and BillingSource over the meters and billing services."""

    def __init__(self, store: SqlStore, meters: MeterService, subscriptions: SubscriptionService) -> None:
        self.store = store
        self.meter_service = meters
        self.subscriptions = subscriptions

    # -- UsageSource
    def meters(self) -> list[str]:
        return [m.slug for m in self.meter_service.list()]

    def by_subject(self, meter: str, span: Span, as_of: datetime | None) -> list[tuple[str, str | None, Decimal]]:
        query = UsageQuery(meter=meter, from_=span.start, to=span.end, group_by=("subject", "customer_id"), as_of=as_of)
        return [(r.subject or "", r.customer_id, r.value) for r in self.meter_service.query(query)]

    def by_customer(
        self, meter: str, span: Span, customer_ids: Sequence[str], as_of: datetime | None
    ) -> dict[str, Decimal]:
        with self.store.read() as conn:
            live = sorted(billing_store.live_customer_ids(conn, list(customer_ids)))
        if not live:
            return {}
        query = UsageQuery(
            meter=meter, from_=span.start, to=span.end, customer_ids=tuple(live), group_by=("customer_id",), as_of=as_of
        )
        return {r.customer_id: r.value for r in self.meter_service.query(query) if r.customer_id is not None}

    # -- BillingSource
    def customers(self, customer_ids: Sequence[str]) -> dict[str, Customer]:
        with self.store.read() as conn:
            rows = billing_store.customer_rows(conn, list(customer_ids))
        return {
            cid: Customer(cid, row["key"], row["name"], row["timezone"] or "UTC")
            for cid, row in rows.items()
            if row["deleted_us"] is None
        }

    def coverage(self, customer_ids: Sequence[str], span: Span) -> dict[str, list[Coverage]]:
        out: dict[str, list[Coverage]] = {cid: [] for cid in customer_ids}
        priced: dict[tuple[str, int], tuple[str, frozenset[str]]] = {}
        every_meter: frozenset[str] | None = None
        for sub in self.subscriptions.of_customers(list(customer_ids), span.start, span.end):
            key = (sub.plan_key, sub.plan_version)
            if key not in priced:
                try:
                    plan = self.subscriptions.plan_of(sub)
                    meters = frozenset(
                        rc.meter
                        for rc in plan.rate_cards
                        if rc.meter is not None and not isinstance(rc.price, FlatPrice)
                    )
                    priced[key] = (f"{plan.plan_key} v{plan.version}", meters)
                except Exception as exc:
                    # Its invoices fail (and are listed in the job failures): not unbilled usage.
                    log.warning("unbilled report: plan not readable", extra={"plan": key[0], "error": str(exc)})
                    every_meter = every_meter or frozenset(self.meters())
                    priced[key] = (f"{key[0]} v{key[1]}", every_meter)
            name, meters = priced[key]
            out.setdefault(sub.customer_id, []).append(Coverage(sub.id, name, sub.active_from, sub.active_to, meters))
        return out


class OutboxNotifier:
    """Notifier: the `billing.unbilled_usage` event into the outbox, for the channels its rules name."""

    def __init__(self, store: SqlStore, webhooks: WebhookService, event_type: str) -> None:
        self.store = store
        self.webhooks = webhooks
        self.event_type = event_type

    def listening(self) -> bool:
        with self.store.read() as conn:
            return bool(self.webhooks.destinations(conn, self.event_type))

    def send(self, payload: dict[str, Any], dedup_key: str, now: datetime) -> bool:
        with self.store.write() as conn:
            destinations = self.webhooks.destinations(conn, self.event_type)
            message = OutboxMessage(type=self.event_type, dedup_key=dedup_key, payload=payload)
            return self.webhooks.enqueue(conn, message, destinations, now) is not None


__all__ = ["OutboxNotifier", "SqlUnbilledSources"]
