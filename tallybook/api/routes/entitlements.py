"""Entitlements and grants in OpenMeter's paths.

- v1 by subject: /api/v1/subjects/{subject}/entitlements/... (the subject's customer owns them)
- v1 by customer: /api/v1/customers/{customer}/access and .../entitlements/{featureKey}/value
- v2 by customer: /api/v2/customers/{customer}/entitlements/...
- listings: /api/v1/entitlements, /api/v1/grants (and DELETE /api/v1/grants/{id} voids a grant),
  /api/v2/entitlements, /api/v2/grants

Reads take a read key, changes an admin key. Each route parses, calls one service method, renders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import responses
from tallybook.api.params import Instant
from tallybook.api.problems import Problem
from tallybook.api.render import json_response
from tallybook.api.security import require
from tallybook.api.wire.entitlements import (
    CustomerAccess,
    Entitlement,
    EntitlementBody,
    EntitlementPage,
    EntitlementValue,
    Grant,
    GrantBody,
    GrantPage,
    ResetBody,
    WindowedBalanceHistory,
    render_entitlement,
    render_grant,
    render_history,
    render_value,
)
from tallybook.customers.model import Customer
from tallybook.entitlements import model
from tallybook.entitlements.model import EntitlementError
from tallybook.entitlements.service import EntitlementService, parse_interval
from tallybook.ingest.events import parse_time
from tallybook.ingest.limits import MAX_PAGE, MAX_PAGE_SIZE
from tallybook.meters.windows import WindowSize
from tallybook.store.base import ApiKeyRecord

router = APIRouter(tags=["entitlements"])

Admin = Annotated[ApiKeyRecord, Depends(require("admin"))]
Reader = Annotated[ApiKeyRecord, Depends(require("read"))]
Page = Annotated[int | None, Query(ge=1, le=MAX_PAGE)]
PageSize = Annotated[int | None, Query(ge=1, le=MAX_PAGE_SIZE)]
Offset = Annotated[int | None, Query(ge=0, le=MAX_PAGE * MAX_PAGE_SIZE)]
Limit = Annotated[int | None, Query(ge=1, le=MAX_PAGE_SIZE)]
Order = Annotated[Literal["ASC", "DESC"], Query()]
Keys = Annotated[list[str] | None, Query()]
HistorySize = Annotated[Literal["MINUTE", "HOUR", "DAY"], Query()]

V1_SUBJECT = "/api/v1/subjects/{subjectIdOrKey}/entitlements"
V2_CUSTOMER = "/api/v2/customers/{customerIdOrKey}/entitlements"


def _service(request: Request) -> EntitlementService:
    return runtime_of(request).entitlements


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args)
    except OverflowError:
        # Calendar arithmetic past year 9999 (a far `time`, a long expiration or recurrence).
        raise Problem(400, "invalid-parameters", "a date is out of range (past year 9999); use a nearer one") from None


def _instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError) as exc:
        raise Problem(400, "invalid-parameters", f"{name}: {exc}") from None


def _period_spec(body: Any, name: str) -> model.UsagePeriodSpec | None:
    if body is None:
        return None
    try:
        interval = parse_interval(body.interval)
    except EntitlementError as exc:
        raise Problem(400, "invalid-parameters", f"{name}.{exc.detail}") from None
    return model.UsagePeriodSpec(interval, _instant(body.anchor, f"{name}.anchor"))


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
        measure = _instant(measure, "measureUsageFrom")
    issue, priority = body.issueAfterReset, body.issueAfterResetPriority
    if body.issue is not None:
        issue, priority = body.issue.amount, body.issue.priority or priority
    return model.EntitlementSpec(
        type=body.type,
        feature_key=body.featureKey,
        feature_id=body.featureId,
        metadata=body.metadata,
        usage_period=_period_spec(body.usagePeriod, "usagePeriod"),
        measure_usage_from=measure,
        is_soft_limit=body.isSoftLimit,
        issue_after_reset=issue,
        issue_after_reset_priority=priority,
        preserve_overage_at_reset=body.preserveOverageAtReset,
        config=body.config,
    )


def grant_spec(body: GrantBody) -> model.GrantSpec:
    effective = _instant(body.effectiveAt, "effectiveAt")
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
        recurrence=_period_spec(body.recurrence, "recurrence"),
        metadata=body.metadata,
        annotations=body.annotations,
    )


# -- rendering with the period (metered) ------------------------------------------------------------
def _entitlement_json(
    service: EntitlementService, customer: Customer, e: model.Entitlement, v2: bool
) -> dict[str, Any]:
    period = None
    if e.type == model.METERED:
        period = service.current_period(customer, e, service.clock.now())
    return render_entitlement(e, period, customer.key, v2=v2)


def _grant_json(service: EntitlementService, customer: Customer | None, g: model.Grant) -> dict[str, Any]:
    tz = service.zone_of(customer) if customer is not None else None
    return render_grant(g, service.clock.now(), tz)


def _paged(items: list[Any], page: int | None, page_size: int | None, offset: int | None, limit: int | None) -> Any:
    """OpenMeter's listings: a plain array without paging parameters, a page object with them."""
    if page is None and page_size is None:
        if offset is not None or limit is not None:
            start = offset or 0
            return items[start : start + (limit or MAX_PAGE_SIZE)]
        return items
    page, page_size = page or 1, page_size or 100
    start = (page - 1) * page_size
    return {"totalCount": len(items), "page": page, "pageSize": page_size, "items": items[start : start + page_size]}


# -- shared operations (subject and customer paths) -------------------------------------------------
def _create(service: EntitlementService, customer: Customer, body: EntitlementBody, v2: bool) -> dict[str, Any]:
    entitlement = service.create_entitlement(customer, entitlement_spec(body))
    for grant in body.grants or ():
        service.create_grant(customer, entitlement.id, grant_spec(grant))
    return _entitlement_json(service, customer, entitlement, v2)


def _override(
    service: EntitlementService, customer: Customer, ref: str, body: EntitlementBody, v2: bool
) -> dict[str, Any]:
    entitlement = service.override(customer, ref, entitlement_spec(body))
    for grant in body.grants or ():
        service.create_grant(customer, entitlement.id, grant_spec(grant))
    return _entitlement_json(service, customer, entitlement, v2)


def _history(
    service: EntitlementService,
    customer: Customer,
    ref: str,
    from_: datetime | None,
    to: datetime | None,
    size: str,
    tz: str,
) -> dict[str, Any]:
    return render_history(service.history(customer, ref, from_, to, WindowSize(size), tz))


def _reset(service: EntitlementService, customer: Customer, ref: str, body: ResetBody | None) -> None:
    body = body or ResetBody()
    spec = model.ResetSpec(_instant(body.effectiveAt, "effectiveAt"), body.retainAnchor, body.preserveOverage)
    service.reset(customer, ref, spec)


# -- v1: by subject -----------------------------------------------------------------------------------
@router.post(V1_SUBJECT, status_code=201, responses=responses(Entitlement, 404, 409, status=201))
async def create_subject_entitlement(
    request: Request, subjectIdOrKey: str, body: EntitlementBody, _k: Admin
) -> Response:
    """Entitle the subject's customer to a feature (metered, boolean or static)."""
    service = _service(request)

    def run() -> dict[str, Any]:
        return _create(service, service.customer_of_subject(subjectIdOrKey), body, v2=False)

    return json_response(await _call(run), 201)


@router.get(V1_SUBJECT, responses=responses(list[Entitlement], 404))
async def list_subject_entitlements(
    request: Request, subjectIdOrKey: str, _k: Reader, includeDeleted: bool = False
) -> Response:
    service = _service(request)

    def run() -> list[dict[str, Any]]:
        customer = service.customer_of_subject(subjectIdOrKey)
        found = service.entitlements([customer.id], include_deleted=includeDeleted)
        return [_entitlement_json(service, customer, e, False) for e in found]

    return json_response(await _call(run))


@router.get(V1_SUBJECT + "/{entitlementId}", responses=responses(Entitlement, 404))
async def get_subject_entitlement(request: Request, subjectIdOrKey: str, entitlementId: str, _k: Reader) -> Response:
    service = _service(request)

    def run() -> dict[str, Any]:
        customer = service.customer_of_subject(subjectIdOrKey)
        return _entitlement_json(service, customer, service.entitlement_of(customer, entitlementId, True), False)

    return json_response(await _call(run))


@router.delete(
    V1_SUBJECT + "/{entitlementId}", status_code=204, response_class=Response, responses=responses(None, 404)
)
async def delete_subject_entitlement(request: Request, subjectIdOrKey: str, entitlementId: str, _k: Admin) -> Response:
    service = _service(request)
    await _call(lambda: service.delete_entitlement(service.customer_of_subject(subjectIdOrKey), entitlementId))
    return Response(status_code=204)


@router.put(
    V1_SUBJECT + "/{entitlementIdOrFeatureKey}/override",
    status_code=201,
    responses=responses(Entitlement, 404, 409, status=201),
)
async def override_subject_entitlement(
    request: Request, subjectIdOrKey: str, entitlementIdOrFeatureKey: str, body: EntitlementBody, _k: Admin
) -> Response:
    """Replace the entitlement with a new one (the old one ends now; its grants stay with it)."""
    service = _service(request)

    def run() -> dict[str, Any]:
        customer = service.customer_of_subject(subjectIdOrKey)
        return _override(service, customer, entitlementIdOrFeatureKey, body, False)

    return json_response(await _call(run), 201)


@router.get(V1_SUBJECT + "/{entitlementIdOrFeatureKey}/value", responses=responses(EntitlementValue, 404))
async def subject_entitlement_value(
    request: Request, subjectIdOrKey: str, entitlementIdOrFeatureKey: str, _k: Reader, time: Instant | None = None
) -> Response:
    service = _service(request)

    def run() -> dict[str, Any]:
        customer = service.customer_of_subject(subjectIdOrKey)
        return render_value(service.value(customer, entitlementIdOrFeatureKey, time))

    return json_response(await _call(run))


@router.get(V1_SUBJECT + "/{entitlementId}/history", responses=responses(WindowedBalanceHistory, 404))
async def subject_entitlement_history(
    request: Request,
    subjectIdOrKey: str,
    entitlementId: str,
    _k: Reader,
    windowSize: HistorySize,
    from_: Annotated[Instant | None, Query(alias="from")] = None,
    to: Instant | None = None,
    windowTimeZone: str = "UTC",
) -> Response:
    """Usage and balance per window, and the grant burn-down segments, over [from, to)."""
    service = _service(request)

    def run() -> dict[str, Any]:
        customer = service.customer_of_subject(subjectIdOrKey)
        return _history(service, customer, entitlementId, from_, to, windowSize, windowTimeZone)

    return json_response(await _call(run))


@router.post(
    V1_SUBJECT + "/{entitlementId}/reset", status_code=204, response_class=Response, responses=responses(None, 404)
)
async def reset_subject_entitlement(
    request: Request, subjectIdOrKey: str, entitlementId: str, _k: Admin, body: ResetBody | None = None
) -> Response:
    """Start a new usage period now (or at `effectiveAt`): grants roll over, usage starts from zero."""
    service = _service(request)
    await _call(lambda: _reset(service, service.customer_of_subject(subjectIdOrKey), entitlementId, body))
    return Response(status_code=204)


@router.get(V1_SUBJECT + "/{entitlementIdOrFeatureKey}/grants", responses=responses(list[Grant], 404))
async def list_subject_grants(
    request: Request,
    subjectIdOrKey: str,
    entitlementIdOrFeatureKey: str,
    _k: Reader,
    includeDeleted: bool = False,
    orderBy: Literal["id", "createdAt", "updatedAt"] = "createdAt",
) -> Response:
    service = _service(request)

    def run() -> list[dict[str, Any]]:
        customer = service.customer_of_subject(subjectIdOrKey)
        grants = service.grants_of(customer, entitlementIdOrFeatureKey, includeDeleted)
        grants.sort(key=lambda g: (g.id,) if orderBy == "id" else (getattr(g, _ORDER[orderBy]), g.id))
        return [_grant_json(service, customer, g) for g in grants]

    return json_response(await _call(run))


@router.post(
    V1_SUBJECT + "/{entitlementIdOrFeatureKey}/grants", status_code=201, responses=responses(Grant, 404, status=201)
)
async def create_subject_grant(
    request: Request, subjectIdOrKey: str, entitlementIdOrFeatureKey: str, body: GrantBody, _k: Admin
) -> Response:
    """Grant usage to a metered entitlement: burnt by priority, then earliest expiry."""
    service = _service(request)

    def run() -> dict[str, Any]:
        customer = service.customer_of_subject(subjectIdOrKey)
        return _grant_json(
            service, customer, service.create_grant(customer, entitlementIdOrFeatureKey, grant_spec(body))
        )

    return json_response(await _call(run), 201)


_ORDER = {"createdAt": "created_at", "updatedAt": "updated_at"}


# -- v1: by customer ----------------------------------------------------------------------------------
@router.get("/api/v1/customers/{customerIdOrKey}/access", responses=responses(CustomerAccess, 404))
async def customer_access(request: Request, customerIdOrKey: str, _k: Reader) -> Response:
    """Every feature the customer is entitled to, with its access and balance, in one answer."""
    service = _service(request)

    def run() -> dict[str, Any]:
        values = service.access(service.customer(customerIdOrKey))
        return {
            "entitlements": {
                key: {**render_value(v), "entitlementId": v.entitlement.id, "type": v.entitlement.type}
                for key, v in values.items()
            }
        }

    return json_response(await _call(run))


@router.get(
    "/api/v1/customers/{customerIdOrKey}/entitlements/{featureKey}/value", responses=responses(EntitlementValue, 404)
)
async def customer_entitlement_value(
    request: Request, customerIdOrKey: str, featureKey: str, _k: Reader, time: Instant | None = None
) -> Response:
    """hasAccess (and for metered features balance, usage, overage) at `time` (default: now)."""
    service = _service(request)
    return json_response(
        await _call(lambda: render_value(service.value(service.customer(customerIdOrKey), featureKey, time)))
    )


# -- v2: by customer ----------------------------------------------------------------------------------
@router.post(V2_CUSTOMER, status_code=201, responses=responses(Entitlement, 404, 409, status=201))
async def create_customer_entitlement(
    request: Request, customerIdOrKey: str, body: EntitlementBody, _k: Admin
) -> Response:
    service = _service(request)
    return json_response(await _call(lambda: _create(service, service.customer(customerIdOrKey), body, True)), 201)


@router.get(V2_CUSTOMER, responses=responses(EntitlementPage, 404))
async def list_customer_entitlements(
    request: Request,
    customerIdOrKey: str,
    _k: Reader,
    includeDeleted: bool = False,
    page: Page = None,
    pageSize: PageSize = None,
) -> Response:
    service = _service(request)

    def run() -> Any:
        customer = service.customer(customerIdOrKey)
        found = service.entitlements([customer.id], include_deleted=includeDeleted)
        items = [_entitlement_json(service, customer, e, True) for e in found]
        return _paged(items, page or 1, pageSize or 100, None, None)

    return json_response(await _call(run))


@router.get(V2_CUSTOMER + "/{entitlementIdOrFeatureKey}", responses=responses(Entitlement, 404))
async def get_customer_entitlement(
    request: Request, customerIdOrKey: str, entitlementIdOrFeatureKey: str, _k: Reader
) -> Response:
    service = _service(request)

    def run() -> dict[str, Any]:
        customer = service.customer(customerIdOrKey)
        return _entitlement_json(
            service, customer, service.entitlement_of(customer, entitlementIdOrFeatureKey, True), True
        )

    return json_response(await _call(run))


@router.delete(
    V2_CUSTOMER + "/{entitlementIdOrFeatureKey}",
    status_code=204,
    response_class=Response,
    responses=responses(None, 404),
)
async def delete_customer_entitlement(
    request: Request, customerIdOrKey: str, entitlementIdOrFeatureKey: str, _k: Admin
) -> Response:
    service = _service(request)
    await _call(lambda: service.delete_entitlement(service.customer(customerIdOrKey), entitlementIdOrFeatureKey))
    return Response(status_code=204)


@router.put(
    V2_CUSTOMER + "/{entitlementIdOrFeatureKey}/override",
    status_code=201,
    responses=responses(Entitlement, 404, 409, status=201),
)
async def override_customer_entitlement(
    request: Request, customerIdOrKey: str, entitlementIdOrFeatureKey: str, body: EntitlementBody, _k: Admin
) -> Response:
    service = _service(request)
    return json_response(
        await _call(
            lambda: _override(service, service.customer(customerIdOrKey), entitlementIdOrFeatureKey, body, True)
        ),
        201,
    )


@router.get(V2_CUSTOMER + "/{entitlementIdOrFeatureKey}/value", responses=responses(EntitlementValue, 404))
async def customer_entitlement_value_v2(
    request: Request, customerIdOrKey: str, entitlementIdOrFeatureKey: str, _k: Reader, time: Instant | None = None
) -> Response:
    service = _service(request)
    return json_response(
        await _call(
            lambda: render_value(service.value(service.customer(customerIdOrKey), entitlementIdOrFeatureKey, time))
        )
    )


@router.get(V2_CUSTOMER + "/{entitlementIdOrFeatureKey}/history", responses=responses(WindowedBalanceHistory, 404))
async def customer_entitlement_history(
    request: Request,
    customerIdOrKey: str,
    entitlementIdOrFeatureKey: str,
    _k: Reader,
    windowSize: HistorySize,
    from_: Annotated[Instant | None, Query(alias="from")] = None,
    to: Instant | None = None,
    windowTimeZone: str = "UTC",
) -> Response:
    service = _service(request)

    def run() -> dict[str, Any]:
        customer = service.customer(customerIdOrKey)
        return _history(service, customer, entitlementIdOrFeatureKey, from_, to, windowSize, windowTimeZone)

    return json_response(await _call(run))


@router.post(
    V2_CUSTOMER + "/{entitlementIdOrFeatureKey}/reset",
    status_code=204,
    response_class=Response,
    responses=responses(None, 404),
)
async def reset_customer_entitlement(
    request: Request, customerIdOrKey: str, entitlementIdOrFeatureKey: str, _k: Admin, body: ResetBody | None = None
) -> Response:
    service = _service(request)
    await _call(lambda: _reset(service, service.customer(customerIdOrKey), entitlementIdOrFeatureKey, body))
    return Response(status_code=204)


@router.get(V2_CUSTOMER + "/{entitlementIdOrFeatureKey}/grants", responses=responses(GrantPage, 404))
async def list_customer_grants(
    request: Request,
    customerIdOrKey: str,
    entitlementIdOrFeatureKey: str,
    _k: Reader,
    includeDeleted: bool = False,
    page: Page = None,
    pageSize: PageSize = None,
    offset: Offset = None,
    limit: Limit = None,
    order: Order = "ASC",
    orderBy: Literal["id", "createdAt", "updatedAt"] = "createdAt",
) -> Response:
    service = _service(request)

    def run() -> Any:
        customer = service.customer(customerIdOrKey)
        grants = service.grants_of(customer, entitlementIdOrFeatureKey, includeDeleted)
        grants.sort(key=lambda g: (g.id,) if orderBy == "id" else (getattr(g, _ORDER[orderBy]), g.id))
        if order == "DESC":
            grants.reverse()
        items = [_grant_json(service, customer, g) for g in grants]
        if page is None and pageSize is None and (offset is not None or limit is not None):
            start, size = offset or 0, limit or 100  # OpenMeter's deprecated limit/offset, in a page
            return {
                "totalCount": len(items),
                "page": start // size + 1,
                "pageSize": size,
                "items": items[start : start + size],
            }
        return _paged(items, page or 1, pageSize or 100, None, None)

    return json_response(await _call(run))


@router.post(
    V2_CUSTOMER + "/{entitlementIdOrFeatureKey}/grants", status_code=201, responses=responses(Grant, 404, status=201)
)
async def create_customer_grant(
    request: Request, customerIdOrKey: str, entitlementIdOrFeatureKey: str, body: GrantBody, _k: Admin
) -> Response:
    service = _service(request)

    def run() -> dict[str, Any]:
        customer = service.customer(customerIdOrKey)
        return _grant_json(
            service, customer, service.create_grant(customer, entitlementIdOrFeatureKey, grant_spec(body))
        )

    return json_response(await _call(run), 201)


# -- listings across customers ------------------------------------------------------------------------
def _known_customers(service: EntitlementService, refs: Sequence[str], by_subject: bool) -> list[Customer]:
    """The customers a listing filter names (unknown ones match nothing, as a filter does)."""
    found = []
    for ref in refs:
        try:
            found.append(service.customer_of_subject(ref) if by_subject else service.customer(ref))
        except EntitlementError:
            continue
    return found


def _list_entitlements(
    service: EntitlementService,
    features: list[str] | None,
    customer_refs: list[str] | None,
    by_subject: bool,
    types: Sequence[str] | None,
    exclude_inactive: bool,
    v2: bool,
) -> list[dict[str, Any]]:
    customer_ids = None
    customers: dict[str, Customer] = {}
    if customer_refs:
        customers = {c.id: c for c in _known_customers(service, customer_refs, by_subject)}
        customer_ids = list(customers)
    entitlements = service.entitlements(customer_ids, features, types, exclude_inactive=exclude_inactive)
    out = []
    for e in entitlements:
        customer = customers.get(e.customer_id)
        if customer is None:
            try:
                customer = customers[e.customer_id] = service.customers_by_id(e.customer_id)
            except EntitlementError:
                continue
        out.append(_entitlement_json(service, customer, e, v2))
    return out


@router.get("/api/v1/entitlements", responses=responses(list[Entitlement] | EntitlementPage))
async def list_entitlements(
    request: Request,
    _k: Reader,
    feature: Keys = None,
    subject: Keys = None,
    entitlementType: Annotated[list[Literal["metered", "boolean", "static"]] | None, Query()] = None,
    excludeInactive: bool = False,
    page: Page = None,
    pageSize: PageSize = None,
    offset: Offset = None,
    limit: Limit = None,
) -> Response:
    service = _service(request)

    def run() -> Any:
        items = _list_entitlements(service, feature, subject, True, entitlementType, excludeInactive, False)
        return _paged(items, page, pageSize, offset, limit)

    return json_response(await _call(run))


@router.get("/api/v1/entitlements/{entitlementId}", responses=responses(Entitlement, 404))
async def get_entitlement(request: Request, entitlementId: str, _k: Reader) -> Response:
    service = _service(request)

    def run() -> dict[str, Any]:
        e = service.entitlement(entitlementId)
        return _entitlement_json(service, service.customers_by_id(e.customer_id), e, False)

    return json_response(await _call(run))


@router.get("/api/v2/entitlements", responses=responses(EntitlementPage))
async def list_entitlements_v2(
    request: Request,
    _k: Reader,
    feature: Keys = None,
    customerKeys: Keys = None,
    customerIds: Keys = None,
    entitlementType: Annotated[list[Literal["metered", "boolean", "static"]] | None, Query()] = None,
    excludeInactive: bool = False,
    page: Page = None,
    pageSize: PageSize = None,
) -> Response:
    service = _service(request)
    refs = [*(customerKeys or ()), *(customerIds or ())] or None

    def run() -> Any:
        items = _list_entitlements(service, feature, refs, False, entitlementType, excludeInactive, True)
        return _paged(items, page or 1, pageSize or 100, None, None)

    return json_response(await _call(run))


@router.get("/api/v2/entitlements/{entitlementId}", responses=responses(Entitlement, 404))
async def get_entitlement_v2(request: Request, entitlementId: str, _k: Reader) -> Response:
    service = _service(request)

    def run() -> dict[str, Any]:
        e = service.entitlement(entitlementId)
        return _entitlement_json(service, service.customers_by_id(e.customer_id), e, True)

    return json_response(await _call(run))


def _list_grants(
    service: EntitlementService, features: list[str] | None, refs: list[str] | None, by_subject: bool, deleted: bool
) -> list[dict[str, Any]]:
    customer_ids = None
    if refs:
        customer_ids = [c.id for c in _known_customers(service, refs, by_subject)]
    return [_grant_json(service, None, g) for g in service.grants(customer_ids, features, deleted)]


@router.get("/api/v1/grants", responses=responses(list[Grant] | GrantPage))
async def list_grants(
    request: Request,
    _k: Reader,
    feature: Keys = None,
    subject: Keys = None,
    includeDeleted: bool = False,
    page: Page = None,
    pageSize: PageSize = None,
    offset: Offset = None,
    limit: Limit = None,
) -> Response:
    service = _service(request)

    def run() -> Any:
        return _paged(_list_grants(service, feature, subject, True, includeDeleted), page, pageSize, offset, limit)

    return json_response(await _call(run))


@router.get("/api/v2/grants", responses=responses(GrantPage))
async def list_grants_v2(
    request: Request,
    _k: Reader,
    feature: Keys = None,
    customer: Keys = None,
    includeDeleted: bool = False,
    page: Page = None,
    pageSize: PageSize = None,
) -> Response:
    service = _service(request)

    def run() -> Any:
        items = _list_grants(service, feature, customer, False, includeDeleted)
        return _paged(items, page or 1, pageSize or 100, None, None)

    return json_response(await _call(run))


@router.delete("/api/v1/grants/{grantId}", status_code=204, response_class=Response, responses=responses(None, 404))
async def void_grant(request: Request, grantId: str, _k: Admin, at: Instant | None = None) -> Response:
    """Void a grant: it stops counting from `at` (default now); balances before that keep it."""
    service = _service(request)
    await _call(service.void_grant, grantId, at)
    return Response(status_code=204)
