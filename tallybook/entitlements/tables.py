"""Entitlement tables and how their rows map to the domain's frozen dataclasses (both engines).

Amounts are exact decimal text (`str(Decimal)`), so SQLite and PostgreSQL store the same figures.
Instants are microseconds, as everywhere in Tallybook. Nothing here is ever deleted: features are
archived, entitlements ended, grants voided; resets are appended. The adapter is in `sql.py`, the
notifier's state in `notifications_sql.py`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

from tallybook.clock import from_micros, to_micros
from tallybook.entitlements.model import (
    Entitlement,
    Expiration,
    Feature,
    Grant,
    Reset,
)
from tallybook.entitlements.recurrence import Interval, Recurrence
from tallybook.store.schema import metadata

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
# generic rule row of notification_rules (tallybook/webhooks/sql.py), which other rule types share.
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


def us_or_none(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def instant_or_none(value: int | None) -> datetime | None:
    return None if value is None else from_micros(int(value))


def decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def feature_row(f: Feature) -> dict[str, Any]:
    return {
        "id": f.id,
        "key": f.key,
        "name": f.name,
        "meter_slug": f.meter_slug,
        "meter_group_by_filters": f.meter_group_by_filters or None,
        "metadata": f.metadata,
        "created_us": to_micros(f.created_at),
        "updated_us": to_micros(f.updated_at),
        "archived_us": us_or_none(f.archived_at),
    }


def feature_from_row(row: Any) -> Feature:
    return Feature(
        id=row.id,
        key=row.key,
        name=row.name,
        meter_slug=row.meter_slug,
        meter_group_by_filters=dict(row.meter_group_by_filters or {}),
        metadata=row.metadata,
        created_at=from_micros(row.created_us),
        updated_at=from_micros(row.updated_us),
        archived_at=instant_or_none(row.archived_us),
    )


def entitlement_row(e: Entitlement) -> dict[str, Any]:
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
        "active_to_us": us_or_none(e.active_to),
        "created_us": to_micros(e.created_at),
        "updated_us": to_micros(e.updated_at),
        "deleted_us": us_or_none(e.deleted_at),
        "measure_usage_from_us": us_or_none(e.measure_usage_from),
        "usage_period_interval": None if period is None else period.interval.iso,
        "usage_period_anchor_us": None if period is None else to_micros(period.anchor),
        "is_soft_limit": e.is_soft_limit,
        "issue_after_reset": decimal_text(e.issue_after_reset),
        "issue_after_reset_priority": e.issue_after_reset_priority,
        "preserve_overage_at_reset": e.preserve_overage_at_reset,
        "config": e.config,
    }


def entitlement_from_row(row: Any) -> Entitlement:
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
        deleted_at=instant_or_none(row.deleted_us),
        active_from=from_micros(row.active_from_us),
        active_to=instant_or_none(row.active_to_us),
        measure_usage_from=instant_or_none(row.measure_usage_from_us),
        usage_period=period,
        is_soft_limit=bool(row.is_soft_limit),
        issue_after_reset=None if row.issue_after_reset is None else Decimal(row.issue_after_reset),
        issue_after_reset_priority=row.issue_after_reset_priority,
        preserve_overage_at_reset=bool(row.preserve_overage_at_reset),
        config=row.config,
    )


def grant_row(g: Grant) -> dict[str, Any]:
    return {
        "id": g.id,
        "entitlement_id": g.entitlement_id,
        "amount": str(g.amount),
        "priority": g.priority,
        "effective_us": to_micros(g.effective_at),
        "expiration_duration": None if g.expiration is None else g.expiration.duration,
        "expiration_count": None if g.expiration is None else g.expiration.count,
        "expires_us": us_or_none(g.expires_at),
        "min_rollover": str(g.min_rollover),
        "max_rollover": str(g.max_rollover),
        "recurrence_interval": None if g.recurrence is None else g.recurrence.interval.iso,
        "recurrence_anchor_us": None if g.recurrence is None else to_micros(g.recurrence.anchor),
        "metadata": g.metadata,
        "annotations": g.annotations,
        "created_us": to_micros(g.created_at),
        "updated_us": to_micros(g.updated_at),
        "voided_us": us_or_none(g.voided_at),
        "deleted_us": us_or_none(g.deleted_at),
    }


def grant_from_row(row: Any) -> Grant:
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
        expires_at=instant_or_none(row.expires_us),
        min_rollover=Decimal(row.min_rollover),
        max_rollover=Decimal(row.max_rollover),
        recurrence=recurrence,
        metadata=row.metadata,
        annotations=row.annotations,
        created_at=from_micros(row.created_us),
        updated_at=from_micros(row.updated_us),
        voided_at=instant_or_none(row.voided_us),
        deleted_at=instant_or_none(row.deleted_us),
    )


def reset_from_row(row: Any) -> Reset:
    return Reset(
        id=row.id,
        entitlement_id=row.entitlement_id,
        at=from_micros(row.at_us),
        retain_anchor=bool(row.retain_anchor),
        preserve_overage=bool(row.preserve_overage),
        created_at=from_micros(row.created_us),
    )
