"""How entitlement request bodies (api/wire/entitlements.py) become the domain's specs: a date-time
that does not parse, an interval that is not one, or a field the entitlement's type does not take
is a 400 problem naming the field."""

from __future__ import annotations

from datetime import datetime

from tallybook.api.problems import Problem
from tallybook.api.wire.entitlements import EntitlementBody, FeatureBody, GrantBody, RecurringPeriodBody, ResetBody
from tallybook.entitlements import model
from tallybook.entitlements.core import parse_interval
from tallybook.ingest.events import parse_time


def instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError) as exc:
        raise Problem(400, "invalid-parameters", f"{name}: {exc}") from None


def feature_spec(body: FeatureBody) -> model.FeatureSpec:
    return model.FeatureSpec(body.key, body.name, body.meterSlug, dict(body.meterGroupByFilters or {}), body.metadata)


def period_spec(body: RecurringPeriodBody | None, name: str) -> model.UsagePeriodSpec | None:
    if body is None:
        return None
    try:
        interval = parse_interval(body.interval)
    except model.EntitlementError as exc:
        raise Problem(400, "invalid-parameters", f"{name}.{exc.detail}") from None
    return model.UsagePeriodSpec(interval, instant(body.anchor, f"{name}.anchor"))


def entitlement_spec(body: EntitlementBody) -> model.EntitlementSpec:
    if body.type != model.METERED:
        for name, value in (
            ("issueAfterReset", body.issueAfterReset),
            ("issue", body.issue),
            ("measureUsageFrom", body.measureUsageFrom),
            ("grants", body.grants),
        ):
            if value is not None:
                raise Problem(400, "invalid-entitlement", f"{name} applies to metered entitlements only")
    if body.type != model.STATIC and body.config is not None:
        raise Problem(400, "invalid-entitlement", "config applies to static entitlements only")
    measure: datetime | str | None = body.measureUsageFrom
    if isinstance(measure, str) and measure not in ("NOW", "CURRENT_PERIOD_START"):
        measure = instant(measure, "measureUsageFrom")
    issue, priority = body.issueAfterReset, body.issueAfterResetPriority
    if body.issue is not None:
        issue, priority = body.issue.amount, body.issue.priority or priority
    return model.EntitlementSpec(
        type=body.type,
        feature_key=body.featureKey,
        feature_id=body.featureId,
        metadata=body.metadata,
        usage_period=period_spec(body.usagePeriod, "usagePeriod"),
        measure_usage_from=measure,
        is_soft_limit=body.isSoftLimit,
        issue_after_reset=issue,
        issue_after_reset_priority=priority,
        preserve_overage_at_reset=body.preserveOverageAtReset,
        config=body.config,
    )


def grant_spec(body: GrantBody) -> model.GrantSpec:
    effective = instant(body.effectiveAt, "effectiveAt")
    assert effective is not None
    return model.GrantSpec(
        amount=body.amount,
        effective_at=effective,
        priority=body.priority,
        expiration=None
        if body.expiration is None
        else model.Expiration(body.expiration.duration, body.expiration.count),
        min_rollover=body.minRolloverAmount,
        max_rollover=body.maxRolloverAmount,
        recurrence=period_spec(body.recurrence, "recurrence"),
        metadata=body.metadata,
        annotations=body.annotations,
    )


def reset_spec(body: ResetBody | None) -> model.ResetSpec:
    body = body or ResetBody()
    return model.ResetSpec(instant(body.effectiveAt, "effectiveAt"), body.retainAnchor, body.preserveOverage)
