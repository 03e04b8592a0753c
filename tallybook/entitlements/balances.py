"""Balances: resets, `value`, `access` and `history`, computed when asked from the meter projection
(one bucketed query per metered entitlement) and the grant ledger, never from a stored balance
that could go stale: a late event or a void changes the next answer. Times are at OpenMeter's
one-minute resolution: a value at instant `t` counts usage up to the end of `t`'s minute.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from tallybook.customers.model import Customer
from tallybook.entitlements import engine
from tallybook.entitlements.core import ServiceCore, current_of
from tallybook.entitlements.model import (
    BOOLEAN,
    METERED,
    STATIC,
    BurnSegment,
    Entitlement,
    EntitlementError,
    EntitlementValue,
    Feature,
    Grant,
    History,
    HistoryWindow,
    InvalidReset,
    NotMetered,
    Reset,
    ResetSpec,
)
from tallybook.entitlements.recurrence import ceil_minute, floor_minute
from tallybook.errors import DomainError
from tallybook.ids import new_ulid
from tallybook.meters.windows import UnknownTimeZone, WindowSize, next_window_start, window_start, zone

log = logging.getLogger(__name__)

MAX_HISTORY_WINDOWS = 10_000
HISTORY_SIZES = (WindowSize.MINUTE, WindowSize.HOUR, WindowSize.DAY)


class BalanceOperations(ServiceCore):
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
        tz = self.zone_of(customer)
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
            entitlement.measure_usage_from, at, entitlement.usage_period, manual, self.zone_of(customer)
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
            entitlement.measure_usage_from, at, entitlement.usage_period, manual, self.zone_of(customer)
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
