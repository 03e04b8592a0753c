"""OpenMeter-compatible billing profiles: /api/v1/billing/profiles, and customer overrides at
/api/v1/billing/customers/{customerIdOrKey} (which profile a customer is billed with)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook.api.body import decode_json, media_type, read_limited_body
from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import responses
from tallybook.api.problems import Problem
from tallybook.api.render import json_response
from tallybook.api.security import require
from tallybook.api.wire.billing import BillingProfile, BillingProfilePage, CustomerBillingProfile
from tallybook.api.wire.billing_profiles import customer_profile_json, parse_override, parse_profile, profile_json
from tallybook.auth.model import ApiKeyRecord
from tallybook.billing.profiles_model import COLLECTION_METHODS, COLLECTORS, TAX_BEHAVIORS, ProfileListQuery

router = APIRouter(prefix="/api/v1/billing", tags=["billing profiles"])

MAX_BODY_BYTES = 256 * 1024
JSON_MEDIA_TYPE = "application/json"

_DURATION = {"type": "string", "description": "ISO 8601 duration of weeks, days and time, e.g. PT1H, P1D"}
_APP = {
    "oneOf": [
        {"type": "string", "enum": list(COLLECTORS)},
        {"type": "object", "properties": {"type": {"type": "string", "enum": list(COLLECTORS)}}},
    ]
}
_PROFILE_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "supplier"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 256},
        "description": {"type": "string", "maxLength": 1024},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}, "nullable": True},
        "default": {"type": "boolean", "default": False},
        "supplier": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "key": {"type": "string"},
                "taxId": {"type": "object", "properties": {"code": {"type": "string", "maxLength": 32}}},
                "addresses": {"type": "array", "maxItems": 1, "items": {"type": "object"}},
            },
        },
        "workflow": {
            "type": "object",
            "properties": {
                "collection": {
                    "type": "object",
                    "properties": {"interval": {**_DURATION, "default": "PT1H", "description": "grace"}},
                },
                "invoicing": {
                    "type": "object",
                    "properties": {
                        "autoAdvance": {"type": "boolean", "default": True},
                        "draftPeriod": {**_DURATION, "default": "P0D"},
                        "dueAfter": {**_DURATION, "default": "P30D", "description": "whole days"},
                        "defaultTaxConfig": {
                            "type": "object",
                            "properties": {"behavior": {"type": "string", "enum": list(TAX_BEHAVIORS)}},
                        },
                    },
                },
                "payment": {
                    "type": "object",
                    "properties": {
                        "collectionMethod": {"type": "string", "enum": list(COLLECTION_METHODS)},
                        "autoCollect": {"type": "boolean", "default": True, "description": "Tallybook extension"},
                    },
                },
                "tax": {
                    "type": "object",
                    "properties": {
                        "enabled": {"type": "boolean", "default": True},
                        "enforced": {"type": "boolean", "default": False},
                    },
                },
            },
        },
        "invoiceDocument": {
            "type": "object",
            "description": "Tallybook extension: the number series of issued invoices and how their page writes dates",
            "properties": {
                "numberPrefix": {"type": "string", "default": "INV-", "pattern": "^[A-Za-z0-9][A-Za-z0-9._/-]{0,19}$"},
                "timezone": {"type": "string", "description": "IANA zone of the page's dates; default: the customer's"},
                "locale": {"type": "string", "default": "en", "description": "e.g. en_GB, de_DE"},
            },
        },
        "apps": {
            "type": "object",
            "description": "the same app for all three; PUT without apps keeps the profile's",
            "properties": {"tax": _APP, "invoicing": _APP, "payment": _APP},
        },
    },
}
_PROFILE_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {JSON_MEDIA_TYPE: {"schema": _PROFILE_BODY_SCHEMA}}}
}
_OVERRIDE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            JSON_MEDIA_TYPE: {
                "schema": {
                    "type": "object",
                    "properties": {"billingProfileId": {"type": "string", "nullable": True}},
                }
            }
        },
    }
}


async def _body(request: Request, what: str, optional: bool = False) -> Any:
    kind = media_type(request)
    if kind and kind != JSON_MEDIA_TYPE and not kind.endswith("+json"):
        raise Problem(415, "unsupported-media-type", f"send the {what} as {JSON_MEDIA_TYPE}, got {kind!r}")
    raw = await read_limited_body(request, MAX_BODY_BYTES)
    if optional and not raw.strip():
        return None
    return decode_json(raw)


@router.get("/profiles", response_class=Response, responses=responses(BillingProfilePage))
async def list_profiles(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    page: Annotated[int, Query(ge=1, le=10_000_000)] = 1,
    pageSize: Annotated[int, Query(ge=1, le=1000)] = 100,
    orderBy: Literal["createdAt", "updatedAt", "default", "name"] = "createdAt",
    order: Literal["ASC", "DESC"] = "ASC",
    includeArchived: bool = False,
    includeDeleted: bool = False,
) -> Response:
    """A page of billing profiles, the config profile included; includeArchived (OpenMeter's name)
    or includeDeleted adds deleted ones."""
    query = ProfileListQuery(
        page=page,
        page_size=pageSize,
        include_deleted=includeArchived or includeDeleted,
        order_by=orderBy,
        descending=order == "DESC",
    )
    found = await run_in_threadpool(runtime_of(request).profiles.list_profiles, query)
    return json_response(
        {
            "totalCount": found.total_count,
            "page": found.page,
            "pageSize": found.page_size,
            "items": [profile_json(p) for p in found.items],
        }
    )


@router.post(
    "/profiles",
    status_code=201,
    response_class=Response,
    openapi_extra=_PROFILE_DOC,
    responses=responses(BillingProfile, 409, 413, 415, status=201),
)
async def create_profile(request: Request, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]) -> Response:
    """Create a profile. `default: true` makes it the default (the previous default stops being it)."""
    payload = await _body(request, "billing profile")
    profiles = runtime_of(request).profiles
    profile = await run_in_threadpool(profiles.create, parse_profile(payload))
    return json_response(profile_json(profile), 201, headers={"Location": f"/api/v1/billing/profiles/{profile.id}"})


@router.get("/profiles/{profileId}", response_class=Response, responses=responses(BillingProfile, 404))
async def get_profile(
    request: Request, profileId: str, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    """One profile by id (a deleted one shows deletedAt)."""
    profile = await run_in_threadpool(runtime_of(request).profiles.get, profileId)
    return json_response(profile_json(profile))


@router.put(
    "/profiles/{profileId}",
    response_class=Response,
    openapi_extra=_PROFILE_DOC,
    responses=responses(BillingProfile, 404, 409, 413, 415),
)
async def replace_profile(
    request: Request, profileId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Replace a profile (fields left out take their defaults; `apps` left out stays). The config
    profile is read-only: 409."""
    profiles = runtime_of(request).profiles
    profiles.check_not_config(profileId)  # before reading the body: its problems do not matter
    payload = await _body(request, "billing profile")
    profile = await run_in_threadpool(profiles.replace, profileId, parse_profile(payload))
    return json_response(profile_json(profile))


@router.delete("/profiles/{profileId}", status_code=204, response_class=Response, responses=responses(None, 404, 409))
async def delete_profile(
    request: Request, profileId: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Delete a profile no customer is assigned to (409 otherwise, and for the config profile)."""
    await run_in_threadpool(runtime_of(request).profiles.delete, profileId)
    return Response(status_code=204)


@router.get("/customers/{customerIdOrKey}", response_class=Response, responses=responses(CustomerBillingProfile, 404))
async def get_customer_profile(
    request: Request, customerIdOrKey: str, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    """The profile the customer is billed with: its override, else the default profile."""
    found = await run_in_threadpool(runtime_of(request).profiles.customer_profile, customerIdOrKey)
    return json_response(customer_profile_json(found))


@router.put(
    "/customers/{customerIdOrKey}",
    response_class=Response,
    openapi_extra=_OVERRIDE_DOC,
    responses=responses(CustomerBillingProfile, 404, 413, 415),
)
async def put_customer_profile(
    request: Request, customerIdOrKey: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Bill the customer with `billingProfileId`; null or left out: with the default profile."""
    payload = await _body(request, "customer override", optional=True)
    profiles = runtime_of(request).profiles
    found = await run_in_threadpool(profiles.assign, customerIdOrKey, parse_override(payload))
    return json_response(customer_profile_json(found))


@router.delete("/customers/{customerIdOrKey}", status_code=204, response_class=Response, responses=responses(None, 404))
async def delete_customer_profile(
    request: Request, customerIdOrKey: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Remove the customer's override: it is billed with the default profile again."""
    await run_in_threadpool(runtime_of(request).profiles.unassign, customerIdOrKey)
    return Response(status_code=204)
