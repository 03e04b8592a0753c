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
from tallybook.api.wire.entitlement_specs import entitlement_spec, grant_spec, reset_spec
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
    grant_page,
    listing,
    page_of,
    render_access,
    render_grant_view,
    render_history,
    render_value,
    render_view,
)
from tallybook.auth.model import ApiKeyRecord
from tallybook.entitlements.model import Owner
from tallybook.entitlements.service import EntitlementService
from tallybook.ingest.limits import MAX_PAGE, MAX_PAGE_SIZE
from tallybook.meters.windows import WindowSize

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
GrantOrder = Literal["id", "createdAt", "updatedAt"]

V1_SUBJECT = "/api/v1/subjects/{subjectIdOrKey}/entitlements"
V2_CUSTOMER = "/api/v2/customers/{customerIdOrKey}/entitlements"
GRANT_ORDER = {"id": "id", "createdAt": "created_at", "updatedAt": "updated_at"}


def _service(request: Request) -> EntitlementService:
    return runtime_of(request).entitlements


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args)
    except OverflowError:
        # Calendar arithmetic past year 9999 (a far `time`, a long expiration or recurrence).
        raise Problem(400, "invalid-parameters", "a date is out of range (past year 9999); use a nearer one") from None


def _subject(ref: str) -> Owner:
    return Owner(ref, by_subject=True)


def _customer(ref: str) -> Owner:
    return Owner(ref)


# -- one implementation per operation; the v1 subject and v2 customer routes below differ only in
# -- how the path names the owner (and v1 answers name the subject, v2 the customer) ---------------
async def _create(request: Request, owner: Owner, body: EntitlementBody, v2: bool) -> Response:
    spec, grants = entitlement_spec(body), [grant_spec(g) for g in body.grants or ()]
    view = await _call(_service(request).create_for, owner, spec, grants)
    return json_response(render_view(view, v2), 201)


async def _get(request: Request, owner: Owner, ref: str, v2: bool) -> Response:
    return json_response(render_view(await _call(_service(request).view_of, owner, ref), v2))


async def _delete(request: Request, owner: Owner, ref: str) -> Response:
    await _call(_service(request).delete_for, owner, ref)
    return Response(status_code=204)


async def _override(request: Request, owner: Owner, ref: str, body: EntitlementBody, v2: bool) -> Response:
    spec, grants = entitlement_spec(body), [grant_spec(g) for g in body.grants or ()]
    view = await _call(_service(request).override_for, owner, ref, spec, grants)
    return json_response(render_view(view, v2), 201)


async def _value(request: Request, owner: Owner, ref: str, time: datetime | None) -> Response:
    return json_response(render_value(await _call(_service(request).value_for, owner, ref, time)))


async def _history(
    request: Request, owner: Owner, ref: str, size: str, from_: datetime | None, to: datetime | None, tz: str
) -> Response:
    history = await _call(_service(request).history_for, owner, ref, from_, to, WindowSize(size), tz)
    return json_response(render_history(history))


async def _reset(request: Request, owner: Owner, ref: str, body: ResetBody | None) -> Response:
    await _call(_service(request).reset_for, owner, ref, reset_spec(body))
    return Response(status_code=204)


async def _grants(
    request: Request, owner: Owner, ref: str, include_deleted: bool, order_by: GrantOrder, descending: bool
) -> list[dict[str, Any]]:
    views = await _call(_service(request).grants_for, owner, ref, include_deleted, GRANT_ORDER[order_by], descending)
    return [render_grant_view(v) for v in views]


async def _create_grant(request: Request, owner: Owner, ref: str, body: GrantBody) -> Response:
    view = await _call(_service(request).grant_for, owner, ref, grant_spec(body))
    return json_response(render_grant_view(view), 201)


# -- v1: by subject -----------------------------------------------------------------------------------
@router.post(V1_SUBJECT, status_code=201, responses=responses(Entitlement, 404, 409, status=201))
async def create_subject_entitlement(
    request: Request, subjectIdOrKey: str, body: EntitlementBody, _k: Admin
) -> Response:
    """Entitle the subject's customer to a feature (metered, boolean or static)."""
    return await _create(request, _subject(subjectIdOrKey), body, v2=False)


@router.get(V1_SUBJECT, responses=responses(list[Entitlement], 404))
async def list_subject_entitlements(
    request: Request, subjectIdOrKey: str, _k: Reader, includeDeleted: bool = False
) -> Response:
    views = await _call(_service(request).views_of, _subject(subjectIdOrKey), includeDeleted)
    return json_response([render_view(v, v2=False) for v in views])


@router.get(V1_SUBJECT + "/{entitlementId}", responses=responses(Entitlement, 404))
async def get_subject_entitlement(request: Request, subjectIdOrKey: str, entitlementId: str, _k: Reader) -> Response:
    return await _get(request, _subject(subjectIdOrKey), entitlementId, v2=False)


@router.delete(
    V1_SUBJECT + "/{entitlementId}", status_code=204, response_class=Response, responses=responses(None, 404)
)
async def delete_subject_entitlement(request: Request, subjectIdOrKey: str, entitlementId: str, _k: Admin) -> Response:
    return await _delete(request, _subject(subjectIdOrKey), entitlementId)


@router.put(
    V1_SUBJECT + "/{entitlementIdOrFeatureKey}/override",
    status_code=201,
    responses=responses(Entitlement, 404, 409, status=201),
)
async def override_subject_entitlement(
    request: Request, subjectIdOrKey: str, entitlementIdOrFeatureKey: str, body: EntitlementBody, _k: Admin
) -> Response:
    """Replace the entitlement with a new one (the old one ends now; its grants stay with it)."""
    return await _override(request, _subject(subjectIdOrKey), entitlementIdOrFeatureKey, body, v2=False)


@router.get(V1_SUBJECT + "/{entitlementIdOrFeatureKey}/value", responses=responses(EntitlementValue, 404))
async def subject_entitlement_value(
    request: Request, subjectIdOrKey: str, entitlementIdOrFeatureKey: str, _k: Reader, time: Instant | None = None
) -> Response:
    return await _value(request, _subject(subjectIdOrKey), entitlementIdOrFeatureKey, time)


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
    return await _history(request, _subject(subjectIdOrKey), entitlementId, windowSize, from_, to, windowTimeZone)


@router.post(
    V1_SUBJECT + "/{entitlementId}/reset", status_code=204, response_class=Response, responses=responses(None, 404)
)
async def reset_subject_entitlement(
    request: Request, subjectIdOrKey: str, entitlementId: str, _k: Admin, body: ResetBody | None = None
) -> Response:
    """Start a new usage period now (or at `effectiveAt`): grants roll over, usage starts from zero."""
    return await _reset(request, _subject(subjectIdOrKey), entitlementId, body)


@router.get(V1_SUBJECT + "/{entitlementIdOrFeatureKey}/grants", responses=responses(list[Grant], 404))
async def list_subject_grants(
    request: Request,
    subjectIdOrKey: str,
    entitlementIdOrFeatureKey: str,
    _k: Reader,
    includeDeleted: bool = False,
    orderBy: GrantOrder = "createdAt",
) -> Response:
    owner = _subject(subjectIdOrKey)
    return json_response(await _grants(request, owner, entitlementIdOrFeatureKey, includeDeleted, orderBy, False))


@router.post(
    V1_SUBJECT + "/{entitlementIdOrFeatureKey}/grants", status_code=201, responses=responses(Grant, 404, status=201)
)
async def create_subject_grant(
    request: Request, subjectIdOrKey: str, entitlementIdOrFeatureKey: str, body: GrantBody, _k: Admin
) -> Response:
    """Grant usage to a metered entitlement: burnt by priority, then earliest expiry."""
    return await _create_grant(request, _subject(subjectIdOrKey), entitlementIdOrFeatureKey, body)


# -- v1: by customer ----------------------------------------------------------------------------------
@router.get("/api/v1/customers/{customerIdOrKey}/access", responses=responses(CustomerAccess, 404))
async def customer_access(request: Request, customerIdOrKey: str, _k: Reader) -> Response:
    """Every feature the customer is entitled to, with its access and balance, in one answer."""
    return json_response(render_access(await _call(_service(request).access_for, _customer(customerIdOrKey))))


@router.get(
    "/api/v1/customers/{customerIdOrKey}/entitlements/{featureKey}/value", responses=responses(EntitlementValue, 404)
)
async def customer_entitlement_value(
    request: Request, customerIdOrKey: str, featureKey: str, _k: Reader, time: Instant | None = None
) -> Response:
    """hasAccess (and for metered features balance, usage, overage) at `time` (default: now)."""
    return await _value(request, _customer(customerIdOrKey), featureKey, time)


# -- v2: by customer ----------------------------------------------------------------------------------
@router.post(V2_CUSTOMER, status_code=201, responses=responses(Entitlement, 404, 409, status=201))
async def create_customer_entitlement(
    request: Request, customerIdOrKey: str, body: EntitlementBody, _k: Admin
) -> Response:
    return await _create(request, _customer(customerIdOrKey), body, v2=True)


@router.get(V2_CUSTOMER, responses=responses(EntitlementPage, 404))
async def list_customer_entitlements(
    request: Request,
    customerIdOrKey: str,
    _k: Reader,
    includeDeleted: bool = False,
    page: Page = None,
    pageSize: PageSize = None,
) -> Response:
    views = await _call(_service(request).views_of, _customer(customerIdOrKey), includeDeleted)
    return json_response(page_of([render_view(v, v2=True) for v in views], page, pageSize))


@router.get(V2_CUSTOMER + "/{entitlementIdOrFeatureKey}", responses=responses(Entitlement, 404))
async def get_customer_entitlement(
    request: Request, customerIdOrKey: str, entitlementIdOrFeatureKey: str, _k: Reader
) -> Response:
    return await _get(request, _customer(customerIdOrKey), entitlementIdOrFeatureKey, v2=True)


@router.delete(
    V2_CUSTOMER + "/{entitlementIdOrFeatureKey}",
    status_code=204,
    response_class=Response,
    responses=responses(None, 404),
)
async def delete_customer_entitlement(
    request: Request, customerIdOrKey: str, entitlementIdOrFeatureKey: str, _k: Admin
) -> Response:
    return await _delete(request, _customer(customerIdOrKey), entitlementIdOrFeatureKey)


@router.put(
    V2_CUSTOMER + "/{entitlementIdOrFeatureKey}/override",
    status_code=201,
    responses=responses(Entitlement, 404, 409, status=201),
)
async def override_customer_entitlement(
    request: Request, customerIdOrKey: str, entitlementIdOrFeatureKey: str, body: EntitlementBody, _k: Admin
) -> Response:
    return await _override(request, _customer(customerIdOrKey), entitlementIdOrFeatureKey, body, v2=True)


@router.get(V2_CUSTOMER + "/{entitlementIdOrFeatureKey}/value", responses=responses(EntitlementValue, 404))
async def customer_entitlement_value_v2(
    request: Request, customerIdOrKey: str, entitlementIdOrFeatureKey: str, _k: Reader, time: Instant | None = None
) -> Response:
    return await _value(request, _customer(customerIdOrKey), entitlementIdOrFeatureKey, time)


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
    owner = _customer(customerIdOrKey)
    return await _history(request, owner, entitlementIdOrFeatureKey, windowSize, from_, to, windowTimeZone)


@router.post(
    V2_CUSTOMER + "/{entitlementIdOrFeatureKey}/reset",
    status_code=204,
    response_class=Response,
    responses=responses(None, 404),
)
async def reset_customer_entitlement(
    request: Request, customerIdOrKey: str, entitlementIdOrFeatureKey: str, _k: Admin, body: ResetBody | None = None
) -> Response:
    return await _reset(request, _customer(customerIdOrKey), entitlementIdOrFeatureKey, body)


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
    orderBy: GrantOrder = "createdAt",
) -> Response:
    owner, descending = _customer(customerIdOrKey), order == "DESC"
    items = await _grants(request, owner, entitlementIdOrFeatureKey, includeDeleted, orderBy, descending)
    return json_response(grant_page(items, page, pageSize, offset, limit))


@router.post(
    V2_CUSTOMER + "/{entitlementIdOrFeatureKey}/grants", status_code=201, responses=responses(Grant, 404, status=201)
)
async def create_customer_grant(
    request: Request, customerIdOrKey: str, entitlementIdOrFeatureKey: str, body: GrantBody, _k: Admin
) -> Response:
    return await _create_grant(request, _customer(customerIdOrKey), entitlementIdOrFeatureKey, body)


# -- listings across customers ------------------------------------------------------------------------
EntitlementType = Annotated[list[Literal["metered", "boolean", "static"]] | None, Query()]


def _owners(refs: Sequence[str] | None, by_subject: bool) -> list[Owner] | None:
    return None if not refs else [Owner(ref, by_subject) for ref in refs]


@router.get("/api/v1/entitlements", responses=responses(list[Entitlement] | EntitlementPage))
async def list_entitlements(
    request: Request,
    _k: Reader,
    feature: Keys = None,
    subject: Keys = None,
    entitlementType: EntitlementType = None,
    excludeInactive: bool = False,
    page: Page = None,
    pageSize: PageSize = None,
    offset: Offset = None,
    limit: Limit = None,
) -> Response:
    service = _service(request)
    views = await _call(service.entitlement_views, feature, _owners(subject, True), entitlementType, excludeInactive)
    return json_response(listing([render_view(v, v2=False) for v in views], page, pageSize, offset, limit))


@router.get("/api/v1/entitlements/{entitlementId}", responses=responses(Entitlement, 404))
async def get_entitlement(request: Request, entitlementId: str, _k: Reader) -> Response:
    return json_response(render_view(await _call(_service(request).entitlement_view, entitlementId), v2=False))


@router.get("/api/v2/entitlements", responses=responses(EntitlementPage))
async def list_entitlements_v2(
    request: Request,
    _k: Reader,
    feature: Keys = None,
    customerKeys: Keys = None,
    customerIds: Keys = None,
    entitlementType: EntitlementType = None,
    excludeInactive: bool = False,
    page: Page = None,
    pageSize: PageSize = None,
) -> Response:
    owners = _owners([*(customerKeys or ()), *(customerIds or ())], False)
    views = await _call(_service(request).entitlement_views, feature, owners, entitlementType, excludeInactive)
    return json_response(page_of([render_view(v, v2=True) for v in views], page, pageSize))


@router.get("/api/v2/entitlements/{entitlementId}", responses=responses(Entitlement, 404))
async def get_entitlement_v2(request: Request, entitlementId: str, _k: Reader) -> Response:
    return json_response(render_view(await _call(_service(request).entitlement_view, entitlementId), v2=True))


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
    views = await _call(_service(request).grant_views, feature, _owners(subject, True), includeDeleted)
    return json_response(listing([render_grant_view(v) for v in views], page, pageSize, offset, limit))


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
    views = await _call(_service(request).grant_views, feature, _owners(customer, False), includeDeleted)
    return json_response(page_of([render_grant_view(v) for v in views], page, pageSize))


@router.delete("/api/v1/grants/{grantId}", status_code=204, response_class=Response, responses=responses(None, 404))
async def void_grant(request: Request, grantId: str, _k: Admin, at: Instant | None = None) -> Response:
    """Void a grant: it stops counting from `at` (default now); balances before that keep it."""
    await _call(_service(request).void_grant, grantId, at)
    return Response(status_code=204)
