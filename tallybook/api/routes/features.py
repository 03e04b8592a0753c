"""Features (OpenMeter's /api/v1/features): what customers can be entitled to, optionally on a meter."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import responses
from tallybook.api.render import json_response
from tallybook.api.routes.entitlements import Limit, Offset, Page, PageSize
from tallybook.api.security import require
from tallybook.api.wire.entitlement_specs import feature_spec
from tallybook.api.wire.entitlements import Feature, FeatureBody, FeaturePage, listing, render_feature
from tallybook.auth.model import ApiKeyRecord

router = APIRouter(prefix="/api/v1/features", tags=["entitlements"])

Admin = Annotated[ApiKeyRecord, Depends(require("admin"))]
Reader = Annotated[ApiKeyRecord, Depends(require("read"))]


@router.post("", status_code=201, responses=responses(Feature, 409, status=201))
async def create_feature(request: Request, body: FeatureBody, _k: Admin) -> Response:
    """Create a feature; with `meterSlug` (and `meterGroupByFilters`) it can carry metered entitlements."""
    feature = await run_in_threadpool(runtime_of(request).entitlements.create_feature, feature_spec(body))
    return json_response(render_feature(feature), 201)


@router.get("", responses=responses(list[Feature] | FeaturePage))
async def list_features(
    request: Request,
    _k: Reader,
    meterSlug: Annotated[list[str] | None, Query()] = None,
    includeArchived: bool = False,
    page: Page = None,
    pageSize: PageSize = None,
    offset: Offset = None,
    limit: Limit = None,
) -> Response:
    found = await run_in_threadpool(runtime_of(request).entitlements.features, meterSlug, includeArchived)
    return json_response(listing([render_feature(f) for f in found], page, pageSize, offset, limit))


@router.get("/{featureId}", responses=responses(Feature, 404))
async def get_feature(request: Request, featureId: str, _k: Reader) -> Response:
    return json_response(render_feature(await run_in_threadpool(runtime_of(request).entitlements.feature, featureId)))


@router.delete("/{featureId}", status_code=204, response_class=Response, responses=responses(None, 404, 409))
async def delete_feature(request: Request, featureId: str, _k: Admin) -> Response:
    """Archive a feature (its key can be reused); refused while live entitlements use it."""
    await run_in_threadpool(runtime_of(request).entitlements.archive_feature, featureId)
    return Response(status_code=204)
