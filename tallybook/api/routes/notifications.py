"""OpenMeter's notification API: /api/v1/notification/channels, /rules and /events.

Channels are webhooks (type WEBHOOK). Rules route one event type (`aggregation.completed`,
`aggregation.corrected`, `report.meter`) to channels. Events are the outbox: each with its payload
and, per channel, the delivery state and every attempt. Channels carry their signing secret, so
reading and changing channels and rules needs an admin key; reading events needs a read key.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from tallybook import jsonutil
from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import responses
from tallybook.api.params import Instant, instant_micros
from tallybook.api.problems import Problem
from tallybook.api.render import json_response
from tallybook.api.security import require
from tallybook.api.wire.notifications import (
    Channel,
    ChannelPage,
    NotificationEvent,
    NotificationEventPage,
    Rule,
    RulePage,
)
from tallybook.auth.model import ApiKeyRecord
from tallybook.clock import format_rfc3339, from_micros
from tallybook.entitlements.notifications import RULE_TYPES as ENTITLEMENT_RULE_TYPES
from tallybook.entitlements.notifications import check_rule_settings
from tallybook.errors import DomainError
from tallybook.ingest.limits import MAX_PAGE, MAX_PAGE_SIZE
from tallybook.webhooks.model import (
    SOURCE_CONFIG,
    AttemptRow,
    ChannelInput,
    ChannelRow,
    DeliveryRow,
    EventFilter,
    EventRow,
    InvalidInput,
    NotFound,
    RuleInput,
    RuleRow,
)
from tallybook.webhooks.service import WebhookService

router = APIRouter(prefix="/api/v1/notification", tags=["notifications"])

SECRET_PATTERN = r"^(whsec_)?[a-zA-Z0-9+/=]{32,100}$"

Admin = Annotated[ApiKeyRecord, Depends(require("admin"))]
Reader = Annotated[ApiKeyRecord, Depends(require("read"))]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ChannelBody(_Body):
    type: Literal["WEBHOOK"]
    name: str = Field(min_length=1, max_length=256)
    url: str = Field(min_length=1)
    disabled: bool = False
    metadata: dict[str, str] | None = None
    customHeaders: dict[str, str] | None = None
    signingSecret: str | None = Field(None, pattern=SECRET_PATTERN)


class ThresholdBody(_Body):
    value: Decimal = Field(gt=0)
    type: Literal["PERCENT", "NUMBER"]


class RuleBody(_Body):
    type: Literal[
        "aggregation.completed",
        "aggregation.corrected",
        "report.meter",
        "billing.unbilled_usage",
        "entitlements.balance.threshold",
        "entitlements.reset",
    ]
    name: str = Field(min_length=1, max_length=256)
    disabled: bool = False
    metadata: dict[str, str] | None = None
    channels: list[str] = Field(min_length=1)
    # entitlements.* rules (tallybook/entitlements/notifications.py)
    features: list[str] | None = Field(None, max_length=100)
    thresholds: list[ThresholdBody] | None = Field(None, max_length=10)


class ResendBody(_Body):
    channels: list[str] | None = None


def _service(request: Request) -> WebhookService:
    return runtime_of(request).webhooks


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    # NotFound and InvalidInput are DomainErrors, answered by the API's one handler; a ValueError
    # from a checker (e.g. a webhook URL) is bad input too.
    try:
        return await run_in_threadpool(fn, *args)
    except DomainError:
        raise
    except ValueError as exc:
        raise Problem(400, "invalid-parameters", str(exc)) from None


def _timestamps(created_us: int, updated_us: int, deleted_us: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "createdAt": format_rfc3339(from_micros(created_us)),
        "updatedAt": format_rfc3339(from_micros(updated_us)),
    }
    if deleted_us is not None:
        body["deletedAt"] = format_rfc3339(from_micros(deleted_us))
    return body


def channel_json(channel: ChannelRow) -> dict[str, Any]:
    annotations: dict[str, Any] = {"tallybook.source": channel.source}
    if channel.source == SOURCE_CONFIG:
        annotations["tallybook.events"] = channel.event_types or []
    if channel.disabled_reason:
        annotations["tallybook.disabledReason"] = channel.disabled_reason
    body: dict[str, Any] = {
        **_timestamps(channel.created_us, channel.updated_us, channel.deleted_us),
        "id": channel.id,
        "type": channel.type,
        "name": channel.name,
        "disabled": channel.disabled,
        "annotations": annotations,
        "url": channel.url,
        "customHeaders": channel.custom_headers,
        "signingSecret": channel.signing_secret,
    }
    if channel.metadata is not None:
        body["metadata"] = channel.metadata
    return body


def channel_meta(channel_id: str) -> dict[str, str]:
    return {"id": channel_id, "type": "WEBHOOK"}


def rule_json(rule: RuleRow) -> dict[str, Any]:
    body: dict[str, Any] = {
        **_timestamps(rule.created_us, rule.updated_us, rule.deleted_us),
        "id": rule.id,
        "type": rule.type,
        "name": rule.name,
        "disabled": rule.disabled,
        "channels": [channel_meta(c) for c in rule.channel_ids],
    }
    if rule.metadata is not None:
        body["metadata"] = rule.metadata
    return body


def _paginate(items: list[Any], page: int, page_size: int, total: int | None = None) -> dict[str, Any]:
    return {"totalCount": len(items) if total is None else total, "page": page, "pageSize": page_size, "items": items}


_ORDER_KEYS: dict[str, Callable[[Any], Any]] = {
    "id": lambda r: r.id,
    "type": lambda r: (r.type, r.id),
    "createdAt": lambda r: (r.created_us, r.id),
    "updatedAt": lambda r: (r.updated_us, r.id),
}

Page = Annotated[int, Query(ge=1, le=MAX_PAGE)]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
Order = Annotated[Literal["ASC", "DESC"], Query()]
OrderBy = Annotated[Literal["id", "type", "createdAt", "updatedAt"], Query()]


def _page_of(rows: list[Any], page: int, page_size: int, order: str, order_by: str) -> tuple[int, list[Any]]:
    rows = sorted(rows, key=_ORDER_KEYS[order_by], reverse=order == "DESC")
    start = (page - 1) * page_size
    return len(rows), rows[start : start + page_size]


# -- channels ---------------------------------------------------------------------------------------
@router.get("/channels", responses=responses(ChannelPage))
async def list_channels(
    request: Request,
    _key: Admin,
    includeDeleted: bool = False,
    includeDisabled: bool = False,
    page: Page = 1,
    pageSize: PageSize = 100,
    order: Order = "ASC",
    orderBy: OrderBy = "id",
) -> Response:
    rows = await _call(_service(request).list_channels, includeDeleted, includeDisabled)
    total, selected = _page_of(rows, page, pageSize, order, orderBy)
    return json_response(_paginate([channel_json(c) for c in selected], page, pageSize, total))


def _channel_input(body: ChannelBody) -> ChannelInput:
    return ChannelInput(
        name=body.name,
        url=body.url,
        disabled=body.disabled,
        signing_secret=body.signingSecret,
        custom_headers=body.customHeaders,
        metadata=body.metadata,
    )


@router.post("/channels", status_code=201, responses=responses(Channel, status=201))
async def create_channel(request: Request, body: ChannelBody, _key: Admin) -> Response:
    """Create a webhook channel. Without `signingSecret` a `whsec_...` secret is generated."""
    channel = await _call(_service(request).create_channel, _channel_input(body))
    return json_response(channel_json(channel), status=201)


@router.get("/channels/{channelId}", responses=responses(Channel, 404))
async def get_channel(request: Request, channelId: str, _key: Admin) -> Response:
    return json_response(channel_json(await _call(_service(request).get_channel, channelId)))


@router.put("/channels/{channelId}", responses=responses(Channel, 404))
async def update_channel(request: Request, channelId: str, body: ChannelBody, _key: Admin) -> Response:
    """Replace a channel's settings. Re-enabling (disabled: false) clears a 410 Gone disablement."""
    channel = await _call(_service(request).update_channel, channelId, _channel_input(body))
    return json_response(channel_json(channel))


@router.delete("/channels/{channelId}", status_code=204, response_class=Response, responses=responses(None, 404))
async def delete_channel(request: Request, channelId: str, _key: Admin) -> Response:
    await _call(_service(request).delete_channel, channelId)
    return Response(status_code=204)


# -- rules ------------------------------------------------------------------------------------------
def _rule_input(body: RuleBody) -> RuleInput:
    return RuleInput(
        type=body.type, name=body.name, channels=body.channels, disabled=body.disabled, metadata=body.metadata
    )


@router.get("/rules", responses=responses(RulePage))
async def list_rules(
    request: Request,
    _key: Admin,
    includeDeleted: bool = False,
    includeDisabled: bool = False,
    channel: Annotated[list[str] | None, Query()] = None,
    page: Page = 1,
    pageSize: PageSize = 100,
    order: Order = "ASC",
    orderBy: OrderBy = "id",
) -> Response:
    rows = await _call(_service(request).list_rules, includeDeleted, includeDisabled)
    if channel:
        rows = [r for r in rows if set(channel) & set(r.channel_ids)]
    total, selected = _page_of(rows, page, pageSize, order, orderBy)
    items = await _call(lambda: [_with_settings(request, r) for r in selected])
    return json_response(_paginate(items, page, pageSize, total))


def _entitlement_settings(body: RuleBody) -> tuple[list[str] | None, list[dict[str, Any]] | None]:
    """An entitlements rule's features and thresholds, checked (InvalidInput: 400)."""
    if body.type not in ENTITLEMENT_RULE_TYPES:
        if body.features or body.thresholds:
            raise InvalidInput("features and thresholds apply to entitlements.* rules only")
        return None, None
    thresholds = [t.model_dump() for t in body.thresholds or ()]
    return body.features, check_rule_settings(body.type, body.features, thresholds)


def _with_settings(request: Request, rule: RuleRow) -> dict[str, Any]:
    body = rule_json(rule)
    if rule.type in ENTITLEMENT_RULE_TYPES:
        settings = runtime_of(request).entitlement_notifier.settings([rule.id]).get(rule.id) or {}
        if settings.get("features"):
            body["features"] = settings["features"]
        if settings.get("thresholds"):
            body["thresholds"] = [{"value": Decimal(t["value"]), "type": t["type"]} for t in settings["thresholds"]]
    return body


def _save_rule(request: Request, body: RuleBody, rule_id: str | None) -> dict[str, Any]:
    features, thresholds = _entitlement_settings(body)
    service = _service(request)
    rule = service.update_rule(rule_id, _rule_input(body)) if rule_id else service.create_rule(_rule_input(body))
    if body.type in ENTITLEMENT_RULE_TYPES or rule_id:
        runtime_of(request).entitlement_notifier.save_settings(rule.id, features, thresholds)
    return _with_settings(request, rule)


@router.post("/rules", status_code=201, responses=responses(Rule, status=201))
async def create_rule(request: Request, body: RuleBody, _key: Admin) -> Response:
    return json_response(await _call(_save_rule, request, body, None), status=201)


@router.get("/rules/{ruleId}", responses=responses(Rule, 404))
async def get_rule(request: Request, ruleId: str, _key: Admin) -> Response:
    rule = await _call(_service(request).get_rule, ruleId)
    return json_response(await _call(_with_settings, request, rule))


@router.put("/rules/{ruleId}", responses=responses(Rule, 404))
async def update_rule(request: Request, ruleId: str, body: RuleBody, _key: Admin) -> Response:
    return json_response(await _call(_save_rule, request, body, ruleId))


@router.post("/rules/{ruleId}/test", status_code=201, responses=responses(NotificationEvent, 404, status=201))
async def test_rule(request: Request, ruleId: str, _key: Admin) -> Response:
    """Send a sample event of the rule's type to its channels (signed and delivered like any event)."""
    service = _service(request)
    runtime = runtime_of(request)

    def send() -> dict[str, Any]:
        rule = service.get_rule(ruleId)
        if rule.deleted_us is not None:
            raise NotFound(f"notification rule {ruleId} not found")
        now = runtime.clock.now()
        if rule.type in ENTITLEMENT_RULE_TYPES:
            settings = runtime.entitlement_notifier.settings([rule.id]).get(rule.id)
            payload = runtime.entitlement_notifier.sample(rule.type, now, settings)
        else:
            payload = {"type": rule.type, "timestamp": format_rfc3339(now), "data": {}, "test": True}
        event = service.send_test(rule, payload)
        return _events_json(service, [event])[0]

    return json_response(await _call(send), status=201)


@router.delete("/rules/{ruleId}", status_code=204, response_class=Response, responses=responses(None, 404))
async def delete_rule(request: Request, ruleId: str, _key: Admin) -> Response:
    await _call(_service(request).delete_rule, ruleId)
    return Response(status_code=204)


# -- events -----------------------------------------------------------------------------------------
def _attempt_json(attempt: AttemptRow) -> dict[str, Any]:
    response: dict[str, Any] = {
        "body": attempt.response_body or "",
        "durationMs": attempt.duration_ms,
        "url": attempt.url,
    }
    if attempt.status_code is not None:
        response["statusCode"] = attempt.status_code
    body: dict[str, Any] = {
        "state": attempt.state,
        "response": response,
        "timestamp": format_rfc3339(from_micros(attempt.attempted_us)),
    }
    if attempt.error:
        body["error"] = attempt.error
    return body


def _delivery_json(delivery: DeliveryRow, attempts: list[AttemptRow]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "state": delivery.state,
        "reason": delivery.reason or "",
        "updatedAt": format_rfc3339(from_micros(delivery.updated_us)),
        "channel": channel_meta(delivery.channel_id),
        "attempts": [_attempt_json(a) for a in attempts],
    }
    if delivery.next_attempt_us is not None and delivery.state not in ("SUCCESS", "FAILED"):
        body["nextAttempt"] = format_rfc3339(from_micros(delivery.next_attempt_us))
    return body


def _events_json(service: WebhookService, events: list[EventRow]) -> list[dict[str, Any]]:
    items = []
    for detail in service.details(events):
        event = detail.event
        body: dict[str, Any] = {
            "id": event.id,
            "type": event.type,
            "createdAt": format_rfc3339(from_micros(event.created_us)),
            "deliveryStatus": [_delivery_json(d, attempts) for d, attempts in detail.deliveries],
            "payload": jsonutil.loads(event.body),
            "annotations": {"tallybook.subject": event.subject} if event.subject else {},
        }
        if detail.rule is not None:
            body["rule"] = rule_json(detail.rule)
        items.append(body)
    return items


@router.get("/events", responses=responses(NotificationEventPage))
async def list_events(
    request: Request,
    _key: Reader,
    from_: Annotated[Instant | None, Query(alias="from")] = None,
    to: Instant | None = None,
    subject: Annotated[list[str] | None, Query()] = None,
    rule: Annotated[list[str] | None, Query()] = None,
    channel: Annotated[list[str] | None, Query()] = None,
    type: Annotated[list[str] | None, Query()] = None,
    page: Page = 1,
    pageSize: PageSize = 100,
    order: Order = "DESC",
    orderBy: Annotated[Literal["id", "createdAt"], Query()] = "createdAt",
) -> Response:
    """Outbox events, newest first: payload, and per channel the delivery state and attempts."""
    service = _service(request)
    flt = EventFilter(
        from_us=instant_micros(from_, "from"),
        to_us=instant_micros(to, "to"),
        subjects=tuple(subject or ()),
        rules=tuple(rule or ()),
        channels=tuple(channel or ()),
        types=tuple(type or ()),
        descending=order == "DESC",
        order_by=orderBy,
        offset=(page - 1) * pageSize,
        limit=pageSize,
    )

    def load() -> dict[str, Any]:
        total, events = service.list_events(flt)
        return _paginate(_events_json(service, events), page, pageSize, total)

    return json_response(await _call(load))


@router.get("/events/{eventId}", responses=responses(NotificationEvent, 404))
async def get_event(request: Request, eventId: str, _key: Reader) -> Response:
    service = _service(request)

    def load() -> dict[str, Any]:
        return _events_json(service, [service.get_event(eventId)])[0]

    return json_response(await _call(load))


@router.post(
    "/events/{eventId}/resend",
    status_code=202,
    response_class=Response,
    responses=responses(None, 404, status=202, description="Accepted (no body): the worker sends it again"),
)
async def resend_event(request: Request, eventId: str, _key: Admin, body: ResendBody | None = None) -> Response:
    """Send the event again to its channels (or to the listed ones); the worker picks it up."""
    channels = tuple(body.channels or ()) if body else ()
    await _call(_service(request).resend, eventId, channels)
    return Response(status_code=202)
