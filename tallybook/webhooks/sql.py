"""Webhook tables and their SQL adapter (ports.WebhookStorage): channels, rules and the outbox.

The outbox is `notification_events` (one row per event, its exact JSON body) plus
`notification_deliveries` (one row per event and channel: state, retry schedule, lease). Callers
insert both inside the transaction that makes the change the event reports, so an event exists
exactly when its cause does. Workers claim due deliveries with FOR UPDATE SKIP LOCKED on PostgreSQL
(on SQLite the write lock serialises claims), mark them SENDING with a lease, send outside any
transaction, and record the attempt. A worker that dies mid-send leaves a SENDING row whose lease
runs out; the next claim takes it again, so nothing is lost (delivery is at least once).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    Table,
    Text,
    UniqueConstraint,
    and_,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB

from tallybook.store.base import SqlStore
from tallybook.store.schema import SEQUENCE_TYPE, metadata
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

JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")

notification_channels = Table(
    "notification_channels",
    metadata,
    Column("id", Text, primary_key=True),  # ULID
    Column("name", Text, nullable=False),
    Column("type", Text, nullable=False),  # WEBHOOK
    Column("url", Text, nullable=False),
    Column("signing_secret", Text, nullable=False),
    Column("custom_headers", JSON_TYPE, nullable=True),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("disabled_reason", Text, nullable=True),  # e.g. the endpoint answered 410 Gone
    Column("metadata", JSON_TYPE, nullable=True),
    Column("source", Text, nullable=False),  # "api" or "config" (tallybook.yaml)
    # Config channels name their event types here; API channels get theirs through rules.
    Column("event_types", JSON_TYPE, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("deleted_us", BigInteger, nullable=True),
)

notification_rules = Table(
    "notification_rules",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("type", Text, nullable=False),  # the event type the rule routes
    Column("disabled", Boolean, nullable=False, default=False),
    Column("channel_ids", JSON_TYPE, nullable=False),
    Column("metadata", JSON_TYPE, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("deleted_us", BigInteger, nullable=True),
)

notification_events = Table(
    "notification_events",
    metadata,
    Column("id", Text, primary_key=True),  # ULID; also the `webhook-id` of every request
    Column("type", Text, nullable=False),
    # What the event is about, e.g. "report.meter|api_calls|cust_1|...": the same report is one event.
    Column("dedup_key", Text, nullable=False, unique=True),
    Column("subject", Text, nullable=True),
    Column("rule_id", Text, nullable=True),
    Column("body", Text, nullable=False),  # the exact JSON sent, so every retry is byte-identical
    Column("created_us", BigInteger, nullable=False),
)
Index("ix_notification_events_created", notification_events.c.created_us)

notification_deliveries = Table(
    "notification_deliveries",
    metadata,
    Column("id", SEQUENCE_TYPE, primary_key=True, autoincrement=True),
    Column("event_id", Text, ForeignKey("notification_events.id", ondelete="CASCADE"), nullable=False),
    Column("channel_id", Text, ForeignKey("notification_channels.id"), nullable=False),
    Column("state", Text, nullable=False),
    Column("attempt_count", Integer, nullable=False, default=0),  # attempts in the current round
    Column("next_attempt_us", BigInteger, nullable=True),  # null: no more attempts planned
    Column("lease_until_us", BigInteger, nullable=True),  # while SENDING
    Column("claim_token", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("updated_us", BigInteger, nullable=False),
    UniqueConstraint("event_id", "channel_id", name="uq_notification_deliveries_event_channel"),
)
Index("ix_notification_deliveries_due", notification_deliveries.c.state, notification_deliveries.c.next_attempt_us)

notification_attempts = Table(
    "notification_attempts",
    metadata,
    Column("id", SEQUENCE_TYPE, primary_key=True, autoincrement=True),
    Column(
        "delivery_id",
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("notification_deliveries.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("attempted_us", BigInteger, nullable=False),
    Column("state", Text, nullable=False),  # SUCCESS or FAILED
    Column("status_code", Integer, nullable=True),
    Column("duration_ms", Integer, nullable=False),
    Column("url", Text, nullable=False),
    Column("error", Text, nullable=True),
    Column("response_body", Text, nullable=True),
)
Index("ix_notification_attempts_delivery", notification_attempts.c.delivery_id)


def _channel(row: Any) -> ChannelRow:
    m = row._mapping
    return ChannelRow(
        id=m["id"],
        name=m["name"],
        type=m["type"],
        url=m["url"],
        signing_secret=m["signing_secret"],
        custom_headers=dict(m["custom_headers"] or {}),
        disabled=bool(m["disabled"]),
        disabled_reason=m["disabled_reason"],
        metadata=m["metadata"],
        source=m["source"],
        event_types=list(m["event_types"]) if m["event_types"] is not None else None,
        created_us=m["created_us"],
        updated_us=m["updated_us"],
        deleted_us=m["deleted_us"],
    )


def _rule(row: Any) -> RuleRow:
    m = row._mapping
    return RuleRow(
        id=m["id"],
        name=m["name"],
        type=m["type"],
        disabled=bool(m["disabled"]),
        channel_ids=list(m["channel_ids"] or []),
        metadata=m["metadata"],
        created_us=m["created_us"],
        updated_us=m["updated_us"],
        deleted_us=m["deleted_us"],
    )


def _event(row: Any) -> EventRow:
    m = row._mapping
    return EventRow(
        id=m["id"],
        type=m["type"],
        dedup_key=m["dedup_key"],
        subject=m["subject"],
        rule_id=m["rule_id"],
        body=m["body"],
        created_us=m["created_us"],
    )


def _delivery(row: Any) -> DeliveryRow:
    m = row._mapping
    return DeliveryRow(**{c.name: m[c.name] for c in notification_deliveries.columns})


def _attempt(row: Any) -> AttemptRow:
    m = row._mapping
    return AttemptRow(**{c.name: m[c.name] for c in notification_attempts.columns})


def _insert(conn: Connection, table: Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


class SqlWebhookTransaction:
    """One transaction of the webhook service (ports.WebhookTransaction) on a SQLAlchemy connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # -- channels ---------------------------------------------------------------------------------
    def insert_channel(self, values: dict[str, Any], ignore_existing: bool = False) -> None:
        """Insert a channel; with ignore_existing, a channel with the same id (another process
        syncing the same config file at the same moment) is left as it is."""
        if ignore_existing:
            self.conn.execute(_insert(self.conn, notification_channels).values(**values))
        else:
            self.conn.execute(notification_channels.insert().values(**values))

    def update_channel(self, channel_id: str, values: dict[str, Any], include_deleted: bool = False) -> bool:
        query = update(notification_channels).where(notification_channels.c.id == channel_id)
        if not include_deleted:
            query = query.where(notification_channels.c.deleted_us.is_(None))
        return self.conn.execute(query.values(**values)).rowcount > 0

    def get_channel(self, channel_id: str) -> ChannelRow | None:
        row = self.conn.execute(select(notification_channels).where(notification_channels.c.id == channel_id)).first()
        return _channel(row) if row else None

    def list_channels(
        self,
        include_deleted: bool = False,
        include_disabled: bool = True,
        source: str | None = None,
    ) -> list[ChannelRow]:
        query = select(notification_channels)
        if not include_deleted:
            query = query.where(notification_channels.c.deleted_us.is_(None))
        if not include_disabled:
            query = query.where(notification_channels.c.disabled.is_(False))
        if source is not None:
            query = query.where(notification_channels.c.source == source)
        query = query.order_by(notification_channels.c.created_us, notification_channels.c.id)
        return [_channel(row) for row in self.conn.execute(query)]

    # -- rules ------------------------------------------------------------------------------------
    def insert_rule(self, values: dict[str, Any]) -> None:
        self.conn.execute(notification_rules.insert().values(**values))

    def update_rule(self, rule_id: str, values: dict[str, Any]) -> bool:
        result = self.conn.execute(
            update(notification_rules)
            .where(notification_rules.c.id == rule_id, notification_rules.c.deleted_us.is_(None))
            .values(**values)
        )
        return result.rowcount > 0

    def get_rule(self, rule_id: str) -> RuleRow | None:
        row = self.conn.execute(select(notification_rules).where(notification_rules.c.id == rule_id)).first()
        return _rule(row) if row else None

    def list_rules(self, include_deleted: bool = False, include_disabled: bool = True) -> list[RuleRow]:
        query = select(notification_rules)
        if not include_deleted:
            query = query.where(notification_rules.c.deleted_us.is_(None))
        if not include_disabled:
            query = query.where(notification_rules.c.disabled.is_(False))
        query = query.order_by(notification_rules.c.created_us, notification_rules.c.id)
        return [_rule(row) for row in self.conn.execute(query)]

    # -- outbox -----------------------------------------------------------------------------------
    def insert_event(self, event: EventRow) -> bool:
        """Insert the event unless one with its id or dedup key exists; True when inserted."""
        values = {
            "id": event.id,
            "type": event.type,
            "dedup_key": event.dedup_key,
            "subject": event.subject,
            "rule_id": event.rule_id,
            "body": event.body,
            "created_us": event.created_us,
        }
        statement = _insert(self.conn, notification_events).values(**values).returning(notification_events.c.id)
        return self.conn.execute(statement).first() is not None

    def insert_delivery(self, event_id: str, channel_id: str, now_us: int) -> bool:
        statement = (
            _insert(self.conn, notification_deliveries)
            .values(
                event_id=event_id,
                channel_id=channel_id,
                state=PENDING,
                attempt_count=0,
                next_attempt_us=now_us,
                updated_us=now_us,
            )
            .returning(notification_deliveries.c.id)
        )
        return self.conn.execute(statement).first() is not None

    def get_event(self, event_id: str) -> EventRow | None:
        row = self.conn.execute(select(notification_events).where(notification_events.c.id == event_id)).first()
        return _event(row) if row else None

    def list_events(self, flt: EventFilter) -> tuple[int, list[EventRow]]:
        conditions: list[Any] = []
        e = notification_events
        if flt.from_us is not None:
            conditions.append(e.c.created_us >= flt.from_us)
        if flt.to_us is not None:
            conditions.append(e.c.created_us <= flt.to_us)
        if flt.subjects:
            conditions.append(e.c.subject.in_(list(flt.subjects)))
        if flt.rules:
            conditions.append(e.c.rule_id.in_(list(flt.rules)))
        if flt.types:
            conditions.append(e.c.type.in_(list(flt.types)))
        if flt.channels:
            d = notification_deliveries
            conditions.append(e.c.id.in_(select(d.c.event_id).where(d.c.channel_id.in_(list(flt.channels)))))
        where = and_(*conditions) if conditions else None
        count_query = select(func.count()).select_from(e)
        query = select(e)
        if where is not None:
            count_query = count_query.where(where)
            query = query.where(where)
        total = int(self.conn.execute(count_query).scalar_one())
        key = e.c.id if flt.order_by == "id" else e.c.created_us
        ordering = [key.desc(), e.c.id.desc()] if flt.descending else [key.asc(), e.c.id.asc()]
        query = query.order_by(*ordering).offset(flt.offset).limit(flt.limit)
        return total, [_event(row) for row in self.conn.execute(query)]

    def deliveries_of(self, event_ids: Sequence[str]) -> list[DeliveryRow]:
        if not event_ids:
            return []
        d = notification_deliveries
        rows = self.conn.execute(select(d).where(d.c.event_id.in_(list(event_ids))).order_by(d.c.id))
        return [_delivery(row) for row in rows]

    def attempts_of(self, delivery_ids: Sequence[int]) -> list[AttemptRow]:
        if not delivery_ids:
            return []
        a = notification_attempts
        rows = self.conn.execute(select(a).where(a.c.delivery_id.in_(list(delivery_ids))).order_by(a.c.id))
        return [_attempt(row) for row in rows]

    def schedule_resend(self, delivery_id: int, now_us: int) -> None:
        self.conn.execute(
            update(notification_deliveries)
            .where(notification_deliveries.c.id == delivery_id)
            .values(
                state=RESENDING,
                attempt_count=0,
                next_attempt_us=now_us,
                lease_until_us=None,
                claim_token=None,
                reason="re-send requested",
                updated_us=now_us,
            )
        )

    # -- delivery worker --------------------------------------------------------------------------
    def _due_condition(self, now_us: int) -> Any:
        d = notification_deliveries
        return or_(
            and_(d.c.state.in_([PENDING, RESENDING]), d.c.next_attempt_us <= now_us),
            and_(d.c.state == SENDING, d.c.lease_until_us <= now_us),
        )

    def _deliverable_channels(self) -> Any:
        c = notification_channels
        return and_(c.c.disabled.is_(False), c.c.deleted_us.is_(None))

    def has_due(self, now_us: int) -> bool:
        d, c = notification_deliveries, notification_channels
        query = (
            select(d.c.id)
            .join(c, c.c.id == d.c.channel_id)
            .where(self._due_condition(now_us), self._deliverable_channels())
            .limit(1)
        )
        return self.conn.execute(query).first() is not None

    def claim_due(self, now_us: int, lease_until_us: int, token: str, limit: int) -> list[Claimed]:
        """Take up to `limit` due deliveries for this worker (call inside a write transaction)."""
        d, c = notification_deliveries, notification_channels
        query = (
            select(d.c.id)
            .join(c, c.c.id == d.c.channel_id)
            .where(self._due_condition(now_us), self._deliverable_channels())
            .order_by(d.c.next_attempt_us, d.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=d)
        )
        ids = [row[0] for row in self.conn.execute(query)]
        if not ids:
            return []
        self.conn.execute(
            update(d)
            .where(d.c.id.in_(ids))
            .values(state=SENDING, lease_until_us=lease_until_us, claim_token=token, updated_us=now_us)
        )
        deliveries = [_delivery(row) for row in self.conn.execute(select(d).where(d.c.id.in_(ids)).order_by(d.c.id))]
        events = {
            e.id: e
            for e in (
                _event(row)
                for row in self.conn.execute(
                    select(notification_events).where(notification_events.c.id.in_({x.event_id for x in deliveries}))
                )
            )
        }
        channels = {
            ch.id: ch
            for ch in (
                _channel(row)
                for row in self.conn.execute(select(c).where(c.c.id.in_({x.channel_id for x in deliveries})))
            )
        }
        return [Claimed(x, events[x.event_id], channels[x.channel_id]) for x in deliveries]

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
        self.conn.execute(notification_attempts.insert().values(delivery_id=claimed.id, **attempt))
        d = notification_deliveries
        result = self.conn.execute(
            update(d)
            .where(d.c.id == claimed.id, d.c.claim_token == claimed.claim_token, d.c.state == SENDING)
            .values(
                state=state,
                attempt_count=claimed.attempt_count + 1,
                next_attempt_us=next_attempt_us,
                lease_until_us=None,
                claim_token=None,
                reason=reason,
                updated_us=now_us,
            )
        )
        return result.rowcount > 0

    def disable_channel(self, channel_id: str, reason: str, now_us: int) -> None:
        self.conn.execute(
            update(notification_channels)
            .where(notification_channels.c.id == channel_id)
            .values(disabled=True, disabled_reason=reason, updated_us=now_us)
        )


class SqlWebhookStorage:
    """ports.WebhookStorage on the SQL store."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    @contextmanager
    def reading(self) -> Iterator[SqlWebhookTransaction]:
        with self.store.read() as conn:
            yield SqlWebhookTransaction(conn)

    @contextmanager
    def writing(self) -> Iterator[SqlWebhookTransaction]:
        with self.store.write() as conn:
            yield SqlWebhookTransaction(conn)

    def joining(self, transaction: object) -> SqlWebhookTransaction:
        if not isinstance(transaction, Connection):
            raise TypeError(f"the outbox joins a SQL connection's transaction, not {type(transaction).__name__}")
        return SqlWebhookTransaction(transaction)
