"""Billing meters, v1 meter events, meter event adjustments and event summaries."""

from __future__ import annotations

import hashlib
from decimal import Decimal, InvalidOperation
from typing import Any

import stripe.params.billing as pb

from ..errors import StripeAPIError
from ..routes import ROUTER, Ctx, changed, paginate
from ..state import FakeState, MeterEventRecord, deep_copy, new_id

MAX_PAST = 35 * 86_400
MAX_FUTURE = 5 * 60
IDENTIFIER_WINDOW = 24 * 3600
ADJUSTMENT_WINDOW = 24 * 3600


class MeterEventInvalid(Exception):
    """A meter event Stripe would not count; v1 answers it as a 400, the v2 stream reports it later."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def check_meter_event(
    state: FakeState, event_name: str, payload: dict[str, Any], timestamp: int, identifier: str
) -> tuple[dict[str, Any], str, Decimal]:
    """Validate one meter event against the meters, the clock and the identifier window.

    Returns the meter, the customer id and the numeric value, or raises :class:`MeterEventInvalid`.
    """
    meter = state.meter_for_event_name(event_name)
    if meter is None:
        raise MeterEventInvalid("no_meter", f"No active meter was found for event_name `{event_name}`.", "event_name")
    if meter["status"] != "active":
        raise MeterEventInvalid("archived_meter", f"The meter for event_name `{event_name}` is inactive.", "event_name")
    now = state.now()
    if timestamp < now - MAX_PAST:
        raise MeterEventInvalid(
            "timestamp_too_far_in_past", "Meter event timestamps must be within the past 35 days.", "timestamp"
        )
    if timestamp > now + MAX_FUTURE:
        raise MeterEventInvalid(
            "timestamp_in_future", "Meter event timestamps can be at most 5 minutes in the future.", "timestamp"
        )
    customer_key = meter["customer_mapping"]["event_payload_key"]
    value_key = meter["value_settings"]["event_payload_key"]
    if customer_key not in payload:
        raise MeterEventInvalid(
            "meter_event_no_customer_defined",
            f"Customer mapping key {customer_key} not found in payload.",
            f"payload[{customer_key}]",
        )
    customer_id = str(payload[customer_key])
    if state.find("customer", customer_id) is None:
        raise MeterEventInvalid(
            "meter_event_customer_not_found", f"No such customer: '{customer_id}'", f"payload[{customer_key}]"
        )
    if value_key not in payload:
        raise MeterEventInvalid(
            "meter_event_value_not_found", f"Value key {value_key} not found in payload.", f"payload[{value_key}]"
        )
    try:
        value = Decimal(str(payload[value_key]))
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise MeterEventInvalid(
            "meter_event_invalid_value",
            f"Value `{payload[value_key]}` for key {value_key} is not a number.",
            f"payload[{value_key}]",
        )
    if state.recent_identifier(identifier, within=IDENTIFIER_WINDOW) is not None:
        raise MeterEventInvalid(
            "duplicate_meter_event",
            f"A meter event with identifier `{identifier}` was already received in the last 24 hours.",
            "identifier",
        )
    return meter, customer_id, value


def accept_meter_event(
    state: FakeState,
    *,
    event_name: str,
    payload: dict[str, Any],
    timestamp: int,
    identifier: str,
    source: str,
) -> MeterEventRecord:
    meter, customer_id, value = check_meter_event(state, event_name, payload, timestamp, identifier)
    record = MeterEventRecord(
        identifier=identifier,
        event_name=event_name,
        payload=dict(payload),
        timestamp=timestamp,
        received_at=state.now(),
        meter_id=meter["id"],
        customer_id=customer_id,
        value=value,
        source=source,
    )
    state.meter_events.append(record)
    return record


# -- meters -----------------------------------------------------------------------------------------


@ROUTER.post("/v1/billing/meters", params=pb.MeterCreateParams)
def create_meter(ctx: Ctx) -> dict[str, Any]:
    params = ctx.params
    if ctx.state.active_meter_for(params["event_name"]) is not None:
        raise StripeAPIError.invalid(
            f"An active meter with event_name `{params['event_name']}` already exists.", param="event_name"
        )
    mapping = params.get("customer_mapping") or {}
    value_settings = params.get("value_settings") or {}
    now = ctx.now
    meter = ctx.state.base_object(
        "mtr",
        "billing.meter",
        customer_mapping={
            "event_payload_key": mapping.get("event_payload_key", "stripe_customer_id"),
            "type": mapping.get("type", "by_id"),
        },
        default_aggregation={"formula": params["default_aggregation"]["formula"]},
        display_name=params["display_name"],
        event_name=params["event_name"],
        event_time_window=params.get("event_time_window"),
        status="active",
        status_transitions={"deactivated_at": None},
        updated=now,
        value_settings={"event_payload_key": value_settings.get("event_payload_key", "value")},
    )
    ctx.state.insert("billing.meter", meter)
    ctx.event("billing.meter.created", meter)
    return meter


@ROUTER.get("/v1/billing/meters/{id}", params=pb.MeterRetrieveParams)
def retrieve_meter(ctx: Ctx) -> dict[str, Any]:
    return ctx.state.get("billing.meter", ctx.path_params["id"], label="billing meter")


@ROUTER.post("/v1/billing/meters/{id}", params=pb.MeterUpdateParams)
def update_meter(ctx: Ctx) -> dict[str, Any]:
    meter = ctx.state.get("billing.meter", ctx.path_params["id"], label="billing meter")
    before = deep_copy(meter)
    if "display_name" in ctx.params:
        meter["display_name"] = ctx.params["display_name"]
    previous = changed(before, meter)
    if previous:
        meter["updated"] = ctx.now
        ctx.event("billing.meter.updated", meter, previous)
    return meter


def _set_status(ctx: Ctx, status: str) -> dict[str, Any]:
    meter = ctx.state.get("billing.meter", ctx.path_params["id"], label="billing meter")
    if meter["status"] == status:
        raise StripeAPIError.business(f"The meter {meter['id']} is already {status}.")
    if status == "active" and ctx.state.active_meter_for(meter["event_name"]) is not None:
        raise StripeAPIError.business(f"An active meter with event_name `{meter['event_name']}` already exists.")
    before = deep_copy(meter)
    meter["status"] = status
    meter["status_transitions"] = {"deactivated_at": ctx.now if status == "inactive" else None}
    meter["updated"] = ctx.now
    ctx.event(
        "billing.meter.deactivated" if status == "inactive" else "billing.meter.reactivated",
        meter,
        changed(before, meter),
    )
    return meter


@ROUTER.post("/v1/billing/meters/{id}/deactivate", params=pb.MeterDeactivateParams)
def deactivate_meter(ctx: Ctx) -> dict[str, Any]:
    return _set_status(ctx, "inactive")


@ROUTER.post("/v1/billing/meters/{id}/reactivate", params=pb.MeterReactivateParams)
def reactivate_meter(ctx: Ctx) -> dict[str, Any]:
    return _set_status(ctx, "active")


@ROUTER.get("/v1/billing/meters", params=pb.MeterListParams)
def list_meters(ctx: Ctx) -> dict[str, Any]:
    items = ctx.state.all("billing.meter")
    if "status" in ctx.params:
        items = [m for m in items if m["status"] == ctx.params["status"]]
    return paginate(ctx, items, "/v1/billing/meters")


# -- meter events -----------------------------------------------------------------------------------


@ROUTER.post("/v1/billing/meter_events", params=pb.MeterEventCreateParams)
def create_meter_event(ctx: Ctx) -> dict[str, Any]:
    params = ctx.params
    identifier = params.get("identifier") or new_id("mev", 20)
    timestamp = params.get("timestamp", ctx.now)
    try:
        record = accept_meter_event(
            ctx.state,
            event_name=params["event_name"],
            payload=params["payload"],
            timestamp=timestamp,
            identifier=identifier,
            source="v1",
        )
    except MeterEventInvalid as exc:
        if exc.code == "duplicate_meter_event":
            raise duplicate_identifier(ctx.state, identifier) from None
        raise StripeAPIError.business(exc.message, param=exc.param, code=exc.code) from None
    return {
        "object": "billing.meter_event",
        "created": record.received_at,
        "event_name": record.event_name,
        "identifier": record.identifier,
        "livemode": False,
        "payload": record.payload,
        "timestamp": record.timestamp,
    }


def duplicate_identifier(state: FakeState, identifier: str) -> StripeAPIError:
    """Stripe's synchronous v1 answer to an identifier it already holds: a 400 whose message says so,
    without the `duplicate_meter_event` code of the asynchronous error reports (unless the test set
    `state.duplicate_identifier_code`), marked not retryable."""
    error = StripeAPIError.business(
        f"An event already exists with identifier {identifier}.", code=state.duplicate_identifier_code
    )
    error.headers["Stripe-Should-Retry"] = "false"
    return error


def cancel_meter_event(state: FakeState, event_name: str, identifier: str) -> MeterEventInvalid | None:
    """Cancel the event with ``identifier``; returns why it cannot be cancelled, if so."""
    for record in reversed(state.meter_events):
        if record.identifier == identifier and record.event_name == event_name:
            if record.received_at <= state.now() - ADJUSTMENT_WINDOW:
                return MeterEventInvalid(
                    "meter_event_adjustment_too_late",
                    "Meter events can only be cancelled within 24 hours of Stripe receiving them.",
                    "cancel[identifier]",
                )
            if record.cancelled:
                return MeterEventInvalid(
                    "meter_event_already_cancelled",
                    f"The meter event `{identifier}` is already cancelled.",
                    "cancel[identifier]",
                )
            record.cancelled = True
            return None
    return MeterEventInvalid(
        "meter_event_not_found",
        f"No meter event with identifier `{identifier}` for event_name `{event_name}`.",
        "cancel[identifier]",
    )


@ROUTER.post("/v1/billing/meter_event_adjustments", params=pb.MeterEventAdjustmentCreateParams)
def create_adjustment(ctx: Ctx) -> dict[str, Any]:
    params = ctx.params
    identifier = (params.get("cancel") or {}).get("identifier")
    if not identifier:
        raise StripeAPIError.invalid(
            "Missing required param: cancel[identifier].", param="cancel[identifier]", code="parameter_missing"
        )
    problem = cancel_meter_event(ctx.state, params["event_name"], identifier)
    if problem is not None:
        raise StripeAPIError.business(problem.message, param=problem.param, code=problem.code)
    return {
        "id": new_id("mtradj"),
        "object": "billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "event_name": params["event_name"],
        "livemode": False,
        "status": "pending",
        "type": "cancel",
    }


# -- event summaries --------------------------------------------------------------------------------

_WINDOWS = {"hour": 3600, "day": 86_400}


@ROUTER.get("/v1/billing/meters/{id}/event_summaries", params=pb.MeterEventSummaryListParams)
def list_event_summaries(ctx: Ctx) -> dict[str, Any]:
    meter = ctx.state.get("billing.meter", ctx.path_params["id"], label="billing meter")
    params = ctx.params
    ctx.state.get("customer", params["customer"], label="customer", param="customer")
    start, end = params["start_time"], params["end_time"]
    window = params.get("value_grouping_window")
    step = _WINDOWS.get(window, 60) if window else 60
    for name, value in (("start_time", start), ("end_time", end)):
        if value % step:
            unit = window or "minute"
            raise StripeAPIError.invalid(f"`{name}` must be aligned with {unit} boundaries.", param=name)
    if start >= end:
        raise StripeAPIError.invalid("`start_time` must be before `end_time`.", param="start_time")
    bounds = [(start, end)] if not window else [(t, min(t + step, end)) for t in range(start, end, step)]
    summaries = []
    for lo, hi in bounds:
        digest = hashlib.sha256(f"{meter['id']}|{params['customer']}|{lo}|{hi}".encode()).hexdigest()[:24]
        summaries.append(
            {
                "id": f"mtrusum_{digest}",
                "object": "billing.meter_event_summary",
                "aggregated_value": ctx.state.summarize(meter["id"], params["customer"], lo, hi),
                "end_time": hi,
                "livemode": False,
                "meter": meter["id"],
                "start_time": lo,
            }
        )
    return paginate(ctx, summaries, f"/v1/billing/meters/{meter['id']}/event_summaries", filter_created=False)
