"""Features, entitlements and grants; access and balance answers: EntitlementService.

It is assembled from one part per job: core.py (collaborators, owner and entitlement look-ups),
features.py, grants.py, balances.py (resets, value, access, history); entitlements themselves
(create, override, list, delete) are here. Grant effective times are ceiled to the minute, resets
and anchors truncated (OpenMeter's one-minute resolution).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from tallybook.customers.model import Customer
from tallybook.entitlements.balances import BalanceOperations
from tallybook.entitlements.core import MIN_PERIOD, current_of, parse_interval
from tallybook.entitlements.features import FeatureOperations
from tallybook.entitlements.grants import GrantOperations
from tallybook.entitlements.model import (
    ADDITIVE_AGGREGATIONS,
    BOOLEAN,
    DEFAULT_ISSUE_PRIORITY,
    ENTITLEMENT_TYPES,
    GRANT_ORDERS,
    ISSUE_AFTER_RESET_ANNOTATION,
    MAX_CONFIG_LENGTH,
    METERED,
    STATIC,
    Entitlement,
    EntitlementError,
    EntitlementSpec,
    EntitlementValue,
    EntitlementView,
    FeatureNotFound,
    Grant,
    GrantSpec,
    GrantView,
    History,
    Owner,
    ResetSpec,
    check_amount,
)
from tallybook.entitlements.recurrence import Recurrence, floor_minute
from tallybook.ids import new_ulid
from tallybook.meters.windows import WindowSize

__all__ = ["EntitlementService", "current_of", "parse_interval"]

log = logging.getLogger(__name__)


class EntitlementService(FeatureOperations, GrantOperations, BalanceOperations):
    """Features, entitlements and grants; access and balance answers. Entitlements are here, the
    other jobs in the parts it is made of."""

    # -- entitlements ---------------------------------------------------------------------------------
    def create_entitlement(
        self, customer: Customer, spec: EntitlementSpec, replaces: Entitlement | None = None
    ) -> Entitlement:
        entitlement, grants = self._build(customer, spec)
        self.repository.insert_entitlement(entitlement, grants, None if replaces is None else replaces.id)
        self._changed(entitlement)
        return entitlement

    def override(self, customer: Customer, id_or_feature: str, spec: EntitlementSpec) -> Entitlement:
        """Replace the customer's entitlement to a feature with a new one (the old one ends now)."""
        current = self.entitlement_of(customer, id_or_feature)
        return self.create_entitlement(customer, spec, replaces=current)

    def entitlements(
        self,
        customer_ids: Sequence[str] | None = None,
        feature_keys: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        include_deleted: bool = False,
        exclude_inactive: bool = False,
    ) -> list[Entitlement]:
        found = self.repository.entitlements(customer_ids, feature_keys, include_deleted)
        if types:
            found = [e for e in found if e.type in types]
        if exclude_inactive:
            now = self.clock.now()
            found = [e for e in found if e.active_at(now)]
        return found

    def delete_entitlement(self, customer: Customer, id_or_feature: str) -> None:
        entitlement = self.entitlement_of(customer, id_or_feature)
        self.repository.end_entitlement(entitlement.id, self.clock.now())

    def _build(self, customer: Customer, spec: EntitlementSpec) -> tuple[Entitlement, list[Grant]]:
        if spec.type not in ENTITLEMENT_TYPES:
            raise EntitlementError(f"type must be one of {', '.join(ENTITLEMENT_TYPES)}")
        ref = spec.feature_id or spec.feature_key
        if ref is None:
            raise EntitlementError("featureKey (or featureId) is required")
        feature = self.repository.feature(ref)
        if feature is None or feature.archived_at is not None:
            raise FeatureNotFound(f"no live feature has the id or key {ref!r}; create it with POST /api/v1/features")
        now = self.clock.now()
        tz = self.zone_of(customer)
        active_from = spec.active_from or now
        if spec.active_to is not None and spec.active_to <= active_from:
            raise EntitlementError("activeTo must be after activeFrom")
        entitlement = Entitlement(
            id=new_ulid(now),
            type=spec.type,
            feature_id=feature.id,
            feature_key=feature.key,
            customer_id=customer.id,
            subject_key=customer.key or (customer.subjects[0] if customer.subjects else customer.id),
            metadata=spec.metadata,
            annotations=spec.annotations,
            created_at=now,
            updated_at=now,
            deleted_at=None,
            active_from=active_from,
            active_to=spec.active_to,
        )
        if spec.type == BOOLEAN:
            return entitlement, []
        if spec.type == STATIC:
            if spec.config is None:
                raise EntitlementError('a static entitlement needs `config`, a JSON string such as "{\\"seats\\": 5}"')
            if len(spec.config) > MAX_CONFIG_LENGTH:
                raise EntitlementError(f"config is longer than {MAX_CONFIG_LENGTH} characters")
            try:
                json.loads(spec.config)
            except ValueError:
                raise EntitlementError('config must be a JSON-parsable string, e.g. "{\\"seats\\": 5}"') from None
            return replace(entitlement, config=spec.config), []
        # metered
        if feature.meter_slug is None:
            raise EntitlementError(
                f"feature {feature.key!r} has no meter; a metered entitlement needs a feature with meterSlug"
            )
        meter = self._meter(feature.meter_slug, EntitlementError)
        if meter.aggregation.value not in ADDITIVE_AGGREGATIONS:
            raise EntitlementError(
                f"meter {meter.slug!r} aggregates with {meter.aggregation.value}; metered entitlements burn "
                f"usage that adds up over time, so the meter must use {' or '.join(ADDITIVE_AGGREGATIONS)}"
            )
        if spec.usage_period is None:
            raise EntitlementError('a metered entitlement needs usagePeriod, e.g. {"interval": "MONTH"}')
        measure = spec.measure_usage_from
        if measure is None or measure == "NOW":
            measure_at = now
        elif measure == "CURRENT_PERIOD_START":
            anchor = spec.usage_period.anchor or now
            measure_at = Recurrence(spec.usage_period.interval, floor_minute(anchor)).period_at(now, tz)[0]
        elif isinstance(measure, datetime):
            measure_at = measure
        else:
            raise EntitlementError('measureUsageFrom must be a date-time, "NOW" or "CURRENT_PERIOD_START"')
        measure_at = floor_minute(measure_at)
        anchor_at = floor_minute(spec.usage_period.anchor or measure_at)
        period = Recurrence(spec.usage_period.interval, anchor_at)
        begin, end = period.period_at(measure_at, tz)
        if end - begin < MIN_PERIOD:
            raise EntitlementError("usagePeriod must be at least one hour long")
        issue = spec.issue_after_reset
        if issue is not None:
            check_amount(issue, "issueAfterReset", EntitlementError)
        if spec.issue_after_reset_priority is not None and issue is None:
            raise EntitlementError("issueAfterResetPriority needs issueAfterReset")
        priority = spec.issue_after_reset_priority
        if priority is not None and not 1 <= priority <= 255:
            raise EntitlementError("issueAfterResetPriority must be between 1 and 255")
        entitlement = replace(
            entitlement,
            measure_usage_from=measure_at,
            usage_period=period,
            is_soft_limit=spec.is_soft_limit,
            issue_after_reset=issue,
            issue_after_reset_priority=priority,
            preserve_overage_at_reset=spec.preserve_overage_at_reset,
        )
        grants: list[Grant] = []
        if issue is not None and issue > 0:
            # The default grant: its rollover limits put its balance back to `issue` at every reset.
            grants.append(
                Grant(
                    id=new_ulid(now),
                    entitlement_id=entitlement.id,
                    amount=issue,
                    priority=priority or DEFAULT_ISSUE_PRIORITY,
                    effective_at=measure_at,
                    expiration=None,
                    expires_at=None,
                    min_rollover=issue,
                    max_rollover=issue,
                    recurrence=None,
                    metadata=None,
                    annotations={ISSUE_AFTER_RESET_ANNOTATION: True},
                    created_at=now,
                    updated_at=now,
                    voided_at=None,
                    deleted_at=None,
                )
            )
        return entitlement, grants

    # -- as the API addresses them: by an Owner, answered with what the answer shows ------------------
    def customer_for(self, owner: Owner) -> Customer:
        """The live customer a path names (by subject: the customer the subject is attributed to)."""
        return self.customer_of_subject(owner.ref) if owner.by_subject else self.customer(owner.ref)

    def view(self, customer: Customer, entitlement: Entitlement) -> EntitlementView:
        period = None
        if entitlement.type == METERED:
            period = self.current_period(customer, entitlement, self.clock.now())
        return EntitlementView(entitlement, customer, period)

    def create_for(self, owner: Owner, spec: EntitlementSpec, grants: Sequence[GrantSpec] = ()) -> EntitlementView:
        """Create the owner's entitlement, then its grants (v2 bodies may carry some)."""
        customer = self.customer_for(owner)
        entitlement = self.create_entitlement(customer, spec)
        for grant in grants:
            self.create_grant(customer, entitlement.id, grant)
        return self.view(customer, entitlement)

    def override_for(
        self, owner: Owner, id_or_feature: str, spec: EntitlementSpec, grants: Sequence[GrantSpec] = ()
    ) -> EntitlementView:
        """Replace the owner's entitlement with a new one (the old one ends now; its grants stay with it)."""
        customer = self.customer_for(owner)
        entitlement = self.override(customer, id_or_feature, spec)
        for grant in grants:
            self.create_grant(customer, entitlement.id, grant)
        return self.view(customer, entitlement)

    def views_of(self, owner: Owner, include_deleted: bool = False) -> list[EntitlementView]:
        customer = self.customer_for(owner)
        return [self.view(customer, e) for e in self.entitlements([customer.id], include_deleted=include_deleted)]

    def view_of(self, owner: Owner, id_or_feature: str) -> EntitlementView:
        """The owner's entitlement with this id (ended ones too), or its live one to this feature."""
        customer = self.customer_for(owner)
        return self.view(customer, self.entitlement_of(customer, id_or_feature, include_deleted=True))

    def delete_for(self, owner: Owner, id_or_feature: str) -> None:
        self.delete_entitlement(self.customer_for(owner), id_or_feature)

    def value_for(self, owner: Owner, id_or_feature: str, at: datetime | None = None) -> EntitlementValue:
        return self.value(self.customer_for(owner), id_or_feature, at)

    def access_for(self, owner: Owner) -> dict[str, EntitlementValue]:
        return self.access(self.customer_for(owner))

    def history_for(
        self,
        owner: Owner,
        id_or_feature: str,
        from_: datetime | None,
        to: datetime | None,
        window_size: WindowSize,
        window_tz: str = "UTC",
    ) -> History:
        return self.history(self.customer_for(owner), id_or_feature, from_, to, window_size, window_tz)

    def reset_for(self, owner: Owner, id_or_feature: str, spec: ResetSpec) -> EntitlementValue:
        return self.reset(self.customer_for(owner), id_or_feature, spec)

    def grants_for(
        self,
        owner: Owner,
        id_or_feature: str,
        include_deleted: bool = False,
        order_by: str = "created_at",
        descending: bool = False,
    ) -> list[GrantView]:
        """The grants of the owner's entitlement, ordered by `order_by` (one of GRANT_ORDERS), then id."""
        if order_by not in GRANT_ORDERS:
            raise EntitlementError(f"orderBy must be one of {', '.join(GRANT_ORDERS)}")
        customer = self.customer_for(owner)
        grants = self.grants_of(customer, id_or_feature, include_deleted)
        grants.sort(key=lambda g: (g.id,) if order_by == "id" else (getattr(g, order_by), g.id), reverse=descending)
        now, tz = self.clock.now(), self.zone_of(customer)
        return [GrantView(g, now, tz) for g in grants]

    def grant_for(self, owner: Owner, id_or_feature: str, spec: GrantSpec) -> GrantView:
        customer = self.customer_for(owner)
        grant = self.create_grant(customer, id_or_feature, spec)
        return GrantView(grant, self.clock.now(), self.zone_of(customer))

    # -- listings across customers --------------------------------------------------------------------
    def entitlement_view(self, entitlement_id: str) -> EntitlementView:
        entitlement = self.entitlement(entitlement_id)
        return self.view(self.customers_by_id(entitlement.customer_id), entitlement)

    def entitlement_views(
        self,
        feature_keys: Sequence[str] | None = None,
        owners: Sequence[Owner] | None = None,
        types: Sequence[str] | None = None,
        exclude_inactive: bool = False,
    ) -> list[EntitlementView]:
        """Entitlements (of these owners: unknown ones match nothing, as a filter does)."""
        customers: dict[str, Customer] = {}
        customer_ids = None
        if owners:
            customers = {c.id: c for c in self._known(owners)}
            customer_ids = list(customers)
        out = []
        for e in self.entitlements(customer_ids, feature_keys, types, exclude_inactive=exclude_inactive):
            customer = customers.get(e.customer_id)
            if customer is None:
                try:
                    customer = customers[e.customer_id] = self.customers_by_id(e.customer_id)
                except EntitlementError:
                    continue
            out.append(self.view(customer, e))
        return out

    def grant_views(
        self,
        feature_keys: Sequence[str] | None = None,
        owners: Sequence[Owner] | None = None,
        include_deleted: bool = False,
    ) -> list[GrantView]:
        """Grants (of these owners' entitlements: unknown owners match nothing)."""
        customer_ids = [c.id for c in self._known(owners)] if owners else None
        now = self.clock.now()
        return [GrantView(g, now, None) for g in self.grants(customer_ids, feature_keys, include_deleted)]

    def _known(self, owners: Sequence[Owner]) -> list[Customer]:
        found = []
        for owner in owners:
            try:
                found.append(self.customer_for(owner))
            except EntitlementError:
                continue
        return found
