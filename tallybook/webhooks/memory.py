"""In-memory webhook storage (ports.WebhookStorage), for unit tests of the service and the worker.

It keeps what `sql.py` keeps and answers as it does (orders, filters, the dedup key, claims and
their tokens); tests/test_webhook_storage.py holds both to the same cases. Transactions are not
isolated from each other: one lock serialises them, as SQLite's write lock does; a `writing()`
block that raises leaves nothing behind, as a rolled-back transaction would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from typing import Any

from tallybook.webhooks.model import (
    PENDING,
    RESENDING,
    SENDING,
    AttemptRow,
    ChannelRow,
    Claimed,
    DeliveryRow,
    EventFilter,
    EventRow,
    RuleRow,
)

_CHANNEL_FIELDS = {f.name for f in fields(ChannelRow)}
_RULE_FIELDS = {f.name for f in fields(RuleRow)}


class MemoryWebhookTransaction:
    def __init__(self, storage: MemoryWebhookStorage) -> None:
        self.s = storage

    # -- channels -----------------------------------------------------------------------------------
    def insert_channel(self, values: dict[str, Any], ignore_existing: bool = False) -> None:
        if values["id"] in self.s.channels:
            if ignore_existing:
                return
            raise KeyError(f"channel {values['id']} exists")
        row = {"disabled_reason": None, **values}
        row["custom_headers"] = dict(row.get("custom_headers") or {})
        self.s.channels[values["id"]] = ChannelRow(**{k: v for k, v in row.items() if k in _CHANNEL_FIELDS})

    def update_channel(self, channel_id: str, values: dict[str, Any], include_deleted: bool = False) -> bool:
        current = self.s.channels.get(channel_id)
        if current is None or (current.deleted_us is not None and not include_deleted):
            return False
        changes = dict(values)
        if "custom_headers" in changes:
            changes["custom_headers"] = dict(changes["custom_headers"] or {})
        self.s.channels[channel_id] = replace(current, **changes)
        return True

    def get_channel(self, channel_id: str) -> ChannelRow | None:
        return self.s.channels.get(channel_id)

    def list_channels(
        self, include_deleted: bool = False, include_disabled: bool = True, source: str | None = None
    ) -> list[ChannelRow]:
        rows = [
            c
            for c in self.s.channels.values()
            if (include_deleted or c.deleted_us is None)
            and (include_disabled or not c.disabled)
            and (source is None or c.source == source)
        ]
        return sorted(rows, key=lambda c: (c.created_us, c.id))

    def disable_channel(self, channel_id: str, reason: str, now_us: int) -> None:
        current = self.s.channels.get(channel_id)
        if current is not None:
            self.s.channels[channel_id] = replace(current, disabled=True, disabled_reason=reason, updated_us=now_us)

    # -- rules --------------------------------------------------------------------------------------
    def insert_rule(self, values: dict[str, Any]) -> None:
        if values["id"] in self.s.rules:
            raise KeyError(f"rule {values['id']} exists")
        row = {**values, "channel_ids": list(values["channel_ids"])}
        self.s.rules[values["id"]] = RuleRow(**{k: v for k, v in row.items() if k in _RULE_FIELDS})

    def update_rule(self, rule_id: str, values: dict[str, Any]) -> bool:
        current = self.s.rules.get(rule_id)
        if current is None or current.deleted_us is not None:
            return False
        self.s.rules[rule_id] = replace(current, **values)
        return True

    def get_rule(self, rule_id: str) -> RuleRow | None:
        return self.s.rules.get(rule_id)

    def list_rules(self, include_deleted: bool = False, include_disabled: bool = True) -> list[RuleRow]:
        rows = [
            r
            for r in self.s.rules.values()
            if (include_deleted or r.deleted_us is None) and (include_disabled or not r.disabled)
        ]
        return sorted(rows, key=lambda r: (r.created_us, r.id))

    # -- outbox -------------------------------------------------------------------------------------
    def insert_event(self, event: EventRow) -> bool:
        if event.id in self.s.events or any(e.dedup_key == event.dedup_key for e in self.s.events.values()):
            return False
        self.s.events[event.id] = event
        return True

    def insert_delivery(self, event_id: str, channel_id: str, now_us: int) -> bool:
        if any(d.event_id == event_id and d.channel_id == channel_id for d in self.s.deliveries.values()):
            return False
        delivery_id = len(self.s.deliveries) + 1
        self.s.deliveries[delivery_id] = DeliveryRow(
            delivery_id, event_id, channel_id, PENDING, 0, now_us, None, None, None, now_us
        )
        return True

    def get_event(self, event_id: str) -> EventRow | None:
        return self.s.events.get(event_id)

    def list_events(self, flt: EventFilter) -> tuple[int, list[EventRow]]:
        channels = set(flt.channels)
        to_channels = {d.event_id for d in self.s.deliveries.values() if d.channel_id in channels}
        rows = [
            e
            for e in self.s.events.values()
            if (flt.from_us is None or e.created_us >= flt.from_us)
            and (flt.to_us is None or e.created_us <= flt.to_us)
            and (not flt.subjects or e.subject in flt.subjects)
            and (not flt.rules or e.rule_id in flt.rules)
            and (not flt.types or e.type in flt.types)
            and (not channels or e.id in to_channels)
        ]
        key = (lambda e: (e.id, e.id)) if flt.order_by == "id" else (lambda e: (e.created_us, e.id))
        rows.sort(key=key, reverse=flt.descending)
        return len(rows), rows[flt.offset : flt.offset + flt.limit]

    def deliveries_of(self, event_ids: Sequence[str]) -> list[DeliveryRow]:
        wanted = set(event_ids)
        return [d for _, d in sorted(self.s.deliveries.items()) if d.event_id in wanted]

    def attempts_of(self, delivery_ids: Sequence[int]) -> list[AttemptRow]:
        wanted = set(delivery_ids)
        return [a for a in self.s.attempts if a.delivery_id in wanted]

    def schedule_resend(self, delivery_id: int, now_us: int) -> None:
        current = self.s.deliveries[delivery_id]
        self.s.deliveries[delivery_id] = replace(
            current,
            state=RESENDING,
            attempt_count=0,
            next_attempt_us=now_us,
            lease_until_us=None,
            claim_token=None,
            reason="re-send requested",
            updated_us=now_us,
        )

    # -- delivery worker ----------------------------------------------------------------------------
    def _due(self, now_us: int) -> list[DeliveryRow]:
        def due(d: DeliveryRow) -> bool:
            channel = self.s.channels[d.channel_id]
            if channel.disabled or channel.deleted_us is not None:
                return False
            if d.state in (PENDING, RESENDING):
                return d.next_attempt_us is not None and d.next_attempt_us <= now_us
            return d.state == SENDING and d.lease_until_us is not None and d.lease_until_us <= now_us

        return sorted((d for d in self.s.deliveries.values() if due(d)), key=lambda d: (d.next_attempt_us or 0, d.id))

    def has_due(self, now_us: int) -> bool:
        return bool(self._due(now_us))

    def claim_due(self, now_us: int, lease_until_us: int, token: str, limit: int) -> list[Claimed]:
        claimed: list[Claimed] = []
        for d in self._due(now_us)[:limit]:
            taken = replace(d, state=SENDING, lease_until_us=lease_until_us, claim_token=token, updated_us=now_us)
            self.s.deliveries[d.id] = taken
            claimed.append(Claimed(taken, self.s.events[d.event_id], self.s.channels[d.channel_id]))
        return sorted(claimed, key=lambda c: c.delivery.id)

    def finish_attempt(
        self,
        claimed: DeliveryRow,
        attempt: dict[str, Any],
        state: str,
        next_attempt_us: int | None,
        reason: str,
        now_us: int,
    ) -> bool:
        self.s.attempts.append(AttemptRow(id=len(self.s.attempts) + 1, delivery_id=claimed.id, **attempt))
        current = self.s.deliveries[claimed.id]
        if current.claim_token != claimed.claim_token or current.state != SENDING:
            return False
        self.s.deliveries[claimed.id] = replace(
            current,
            state=state,
            attempt_count=claimed.attempt_count + 1,
            next_attempt_us=next_attempt_us,
            lease_until_us=None,
            claim_token=None,
            reason=reason,
            updated_us=now_us,
        )
        return True


class MemoryWebhookStorage:
    def __init__(self) -> None:
        self.channels: dict[str, ChannelRow] = {}
        self.rules: dict[str, RuleRow] = {}
        self.events: dict[str, EventRow] = {}
        self.deliveries: dict[int, DeliveryRow] = {}
        self.attempts: list[AttemptRow] = []
        self._lock = threading.RLock()

    @contextmanager
    def reading(self) -> Iterator[MemoryWebhookTransaction]:
        with self._lock:
            yield MemoryWebhookTransaction(self)

    @contextmanager
    def writing(self) -> Iterator[MemoryWebhookTransaction]:
        with self._lock:
            # Rows are frozen: copies of the containers are a complete snapshot.
            saved = (
                dict(self.channels),
                dict(self.rules),
                dict(self.events),
                dict(self.deliveries),
                list(self.attempts),
            )
            try:
                yield MemoryWebhookTransaction(self)
            except BaseException:
                self.channels, self.rules, self.events, self.deliveries, self.attempts = saved
                raise

    def joining(self, transaction: object) -> MemoryWebhookTransaction:
        # Any caller's "transaction" will do: memory has one, and its writes are immediate.
        return MemoryWebhookTransaction(self)
