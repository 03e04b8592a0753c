"""What the entitlement service needs from storage and from the rest of Tallybook."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from tallybook.customers.model import Customer
from tallybook.entitlements.model import Entitlement, Feature, Grant, Reset
from tallybook.meters.models import Meter


class EntitlementRepository(Protocol):
    """Features, entitlements, grants and resets (sql.py on both engines; memory.py for unit tests).

    Rows are never deleted: features are archived, entitlements end (deleted or overridden), grants
    are voided, so every past balance can be computed again.
    """

    # -- features -------------------------------------------------------------------------------------
    def insert_feature(self, feature: Feature) -> None:
        """Store a feature; FeatureConflict when a live feature has its key."""
        ...

    def feature(self, id_or_key: str) -> Feature | None:
        """By id (archived ones too), or the live feature with that key."""
        ...

    def features(self, meter_slug: str | None = None, include_archived: bool = False) -> list[Feature]: ...

    def archive_feature(self, feature_id: str, at: datetime) -> bool: ...

    # -- entitlements ---------------------------------------------------------------------------------
    def insert_entitlement(self, entitlement: Entitlement, grants: Sequence[Grant], replaces: str | None) -> None:
        """Store an entitlement with its first grants, ending `replaces` (an override) in the same
        transaction; EntitlementConflict when another live entitlement of the customer has the feature."""
        ...

    def entitlement(self, entitlement_id: str) -> Entitlement | None: ...

    def entitlements(
        self,
        customer_ids: Sequence[str] | None = None,
        feature_keys: Sequence[str] | None = None,
        include_deleted: bool = False,
    ) -> list[Entitlement]: ...

    def ledger(self, customer_id: str, feature_key: str | None) -> tuple[list[Entitlement], list[Grant], list[Reset]]:
        """In one read: the customer's live entitlements (to one feature, or all), their grants and
        resets."""
        ...

    def set_active_to(self, entitlement_id: str, active_to: datetime | None, at: datetime) -> None: ...

    def end_entitlement(self, entitlement_id: str, at: datetime) -> bool: ...

    # -- grants ---------------------------------------------------------------------------------------
    def insert_grant(self, grant: Grant) -> None: ...

    def grant(self, grant_id: str) -> Grant | None: ...

    def grants(self, entitlement_ids: Sequence[str], include_deleted: bool = False) -> list[Grant]: ...

    def all_grants(self, include_deleted: bool = False) -> list[Grant]: ...

    def void_grant(self, grant_id: str, at: datetime) -> bool: ...

    # -- resets ---------------------------------------------------------------------------------------
    def insert_reset(self, reset: Reset) -> None: ...

    def resets(self, entitlement_ids: Sequence[str]) -> list[Reset]: ...


class Customers(Protocol):
    """The customer directory (tallybook.customers.CustomerService)."""

    def resolve(self, id_or_key: str) -> Customer: ...

    def get(self, id_or_key: str) -> Customer: ...

    def customer_of_subjects(self, subjects: Sequence[str]) -> dict[str, str]: ...


class Meters(Protocol):
    """Meter definitions and usage (tallybook.meters.service.MeterService)."""

    def get(self, id_or_slug: str) -> Meter: ...

    def usage_in_ranges(
        self,
        meter: str,
        bounds: Sequence[datetime],
        subjects: Sequence[str],
        filter_group_by: dict[str, str],
    ) -> list[Decimal]: ...


class NotifierTransaction(Protocol):
    """One transaction of the entitlement notifier (notifications_sql.py on SQL). `outbox` is the
    open transaction itself, for `WebhookService.destinations` and `enqueue`: the webhook events a
    pass writes commit together with the threshold and reset state that says they were sent."""

    @property
    def outbox(self) -> object: ...

    def notifier_value(self, name: str) -> int | None: ...

    def set_notifier_value(self, name: str, value: int) -> None: ...

    def max_event_seq(self) -> int: ...

    def subjects_ingested(self, after_seq: int, through_seq: int) -> list[str]: ...

    def latest_void_us(self) -> int | None: ...

    def voided_subjects(self, after_us: int, through_us: int) -> list[tuple[str, int, int]]:
        """(subject, earliest, latest event time) of events voided in (after, through]."""
        ...

    def changed_entitlements(self, after_us: int, through_us: int) -> set[str]: ...

    def rule_settings(self, rule_ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    def save_rule_settings(
        self, rule_id: str, features: list[str] | None, thresholds: list[dict[str, Any]] | None
    ) -> None: ...

    def threshold_states(self, entitlement_id: str, period_start_us: int) -> dict[tuple[str, str], tuple[bool, int]]:
        """{(rule id, threshold key): (crossed, times crossed)} in the period starting then."""
        ...

    def save_threshold_state(
        self,
        rule_id: str,
        entitlement_id: str,
        period_start_us: int,
        threshold: str,
        crossed: bool,
        crossings: int,
        now_us: int,
        exists: bool,
    ) -> None: ...

    def reset_sent(self, entitlement_id: str) -> int | None: ...

    def all_reset_sent(self) -> dict[str, tuple[int, int | None]]: ...

    def save_reset_sent(self, entitlement_id: str, period_start_us: int, period_end_us: int, exists: bool) -> None: ...


class NotifierStorage(Protocol):
    def reading(self) -> AbstractContextManager[NotifierTransaction]: ...

    def writing(self) -> AbstractContextManager[NotifierTransaction]: ...


__all__ = ["Customers", "EntitlementRepository", "Meters", "NotifierStorage", "NotifierTransaction"]
