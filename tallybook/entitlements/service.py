"""Features, entitlements and grants; access and balance answers.

`value` and `access` are computed when asked, from the meter projection (one bucketed query per
metered entitlement) and the grant ledger, never from a stored balance that could go stale: a late
event or a void changes the next answer. Times are at OpenMeter's one-minute resolution: grant
effective times are ceiled to the minute, resets and anchors truncated, and a value at instant `t`
counts usage up to the end of `t`'s minute.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from tallybook.clock import Clock, SystemClock
from tallybook.customers.model import Customer, CustomerNotFound
from tallybook.entitlements import engine
from tallybook.entitlements.model import (
    ADDITIVE_AGGREGATIONS,
    BOOLEAN,
    DEFAULT_ISSUE_PRIORITY,
    ENTITLEMENT_TYPES,
    EXPIRATION_DURATIONS,
    ISSUE_AFTER_RESET_ANNOTATION,
    MAX_CONFIG_LENGTH,
    METERED,
    STATIC,
    BurnSegment,
    Entitlement,
    EntitlementError,
    EntitlementNotFound,
    EntitlementSpec,
    EntitlementValue,
    Feature,
    FeatureConflict,
    FeatureNotFound,
    FeatureSpec,
    Grant,
    GrantNotFound,
    GrantSpec,
    History,
    HistoryWindow,
    InvalidFeature,
    InvalidGrant,
    InvalidReset,
    NotMetered,
    OwnerNotFound,
    Reset,
    ResetSpec,
    check_amount,
    check_key,
)
from tallybook.entitlements.ports import Customers, EntitlementRepository, Meters
from tallybook.entitlements.recurrence import Interval, Recurrence, ceil_minute, expiry, floor_minute
from tallybook.errors import DomainError
from tallybook.ids import new_ulid
from tallybook.meters.models import Meter
from tallybook.meters.windows import UnknownTimeZone, WindowSize, next_window_start, window_start, zone

log = logging.getLogger(__name__)

MIN_PERIOD = timedelta(hours=1)
MAX_HISTORY_WINDOWS = 10_000
HISTORY_SIZES = (WindowSize.MINUTE, WindowSize.HOUR, WindowSize.DAY)


class EntitlementService:
    def __init__(
        self,
        repository: EntitlementRepository,
        customers: Customers,
        meters: Meters,
        clock: Clock | None = None,
    ) -> None:
        self.repository = repository
        self.customers = customers
        self.meters = meters
        self.clock = clock or SystemClock()
        # Called after a change that can move a balance (grant, reset, override): the notifier
        # re-evaluates thresholds without waiting for its next pass.
        self.on_change: list[Callable[[Entitlement], None]] = []
        self._features: dict[str, Feature] = {}

    # -- owners ---------------------------------------------------------------------------------------
    def customer(self, id_or_key: str) -> Customer:
        try:
            return self.customers.resolve(id_or_key)
        except CustomerNotFound as exc:
            raise OwnerNotFound(str(exc)) from None

    def customers_by_id(self, customer_id: str) -> Customer:
        """The customer owning an entitlement (deleted customers too)."""
        try:
            return self.customers.get(customer_id)
        except CustomerNotFound as exc:
            raise OwnerNotFound(str(exc)) from None

    def customer_of_subject(self, subject: str) -> Customer:
        """The live customer a subject's usage is attributed to (its key, or one of its subjectKeys)."""
        owner = self.customers.customer_of_subjects([subject]).get(subject)
        if owner is None:
            raise OwnerNotFound(
                f"no customer has the subject {subject!r}; create a customer with key {subject!r} or with "
                f'"usageAttribution": {{"subjectKeys": ["{subject}"]}} first (entitlements belong to customers)'
            )
        return self.customer(owner)

    # -- features -------------------------------------------------------------------------------------
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

    def feature(self, id_or_key: str) -> Feature:
        found = self.repository.feature(id_or_key)
        if found is None:
            raise FeatureNotFound(f"no feature has the id or key {id_or_key!r}")
        return found

    def features(self, meter_slug: str | None = None, include_archived: bool = False) -> list[Feature]:
        return self.repository.features(meter_slug, include_archived)

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

    def entitlement(self, entitlement_id: str) -> Entitlement:
        found = self.repository.entitlement(entitlement_id)
        if found is None:
            raise EntitlementNotFound(f"no entitlement has the id {entitlement_id!r}")
        return found

    def entitlement_of(self, customer: Customer, id_or_feature: str, include_deleted: bool = False) -> Entitlement:
        """The customer's entitlement with this id, or its live entitlement to the feature with this key."""
        found = self.repository.entitlement(id_or_feature)
        if found is not None and found.customer_id == customer.id and (include_deleted or found.deleted_at is None):
            return found
        live = self.repository.entitlements([customer.id], [id_or_feature])
        if live:
            return current_of(live, self.clock.now())
        raise EntitlementNotFound(
            f"customer {customer.key or customer.id!r} has no entitlement with id or feature key {id_or_feature!r}"
        )

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
        tz = self._zone(customer)
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

    # -- grants ---------------------------------------------------------------------------------------
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
        tz = self._zone(customer)
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

    # -- resets ---------------------------------------------------------------------------------------
    def reset(self, customer: Customer, id_or_feature: str, spec: ResetSpec) -> EntitlementValue:
        entitlement = self.entitlement_of(customer, id_or_feature)
        if entitlement.type != METERED:
            raise NotMetered(f"entitlement {entitlement.id} is {entitlement.type}; only metered entitlements reset")
        now = self.clock.now()
        at = floor_minute(spec.effective_at or now)
        if at > now:
            raise InvalidReset("effectiveAt must not be in the future")
        assert entitlement.measure_usage_from is not None
        if at <= entitlement.measure_usage_from:
            raise InvalidReset("effectiveAt must be after the entitlement's measureUsageFrom")
        begin, _end = self._period(entitlement, customer, now)
        if at <= begin:
            raise InvalidReset(
                f"effectiveAt must be after the current usage period's start ({begin.isoformat()}): "
                "a reset cannot rewrite a period that has already been reset"
            )
        preserve = entitlement.preserve_overage_at_reset if spec.preserve_overage is None else spec.preserve_overage
        self.repository.insert_reset(Reset(new_ulid(now), entitlement.id, at, spec.retain_anchor, preserve, now))
        self._changed(entitlement)
        return self.value_of(customer, entitlement, now)

    def resets(self, entitlement: Entitlement) -> list[Reset]:
        return self.repository.resets([entitlement.id])

    # -- value and access -----------------------------------------------------------------------------
    def value(self, customer: Customer, id_or_feature: str, at: datetime | None = None) -> EntitlementValue:
        when = at or self.clock.now()
        found, grants, resets = self.repository.ledger(customer.id, id_or_feature)
        if not found:  # not a feature key: an entitlement id
            entitlement = self.entitlement_of(customer, id_or_feature)
            return self.value_of(customer, entitlement, when)
        entitlement = current_of(found, when)
        return self._value(customer, entitlement, when, grants, resets, self._feature_of(entitlement))

    def access(self, customer: Customer, at: datetime | None = None) -> dict[str, EntitlementValue]:
        """Every live entitlement's value, by feature key (one query per metered entitlement)."""
        when = at or self.clock.now()
        found, grants, resets = self.repository.ledger(customer.id, None)
        out: dict[str, EntitlementValue] = {}
        for entitlement in found:
            if not entitlement.active_at(when):
                continue  # ended, or scheduled by a plan change
            mine = [g for g in grants if g.entitlement_id == entitlement.id]
            theirs = [r for r in resets if r.entitlement_id == entitlement.id]
            try:
                out[entitlement.feature_key] = self._value(
                    customer, entitlement, when, mine, theirs, self._feature_of(entitlement)
                )
            except DomainError as exc:
                # One broken entitlement (e.g. its feature's meter was deleted) does not take the
                # customer's other features down: it answers no access, and why.
                log.warning(
                    "entitlement value not computed",
                    extra={"entitlement_id": entitlement.id, "error": exc.detail},
                )
                out[entitlement.feature_key] = EntitlementValue(entitlement, when, has_access=False, error=exc.detail)
        return out

    def value_of(self, customer: Customer, entitlement: Entitlement, at: datetime) -> EntitlementValue:
        grants = self.repository.grants([entitlement.id]) if entitlement.type == METERED else []
        resets = self.repository.resets([entitlement.id]) if entitlement.type == METERED else []
        return self._value(customer, entitlement, at, grants, resets)

    def _value(
        self,
        customer: Customer,
        entitlement: Entitlement,
        at: datetime,
        grants: Sequence[Grant],
        resets: Sequence[Reset],
        feature: Feature | None = None,
    ) -> EntitlementValue:
        active = entitlement.active_at(at)
        if entitlement.type == BOOLEAN:
            return EntitlementValue(entitlement, at, has_access=active)
        if entitlement.type == STATIC:
            return EntitlementValue(entitlement, at, has_access=active, config=entitlement.config)
        result, begin, end = self._balance(customer, entitlement, ceil_minute(at), grants, resets, feature=feature)
        return EntitlementValue(
            entitlement,
            at,
            has_access=active and (result.balance > 0 or entitlement.is_soft_limit),
            balance=result.balance,
            usage=result.usage,
            overage=result.overage,
            total_available=result.total_available,
            period_start=begin,
            period_end=end,
        )

    def _balance(
        self,
        customer: Customer,
        entitlement: Entitlement,
        until: datetime,
        grants: Sequence[Grant],
        resets: Sequence[Reset],
        checkpoints: Sequence[datetime] = (),
        keep_segments: bool = False,
        feature: Feature | None = None,
    ) -> tuple[engine.Result, datetime, datetime]:
        assert entitlement.measure_usage_from is not None and entitlement.usage_period is not None
        feature = feature or self._feature_of(entitlement)
        tz = self._zone(customer)
        manual = [engine.ManualReset(r.at, r.retain_anchor, r.preserve_overage) for r in resets]
        start = entitlement.measure_usage_from
        timeline = engine.reset_timeline(
            start, until, entitlement.usage_period, manual, entitlement.preserve_overage_at_reset, tz
        )
        begin, end = engine.current_period(start, until, entitlement.usage_period, manual, tz)
        subjects = customer.subjects
        meter = feature.meter_slug
        filters = dict(feature.meter_group_by_filters)

        def usage(bounds: Sequence[datetime]) -> Sequence[Decimal]:
            if meter is None:
                return [Decimal(0)] * (len(bounds) - 1)
            return self.meters.usage_in_ranges(meter, bounds, subjects, filters)

        result = engine.run(
            [_terms(g) for g in grants],
            start,
            until,
            timeline,
            usage,
            tz,
            checkpoints=checkpoints,
            keep_segments=keep_segments,
        )
        return result, begin, end

    def _period(self, entitlement: Entitlement, customer: Customer, at: datetime) -> tuple[datetime, datetime]:
        assert entitlement.measure_usage_from is not None and entitlement.usage_period is not None
        manual = [engine.ManualReset(r.at, r.retain_anchor, r.preserve_overage) for r in self.resets(entitlement)]
        return engine.current_period(
            entitlement.measure_usage_from, at, entitlement.usage_period, manual, self._zone(customer)
        )

    def current_period(self, customer: Customer, entitlement: Entitlement, at: datetime) -> tuple[datetime, datetime]:
        return self._period(entitlement, customer, at)

    def period_with(
        self, customer: Customer, entitlement: Entitlement, at: datetime, resets: Sequence[Reset]
    ) -> tuple[datetime, datetime]:
        """The usage period containing `at`, given the entitlement's resets (read by the caller)."""
        assert entitlement.measure_usage_from is not None and entitlement.usage_period is not None
        manual = [engine.ManualReset(r.at, r.retain_anchor, r.preserve_overage) for r in resets]
        return engine.current_period(
            entitlement.measure_usage_from, at, entitlement.usage_period, manual, self._zone(customer)
        )

    # -- history --------------------------------------------------------------------------------------
    def history(
        self,
        customer: Customer,
        id_or_feature: str,
        from_: datetime | None,
        to: datetime | None,
        window_size: WindowSize,
        window_tz: str = "UTC",
    ) -> History:
        entitlement = self.entitlement_of(customer, id_or_feature, include_deleted=True)
        if entitlement.type != METERED:
            raise NotMetered(
                f"entitlement {entitlement.id} is {entitlement.type}; only metered entitlements have history"
            )
        if window_size not in HISTORY_SIZES:
            raise EntitlementError("windowSize must be MINUTE, HOUR or DAY")
        try:
            tz = zone(window_tz)
        except UnknownTimeZone as exc:
            raise EntitlementError(f"windowTimeZone: {exc}") from None
        assert entitlement.measure_usage_from is not None
        now = self.clock.now()
        end = ceil_minute(to or now)
        begin = from_ if from_ is not None else self._period(entitlement, customer, min(end, now))[0]
        begin = floor_minute(begin)
        if begin < entitlement.measure_usage_from:
            raise EntitlementError(
                "from must not be before the entitlement's measureUsageFrom "
                f"({entitlement.measure_usage_from.isoformat()})"
            )
        if begin >= end:
            raise EntitlementError("from must be before to")
        bounds = [begin]
        current = window_start(window_size, begin, tz)
        while True:
            current = next_window_start(window_size, current, tz)
            if current >= end:
                break
            if current > begin:
                bounds.append(current)
            if len(bounds) > MAX_HISTORY_WINDOWS:
                raise EntitlementError(
                    f"the history spans more than {MAX_HISTORY_WINDOWS} {window_size.value} windows; "
                    "narrow from/to or use a larger windowSize"
                )
        bounds.append(end)
        grants = self.repository.grants([entitlement.id])
        resets = self.repository.resets([entitlement.id])
        result, _, _ = self._balance(customer, entitlement, end, grants, resets, bounds, keep_segments=True)
        windows: list[HistoryWindow] = []
        for left, right in itertools.pairwise(bounds):
            used = sum((s.usage for s in result.segments if left <= s.start < right), Decimal(0))
            point = result.checkpoints[left]
            windows.append(HistoryWindow(left, right, used, point.balance, point.overage))
        segments = [
            BurnSegment(
                start=s.start,
                end=s.end,
                usage=s.usage,
                overage=s.overage,
                balance_at_start=sum(s.balances_at_start.values(), Decimal(0)),
                balances_at_start=s.balances_at_start,
                balance_at_end=sum(s.balances_at_end.values(), Decimal(0)),
                balances_at_end=s.balances_at_end,
                grant_usages=s.grant_usages,
                after_reset=s.after_reset,
            )
            for s in _merge_segments(result.segments)
            if s.end > begin and s.start < end
        ]
        return History(windows, segments)

    # -- internals ------------------------------------------------------------------------------------
    def _meter(self, slug: str, error: type[EntitlementError]) -> Meter:
        try:
            return self.meters.get(slug)
        except DomainError:
            raise error(f"no meter has the slug {slug!r}") from None

    def _zone(self, customer: Customer) -> ZoneInfo:
        try:
            return zone(customer.timezone or "UTC")
        except UnknownTimeZone:
            return zone("UTC")

    def _feature_of(self, entitlement: Entitlement) -> Feature:
        """An entitlement's feature. What a balance reads of it (meter, group-by filters) never
        changes after creation (features are archived, not edited), so it is kept once read."""
        cached = self._features.get(entitlement.feature_id)
        if cached is None:
            cached = self._features[entitlement.feature_id] = self.feature(entitlement.feature_id)
        return cached

    def _changed(self, entitlement: Entitlement) -> None:
        for listener in self.on_change:
            try:
                listener(entitlement)
            except Exception:
                log.exception("entitlement change listener failed", extra={"entitlement_id": entitlement.id})


def current_of(entitlements: Sequence[Entitlement], at: datetime) -> Entitlement:
    """Of one customer's live entitlements to a feature (a plan change can schedule the next one),
    the one active at `at`, else the one that starts next, else the latest."""
    active = [e for e in entitlements if e.active_at(at)]
    if active:
        return active[0]
    upcoming = sorted((e for e in entitlements if e.active_from > at), key=lambda e: e.active_from)
    if upcoming:
        return upcoming[0]
    return max(entitlements, key=lambda e: e.active_from)


def _terms(grant: Grant) -> engine.GrantTerms:
    return engine.GrantTerms(
        id=grant.id,
        amount=grant.amount,
        priority=grant.priority,
        effective_at=grant.effective_at,
        created_at=grant.created_at,
        expires_at=grant.expires_at,
        voided_at=grant.voided_at,
        min_rollover=grant.min_rollover,
        max_rollover=grant.max_rollover,
        recurrence=grant.recurrence,
    )


def _merge_segments(segments: Sequence[engine.Segment]) -> list[engine.Segment]:
    """History checkpoints split segments at window edges; join the pieces nothing else separates."""
    merged: list[engine.Segment] = []
    for s in segments:
        last = merged[-1] if merged else None
        if (
            last is not None
            and not s.after_reset
            and last.end == s.start
            and set(last.balances_at_end) == set(s.balances_at_start)
            and _same_order(last, s)
        ):
            usages = dict(last.grant_usages)
            for grant_id, burnt in s.grant_usages.items():
                usages[grant_id] = usages.get(grant_id, Decimal(0)) + burnt
            merged[-1] = engine.Segment(
                last.start,
                s.end,
                last.usage + s.usage,
                last.overage_at_start,
                s.overage,
                last.balances_at_start,
                s.balances_at_end,
                usages,
                last.after_reset,
            )
        else:
            merged.append(s)
    return merged


def _same_order(a: engine.Segment, b: engine.Segment) -> bool:
    # A recurrence refills a grant: its balance at b's start exceeds a's end.
    return all(b.balances_at_start.get(k, Decimal(0)) <= v for k, v in a.balances_at_end.items())


def parse_interval(text: str) -> Interval:
    try:
        return Interval.parse(text)
    except ValueError as exc:
        raise EntitlementError(str(exc)) from None
