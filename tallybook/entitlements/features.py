"""Features: what an entitlement entitles to, optionally measured by a meter (with group-by filters).
Never edited; archived once no live entitlement uses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from tallybook.entitlements.core import ServiceCore
from tallybook.entitlements.model import (
    EntitlementError,
    Feature,
    FeatureConflict,
    FeatureSpec,
    InvalidFeature,
    check_key,
)
from tallybook.ids import new_ulid


class FeatureOperations(ServiceCore):
    def create_feature(self, spec: FeatureSpec) -> Feature:
        try:
            check_key(spec.key, "key")
        except EntitlementError as exc:
            raise InvalidFeature(exc.detail) from None
        if not spec.name.strip():
            raise InvalidFeature("name must not be empty")
        if spec.meter_group_by_filters and spec.meter_slug is None:
            raise InvalidFeature("meterGroupByFilters needs a meterSlug")
        if spec.meter_slug is not None:
            meter = self._meter(spec.meter_slug, InvalidFeature)
            unknown = sorted(set(spec.meter_group_by_filters) - set(meter.group_by))
            if unknown:
                known = ", ".join(sorted(meter.group_by)) or "none"
                raise InvalidFeature(
                    f"meterGroupByFilters: {', '.join(unknown)} not a groupBy key of meter {meter.slug!r} "
                    f"(its keys: {known})"
                )
        now = self.clock.now()
        feature = Feature(
            id=new_ulid(now),
            key=spec.key,
            name=spec.name,
            meter_slug=spec.meter_slug,
            meter_group_by_filters=dict(spec.meter_group_by_filters),
            metadata=spec.metadata,
            created_at=now,
            updated_at=now,
            archived_at=None,
        )
        self.repository.insert_feature(feature)
        return feature

    def features(self, meter_slugs: Sequence[str] | None = None, include_archived: bool = False) -> list[Feature]:
        """Features (on any of these meters), oldest first."""
        found = self.repository.features(None, include_archived)
        return [f for f in found if f.meter_slug in meter_slugs] if meter_slugs else found

    def archive_feature(self, id_or_key: str) -> Feature:
        feature = self.feature(id_or_key)
        if feature.archived_at is not None:
            return feature
        users = [e for e in self.repository.entitlements(feature_keys=[feature.key]) if e.feature_id == feature.id]
        if users:
            raise FeatureConflict(
                f"feature {feature.key!r} has {len(users)} live entitlement(s); delete them before archiving it",
                entitlements=[e.id for e in users[:20]],
            )
        now = self.clock.now()
        self.repository.archive_feature(feature.id, now)
        return replace(feature, archived_at=now, updated_at=now)
