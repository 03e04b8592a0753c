"""Entitlement tables and their SQL adapter (both engines).

Amounts are exact decimal text (`str(Decimal)`), so SQLite and PostgreSQL store the same figures.
Instants are microseconds, as everywhere in Tallybook. Nothing here is ever deleted: features are
archived, entitlements ended, grants voided; resets are appended.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Index,
    Integer,
    Table,
    Text,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from tallybook.clock import from_micros, to_micros
from tallybook.customers.sql import customers
from tallybook.entitlements.model import (
    Entitlement,
    EntitlementConflict,
    Expiration,
    Feature,
    FeatureConflict,
    Grant,
    Reset,
)
from tallybook.entitlements.recurrence import Interval, Recurrence
from tallybook.ids import looks_like_ulid
from tallybook.store.base import SqlStore
from tallybook.store.schema import events, metadata

JSON_TYPE = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

features = Table(
    "features",
    metadata,
    Column("id", Text, primary_key=True),  # ULID
    Column("key", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("meter_slug", Text, nullable=True),
    Column("meter_group_by_filters", JSON_TYPE, nullable=True),
    Column("metadata", JSON_TYPE, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("archived_us", BigInteger, nullable=True),
)
Index(
    "uq_features_live_key",
    features.c.key,
    unique=True,
    sqlite_where=features.c.archived_us.is_(None),
    postgresql_where=features.c.archived_us.is_(None),
)

entitlements = Table(
    "entitlements",
    metadata,
    Column("id", Text, primary_key=True),  # ULID
    Column("type", Text, nullable=False),  # metered | boolean | static
    Column("feature_id", Text, nullable=False),
    Column("feature_key", Text, nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("subject_key", Text, nullable=False),
    Column("metadata", JSON_TYPE, nullable=True),
    Column("annotations", JSON_TYPE, nullable=True),
    Column("active_from_us", BigInteger, nullable=False),
    Column("active_to_us", BigInteger, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("deleted_us", BigInteger, nullable=True),  # ended: deleted, or replaced by an override
    Column("measure_usage_from_us", BigInteger, nullable=True),
    Column("usage_period_interval", Text, nullable=True),  # ISO 8601, e.g. P1M
    Column("usage_period_anchor_us", BigInteger, nullable=True),
    Column("is_soft_limit", Boolean, nullable=False, default=False),
    Column("issue_after_reset", Text, nullable=True),
    Column("issue_after_reset_priority", Integer, nullable=True),
    Column("preserve_overage_at_reset", Boolean, nullable=False, default=False),
    Column("config", Text, nullable=True),  # static: the JSON config, as sent
)
Index("ix_entitlements_customer_feature", entitlements.c.customer_id, entitlements.c.feature_key)

entitlement_grants = Table(
    "entitlement_grants",
    metadata,
    Column("id", Text, primary_key=True),  # ULID
    Column("entitlement_id", Text, nullable=False),
    Column("amount", Text, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("effective_us", BigInteger, nullable=False),
    Column("expiration_duration", Text, nullable=True),
    Column("expiration_count", Integer, nullable=True),
    Column("expires_us", BigInteger, nullable=True),
    Column("min_rollover", Text, nullable=False),
    Column("max_rollover", Text, nullable=False),
    Column("recurrence_interval", Text, nullable=True),
    Column("recurrence_anchor_us", BigInteger, nullable=True),
    Column("metadata", JSON_TYPE, nullable=True),
    Column("annotations", JSON_TYPE, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("voided_us", BigInteger, nullable=True),
    Column("deleted_us", BigInteger, nullable=True),
)
Index("ix_entitlement_grants_entitlement", entitlement_grants.c.entitlement_id)

entitlement_resets = Table(
    "entitlement_resets",
    metadata,
    Column("id", Text, primary_key=True),
    Column("entitlement_id", Text, nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Column("retain_anchor", Boolean, nullable=False),
    Column("preserve_overage", Boolean, nullable=False),
    Column("created_us", BigInteger, nullable=False),
)
Index("ix_entitlement_resets_entitlement", entitlement_resets.c.entitlement_id, entitlement_resets.c.at_us)


# -- notifications (tallybook/entitlements/notifications.py) -----------------------------------------
# A rule of type entitlements.balance.threshold keeps its features and thresholds here, next to the
# generic rule row of notification_rules (tallybook/store/webhooks.py), which other rule types share.
entitlement_rule_settings = Table(
    "entitlement_rule_settings",
    metadata,
    Column("rule_id", Text, primary_key=True),
    Column("features", JSON_TYPE, nullable=True),  # feature ids or keys; NULL: every feature
    Column("thresholds", JSON_TYPE, nullable=True),  # [{"value": "80", "type": "PERCENT"}, ...]
)

# Whether a threshold is crossed, per rule, entitlement and usage period: a notification is sent
# when it goes from not crossed to crossed; a void that uncrosses it clears `crossed` (no message),
# and the next crossing in the same period is sent again (`crossings` numbers them).
entitlement_threshold_state = Table(
    "entitlement_threshold_state",
    metadata,
    Column("rule_id", Text, primary_key=True),
    Column("entitlement_id", Text, primary_key=True),
    Column("period_start_us", BigInteger, primary_key=True),
    Column("threshold", Text, primary_key=True),  # "PERCENT:80", "NUMBER:1000"
    Column("crossed", Boolean, nullable=False),
    Column("crossings", Integer, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)

# Per entitlement: the start of the latest usage period an entitlements.reset event was written for.
entitlement_reset_sent = Table(
    "entitlement_reset_sent",
    metadata,
    Column("entitlement_id", Text, primary_key=True),
    Column("period_start_us", BigInteger, nullable=False),
    # Its end as computed then: until it passes (or something changes) the notifier skips it.
    Column("period_end_us", BigInteger, nullable=True),
)

# The notifier's watermarks: events ingested (by seq) and voids (by time) it has looked at.
entitlement_notifier_state = Table(
    "entitlement_notifier_state",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", BigInteger, nullable=False),
)


def _us(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def _at(value: int | None) -> datetime | None:
    return None if value is None else from_micros(int(value))


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _feature_row(f: Feature) -> dict[str, Any]:
    return {
        "id": f.id,
        "key": f.key,
        "name": f.name,
        "meter_slug": f.meter_slug,
        "meter_group_by_filters": f.meter_group_by_filters or None,
        "metadata": f.metadata,
        "created_us": to_micros(f.created_at),
        "updated_us": to_micros(f.updated_at),
        "archived_us": _us(f.archived_at),
    }


def _feature(row: Any) -> Feature:
    return Feature(
        id=row.id,
        key=row.key,
        name=row.name,
        meter_slug=row.meter_slug,
        meter_group_by_filters=dict(row.meter_group_by_filters or {}),
        metadata=row.metadata,
        created_at=from_micros(row.created_us),
        updated_at=from_micros(row.updated_us),
        archived_at=_at(row.archived_us),
    )


def _entitlement_row(e: Entitlement) -> dict[str, Any]:
    period = e.usage_period
    return {
        "id": e.id,
        "type": e.type,
        "feature_id": e.feature_id,
        "feature_key": e.feature_key,
        "customer_id": e.customer_id,
        "subject_key": e.subject_key,
        "metadata": e.metadata,
        "annotations": e.annotations,
        "active_from_us": to_micros(e.active_from),
        "active_to_us": _us(e.active_to),
        "created_us": to_micros(e.created_at),
        "updated_us": to_micros(e.updated_at),
        "deleted_us": _us(e.deleted_at),
        "measure_usage_from_us": _us(e.measure_usage_from),
        "usage_period_interval": None if period is None else period.interval.iso,
        "usage_period_anchor_us": None if period is None else to_micros(period.anchor),
        "is_soft_limit": e.is_soft_limit,
        "issue_after_reset": _dec(e.issue_after_reset),
        "issue_after_reset_priority": e.issue_after_reset_priority,
        "preserve_overage_at_reset": e.preserve_overage_at_reset,
        "config": e.config,
    }


def _entitlement(row: Any) -> Entitlement:
    period = None
    if row.usage_period_interval is not None:
        period = Recurrence(Interval.parse(row.usage_period_interval), from_micros(row.usage_period_anchor_us))
    return Entitlement(
        id=row.id,
        type=row.type,
        feature_id=row.feature_id,
        feature_key=row.feature_key,
        customer_id=row.customer_id,
        subject_key=row.subject_key,
        metadata=row.metadata,
        annotations=row.annotations,
        created_at=from_micros(row.created_us),
        updated_at=from_micros(row.updated_us),
        deleted_at=_at(row.deleted_us),
        active_from=from_micros(row.active_from_us),
        active_to=_at(row.active_to_us),
        measure_usage_from=_at(row.measure_usage_from_us),
        usage_period=period,
        is_soft_limit=bool(row.is_soft_limit),
        issue_after_reset=None if row.issue_after_reset is None else Decimal(row.issue_after_reset),
        issue_after_reset_priority=row.issue_after_reset_priority,
        preserve_overage_at_reset=bool(row.preserve_overage_at_reset),
        config=row.config,
    )


def _grant_row(g: Grant) -> dict[str, Any]:
    return {
        "id": g.id,
        "entitlement_id": g.entitlement_id,
        "amount": str(g.amount),
        "priority": g.priority,
        "effective_us": to_micros(g.effective_at),
        "expiration_duration": None if g.expiration is None else g.expiration.duration,
        "expiration_count": None if g.expiration is None else g.expiration.count,
        "expires_us": _us(g.expires_at),
        "min_rollover": str(g.min_rollover),
        "max_rollover": str(g.max_rollover),
        "recurrence_interval": None if g.recurrence is None else g.recurrence.interval.iso,
        "recurrence_anchor_us": None if g.recurrence is None else to_micros(g.recurrence.anchor),
        "metadata": g.metadata,
        "annotations": g.annotations,
        "created_us": to_micros(g.created_at),
        "updated_us": to_micros(g.updated_at),
        "voided_us": _us(g.voided_at),
        "deleted_us": _us(g.deleted_at),
    }


def _grant(row: Any) -> Grant:
    recurrence = None
    if row.recurrence_interval is not None:
        recurrence = Recurrence(Interval.parse(row.recurrence_interval), from_micros(row.recurrence_anchor_us))
    expiration = None
    if row.expiration_duration is not None:
        expiration = Expiration(row.expiration_duration, int(row.expiration_count))
    return Grant(
        id=row.id,
        entitlement_id=row.entitlement_id,
        amount=Decimal(row.amount),
        priority=int(row.priority),
        effective_at=from_micros(row.effective_us),
        expiration=expiration,
        expires_at=_at(row.expires_us),
        min_rollover=Decimal(row.min_rollover),
        max_rollover=Decimal(row.max_rollover),
        recurrence=recurrence,
        metadata=row.metadata,
        annotations=row.annotations,
        created_at=from_micros(row.created_us),
        updated_at=from_micros(row.updated_us),
        voided_at=_at(row.voided_us),
        deleted_at=_at(row.deleted_us),
    )


def _reset(row: Any) -> Reset:
    return Reset(
        id=row.id,
        entitlement_id=row.entitlement_id,
        at=from_micros(row.at_us),
        retain_anchor=bool(row.retain_anchor),
        preserve_overage=bool(row.preserve_overage),
        created_at=from_micros(row.created_us),
    )


class SqlEntitlementRepository:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # -- features -------------------------------------------------------------------------------------
    def insert_feature(self, feature: Feature) -> None:
        try:
            with self.store.write() as conn:
                conn.execute(insert(features).values(**_feature_row(feature)))
        except IntegrityError:
            raise FeatureConflict(
                f"a feature with key {feature.key!r} already exists; archive it first or pick another key"
            ) from None

    def feature(self, id_or_key: str) -> Feature | None:
        with self.store.read() as conn:
            return _find_feature(conn, id_or_key)

    def features(self, meter_slug: str | None = None, include_archived: bool = False) -> list[Feature]:
        query = select(features).order_by(features.c.created_us, features.c.id)
        if meter_slug is not None:
            query = query.where(features.c.meter_slug == meter_slug)
        if not include_archived:
            query = query.where(features.c.archived_us.is_(None))
        with self.store.read() as conn:
            return [_feature(r) for r in conn.execute(query)]

    def archive_feature(self, feature_id: str, at: datetime) -> bool:
        with self.store.write() as conn:
            result = conn.execute(
                update(features)
                .where(features.c.id == feature_id, features.c.archived_us.is_(None))
                .values(archived_us=to_micros(at), updated_us=to_micros(at))
            )
        return bool(result.rowcount)

    # -- entitlements ---------------------------------------------------------------------------------
    def insert_entitlement(self, entitlement: Entitlement, grants: Sequence[Grant], replaces: str | None) -> None:
        with self.store.write() as conn:
            if replaces is not None:
                at = to_micros(entitlement.created_at)
                conn.execute(
                    update(entitlements)
                    .where(entitlements.c.id == replaces, entitlements.c.deleted_us.is_(None))
                    .values(deleted_us=at, updated_us=at)
                )
            # At most one entitlement of a customer to a feature is active at any instant; checked
            # in the write transaction (SQLite's is serial; on PostgreSQL the lock on the customer's
            # row serialises concurrent creates for one customer).
            conn.execute(select(customers.c.id).where(customers.c.id == entitlement.customer_id).with_for_update())
            live = conn.execute(
                select(entitlements)
                .where(
                    entitlements.c.customer_id == entitlement.customer_id,
                    entitlements.c.feature_key == entitlement.feature_key,
                    entitlements.c.deleted_us.is_(None),
                )
                .with_for_update()
            ).all()
            for row in live:
                other = _entitlement(row)
                if _overlap(other, entitlement):
                    raise EntitlementConflict(
                        f"the customer already has an entitlement to feature {entitlement.feature_key!r} "
                        f"({other.id}) in that time; delete it first, or replace it with "
                        "PUT .../entitlements/{feature}/override",
                        entitlementId=other.id,
                    )
            conn.execute(insert(entitlements).values(**_entitlement_row(entitlement)))
            for grant in grants:
                conn.execute(insert(entitlement_grants).values(**_grant_row(grant)))

    def entitlement(self, entitlement_id: str) -> Entitlement | None:
        if not looks_like_ulid(entitlement_id):
            return None
        with self.store.read() as conn:
            row = conn.execute(select(entitlements).where(entitlements.c.id == entitlement_id.upper())).first()
        return None if row is None else _entitlement(row)

    def entitlements(
        self,
        customer_ids: Sequence[str] | None = None,
        feature_keys: Sequence[str] | None = None,
        include_deleted: bool = False,
    ) -> list[Entitlement]:
        query = select(entitlements).order_by(entitlements.c.created_us, entitlements.c.id)
        if customer_ids is not None:
            query = query.where(entitlements.c.customer_id.in_(list(customer_ids)))
        if feature_keys is not None:
            query = query.where(entitlements.c.feature_key.in_(list(feature_keys)))
        if not include_deleted:
            query = query.where(entitlements.c.deleted_us.is_(None))
        with self.store.read() as conn:
            return [_entitlement(r) for r in conn.execute(query)]

    def ledger(self, customer_id: str, feature_key: str | None) -> tuple[list[Entitlement], list[Grant], list[Reset]]:
        """In one read: the customer's live entitlements (to one feature, or all), their grants and
        resets (what `value` and `access` need besides usage and the features)."""
        query = select(entitlements).where(
            entitlements.c.customer_id == customer_id, entitlements.c.deleted_us.is_(None)
        )
        if feature_key is not None:
            query = query.where(entitlements.c.feature_key == feature_key)
        with self.store.read() as conn:
            found = [_entitlement(r) for r in conn.execute(query.order_by(entitlements.c.created_us))]
            metered = [e.id for e in found if e.type == "metered"]
            if not metered:
                return found, [], []
            grants = [
                _grant(r)
                for r in conn.execute(
                    select(entitlement_grants).where(
                        entitlement_grants.c.entitlement_id.in_(metered), entitlement_grants.c.deleted_us.is_(None)
                    )
                )
            ]
            resets = [
                _reset(r)
                for r in conn.execute(
                    select(entitlement_resets)
                    .where(entitlement_resets.c.entitlement_id.in_(metered))
                    .order_by(entitlement_resets.c.at_us)
                )
            ]
        return found, grants, resets

    def set_active_to(self, entitlement_id: str, active_to: datetime | None, at: datetime) -> None:
        with self.store.write() as conn:
            conn.execute(
                update(entitlements)
                .where(entitlements.c.id == entitlement_id)
                .values(active_to_us=_us(active_to), updated_us=to_micros(at))
            )

    def end_entitlement(self, entitlement_id: str, at: datetime) -> bool:
        with self.store.write() as conn:
            result = conn.execute(
                update(entitlements)
                .where(entitlements.c.id == entitlement_id, entitlements.c.deleted_us.is_(None))
                .values(deleted_us=to_micros(at), updated_us=to_micros(at))
            )
        return bool(result.rowcount)

    # -- grants ---------------------------------------------------------------------------------------
    def insert_grant(self, grant: Grant) -> None:
        with self.store.write() as conn:
            conn.execute(insert(entitlement_grants).values(**_grant_row(grant)))

    def grant(self, grant_id: str) -> Grant | None:
        if not looks_like_ulid(grant_id):
            return None
        with self.store.read() as conn:
            row = conn.execute(select(entitlement_grants).where(entitlement_grants.c.id == grant_id.upper())).first()
        return None if row is None else _grant(row)

    def grants(self, entitlement_ids: Sequence[str], include_deleted: bool = False) -> list[Grant]:
        if not entitlement_ids:
            return []
        query = (
            select(entitlement_grants)
            .where(entitlement_grants.c.entitlement_id.in_(list(entitlement_ids)))
            .order_by(entitlement_grants.c.created_us, entitlement_grants.c.id)
        )
        if not include_deleted:
            query = query.where(entitlement_grants.c.deleted_us.is_(None))
        with self.store.read() as conn:
            return [_grant(r) for r in conn.execute(query)]

    def all_grants(self, include_deleted: bool = False) -> list[Grant]:
        query = select(entitlement_grants).order_by(entitlement_grants.c.created_us, entitlement_grants.c.id)
        if not include_deleted:
            query = query.where(entitlement_grants.c.deleted_us.is_(None))
        with self.store.read() as conn:
            return [_grant(r) for r in conn.execute(query)]

    def void_grant(self, grant_id: str, at: datetime) -> bool:
        with self.store.write() as conn:
            result = conn.execute(
                update(entitlement_grants)
                .where(entitlement_grants.c.id == grant_id, entitlement_grants.c.voided_us.is_(None))
                .values(voided_us=to_micros(at), updated_us=to_micros(at))
            )
        return bool(result.rowcount)

    # -- resets ---------------------------------------------------------------------------------------
    def insert_reset(self, reset: Reset) -> None:
        with self.store.write() as conn:
            conn.execute(
                insert(entitlement_resets).values(
                    id=reset.id,
                    entitlement_id=reset.entitlement_id,
                    at_us=to_micros(reset.at),
                    retain_anchor=reset.retain_anchor,
                    preserve_overage=reset.preserve_overage,
                    created_us=to_micros(reset.created_at),
                )
            )

    def resets(self, entitlement_ids: Sequence[str]) -> list[Reset]:
        if not entitlement_ids:
            return []
        query = (
            select(entitlement_resets)
            .where(entitlement_resets.c.entitlement_id.in_(list(entitlement_ids)))
            .order_by(entitlement_resets.c.at_us)
        )
        with self.store.read() as conn:
            return [_reset(r) for r in conn.execute(query)]


def _overlap(a: Entitlement, b: Entitlement) -> bool:
    a_end, b_end = a.ends_at, b.ends_at
    return (a_end is None or b.active_from < a_end) and (b_end is None or a.active_from < b_end)


def _find_feature(conn: Connection, id_or_key: str) -> Feature | None:
    conditions: list[Any] = [features.c.key == id_or_key]
    if looks_like_ulid(id_or_key):
        conditions.append(features.c.id == id_or_key.upper())
    rows = conn.execute(select(features).where(or_(*conditions))).all()
    by_id = [r for r in rows if r.id == id_or_key.upper()]
    if by_id:
        return _feature(by_id[0])
    live = [r for r in rows if r.archived_us is None]
    return _feature(live[0]) if live else None


# -- notifier state ------------------------------------------------------------------------------------
def notifier_value(conn: Connection, name: str) -> int | None:
    value = conn.execute(
        select(entitlement_notifier_state.c.value).where(entitlement_notifier_state.c.name == name)
    ).scalar_one_or_none()
    return None if value is None else int(value)


def set_notifier_value(conn: Connection, name: str, value: int) -> None:
    updated = conn.execute(
        update(entitlement_notifier_state).where(entitlement_notifier_state.c.name == name).values(value=value)
    )
    if not updated.rowcount:
        conn.execute(insert(entitlement_notifier_state).values(name=name, value=value))


def max_event_seq(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(events.c.seq), 0))).scalar_one())


def subjects_ingested(conn: Connection, after_seq: int, through_seq: int) -> list[str]:
    rows = conn.execute(
        select(events.c.subject).where(events.c.seq > after_seq, events.c.seq <= through_seq).distinct()
    )
    return [r[0] for r in rows]


def rule_settings(conn: Connection, rule_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not rule_ids:
        return {}
    rows = conn.execute(
        select(entitlement_rule_settings).where(entitlement_rule_settings.c.rule_id.in_(list(rule_ids)))
    )
    return {r.rule_id: {"features": r.features, "thresholds": r.thresholds} for r in rows}


def save_rule_settings(
    conn: Connection, rule_id: str, features: list[str] | None, thresholds: list[dict[str, Any]] | None
) -> None:
    conn.execute(entitlement_rule_settings.delete().where(entitlement_rule_settings.c.rule_id == rule_id))
    conn.execute(insert(entitlement_rule_settings).values(rule_id=rule_id, features=features, thresholds=thresholds))


def threshold_states(
    conn: Connection, entitlement_id: str, period_start_us: int
) -> dict[tuple[str, str], tuple[bool, int]]:
    rows = conn.execute(
        select(entitlement_threshold_state).where(
            entitlement_threshold_state.c.entitlement_id == entitlement_id,
            entitlement_threshold_state.c.period_start_us == period_start_us,
        )
    )
    return {(r.rule_id, r.threshold): (bool(r.crossed), int(r.crossings)) for r in rows}


def save_threshold_state(
    conn: Connection,
    rule_id: str,
    entitlement_id: str,
    period_start_us: int,
    threshold: str,
    crossed: bool,
    crossings: int,
    now_us: int,
    exists: bool,
) -> None:
    t = entitlement_threshold_state
    if exists:
        conn.execute(
            update(t)
            .where(
                t.c.rule_id == rule_id,
                t.c.entitlement_id == entitlement_id,
                t.c.period_start_us == period_start_us,
                t.c.threshold == threshold,
            )
            .values(crossed=crossed, crossings=crossings, updated_us=now_us)
        )
    else:
        conn.execute(
            insert(t).values(
                rule_id=rule_id,
                entitlement_id=entitlement_id,
                period_start_us=period_start_us,
                threshold=threshold,
                crossed=crossed,
                crossings=crossings,
                updated_us=now_us,
            )
        )


def reset_sent(conn: Connection, entitlement_id: str) -> int | None:
    value = conn.execute(
        select(entitlement_reset_sent.c.period_start_us).where(
            entitlement_reset_sent.c.entitlement_id == entitlement_id
        )
    ).scalar_one_or_none()
    return None if value is None else int(value)


def save_reset_sent(
    conn: Connection, entitlement_id: str, period_start_us: int, period_end_us: int, exists: bool
) -> None:
    t = entitlement_reset_sent
    values = {"period_start_us": period_start_us, "period_end_us": period_end_us}
    if exists:
        conn.execute(update(t).where(t.c.entitlement_id == entitlement_id).values(**values))
    else:
        conn.execute(insert(t).values(entitlement_id=entitlement_id, **values))


def changed_entitlements(conn: Connection, after_us: int, through_us: int) -> set[str]:
    """Entitlements changed in (after, through]: created, ended or overridden, or given a grant, a
    grant void or a reset (by any process sharing the database)."""
    found: set[str] = set()
    for id_column, time_column in (
        (entitlements.c.id, entitlements.c.updated_us),
        (entitlement_grants.c.entitlement_id, entitlement_grants.c.updated_us),
        (entitlement_resets.c.entitlement_id, entitlement_resets.c.created_us),
    ):
        rows = conn.execute(select(id_column).where(time_column > after_us, time_column <= through_us).distinct())
        found.update(r[0] for r in rows)
    return found


def all_reset_sent(conn: Connection) -> dict[str, tuple[int, int | None]]:
    t = entitlement_reset_sent
    rows = conn.execute(select(t.c.entitlement_id, t.c.period_start_us, t.c.period_end_us))
    return {r[0]: (int(r[1]), None if r[2] is None else int(r[2])) for r in rows}
