"""Events (``GET /v1/events``) and webhook endpoints (``/v1/webhook_endpoints``)."""

from __future__ import annotations

from typing import Any

import stripe.params as p

from ..errors import StripeAPIError
from ..routes import ROUTER, Ctx, merge_metadata, paginate
from ..webhooks import new_secret


@ROUTER.get("/v1/events/{id}", params=p.EventRetrieveParams)
def retrieve_event(ctx: Ctx) -> dict[str, Any]:
    return ctx.state.get("event", ctx.path_params["id"], label="event")


@ROUTER.get("/v1/events", params=p.EventListParams)
def list_events(ctx: Ctx) -> dict[str, Any]:
    items = ctx.state.all("event")
    params = ctx.params
    if "type" in params and "types" in params:
        raise StripeAPIError.invalid("You may only specify one of these parameters: type, types.", param="type")
    if "type" in params:
        pattern = params["type"]
        if pattern.endswith(".*"):
            items = [e for e in items if e["type"].startswith(pattern[:-1])]
        else:
            items = [e for e in items if e["type"] == pattern]
    if "types" in params:
        items = [e for e in items if e["type"] in params["types"]]
    return paginate(ctx, items, "/v1/events")


def _public(endpoint: dict[str, Any], *, with_secret: bool = False) -> dict[str, Any]:
    out = dict(endpoint)
    if not with_secret:
        out.pop("secret", None)
    return out


@ROUTER.post("/v1/webhook_endpoints", params=p.WebhookEndpointCreateParams)
def create_webhook_endpoint(ctx: Ctx) -> dict[str, Any]:
    params = ctx.params
    endpoint = create_endpoint(ctx.state, params["url"], params["enabled_events"], params.get("description"))
    endpoint["metadata"] = merge_metadata({}, params.get("metadata"))
    if "api_version" in params:
        endpoint["api_version"] = params["api_version"]
    return _public(endpoint, with_secret=True)  # Stripe shows the secret only on creation


def create_endpoint(state: Any, url: str, enabled_events: list[str], description: str | None = None) -> dict[str, Any]:
    endpoint = state.base_object(
        "we",
        "webhook_endpoint",
        api_version=None,
        application=None,
        description=description,
        enabled_events=list(enabled_events),
        metadata={},
        secret=new_secret(),
        status="enabled",
        url=url,
    )
    return state.insert("webhook_endpoint", endpoint)


@ROUTER.get("/v1/webhook_endpoints/{id}", params=p.WebhookEndpointRetrieveParams)
def retrieve_webhook_endpoint(ctx: Ctx) -> dict[str, Any]:
    return _public(ctx.state.get("webhook_endpoint", ctx.path_params["id"], label="webhook endpoint"))


@ROUTER.post("/v1/webhook_endpoints/{id}", params=p.WebhookEndpointUpdateParams)
def update_webhook_endpoint(ctx: Ctx) -> dict[str, Any]:
    endpoint = ctx.state.get("webhook_endpoint", ctx.path_params["id"], label="webhook endpoint")
    params = ctx.params
    if "url" in params:
        endpoint["url"] = params["url"]
    if "enabled_events" in params:
        endpoint["enabled_events"] = list(params["enabled_events"])
    if "disabled" in params:
        endpoint["status"] = "disabled" if params["disabled"] else "enabled"
    if "description" in params:
        endpoint["description"] = params["description"] or None
    if "metadata" in params:
        endpoint["metadata"] = merge_metadata(endpoint["metadata"], params["metadata"])
    return _public(endpoint)


@ROUTER.delete("/v1/webhook_endpoints/{id}", params=p.WebhookEndpointDeleteParams)
def delete_webhook_endpoint(ctx: Ctx) -> dict[str, Any]:
    ident = ctx.path_params["id"]
    ctx.state.get("webhook_endpoint", ident, label="webhook endpoint")
    del ctx.state.table("webhook_endpoint")[ident]
    return {"id": ident, "object": "webhook_endpoint", "deleted": True}


@ROUTER.get("/v1/webhook_endpoints", params=p.WebhookEndpointListParams)
def list_webhook_endpoints(ctx: Ctx) -> dict[str, Any]:
    return paginate(ctx, [_public(e) for e in ctx.state.all("webhook_endpoint")], "/v1/webhook_endpoints")
