"""Small read-only statistics for the dashboard overview: an SQL adapter through and through.

Each function is one query the overview shows as it comes back (counts, nothing decided here), so
the module is SQL-shaped on purpose and lives beside the tables it reads rather than behind a port.
Each query stays cheap on a large events table: the per-minute ingest rate is a range scan of the
`ix_events_ingested` index over the last hour, never a scan of the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from tallybook.store.base import SqlStore
from tallybook.store.schema import events
from tallybook.webhooks.sql import notification_channels, notification_deliveries

MINUTE_US = 60_000_000


@dataclass(frozen=True, slots=True)
class MinuteCount:
    minute_start_us: int
    events: int


def events_per_minute(store: SqlStore, now_us: int, minutes: int = 60) -> list[MinuteCount]:
    """Events stored in each of the last `minutes` whole minutes up to now (the current one included)."""
    current = now_us - now_us % MINUTE_US
    since = current - (minutes - 1) * MINUTE_US
    bucket = ((events.c.ingested_us - since) // MINUTE_US).label("bucket")
    query = select(bucket, func.count().label("n")).where(events.c.ingested_us >= since).group_by(bucket)
    with store.read() as conn:
        found = {int(row.bucket): int(row.n) for row in conn.execute(query)}
    return [MinuteCount(since + i * MINUTE_US, found.get(i, 0)) for i in range(minutes)]


def delivery_states(store: SqlStore) -> dict[str, int]:
    """Webhook deliveries per state (PENDING, SENDING, RESENDING, SUCCESS, FAILED)."""
    query = select(notification_deliveries.c.state, func.count()).group_by(notification_deliveries.c.state)
    with store.read() as conn:
        return {str(state): int(count) for state, count in conn.execute(query)}


def disabled_channels(store: SqlStore) -> list[dict[str, str | None]]:
    """Live webhook channels that are switched off, with the reason (e.g. disabled after failures)."""
    query = (
        select(notification_channels.c.id, notification_channels.c.name, notification_channels.c.disabled_reason)
        .where(notification_channels.c.disabled.is_(True), notification_channels.c.deleted_us.is_(None))
        .order_by(notification_channels.c.name)
    )
    with store.read() as conn:
        return [{"id": row.id, "name": row.name, "reason": row.disabled_reason} for row in conn.execute(query)]
