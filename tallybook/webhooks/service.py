"""Notification channels and rules, routing, and writing events into the outbox.

Where an event goes: every enabled channel from the config file whose `events` include its type,
and every enabled API channel named by an enabled rule of that type. Events are written with
`enqueue` inside the caller's transaction; the delivery worker sends them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tallybook import jsonutil
from tallybook.clock import Clock, to_micros
from tallybook.ids import new_ulid, stable_ulid
from tallybook.webhooks.model import (
    CHANNEL_TYPE,
    SOURCE_API,
    SOURCE_CONFIG,
    AttemptRow,
    ChannelInput,
    ChannelRow,
    DeliveryRow,
    Destination,
    EventDetail,
    EventFilter,
    EventRow,
    InvalidInput,
    NotFound,
    OutboxMessage,
    RuleInput,
    RuleRow,
)
from tallybook.webhooks.ports import WebhookStorage, WebhookTransaction
from tallybook.webhooks.settings import EVENT_TYPES, WebhookSettings, check_webhook_url
from tallybook.webhooks.signing import generate_secret

log = logging.getLogger(__name__)

# Headers the signature scheme owns; a channel's custom headers cannot replace them.
RESERVED_HEADERS = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-webhook-timestamp",
        "x-webhook-signature",
        "content-type",
        "content-length",
        "host",
    }
)


def _check_headers(headers: dict[str, str] | None) -> dict[str, str]:
    headers = dict(headers or {})
    reserved = sorted(h for h in headers if h.lower() in RESERVED_HEADERS)
    if reserved:
        raise InvalidInput(f"customHeaders may not set {', '.join(reserved)}; Tallybook sets them")
    return headers


class WebhookService:
    def __init__(self, storage: WebhookStorage, settings: WebhookSettings, clock: Clock) -> None:
        self.storage = storage
        self.settings = settings
        self.clock = clock

    def _now_us(self) -> int:
        return to_micros(self.clock.now())

    # -- config file endpoints --------------------------------------------------------------------
    def sync_config_endpoints(self) -> None:
        """Make the channels table match the `webhooks:` endpoints of the config file.

        A config endpoint keeps one channel (its id derives from the URL) across restarts, and so
        keeps its generated secret when the file gives none.
        """
        now_us = self._now_us()
        wanted = {stable_ulid(f"config-endpoint:{e.url}"): e for e in self.settings.endpoints}
        with self.storage.writing() as tx:
            existing = {c.id: c for c in tx.list_channels(include_deleted=True, source=SOURCE_CONFIG)}
            for channel_id, endpoint in wanted.items():
                current = existing.get(channel_id)
                secret = endpoint.secret or (current.signing_secret if current else None) or generate_secret()
                values: dict[str, Any] = {
                    "name": endpoint.name or endpoint.url,
                    "url": endpoint.url,
                    "signing_secret": secret,
                    "custom_headers": _check_headers(endpoint.headers),
                    "event_types": list(endpoint.event_types),
                    "updated_us": now_us,
                    "deleted_us": None,
                }
                if current is None:
                    tx.insert_channel(
                        {
                            "id": channel_id,
                            "type": CHANNEL_TYPE,
                            "disabled": not endpoint.enabled,
                            "source": SOURCE_CONFIG,
                            "metadata": None,
                            "created_us": now_us,
                            **values,
                        },
                        ignore_existing=True,
                    )
                    if not endpoint.secret:
                        log.warning(
                            "webhook endpoint has no secret in the config file; one was generated "
                            "(see GET /api/v1/notification/channels)",
                            extra={"url": endpoint.url, "channel_id": channel_id},
                        )
                else:
                    # An endpoint disabled by a 410 stays disabled until the file or API re-enables
                    # it; `enabled: false` in the file always wins.
                    if not endpoint.enabled:
                        values["disabled"] = True
                        values["disabled_reason"] = None
                    elif current.deleted_us is not None or (current.disabled and current.disabled_reason is None):
                        values["disabled"] = False
                    tx.update_channel(channel_id, values, include_deleted=True)
            for channel_id, channel in existing.items():
                if channel_id not in wanted and channel.deleted_us is None:
                    tx.update_channel(channel_id, {"deleted_us": now_us, "updated_us": now_us})

    # -- channels (API) ---------------------------------------------------------------------------
    def create_channel(self, data: ChannelInput) -> ChannelRow:
        now = self.clock.now()
        now_us = to_micros(now)
        channel_id = new_ulid(now)
        values: dict[str, Any] = {
            "id": channel_id,
            "type": CHANNEL_TYPE,
            "name": data.name,
            "url": check_webhook_url(data.url),
            "signing_secret": data.signing_secret or generate_secret(),
            "custom_headers": _check_headers(data.custom_headers),
            "disabled": data.disabled,
            "disabled_reason": None,
            "metadata": data.metadata,
            "source": SOURCE_API,
            "event_types": None,
            "created_us": now_us,
            "updated_us": now_us,
            "deleted_us": None,
        }
        with self.storage.writing() as tx:
            tx.insert_channel(values)
            created = tx.get_channel(channel_id)
        assert created is not None
        return created

    def update_channel(self, channel_id: str, data: ChannelInput) -> ChannelRow:
        values: dict[str, Any] = {
            "name": data.name,
            "url": check_webhook_url(data.url),
            "custom_headers": _check_headers(data.custom_headers),
            "disabled": data.disabled,
            "disabled_reason": None,
            "metadata": data.metadata,
            "updated_us": self._now_us(),
        }
        if data.signing_secret:
            values["signing_secret"] = data.signing_secret
        with self.storage.writing() as tx:
            current = tx.get_channel(channel_id)
            if current is None or current.deleted_us is not None:
                raise NotFound(f"notification channel {channel_id} not found")
            if current.source == SOURCE_CONFIG and current.url != values["url"]:
                raise InvalidInput("this channel comes from the config file; change its url there")
            tx.update_channel(channel_id, values)
            updated = tx.get_channel(channel_id)
        assert updated is not None
        return updated

    def get_channel(self, channel_id: str) -> ChannelRow:
        with self.storage.reading() as tx:
            channel = tx.get_channel(channel_id)
        if channel is None:
            raise NotFound(f"notification channel {channel_id} not found")
        return channel

    def list_channels(self, include_deleted: bool = False, include_disabled: bool = False) -> list[ChannelRow]:
        with self.storage.reading() as tx:
            return tx.list_channels(include_deleted=include_deleted, include_disabled=include_disabled)

    def delete_channel(self, channel_id: str) -> None:
        now_us = self._now_us()
        with self.storage.writing() as tx:
            current = tx.get_channel(channel_id)
            if current is None or current.deleted_us is not None:
                raise NotFound(f"notification channel {channel_id} not found")
            if current.source == SOURCE_CONFIG:
                raise InvalidInput("this channel comes from the config file; remove it there (or disable it)")
            rules = [r for r in tx.list_rules() if channel_id in r.channel_ids]
            if rules:
                names = ", ".join(r.id for r in rules)
                raise InvalidInput(f"the channel is used by notification rule(s) {names}; remove it there first")
            tx.update_channel(channel_id, {"deleted_us": now_us, "updated_us": now_us})

    # -- rules ------------------------------------------------------------------------------------
    def _check_rule(self, tx: WebhookTransaction, data: RuleInput) -> list[str]:
        if data.type not in EVENT_TYPES:
            raise InvalidInput(f"type must be one of {', '.join(EVENT_TYPES)}")
        channel_ids = list(dict.fromkeys(data.channels))
        if not channel_ids:
            raise InvalidInput("channels: name at least one notification channel")
        for channel_id in channel_ids:
            channel = tx.get_channel(channel_id)
            if channel is None or channel.deleted_us is not None:
                raise InvalidInput(f"channels: notification channel {channel_id} does not exist")
        return channel_ids

    def create_rule(self, data: RuleInput) -> RuleRow:
        now = self.clock.now()
        now_us = to_micros(now)
        rule_id = new_ulid(now)
        with self.storage.writing() as tx:
            channel_ids = self._check_rule(tx, data)
            tx.insert_rule(
                {
                    "id": rule_id,
                    "name": data.name,
                    "type": data.type,
                    "disabled": data.disabled,
                    "channel_ids": channel_ids,
                    "metadata": data.metadata,
                    "created_us": now_us,
                    "updated_us": now_us,
                    "deleted_us": None,
                },
            )
            created = tx.get_rule(rule_id)
        assert created is not None
        return created

    def update_rule(self, rule_id: str, data: RuleInput) -> RuleRow:
        with self.storage.writing() as tx:
            current = tx.get_rule(rule_id)
            if current is None or current.deleted_us is not None:
                raise NotFound(f"notification rule {rule_id} not found")
            channel_ids = self._check_rule(tx, data)
            tx.update_rule(
                rule_id,
                {
                    "name": data.name,
                    "type": data.type,
                    "disabled": data.disabled,
                    "channel_ids": channel_ids,
                    "metadata": data.metadata,
                    "updated_us": self._now_us(),
                },
            )
            updated = tx.get_rule(rule_id)
        assert updated is not None
        return updated

    def get_rule(self, rule_id: str) -> RuleRow:
        with self.storage.reading() as tx:
            rule = tx.get_rule(rule_id)
        if rule is None:
            raise NotFound(f"notification rule {rule_id} not found")
        return rule

    def list_rules(self, include_deleted: bool = False, include_disabled: bool = False) -> list[RuleRow]:
        with self.storage.reading() as tx:
            return tx.list_rules(include_deleted=include_deleted, include_disabled=include_disabled)

    def delete_rule(self, rule_id: str) -> None:
        now_us = self._now_us()
        with self.storage.writing() as tx:
            if not tx.update_rule(rule_id, {"deleted_us": now_us, "updated_us": now_us}):
                raise NotFound(f"notification rule {rule_id} not found")

    # -- routing and the outbox -------------------------------------------------------------------
    def destinations(self, conn: object, event_type: str) -> list[Destination]:
        """Channels that receive `event_type` now (deterministic order, each channel once), read in
        the caller's open transaction `conn`."""
        return self._destinations(self.storage.joining(conn), event_type)

    def _destinations(self, tx: WebhookTransaction, event_type: str) -> list[Destination]:
        found: dict[str, Destination] = {}
        channels = {c.id: c for c in tx.list_channels(include_disabled=False)}
        for channel in channels.values():
            if channel.source == SOURCE_CONFIG and event_type in (channel.event_types or ()):
                found.setdefault(channel.id, Destination(channel.id, None))
        for rule in tx.list_rules(include_disabled=False):
            if rule.type != event_type:
                continue
            for channel_id in rule.channel_ids:
                if channel_id in channels:
                    found.setdefault(channel_id, Destination(channel_id, rule.id))
        return sorted(found.values(), key=lambda d: d.channel_id)

    def enqueue(
        self,
        conn: object,
        message: OutboxMessage,
        destinations: Sequence[Destination],
        now: datetime,
        id_time: datetime | None = None,
    ) -> EventRow | None:
        """Write one event and its deliveries in the caller's open transaction `conn`.

        Returns the event, or None when an event with the same dedup key exists already (then
        nothing is written: the same report or period is never queued twice).
        """
        return self._enqueue(self.storage.joining(conn), message, destinations, now, id_time)

    def _enqueue(
        self,
        tx: WebhookTransaction,
        message: OutboxMessage,
        destinations: Sequence[Destination],
        now: datetime,
        id_time: datetime | None = None,
    ) -> EventRow | None:
        if not destinations:
            return None
        now_us = to_micros(now)
        # Stable ids take their time part from `id_time` (e.g. the window end), not from now.
        event_id = stable_ulid(message.dedup_key, id_time or now) if message.stable_id else new_ulid(now)
        event = EventRow(
            id=event_id,
            type=message.type,
            dedup_key=message.dedup_key,
            subject=message.subject,
            rule_id=next((d.rule_id for d in destinations if d.rule_id), None),
            body=jsonutil.dumps(message.payload),
            created_us=now_us,
        )
        if not tx.insert_event(event):
            return None
        for destination in destinations:
            tx.insert_delivery(event.id, destination.channel_id, now_us)
        return event

    def send_test(self, rule: RuleRow, payload: dict[str, Any]) -> EventRow:
        """Write a sample event to the rule's (live, enabled) channels: POST /rules/{id}/test."""
        now = self.clock.now()
        with self.storage.writing() as tx:
            live = {c.id for c in tx.list_channels(include_disabled=False)}
            destinations = [Destination(c, rule.id) for c in rule.channel_ids if c in live]
            if not destinations:
                raise InvalidInput("the rule has no enabled channel to send a test event to")
            message = OutboxMessage(rule.type, f"test|{rule.id}|{new_ulid(now)}", payload)
            event = self._enqueue(tx, message, destinations, now)
        assert event is not None
        return event

    # -- reading events ---------------------------------------------------------------------------
    def list_events(self, flt: EventFilter) -> tuple[int, list[EventRow]]:
        with self.storage.reading() as tx:
            return tx.list_events(flt)

    def get_event(self, event_id: str) -> EventRow:
        with self.storage.reading() as tx:
            event = tx.get_event(event_id)
        if event is None:
            raise NotFound(f"notification event {event_id} not found")
        return event

    def details(self, events: Sequence[EventRow]) -> list[EventDetail]:
        with self.storage.reading() as tx:
            deliveries = tx.deliveries_of([e.id for e in events])
            attempts = tx.attempts_of([d.id for d in deliveries])
            rules = {rid: tx.get_rule(rid) for rid in {e.rule_id for e in events if e.rule_id}}
        attempts_by: dict[int, list[AttemptRow]] = {}
        for attempt in attempts:
            attempts_by.setdefault(attempt.delivery_id, []).append(attempt)
        deliveries_by: dict[str, list[tuple[DeliveryRow, list[AttemptRow]]]] = {}
        for delivery in deliveries:
            deliveries_by.setdefault(delivery.event_id, []).append((delivery, attempts_by.get(delivery.id, [])))
        return [
            EventDetail(e, deliveries_by.get(e.id, []), rules.get(e.rule_id) if e.rule_id else None) for e in events
        ]

    def resend(self, event_id: str, channel_ids: Sequence[str] = ()) -> None:
        """Send the event again (to the given channels, or to every channel it went to)."""
        now_us = self._now_us()
        with self.storage.writing() as tx:
            event = tx.get_event(event_id)
            if event is None:
                raise NotFound(f"notification event {event_id} not found")
            deliveries = {d.channel_id: d for d in tx.deliveries_of([event_id])}
            targets = list(dict.fromkeys(channel_ids)) or list(deliveries)
            for channel_id in targets:
                channel = tx.get_channel(channel_id)
                if channel is None or channel.deleted_us is not None:
                    raise InvalidInput(f"channels: notification channel {channel_id} does not exist")
                if channel_id not in deliveries:
                    tx.insert_delivery(event_id, channel_id, now_us)
                    continue
                tx.schedule_resend(deliveries[channel_id].id, now_us)


__all__ = [
    "SOURCE_API",
    "SOURCE_CONFIG",
    "ChannelInput",
    "Destination",
    "EventDetail",
    "InvalidInput",
    "NotFound",
    "OutboxMessage",
    "RuleInput",
    "WebhookService",
]
