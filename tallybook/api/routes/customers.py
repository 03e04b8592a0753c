"""OpenMeter-compatible customers: /api/v1/customers."""

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
from tallybook.api.wire.customers import Customer as CustomerShape
from tallybook.api.wire.customers import CustomerPage
from tallybook.auth.model import ApiKeyRecord
from tallybook.clock import format_rfc3339
from tallybook.customers import (
    Customer,
    CustomerListQuery,
    parse_customer,
)
from tallybook.customers.validation import address_json

router = APIRouter(prefix="/api/v1", tags=["customers"])

# A customer with thousands of subject keys still fits comfortably.
MAX_BODY_BYTES = 1 << 20
JSON_MEDIA_TYPE = "application/json"

_CUSTOMER_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 256},
        "key": {"type": "string", "minLength": 1, "maxLength": 256},
        "description": {"type": "string", "maxLength": 1024},
        "primaryEmail": {"type": "string", "format": "email"},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "timezone": {"type": "string", "description": "IANA time zone; billing periods are computed in it"},
        "billingAddress": {
            "type": "object",
            "properties": {
                name: {"type": "string"}
                for name in ("country", "postalCode", "state", "city", "line1", "line2", "phoneNumber")
            },
        },
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "usageAttribution": {
            "type": "object",
            "required": ["subjectKeys"],
            "properties": {"subjectKeys": {"type": "array", "items": {"type": "string", "minLength": 1}}},
        },
    },
}
_BODY_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {JSON_MEDIA_TYPE: {"schema": _CUSTOMER_BODY_SCHEMA}}}
}


def customer_json(customer: Customer) -> dict[str, Any]:
    body: dict[str, Any] = {"id": customer.id}
    if customer.key is not None:
        body["key"] = customer.key
    body["name"] = customer.name
    optional = {
        "description": customer.description,
        "primaryEmail": customer.primary_email,
        "currency": customer.currency,
        "timezone": customer.timezone,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    if customer.billing_address is not None:
        body["billingAddress"] = address_json(customer.billing_address)
    if customer.metadata is not None:
        body["metadata"] = customer.metadata
    body["usageAttribution"] = {"subjectKeys": list(customer.subject_keys)}
    body["createdAt"] = format_rfc3339(customer.created_at)
    body["updatedAt"] = format_rfc3339(customer.updated_at)
    if customer.deleted_at is not None:
        body["deletedAt"] = format_rfc3339(customer.deleted_at)
    return body


async def _customer_body(request: Request) -> Any:
    kind = media_type(request)
    if kind and kind != JSON_MEDIA_TYPE and not kind.endswith("+json"):
        raise Problem(415, "unsupported-media-type", f"send the customer as {JSON_MEDIA_TYPE}, got {kind!r}")
    return decode_json(await read_limited_body(request, MAX_BODY_BYTES))


@router.post(
    "/customers",
    status_code=201,
    response_class=Response,
    openapi_extra=_BODY_DOC,
    responses=responses(CustomerShape, 409, 413, 415, status=201),
)
async def create_customer(request: Request, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]) -> Response:
    """Create a customer. Its key and usageAttribution.subjectKeys become its subjects (409 if taken)."""
    payload = await _customer_body(request)
    customers = runtime_of(request).customers
    customer = await run_in_threadpool(customers.create, parse_customer(payload))
    return json_response(customer_json(customer), 201, headers={"Location": f"/api/v1/customers/{customer.id}"})


@router.get("/customers", response_class=Response, responses=responses(CustomerPage))
async def list_customers(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    page: Annotated[int, Query(ge=1, le=10_000_000)] = 1,
    pageSize: Annotated[int, Query(ge=1, le=1000)] = 100,
    orderBy: Literal["id", "name", "createdAt"] = "id",
    order: Literal["ASC", "DESC"] = "ASC",
    includeDeleted: bool = False,
    key: str | None = None,
    name: str | None = None,
    primaryEmail: str | None = None,
    subject: str | None = None,
    planKey: str | None = None,
    expand: Annotated[list[str] | None, Query()] = None,
) -> Response:
    """A page of customers. key, name, primaryEmail and subject are case-insensitive substring filters."""
    if planKey is not None:
        raise Problem(
            400,
            "invalid-parameters",
            "planKey: the customer list cannot filter by plan yet; use GET /api/v1/subscriptions",
        )
    if expand:
        raise Problem(
            400,
            "invalid-parameters",
            "expand: not supported on the customer list yet; read subscriptions from GET /api/v1/subscriptions",
        )
    query = CustomerListQuery(
        page=page,
        page_size=pageSize,
        order_by=orderBy,
        descending=order == "DESC",
        include_deleted=includeDeleted,
        key=key,
        name=name,
        primary_email=primaryEmail,
        subject=subject,
    )
    found = await run_in_threadpool(runtime_of(request).customers.list_customers, query)
    return json_response(
        {
            "totalCount": found.total_count,
            "page": found.page,
            "pageSize": found.page_size,
            "items": [customer_json(c) for c in found.items],
        }
    )


@router.get("/customers/{customerIdOrKey}", response_class=Response, responses=responses(CustomerShape, 404))
async def get_customer(
    request: Request, customerIdOrKey: str, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    """A customer by id (deleted ones too, with deletedAt) or by a live customer's key."""
    customer = await run_in_threadpool(runtime_of(request).customers.get, customerIdOrKey)
    return json_response(customer_json(customer))


@router.put(
    "/customers/{customerIdOrKey}",
    response_class=Response,
    openapi_extra=_BODY_DOC,
    responses=responses(CustomerShape, 404, 409, 413, 415),
)
async def replace_customer(
    request: Request, customerIdOrKey: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Replace a live customer: every writable field takes the body's value; left-out fields are cleared."""
    payload = await _customer_body(request)
    customers = runtime_of(request).customers
    customer = await run_in_threadpool(customers.replace, customerIdOrKey, parse_customer(payload))
    return json_response(customer_json(customer))


@router.delete(
    "/customers/{customerIdOrKey}", status_code=204, response_class=Response, responses=responses(None, 404, 409)
)
async def delete_customer(
    request: Request, customerIdOrKey: str, _key: Annotated[ApiKeyRecord, Depends(require("admin"))]
) -> Response:
    """Soft-delete a customer: it stays readable by id; its key and subjects are free for others."""
    await run_in_threadpool(runtime_of(request).customers.delete, customerIdOrKey)
    return Response(status_code=204)
