"""An in-memory EntitlementRepository for unit tests of the service (same rules as sql.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from tallybook.entitlements.model import (
    Entitlement,
    EntitlementConflict,
    Feature,
    FeatureConflict,
    Grant,
    Reset,
)


class MemoryEntitlementRepository:
    def __init__(self) -> None:
        self._features: dict[str, Feature] = {}
        self._entitlements: dict[str, Entitlement] = {}
        self._grants: dict[str, Grant] = {}
        self._resets: list[Reset] = []

    # -- features -------------------------------------------------------------------------------------
    def insert_feature(self, feature: Feature) -> None:
        if any(f.key == feature.key and f.archived_at is None for f in self._features.values()):
            raise FeatureConflict(f"a feature with key {feature.key!r} already exists")
        self._features[feature.id] = feature

    def feature(self, id_or_key: str) -> Feature | None:
        if id_or_key.upper() in self._features:
            return self._features[id_or_key.upper()]
        return next((f for f in self._features.values() if f.key == id_or_key and f.archived_at is None), None)

    def features(self, meter_slug: str | None = None, include_archived: bool = False) -> list[Feature]:
        return [
            f
            for f in sorted(self._features.values(), key=lambda f: (f.created_at, f.id))
            if (meter_slug is None or f.meter_slug == meter_slug) and (include_archived or f.archived_at is None)
        ]

    def archive_feature(self, feature_id: str, at: datetime) -> bool:
        current = self._features.get(feature_id)
        if current is None or current.archived_at is not None:
            return False
        self._features[feature_id] = replace(current, archived_at=at, updated_at=at)
        return True

    # -- entitlements ---------------------------------------------------------------------------------
    def insert_entitlement(self, entitlement: Entitlement, grants: Sequence[Grant], replaces: str | None) -> None:
        def overlaps(e: Entitlement) -> bool:
            a_end, b_end = e.ends_at, entitlement.ends_at
            return (a_end is None or entitlement.active_from < a_end) and (b_end is None or e.active_from < b_end)

        live = [
            e
            for e in self._entitlements.values()
            if e.customer_id == entitlement.customer_id
            and e.feature_key == entitlement.feature_key
            and e.deleted_at is None
            and e.id != replaces
            and overlaps(e)
        ]
        if live:
            raise EntitlementConflict(f"the customer already has an entitlement to feature {entitlement.feature_key!r}")
        if replaces is not None:
            self.end_entitlement(replaces, entitlement.created_at)
        self._entitlements[entitlement.id] = entitlement
        for grant in grants:
            self._grants[grant.id] = grant

    def entitlement(self, entitlement_id: str) -> Entitlement | None:
        return self._entitlements.get(entitlement_id.upper())

    def entitlements(
        self,
        customer_ids: Sequence[str] | None = None,
        feature_keys: Sequence[str] | None = None,
        include_deleted: bool = False,
    ) -> list[Entitlement]:
        return [
            e
            for e in sorted(self._entitlements.values(), key=lambda e: (e.created_at, e.id))
            if (customer_ids is None or e.customer_id in customer_ids)
            and (feature_keys is None or e.feature_key in feature_keys)
            and (include_deleted or e.deleted_at is None)
        ]

    def ledger(self, customer_id: str, feature_key: str | None) -> tuple[list[Entitlement], list[Grant], list[Reset]]:
        found = self.entitlements([customer_id], None if feature_key is None else [feature_key])
        ids = [e.id for e in found]
        return found, self.grants(ids), self.resets(ids)

    def end_entitlement(self, entitlement_id: str, at: datetime) -> bool:
        current = self._entitlements.get(entitlement_id)
        if current is None or current.deleted_at is not None:
            return False
        self._entitlements[entitlement_id] = replace(current, deleted_at=at, updated_at=at)
        return True

    # -- grants ---------------------------------------------------------------------------------------
    def insert_grant(self, grant: Grant) -> None:
        self._grants[grant.id] = grant

    def grant(self, grant_id: str) -> Grant | None:
        return self._grants.get(grant_id.upper())

    def grants(self, entitlement_ids: Sequence[str], include_deleted: bool = False) -> list[Grant]:
        return [g for g in self.all_grants(include_deleted) if g.entitlement_id in entitlement_ids]

    def all_grants(self, include_deleted: bool = False) -> list[Grant]:
        return [
            g
            for g in sorted(self._grants.values(), key=lambda g: (g.created_at, g.id))
            if include_deleted or g.deleted_at is None
        ]

    def void_grant(self, grant_id: str, at: datetime) -> bool:
        current = self._grants.get(grant_id)
        if current is None or current.voided_at is not None:
            return False
        self._grants[grant_id] = replace(current, voided_at=at, updated_at=at)
        return True

    # -- resets ---------------------------------------------------------------------------------------
    def insert_reset(self, reset: Reset) -> None:
        self._resets.append(reset)

    def resets(self, entitlement_ids: Sequence[str]) -> list[Reset]:
        return sorted((r for r in self._resets if r.entitlement_id in entitlement_ids), key=lambda r: r.at)
