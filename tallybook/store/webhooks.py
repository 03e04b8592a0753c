"""Webhook tables and their SQL: channels, rules, the outbox and what was sent per period.

The outbox is `notification_events` (one row per event, its exact JSON body) plus
`notification_deliveries` (one row per event and channel: state, retry schedule, lease). Callers
insert both inside the transaction that makes the change the event reports, so an event exists
exactly when its cause does. Workers claim due deliveries with FOR UPDATE SKIP LOCKED on PostgreSQL
(on SQLite the write lock serialises claims), mark them SENDING with a lease, send outside any
transaction, and record the attempt. A worker that dies mid-send leaves a SENDING row whose lease
runs out; the next claim takes it again, so nothing is lost (delivery is at least once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
from tallybook.store.schema import SEQUENCE_TYPE, events, metadata
from tallybook.voids.sql import voided_subjects

JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")

# Delivery states, as OpenMeter names them.
PENDING = "PENDING"
SENDING = "SENDING"
SUCCESS = "SUCCESS"
FAILED = "FAILED"
RESENDING = "RESENDING"

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

# What each channel was told about each (subject, period, period start): the key makes the
# aggregation.completed event exactly once per channel; the figures are what corrections compare to.
aggregation_sent = Table(
    "aggregation_sent",
    metadata,
    Column("subject", Text, primary_key=True),
    Column("period", Text, primary_key=True),
    Column("period_start_us", BigInteger, primary_key=True),
    Column("channel_id", Text, primary_key=True),
    Column("period_end_us", BigInteger, nullable=False),
    Column("figures", JSON_TYPE, nullable=False),  # {"events": {...}, "eventCount": n}
    Column("event_id", Text, nullable=False),  # the last event sent about it
    Column("updated_us", BigInteger, nullable=False),
)


@dataclass(frozen=True, slots=True)
class ChannelRow:
    id: str
    name: str
    type: str
    url: str
    signing_secret: str
    custom_headers: dict[str, str]
    disabled: bool
    disabled_reason: str | None
    metadata: dict[str, Any] | None
    source: str
    event_types: list[str] | None
    created_us: int
    updated_us: int
    deleted_us: int | None


@dataclass(frozen=True, slots=True)
class RuleRow:
    id: str
    name: str
    type: str
    disabled: bool
    channel_ids: list[str]
    metadata: dict[str, Any] | None
    created_us: int
    updated_us: int
    deleted_us: int | None


@dataclass(frozen=True, slots=True)
class EventRow:
    id: str
    type: str
    dedup_key: str
    subject: str | None
    rule_id: str | None
    body: str
    created_us: int


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    event_id: str
    channel_id: str
    state: str
    attempt_count: int
    next_attempt_us: int | None
    lease_until_us: int | None
    claim_token: str | None
    reason: str | None
    updated_us: int


@dataclass(frozen=True, slots=True)
class AttemptRow:
    id: int
    delivery_id: int
    attempted_us: int
    state: str
    status_code: int | None
    duration_ms: int
    url: str
    error: str | None
    response_body: str | None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery taken by one worker, with everything needed to send it."""

    delivery: DeliveryRow
    event: EventRow
    channel: ChannelRow


@dataclass(frozen=True, slots=True)
class SentFigures:
    subject: str
    period: str
    period_start_us: int
    channel_id: str
    period_end_us: int
    figures: dict[str, Any]
    event_id: str


@dataclass(frozen=True, slots=True)
class EventFilter:
    from_us: int | None = None
    to_us: int | None = None
    subjects: Sequence[str] = ()
    rules: Sequence[str] = ()
    channels: Sequence[str] = ()
    types: Sequence[str] = ()
    descending: bool = True
    order_by: str = "createdAt"
    offset: int = 0
    limit: int = 100


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


class WebhookStore:
    """SQL for the webhook tables. Methods taking `conn` run inside the caller's transaction."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # -- channels ---------------------------------------------------------------------------------
    def insert_channel(self, conn: Connection, values: dict[str, Any], ignore_existing: bool = False) -> None:
        """Insert a channel; with ignore_existing, a channel with the same id (another process
        syncing the same config file at the same moment) is left as it is."""
        if ignore_existing:
            conn.execute(_insert(conn, notification_channels).values(**values))
        else:
            conn.execute(notification_channels.insert().values(**values))

    def update_channel(
        self, conn: Connection, channel_id: str, values: dict[str, Any], include_deleted: bool = False
    ) -> bool:
        query = update(notification_channels).where(notification_channels.c.id == channel_id)
        if not include_deleted:
            query = query.where(notification_channels.c.deleted_us.is_(None))
        return conn.execute(query.values(**values)).rowcount > 0

    def get_channel(self, conn: Connection, channel_id: str) -> ChannelRow | None:
        row = conn.execute(select(notification_channels).where(notification_channels.c.id == channel_id)).first()
        return _channel(row) if row else None

    def list_channels(
        self,
        conn: Connection,
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
        return [_channel(row) for row in conn.execute(query)]

    # -- rules ------------------------------------------------------------------------------------
    def insert_rule(self, conn: Connection, values: dict[str, Any]) -> None:
        conn.execute(notification_rules.insert().values(**values))

    def update_rule(self, conn: Connection, rule_id: str, values: dict[str, Any]) -> bool:
        result = conn.execute(
            update(notification_rules)
            .where(notification_rules.c.id == rule_id, notification_rules.c.deleted_us.is_(None))
            .values(**values)
        )
        return result.rowcount > 0

    def get_rule(self, conn: Connection, rule_id: str) -> RuleRow | None:
        row = conn.execute(select(notification_rules).where(notification_rules.c.id == rule_id)).first()
        return _rule(row) if row else None

    def list_rules(
        self, conn: Connection, include_deleted: bool = False, include_disabled: bool = True
    ) -> list[RuleRow]:
        query = select(notification_rules)
        if not include_deleted:
            query = query.where(notification_rules.c.deleted_us.is_(None))
        if not include_disabled:
            query = query.where(notification_rules.c.disabled.is_(False))
        query = query.order_by(notification_rules.c.created_us, notification_rules.c.id)
        return [_rule(row) for row in conn.execute(query)]

    # -- outbox -----------------------------------------------------------------------------------
    def insert_event(self, conn: Connection, event: EventRow) -> bool:
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
        statement = _insert(conn, notification_events).values(**values).returning(notification_events.c.id)
        return conn.execute(statement).first() is not None

    def insert_delivery(self, conn: Connection, event_id: str, channel_id: str, now_us: int) -> bool:
        statement = (
            _insert(conn, notification_deliveries)
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
        return conn.execute(statement).first() is not None

    def get_event(self, conn: Connection, event_id: str) -> EventRow | None:
        row = conn.execute(select(notification_events).where(notification_events.c.id == event_id)).first()
        return _event(row) if row else None

    def list_events(self, conn: Connection, flt: EventFilter) -> tuple[int, list[EventRow]]:
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
        total = int(conn.execute(count_query).scalar_one())
        key = e.c.id if flt.order_by == "id" else e.c.created_us
        ordering = [key.desc(), e.c.id.desc()] if flt.descending else [key.asc(), e.c.id.asc()]
        query = query.order_by(*ordering).offset(flt.offset).limit(flt.limit)
        return total, [_event(row) for row in conn.execute(query)]

    def deliveries_of(self, conn: Connection, event_ids: Sequence[str]) -> list[DeliveryRow]:
        if not event_ids:
            return []
        d = notification_deliveries
        rows = conn.execute(select(d).where(d.c.event_id.in_(list(event_ids))).order_by(d.c.id))
        return [_delivery(row) for row in rows]

    def attempts_of(self, conn: Connection, delivery_ids: Sequence[int]) -> list[AttemptRow]:
        if not delivery_ids:
            return []
        a = notification_attempts
        rows = conn.execute(select(a).where(a.c.delivery_id.in_(list(delivery_ids))).order_by(a.c.id))
        return [_attempt(row) for row in rows]

    def schedule_resend(self, conn: Connection, delivery_id: int, now_us: int) -> None:
        conn.execute(
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

    def has_due(self, conn: Connection, now_us: int) -> bool:
        d, c = notification_deliveries, notification_channels
        query = (
            select(d.c.id)
            .join(c, c.c.id == d.c.channel_id)
            .where(self._due_condition(now_us), self._deliverable_channels())
            .limit(1)
        )
        return conn.execute(query).first() is not None

    def claim_due(self, conn: Connection, now_us: int, lease_until_us: int, token: str, limit: int) -> list[Claimed]:
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
        ids = [row[0] for row in conn.execute(query)]
        if not ids:
            return []
        conn.execute(
            update(d)
            .where(d.c.id.in_(ids))
            .values(state=SENDING, lease_until_us=lease_until_us, claim_token=token, updated_us=now_us)
        )
        deliveries = [_delivery(row) for row in conn.execute(select(d).where(d.c.id.in_(ids)).order_by(d.c.id))]
        events = {
            e.id: e
            for e in (
                _event(row)
                for row in conn.execute(
                    select(notification_events).where(notification_events.c.id.in_({x.event_id for x in deliveries}))
                )
            )
        }
        channels = {
            ch.id: ch
            for ch in (
                _channel(row) for row in conn.execute(select(c).where(c.c.id.in_({x.channel_id for x in deliveries})))
            )
        }
        return [Claimed(x, events[x.event_id], channels[x.channel_id]) for x in deliveries]

    def finish_attempt(
        self,
        conn: Connection,
        claimed: DeliveryRow,
        attempt: dict[str, Any],
        state: str,
        next_attempt_us: int | None,
        reason: str,
        now_us: int,
    ) -> bool:
        """Record an attempt and the delivery's new state, if this worker still holds the claim."""
        conn.execute(notification_attempts.insert().values(delivery_id=claimed.id, **attempt))
        d = notification_deliveries
        result = conn.execute(
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

    def disable_channel(self, conn: Connection, channel_id: str, reason: str, now_us: int) -> None:
        conn.execute(
            update(notification_channels)
            .where(notification_channels.c.id == channel_id)
            .values(disabled=True, disabled_reason=reason, updated_us=now_us)
        )

    # -- aggregation bookkeeping ------------------------------------------------------------------
    def sent_figures(self, conn: Connection, subject: str, period: str, period_start_us: int) -> list[SentFigures]:
        s = aggregation_sent
        rows = conn.execute(
            select(s).where(s.c.subject == subject, s.c.period == period, s.c.period_start_us == period_start_us)
        )
        return [
            SentFigures(
                subject=r.subject,
                period=r.period,
                period_start_us=r.period_start_us,
                channel_id=r.channel_id,
                period_end_us=r.period_end_us,
                figures=r.figures,
                event_id=r.event_id,
            )
            for r in rows
        ]

    def record_sent(self, conn: Connection, sent: SentFigures, now_us: int) -> bool:
        """Remember what a channel was sent; False when it was already sent (nothing changes)."""
        statement = (
            _insert(conn, aggregation_sent)
            .values(
                subject=sent.subject,
                period=sent.period,
                period_start_us=sent.period_start_us,
                channel_id=sent.channel_id,
                period_end_us=sent.period_end_us,
                figures=sent.figures,
                event_id=sent.event_id,
                updated_us=now_us,
            )
            .returning(aggregation_sent.c.subject)
        )
        return conn.execute(statement).first() is not None

    def update_sent(self, conn: Connection, sent: SentFigures, previous_event_id: str, now_us: int) -> bool:
        """Replace the figures a channel holds, if nobody else replaced them first."""
        s = aggregation_sent
        result = conn.execute(
            update(s)
            .where(
                s.c.subject == sent.subject,
                s.c.period == sent.period,
                s.c.period_start_us == sent.period_start_us,
                s.c.channel_id == sent.channel_id,
                s.c.event_id == previous_event_id,
            )
            .values(figures=sent.figures, event_id=sent.event_id, updated_us=now_us)
        )
        return result.rowcount > 0

    def late_subjects(
        self, conn: Connection, after_seq: int, through_seq: int, voided_after_us: int, voided_through_us: int
    ) -> list[tuple[str, int, int]]:
        """(subject, earliest, latest event time) of events stored with a seq in (after, through]
        or voided in (voided_after, voided_through].

        A void changes a period's figures just as a late event does, so both trigger corrections.
        """
        query = (
            select(events.c.subject, func.min(events.c.time_us), func.max(events.c.time_us))
            .where(events.c.seq > after_seq, events.c.seq <= through_seq)
            .group_by(events.c.subject)
        )
        spans: dict[str, tuple[int, int]] = {}
        rows = [(r[0], int(r[1]), int(r[2])) for r in conn.execute(query)] if through_seq > after_seq else []
        voided = (
            voided_subjects(conn, voided_after_us, voided_through_us) if voided_through_us > voided_after_us else []
        )
        for subject, earliest, latest in rows + voided:
            low, high = spans.get(subject, (earliest, latest))
            spans[subject] = (min(low, earliest), max(high, latest))
        return [(subject, low, high) for subject, (low, high) in sorted(spans.items())]

    def seq_ingested_through(self, conn: Connection, ingested_through_us: int) -> int:
        """The highest seq of an event ingested at or before that instant (0 if none): where a
        corrections scan that followed ingest time continues by seq."""
        value = conn.execute(select(func.max(events.c.seq)).where(events.c.ingested_us <= ingested_through_us))
        return int(value.scalar_one() or 0)
