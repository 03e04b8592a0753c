"""Grants: usage given to a metered entitlement (priority, effective time, expiration, recurrence,
min/max rollover). Burnt by priority, then earliest expiry (engine.py); voided, never deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from tallybook.customers.model import Customer
from tallybook.entitlements.core import MIN_PERIOD, ServiceCore
from tallybook.entitlements.model import (
    EXPIRATION_DURATIONS,
    METERED,
    Grant,
    GrantNotFound,
    GrantSpec,
    InvalidGrant,
    NotMetered,
    check_amount,
)
from tallybook.entitlements.recurrence import Recurrence, ceil_minute, expiry, floor_minute
from tallybook.ids import new_ulid


class GrantOperations(ServiceCore):
    def create_grant(self, customer: Customer, id_or_feature: str, spec: GrantSpec) -> Grant:
        entitlement = self.entitlement_of(customer, id_or_feature)
        if entitlement.type != METERED:
            raise NotMetered(
                f"entitlement {entitlement.id} is {entitlement.type}; only metered entitlements take grants"
            )
        check_amount(spec.amount, "amount")
        check_amount(spec.min_rollover, "minRolloverAmount")
        check_amount(spec.max_rollover, "maxRolloverAmount")
        if spec.min_rollover > spec.max_rollover and spec.max_rollover != 0:
            raise InvalidGrant("minRolloverAmount must not be more than maxRolloverAmount")
        if not 1 <= spec.priority <= 255:
            raise InvalidGrant("priority must be between 1 and 255 (1 burns first)")
        tz = self.zone_of(customer)
        effective = ceil_minute(spec.effective_at)
        expires = None
        if spec.expiration is not None:
            if spec.expiration.duration not in EXPIRATION_DURATIONS:
                raise InvalidGrant(f"expiration.duration must be one of {', '.join(EXPIRATION_DURATIONS)}")
            if not 1 <= spec.expiration.count <= 1000:
                raise InvalidGrant("expiration.count must be between 1 and 1000")
            expires = expiry(effective, spec.expiration.duration, spec.expiration.count, tz)
        recurrence = None
        if spec.recurrence is not None:
            recurrence = Recurrence(spec.recurrence.interval, floor_minute(spec.recurrence.anchor or effective))
            begin, end = recurrence.period_at(effective, tz)
            if end - begin < MIN_PERIOD:
                raise InvalidGrant("recurrence must be at least one hour long")
        now = self.clock.now()
        grant = Grant(
            id=new_ulid(now),
            entitlement_id=entitlement.id,
            amount=spec.amount,
            priority=spec.priority,
            effective_at=effective,
            expiration=spec.expiration,
            expires_at=expires,
            min_rollover=spec.min_rollover,
            max_rollover=spec.max_rollover,
            recurrence=recurrence,
            metadata=spec.metadata,
            annotations=spec.annotations,
            created_at=now,
            updated_at=now,
            voided_at=None,
            deleted_at=None,
        )
        self.repository.insert_grant(grant)
        self._changed(entitlement)
        return grant

    def grants_of(self, customer: Customer, id_or_feature: str, include_deleted: bool = False) -> list[Grant]:
        entitlement = self.entitlement_of(customer, id_or_feature, include_deleted=True)
        grants = self.repository.grants([entitlement.id], include_deleted=True)
        return [g for g in grants if include_deleted or g.voided_at is None]

    def grants(
        self,
        customer_ids: Sequence[str] | None = None,
        feature_keys: Sequence[str] | None = None,
        include_deleted: bool = False,
    ) -> list[Grant]:
        if customer_ids is None and feature_keys is None:
            grants = self.repository.all_grants(include_deleted=True)
        else:
            owned = self.repository.entitlements(customer_ids, feature_keys, include_deleted=True)
            grants = self.repository.grants([e.id for e in owned], include_deleted=True)
        return [g for g in grants if include_deleted or g.voided_at is None]

    def void_grant(self, grant_id: str, at: datetime | None = None) -> Grant:
        grant = self.repository.grant(grant_id)
        if grant is None:
            raise GrantNotFound(f"no grant has the id {grant_id!r}")
        if grant.voided_at is not None:
            raise GrantNotFound(f"grant {grant.id} was voided already")
        when = at or self.clock.now()
        self.repository.void_grant(grant.id, when)
        entitlement = self.repository.entitlement(grant.entitlement_id)
        if entitlement is not None:
            self._changed(entitlement)
        return replace(grant, voided_at=when, updated_at=when)
