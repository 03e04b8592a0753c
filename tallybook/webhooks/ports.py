"""What the webhook service and the delivery worker need from storage.

Every call runs in one transaction (`WebhookTransaction`), taken with `reading()` or `writing()`,
or joined with `joining(conn)`: other rooms write their events into the outbox inside the
transaction that makes the change the event reports (an invoice issued, a report sent), so they
hand the service their own open transaction and the outbox rows commit with it or not at all.
`sql.SqlWebhookStorage` is the adapter on the SQL store.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from tallybook.webhooks.model import AttemptRow, ChannelRow, Claimed, DeliveryRow, EventFilter, EventRow, RuleRow


class WebhookTransaction(Protocol):
    # -- channels -----------------------------------------------------------------------------------
    def insert_channel(self, values: dict[str, Any], ignore_existing: bool = False) -> None:
        """Insert a channel; with ignore_existing, a channel with the same id (another process
        syncing the same config file at the same moment) is left as it is."""
        ...

    def update_channel(self, channel_id: str, values: dict[str, Any], include_deleted: bool = False) -> bool: ...

    def get_channel(self, channel_id: str) -> ChannelRow | None: ...

    def list_channels(
        self, include_deleted: bool = False, include_disabled: bool = True, source: str | None = None
    ) -> list[ChannelRow]: ...

    def disable_channel(self, channel_id: str, reason: str, now_us: int) -> None: ...

    # -- rules --------------------------------------------------------------------------------------
    def insert_rule(self, values: dict[str, Any]) -> None: ...

    def update_rule(self, rule_id: str, values: dict[str, Any]) -> bool:
        """Change a live rule; False when there is none."""
        ...

    def get_rule(self, rule_id: str) -> RuleRow | None: ...

    def list_rules(self, include_deleted: bool = False, include_disabled: bool = True) -> list[RuleRow]: ...

    # -- outbox -------------------------------------------------------------------------------------
    def insert_event(self, event: EventRow) -> bool:
        """Insert the event unless one with its id or dedup key exists; True when inserted."""
        ...

    def insert_delivery(self, event_id: str, channel_id: str, now_us: int) -> bool: ...

    def get_event(self, event_id: str) -> EventRow | None: ...

    def list_events(self, flt: EventFilter) -> tuple[int, list[EventRow]]:
        """The total the filter selects and the page it asks for."""
        ...

    def deliveries_of(self, event_ids: Sequence[str]) -> list[DeliveryRow]: ...

    def attempts_of(self, delivery_ids: Sequence[int]) -> list[AttemptRow]: ...

    def schedule_resend(self, delivery_id: int, now_us: int) -> None: ...

    # -- delivery worker ----------------------------------------------------------------------------
    def has_due(self, now_us: int) -> bool: ...

    def claim_due(self, now_us: int, lease_until_us: int, token: str, limit: int) -> list[Claimed]:
        """Take up to `limit` due deliveries for this worker (in a `writing()` transaction)."""
        ...

    def finish_attempt(
        self,
        claimed: DeliveryRow,
        attempt: dict[str, Any],
        state: str,
        next_attempt_us: int | None,
        reason: str,
        now_us: int,
    ) -> bool:
        """Record an attempt and the delivery's new state, if this worker still holds the claim."""
        ...


class WebhookStorage(Protocol):
    def reading(self) -> AbstractContextManager[WebhookTransaction]: ...

    def writing(self) -> AbstractContextManager[WebhookTransaction]: ...

    def joining(self, transaction: object) -> WebhookTransaction:
        """The outbox inside a transaction another room holds open (its SQL connection)."""
        ...


__all__ = ["WebhookStorage", "WebhookTransaction"]
