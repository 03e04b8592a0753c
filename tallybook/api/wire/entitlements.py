"""Features, entitlements and grants in OpenMeter's shapes (v1 subject paths, v1 and v2 customer paths).

Bodies are one object per resource with the fields of every entitlement type (`type` tells which
apply) rather than OpenMeter's `oneOf`: the same JSON is accepted, and a field that does not fit
the type is refused with a problem saying so. Answers are rendered by `render_*` from the domain
objects; the `Wire` models below describe them in the OpenAPI document. Also here: OpenMeter's
listing shapes (array or page). How a body becomes the domain's spec: entitlement_specs.py.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tallybook.api.wire.base import DATE_TIME, Period, StringMap, Wire
from tallybook.clock import format_rfc3339
from tallybook.entitlements import model
from tallybook.entitlements.recurrence import Recurrence
from tallybook.ingest.limits import MAX_PAGE_SIZE

KEY = r"^[a-z0-9]+(?:_[a-z0-9]+)*$"
Amount = Decimal


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FeatureBody(_Body):
    key: str = Field(min_length=1, max_length=64, pattern=KEY)
    name: str = Field(min_length=1, max_length=256)
    meterSlug: str | None = Field(None, min_length=1, max_length=64, pattern=KEY)
    meterGroupByFilters: dict[str, str] | None = None
    metadata: StringMap | None = None


class RecurringPeriodBody(_Body):
    interval: str = Field(description="DAY, WEEK, MONTH, YEAR or an ISO 8601 duration (P1D, P2W, P1M, PT6H)")
    anchor: str | None = Field(
        None,
        description="an instant the periods are aligned to (RFC 3339); default: measureUsageFrom",
        json_schema_extra=DATE_TIME,
    )


class IssueBody(_Body):
    amount: Amount = Field(ge=0)
    priority: int | None = Field(None, ge=1, le=255)


class ExpirationBody(_Body):
    duration: Literal["HOUR", "DAY", "WEEK", "MONTH", "YEAR"]
    count: int = Field(ge=1, le=1000)


class GrantBody(_Body):
    amount: Amount = Field(ge=0)
    priority: int = Field(1, ge=1, le=255)
    effectiveAt: str = Field(json_schema_extra=DATE_TIME)
    expiration: ExpirationBody | None = None
    maxRolloverAmount: Amount = Field(Decimal(0), ge=0)
    minRolloverAmount: Amount = Field(Decimal(0), ge=0)
    metadata: StringMap | None = None
    annotations: dict[str, Any] | None = None
    recurrence: RecurringPeriodBody | None = None


class EntitlementBody(_Body):
    """Create (or override) an entitlement: `metered`, `boolean` or `static`."""

    type: Literal["metered", "boolean", "static"]
    featureKey: str | None = Field(None, min_length=1, max_length=64)
    featureId: str | None = None
    metadata: StringMap | None = None
    usagePeriod: RecurringPeriodBody | None = None
    measureUsageFrom: str | None = Field(
        None, description='RFC 3339 date-time, "NOW" or "CURRENT_PERIOD_START" (default: now)'
    )
    isSoftLimit: bool = False
    isUnlimited: bool = Field(False, description="ignored, as in OpenMeter (use isSoftLimit)")
    issueAfterReset: Amount | None = Field(None, ge=0)
    issueAfterResetPriority: int | None = Field(None, ge=1, le=255)
    issue: IssueBody | None = None
    preserveOverageAtReset: bool = False
    config: str | None = Field(None, description="static: a JSON-parsable string")
    grants: list[GrantBody] | None = Field(None, description="v2: grants created with the entitlement")


class ResetBody(_Body):
    effectiveAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    retainAnchor: bool = False
    preserveOverage: bool | None = None


# -- answers ---------------------------------------------------------------------------------------
class Feature(Wire):
    id: str
    key: str
    name: str
    meterSlug: str | None = None
    meterGroupByFilters: dict[str, str] | None = None
    metadata: StringMap | None = None
    createdAt: str = Field(json_schema_extra=DATE_TIME)
    updatedAt: str = Field(json_schema_extra=DATE_TIME)
    archivedAt: str | None = Field(None, json_schema_extra=DATE_TIME)


class FeaturePage(Wire):
    totalCount: int
    page: int
    pageSize: int
    items: list[Feature]


class RecurringPeriod(Wire):
    interval: str
    intervalISO: str
    anchor: str = Field(json_schema_extra=DATE_TIME)


class Entitlement(Wire):
    """Any entitlement; the metered fields are there for `metered`, `config` for `static`."""

    id: str
    type: Literal["metered", "boolean", "static"]
    featureKey: str
    featureId: str
    subjectKey: str | None = Field(None, description="v1 answers")
    customerId: str | None = Field(None, description="v2 answers")
    customerKey: str | None = Field(None, description="v2 answers")
    metadata: StringMap | None = None
    annotations: dict[str, Any] | None = None
    activeFrom: str = Field(json_schema_extra=DATE_TIME)
    activeTo: str | None = Field(None, json_schema_extra=DATE_TIME)
    createdAt: str = Field(json_schema_extra=DATE_TIME)
    updatedAt: str = Field(json_schema_extra=DATE_TIME)
    deletedAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    isSoftLimit: bool | None = None
    isUnlimited: bool | None = None
    issueAfterReset: float | None = None
    issueAfterResetPriority: int | None = None
    preserveOverageAtReset: bool | None = None
    measureUsageFrom: str | None = Field(None, json_schema_extra=DATE_TIME)
    lastReset: str | None = Field(None, json_schema_extra=DATE_TIME)
    currentUsagePeriod: Period | None = None
    usagePeriod: RecurringPeriod | None = None
    config: str | None = None


class EntitlementPage(Wire):
    totalCount: int
    page: int
    pageSize: int
    items: list[Entitlement]


class Grant(Wire):
    id: str
    entitlementId: str
    amount: float
    priority: int
    effectiveAt: str = Field(json_schema_extra=DATE_TIME)
    expiration: dict[str, Any] | None = None
    expiresAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    maxRolloverAmount: float
    minRolloverAmount: float
    recurrence: RecurringPeriod | None = None
    nextRecurrence: str | None = Field(None, json_schema_extra=DATE_TIME)
    metadata: StringMap | None = None
    annotations: dict[str, Any] | None = None
    createdAt: str = Field(json_schema_extra=DATE_TIME)
    updatedAt: str = Field(json_schema_extra=DATE_TIME)
    voidedAt: str | None = Field(None, json_schema_extra=DATE_TIME)
    deletedAt: str | None = Field(None, json_schema_extra=DATE_TIME)


class GrantPage(Wire):
    totalCount: int
    page: int
    pageSize: int
    items: list[Grant]


class EntitlementValue(Wire):
    hasAccess: bool
    balance: float | None = None
    usage: float | None = None
    overage: float | None = None
    totalAvailableGrantAmount: float | None = None
    config: str | None = None


class AccessValue(EntitlementValue):
    entitlementId: str
    type: str
    error: str | None = Field(None, description="why this entitlement's value could not be computed (no access)")


class CustomerAccess(Wire):
    entitlements: dict[str, AccessValue]


class PortalEntitlement(EntitlementValue):
    featureKey: str
    type: str
    currentUsagePeriod: Period | None = None
    grants: list[dict[str, Any]] | None = Field(
        None, description="metered: id, amount, priority, effectiveAt, expiresAt"
    )


class PortalEntitlements(Wire):
    entitlements: list[PortalEntitlement]


class BalanceHistoryWindow(Wire):
    period: Period
    usage: float
    balanceAtStart: float


class GrantUsageRecord(Wire):
    grantId: str
    usage: float


class BurnDownSegment(Wire):
    period: Period
    usage: float
    overage: float
    balanceAtStart: float
    grantBalancesAtStart: dict[str, float]
    balanceAtEnd: float
    grantBalancesAtEnd: dict[str, float]
    grantUsages: list[GrantUsageRecord]


class WindowedBalanceHistory(Wire):
    windowedHistory: list[BalanceHistoryWindow]
    burndownHistory: list[BurnDownSegment]


# -- rendering -------------------------------------------------------------------------------------
def _time(value: datetime | None) -> str | None:
    return None if value is None else format_rfc3339(value)


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def render_feature(f: model.Feature) -> dict[str, Any]:
    return _compact(
        {
            "id": f.id,
            "key": f.key,
            "name": f.name,
            "meterSlug": f.meter_slug,
            "meterGroupByFilters": f.meter_group_by_filters or None,
            "metadata": f.metadata,
            "createdAt": _time(f.created_at),
            "updatedAt": _time(f.updated_at),
            "archivedAt": _time(f.archived_at),
        }
    )


def render_recurrence(r: Recurrence) -> dict[str, Any]:
    return {"interval": r.interval.name, "intervalISO": r.interval.iso, "anchor": format_rfc3339(r.anchor)}


def render_entitlement(
    e: model.Entitlement,
    period: tuple[datetime, datetime] | None,
    customer_key: str | None = None,
    v2: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": e.id,
        "type": e.type,
        "featureKey": e.feature_key,
        "featureId": e.feature_id,
        "metadata": e.metadata,
        "annotations": e.annotations,
        "activeFrom": _time(e.active_from),
        "activeTo": _time(e.active_to),
        "createdAt": _time(e.created_at),
        "updatedAt": _time(e.updated_at),
        "deletedAt": _time(e.deleted_at),
    }
    if v2:
        body["customerId"] = e.customer_id
        body["customerKey"] = customer_key
    else:
        body["subjectKey"] = e.subject_key
    if e.type == model.STATIC:
        body["config"] = e.config
    if e.type == model.METERED and e.usage_period is not None:
        body.update(
            {
                "isSoftLimit": e.is_soft_limit,
                "isUnlimited": False,
                "preserveOverageAtReset": e.preserve_overage_at_reset,
                "measureUsageFrom": _time(e.measure_usage_from),
                "usagePeriod": render_recurrence(e.usage_period),
            }
        )
        if e.issue_after_reset is not None:
            body["issueAfterReset"] = e.issue_after_reset
            body["issueAfterResetPriority"] = e.issue_after_reset_priority or model.DEFAULT_ISSUE_PRIORITY
            if v2:
                body["issue"] = {
                    "amount": e.issue_after_reset,
                    "priority": e.issue_after_reset_priority or model.DEFAULT_ISSUE_PRIORITY,
                }
        if period is not None:
            body["lastReset"] = _time(period[0])
            body["currentUsagePeriod"] = {"from": _time(period[0]), "to": _time(period[1])}
    return _compact(body)


def render_grant(g: model.Grant, now: datetime | None = None, tz: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": g.id,
        "entitlementId": g.entitlement_id,
        "amount": g.amount,
        "priority": g.priority,
        "effectiveAt": _time(g.effective_at),
        "expiration": None
        if g.expiration is None
        else {"duration": g.expiration.duration, "count": g.expiration.count},
        "expiresAt": _time(g.expires_at),
        "maxRolloverAmount": g.max_rollover,
        "minRolloverAmount": g.min_rollover,
        "metadata": g.metadata,
        "annotations": g.annotations,
        "createdAt": _time(g.created_at),
        "updatedAt": _time(g.updated_at),
        "voidedAt": _time(g.voided_at),
        "deletedAt": _time(g.deleted_at),
    }
    if g.recurrence is not None:
        body["recurrence"] = render_recurrence(g.recurrence)
        if now is not None and tz is not None:
            body["nextRecurrence"] = _time(g.recurrence.next_after(max(now, g.effective_at), tz))
    return _compact(body)


def render_value(v: model.EntitlementValue) -> dict[str, Any]:
    return _compact(
        {
            "hasAccess": v.has_access,
            "balance": v.balance,
            "usage": v.usage,
            "overage": v.overage,
            "totalAvailableGrantAmount": v.total_available,
            "config": v.config,
            "error": v.error,
        }
    )


def render_history(h: model.History) -> dict[str, Any]:
    return {
        "windowedHistory": [
            {
                "period": {"from": _time(w.start), "to": _time(w.end)},
                "usage": w.usage,
                "balanceAtStart": w.balance_at_start,
            }
            for w in h.windows
        ],
        "burndownHistory": [
            {
                "period": {"from": _time(s.start), "to": _time(s.end)},
                "usage": s.usage,
                "overage": s.overage,
                "balanceAtStart": s.balance_at_start,
                "grantBalancesAtStart": s.balances_at_start,
                "balanceAtEnd": s.balance_at_end,
                "grantBalancesAtEnd": s.balances_at_end,
                "grantUsages": [{"grantId": k, "usage": v} for k, v in s.grant_usages.items()],
            }
            for s in h.segments
        ],
    }


def render_view(view: model.EntitlementView, v2: bool) -> dict[str, Any]:
    """An entitlement's answer: v1 names its subject, v2 its customer; a metered one its current period."""
    return render_entitlement(view.entitlement, view.current_period, view.customer.key, v2=v2)


def render_grant_view(view: model.GrantView) -> dict[str, Any]:
    return render_grant(view.grant, view.at, view.zone)


def render_access(values: dict[str, model.EntitlementValue]) -> dict[str, Any]:
    return {
        "entitlements": {
            key: {**render_value(v), "entitlementId": v.entitlement.id, "type": v.entitlement.type}
            for key, v in values.items()
        }
    }


# -- listings ----------------------------------------------------------------------------------------
def listing(items: list[Any], page: int | None, page_size: int | None, offset: int | None, limit: int | None) -> Any:
    """OpenMeter's v1 listings: a plain array without paging parameters (cut by offset/limit if
    given), a page object with page/pageSize."""
    if page is None and page_size is None:
        if offset is not None or limit is not None:
            start = offset or 0
            return items[start : start + (limit or MAX_PAGE_SIZE)]
        return items
    return page_of(items, page, page_size)


def page_of(items: list[Any], page: int | None, page_size: int | None) -> dict[str, Any]:
    """A page object (v2 listings always answer one): page 1 of 100 by default."""
    page, page_size = page or 1, page_size or 100
    start = (page - 1) * page_size
    return {"totalCount": len(items), "page": page, "pageSize": page_size, "items": items[start : start + page_size]}


def grant_page(
    items: list[Any], page: int | None, page_size: int | None, offset: int | None, limit: int | None
) -> dict[str, Any]:
    """v2 grants: a page object, also for OpenMeter's deprecated limit/offset (turned into a page)."""
    if page is None and page_size is None and (offset is not None or limit is not None):
        start, size = offset or 0, limit or 100
        return {
            "totalCount": len(items),
            "page": start // size + 1,
            "pageSize": size,
            "items": items[start : start + size],
        }
    return page_of(items, page, page_size)
