"""Test-only control endpoints under ``/_fake/`` (no authentication, not part of Stripe's API).

They mirror the Python controls on ``FakeStripeServer`` for code that only has the URL (for
example a Tallybook server running in a subprocess).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ..errors import StripeAPIError
from ..routes import ROUTER, Ctx


def _int(ctx: Ctx, name: str) -> int | None:
    value = ctx.params.get(name)
    if value is None:
        return None
    try:
        return int(Decimal(str(value)))
    except ArithmeticError:
        raise StripeAPIError.invalid(f"Invalid integer: {name}", param=name) from None


@ROUTER.get("/_fake/clock", auth="none")
def get_clock(ctx: Ctx) -> dict[str, Any]:
    return {"now": ctx.now}


@ROUTER.post("/_fake/clock", auth="none")
def set_clock(ctx: Ctx) -> dict[str, Any]:
    """``now=<unix>`` sets the clock; ``advance=<seconds>`` moves it forward."""
    now, advance = _int(ctx, "now"), _int(ctx, "advance")
    if now is not None:
        ctx.state.clock.set(now)
    if advance is not None:
        ctx.state.clock.advance(advance)
    return {"now": ctx.state.now()}


@ROUTER.post("/_fake/subscriptions/{id}/advance", auth="none")
def advance_subscription(ctx: Ctx) -> dict[str, Any]:
    """Renew a subscription into its next period; ``move_clock=true`` also sets the clock to the new
    period's start when the clock is behind it."""
    from .subscriptions import advance_period, render

    sub = ctx.state.get("subscription", ctx.path_params["id"], label="subscription")
    if ctx.params.get("move_clock") == "true":
        period_end = ctx.state.internal["subscriptions"][sub["id"]]["period_end"]
        if ctx.state.now() < period_end:
            ctx.state.clock.set(period_end)
    return render(advance_period(ctx.state, sub["id"]), ctx.api_version)


@ROUTER.post("/_fake/webhooks/deliver", auth="none", locked=False)
def deliver(ctx: Ctx) -> dict[str, Any]:
    """Deliver queued webhooks. Runs without the state lock, so a receiver may call the fake back
    (e.g. retrieve the subscription an event is about) before answering."""
    from ..webhooks import deliver_pending

    results = deliver_pending(ctx.state)
    return {
        "deliveries": [
            {"endpoint": d.endpoint_id, "event": d.event_id, "status": d.status, "error": d.error} for d in results
        ]
    }


@ROUTER.get("/_fake/meter_error_reports", auth="none")
def meter_error_reports(ctx: Ctx) -> dict[str, Any]:
    return {"data": list(ctx.state.meter_error_reports)}


@ROUTER.get("/_fake/meter_totals/{meter}", auth="none")
def meter_totals(ctx: Ctx) -> dict[str, Any]:
    """Exact aggregate for ``customer`` over ``[start_time, end_time)`` (defaults: all time)."""
    customer = ctx.params.get("customer")
    if not customer:
        raise StripeAPIError.invalid("Missing required param: customer.", param="customer", code="parameter_missing")
    start = _int(ctx, "start_time") or 0
    end = _int(ctx, "end_time") or 2**62
    return {"aggregated_value": ctx.state.summarize(ctx.path_params["meter"], customer, start, end)}


@ROUTER.post("/_fake/invoices/fail_next_payment", auth="none")
def fail_next_invoice_payment(ctx: Ctx) -> dict[str, Any]:
    """Make the next invoice payment attempt decline (``decline_code=``, default ``generic_decline``)."""
    ctx.state.invoice_payment_failures.append(str(ctx.params.get("decline_code") or "generic_decline"))
    return {"pending_failures": len(ctx.state.invoice_payment_failures)}


@ROUTER.post("/_fake/checkout/sessions/{id}/complete", auth="none")
def complete_checkout_session(ctx: Ctx) -> dict[str, Any]:
    """The customer completed the Checkout form (``payment_method=pm_...`` optional)."""
    from .checkout import complete_session

    return complete_session(
        ctx.state, ctx.path_params["id"], payment_method=ctx.params.get("payment_method"), request_id=ctx.request_id
    )
