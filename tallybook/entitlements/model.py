"""Features, entitlements, grants and resets: what a customer may use, as OpenMeter models it.

A feature names something a customer can be entitled to, optionally linked to a meter (with
group-by filters narrowing the meter to the feature). An entitlement gives one customer one
feature: `boolean` (access while active), `static` (access plus a JSON config) or `metered` (access
while the balance of its grants covers the usage of the feature's meter in the usage period).
Grants are credit for a metered entitlement; resets start a new usage period.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from tallybook.customers.model import Customer
from tallybook.entitlements.recurrence import Interval, Recurrence
from tallybook.errors import DomainError

KEY_PATTERN = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
MAX_KEY_LENGTH = 64
METERED, BOOLEAN, STATIC = "metered", "boolean", "static"
ENTITLEMENT_TYPES = (METERED, BOOLEAN, STATIC)
EntitlementType = Literal["metered", "boolean", "static"]
DEFAULT_ISSUE_PRIORITY = 1
ISSUE_AFTER_RESET_ANNOTATION = "issueAfterReset"
EXPIRATION_DURATIONS = ("HOUR", "DAY", "WEEK", "MONTH", "YEAR")
# Meters whose usage adds up over time: a balance burns sums of usage.
ADDITIVE_AGGREGATIONS = ("SUM", "COUNT")
MAX_AMOUNT = Decimal("1e15")
MAX_CONFIG_LENGTH = 65_536


class EntitlementError(DomainError):
    status = 400
    code = "invalid-entitlement"


class FeatureNotFound(EntitlementError):
    status = 404
    code = "feature-not-found"


class FeatureConflict(EntitlementError):
    status = 409
    code = "feature-conflict"


class InvalidFeature(EntitlementError):
    code = "invalid-feature"


class EntitlementNotFound(EntitlementError):
    status = 404
    code = "entitlement-not-found"


class EntitlementConflict(EntitlementError):
    status = 409
    code = "entitlement-conflict"


class OwnerNotFound(EntitlementError):
    """No customer (or no customer attributed the subject) to own an entitlement."""

    status = 404
    code = "customer-not-found"


class NotMetered(EntitlementError):
    code = "entitlement-not-metered"


class InvalidGrant(EntitlementError):
    code = "invalid-grant"


class GrantNotFound(EntitlementError):
    status = 404
    code = "grant-not-found"


class InvalidReset(EntitlementError):
    code = "invalid-reset"


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    key: str
    name: str
    meter_slug: str | None = None
    meter_group_by_filters: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Feature:
    id: str
    key: str
    name: str
    meter_slug: str | None
    meter_group_by_filters: dict[str, str]
    metadata: dict[str, str] | None
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None


@dataclass(frozen=True, slots=True)
class UsagePeriodSpec:
    interval: Interval
    anchor: datetime | None = None  # None: the start of measurement (anniversary)


@dataclass(frozen=True, slots=True)
class EntitlementSpec:
    """What a client asks for (API body, or a plan's entitlement template)."""

    type: str
    feature_key: str | None = None
    feature_id: str | None = None
    metadata: dict[str, str] | None = None
    # metered
    usage_period: UsagePeriodSpec | None = None
    measure_usage_from: datetime | str | None = None  # an instant, "NOW" or "CURRENT_PERIOD_START"
    is_soft_limit: bool = False
    issue_after_reset: Decimal | None = None
    issue_after_reset_priority: int | None = None
    preserve_overage_at_reset: bool = False
    # static
    config: str | None = None
    # boolean and static may have a usage period too (shown only)
    active_from: datetime | None = None
    active_to: datetime | None = None
    annotations: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Entitlement:
    id: str
    type: str
    feature_id: str
    feature_key: str
    customer_id: str
    subject_key: str
    metadata: dict[str, str] | None
    annotations: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    active_from: datetime
    active_to: datetime | None
    # metered
    measure_usage_from: datetime | None = None
    usage_period: Recurrence | None = None
    is_soft_limit: bool = False
    issue_after_reset: Decimal | None = None
    issue_after_reset_priority: int | None = None
    preserve_overage_at_reset: bool = False
    # static
    config: str | None = None

    def active_at(self, at: datetime) -> bool:
        if at < self.active_from:
            return False
        end = self.ends_at
        return end is None or at < end

    @property
    def ends_at(self) -> datetime | None:
        ends = [t for t in (self.active_to, self.deleted_at) if t is not None]
        return min(ends) if ends else None


@dataclass(frozen=True, slots=True)
class Expiration:
    duration: str  # HOUR | DAY | WEEK | MONTH | YEAR
    count: int


@dataclass(frozen=True, slots=True)
class GrantSpec:
    amount: Decimal
    effective_at: datetime
    priority: int = 1
    expiration: Expiration | None = None
    min_rollover: Decimal = Decimal(0)
    max_rollover: Decimal = Decimal(0)
    recurrence: UsagePeriodSpec | None = None
    metadata: dict[str, str] | None = None
    annotations: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    entitlement_id: str
    amount: Decimal
    priority: int
    effective_at: datetime
    expiration: Expiration | None
    expires_at: datetime | None
    min_rollover: Decimal
    max_rollover: Decimal
    recurrence: Recurrence | None
    metadata: dict[str, str] | None
    annotations: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    voided_at: datetime | None
    deleted_at: datetime | None


@dataclass(frozen=True, slots=True)
class Reset:
    id: str
    entitlement_id: str
    at: datetime
    retain_anchor: bool
    preserve_overage: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ResetSpec:
    effective_at: datetime | None = None  # None: now
    retain_anchor: bool = False
    preserve_overage: bool | None = None  # None: the entitlement's preserveOverageAtReset


@dataclass(frozen=True, slots=True)
class EntitlementValue:
    """What `value` answers: access, and for metered entitlements the balance behind it."""

    entitlement: Entitlement
    at: datetime
    has_access: bool
    balance: Decimal | None = None
    usage: Decimal | None = None
    overage: Decimal | None = None
    total_available: Decimal | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    config: str | None = None
    error: str | None = None  # access: why this entitlement's value could not be computed


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    start: datetime
    end: datetime
    usage: Decimal
    balance_at_start: Decimal
    overage_at_start: Decimal


@dataclass(frozen=True, slots=True)
class BurnSegment:
    start: datetime
    end: datetime
    usage: Decimal
    overage: Decimal
    balance_at_start: Decimal
    balances_at_start: dict[str, Decimal]
    balance_at_end: Decimal
    balances_at_end: dict[str, Decimal]
    grant_usages: dict[str, Decimal]
    after_reset: bool


@dataclass(frozen=True, slots=True)
class History:
    windows: list[HistoryWindow]
    segments: list[BurnSegment]


def check_key(value: str, name: str) -> None:
    if not KEY_PATTERN.match(value) or len(value) > MAX_KEY_LENGTH:
        raise EntitlementError(
            f"{name} {value!r} must be 1-{MAX_KEY_LENGTH} lower-case letters, digits and single underscores, "
            "e.g. api_calls"
        )


def check_amount(value: Decimal, name: str, error: type[EntitlementError] = InvalidGrant) -> Decimal:
    if not value.is_finite():
        raise error(f"{name} must be a finite number")
    if value < 0:
        raise error(f"{name} must not be negative")
    if value > MAX_AMOUNT:
        raise error(f"{name} must be at most {MAX_AMOUNT:f}")
    return value


# -- how the API addresses entitlements ------------------------------------------------------------
GRANT_ORDERS = ("id", "created_at", "updated_at")


@dataclass(frozen=True, slots=True)
class Owner:
    """How a path names the customer whose entitlements it reaches: by the customer's id or key
    (v1 and v2 customer paths), or by one of its subjects (v1 subject paths)."""

    ref: str
    by_subject: bool = False


@dataclass(frozen=True, slots=True)
class EntitlementView:
    """An entitlement with what its answer shows beside it: its customer, and for a metered one
    the usage period current when it was read."""

    entitlement: Entitlement
    customer: Customer
    current_period: tuple[datetime, datetime] | None


@dataclass(frozen=True, slots=True)
class GrantView:
    """A grant as read at `at`; `zone` (its customer's time zone, when known) places its next
    recurrence."""

    grant: Grant
    at: datetime
    zone: ZoneInfo | None
