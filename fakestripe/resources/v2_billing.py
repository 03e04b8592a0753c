"""API v2 billing: meter event sessions, the high-throughput meter event stream (served from the
SDK's ``meter_events`` base address), and v2 meter events / adjustments. JSON bodies."""

from __future__ import annotations

import secrets
from typing import Any

from stripe.params.v2.billing import (
    MeterEventAdjustmentCreateParams,
    MeterEventCreateParams,
    MeterEventSessionCreateParams,
    MeterEventStreamCreateParams,
)

from ..errors import StripeAPIError
from ..routes import ROUTER, Ctx
from ..state import MeterEventSession, iso8601, new_id, parse_iso8601
from .billing import MeterEventInvalid, accept_meter_event, cancel_meter_event

MAX_STREAM_EVENTS = 100


def _timestamp(ctx: Ctx, value: Any, param: str) -> int:
    if value is None:
        return ctx.now
    try:
        return parse_iso8601(str(value))
    except ValueError:
        raise StripeAPIError.invalid(
            f"Invalid timestamp: {param} must be an ISO 8601 date-time with a time zone", param=param
        ) from None


@ROUTER.post("/v2/billing/meter_event_session", params=MeterEventSessionCreateParams)
def create_session(ctx: Ctx) -> dict[str, Any]:
    now = ctx.now
    session = MeterEventSession(
        id=new_id("mtres", 20),
        token="mets_" + secrets.token_urlsafe(32),
        created=now,
        expires_at=now + ctx.state.session_ttl_seconds,
    )
    ctx.state.sessions[session.token] = session
    return {
        "id": session.id,
        "object": "v2.billing.meter_event_session",
        "authentication_token": session.token,
        "created": iso8601(session.created),
        "expires_at": iso8601(session.expires_at),
        "livemode": False,
    }


@ROUTER.post("/v2/billing/meter_event_stream", params=MeterEventStreamCreateParams, auth="session")
def create_stream_events(ctx: Ctx) -> dict[str, Any]:
    events = ctx.params["events"]
    if not events:
        raise StripeAPIError.invalid("`events` must contain at least one event.", param="events")
    if len(events) > MAX_STREAM_EVENTS:
        raise StripeAPIError.invalid(
            f"`events` can contain at most {MAX_STREAM_EVENTS} events per request; got {len(events)}.", param="events"
        )
    prepared = []
    for i, event in enumerate(events):
        prepared.append((event, _timestamp(ctx, event.get("timestamp"), f"events[{i}][timestamp]")))
    # Stream events are validated asynchronously by Stripe: the request succeeds and invalid events
    # are dropped and reported later (``v1.billing.meter.error_report_triggered``). The fake records
    # those reports in ``state.meter_error_reports`` right away.
    for event, timestamp in prepared:
        identifier = event.get("identifier") or new_id("mev", 20)
        try:
            accept_meter_event(
                ctx.state,
                event_name=event["event_name"],
                payload=event["payload"],
                timestamp=timestamp,
                identifier=identifier,
                source="v2",
            )
        except MeterEventInvalid as exc:
            meter = ctx.state.meter_for_event_name(event["event_name"])
            ctx.state.meter_error_reports.append(
                {
                    "code": exc.code,
                    "message": exc.message,
                    "identifier": identifier,
                    "event_name": event["event_name"],
                    "meter": meter["id"] if meter else None,
                    "received_at": ctx.now,
                    "source": "v2_stream",
                }
            )
    return {}


@ROUTER.post("/v2/billing/meter_events", params=MeterEventCreateParams)
def create_v2_meter_event(ctx: Ctx) -> dict[str, Any]:
    params = ctx.params
    identifier = params.get("identifier") or new_id("mev", 20)
    timestamp = _timestamp(ctx, params.get("timestamp"), "timestamp")
    try:
        record = accept_meter_event(
            ctx.state,
            event_name=params["event_name"],
            payload=params["payload"],
            timestamp=timestamp,
            identifier=identifier,
            source="v2",
        )
    except MeterEventInvalid as exc:
        raise StripeAPIError.business(exc.message, param=exc.param, code=exc.code) from None
    return {
        "object": "v2.billing.meter_event",
        "created": iso8601(record.received_at),
        "event_name": record.event_name,
        "identifier": record.identifier,
        "livemode": False,
        "payload": record.payload,
        "timestamp": iso8601(record.timestamp),
    }


@ROUTER.post("/v2/billing/meter_event_adjustments", params=MeterEventAdjustmentCreateParams)
def create_v2_adjustment(ctx: Ctx) -> dict[str, Any]:
    params = ctx.params
    identifier = params["cancel"]["identifier"]
    problem = cancel_meter_event(ctx.state, params["event_name"], identifier)
    if problem is not None:
        raise StripeAPIError.business(problem.message, param=problem.param, code=problem.code)
    return {
        "id": new_id("mtradj"),
        "object": "v2.billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "created": iso8601(ctx.now),
        "event_name": params["event_name"],
        "livemode": False,
        "status": "pending",
        "type": "cancel",
    }
