"""The FastAPI application factory."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import tallybook
from tallybook.api.fast_ingest import FastIngest
from tallybook.api.guards import RefuseNulCharacters
from tallybook.api.openapi import complete_openapi
from tallybook.api.problems import install_problem_handlers
from tallybook.api.routes import (
    aggregations,
    codehooks,
    customers,
    events,
    events_v2,
    export,
    info,
    invoice_tools,
    meter_values,
    meters,
    notifications,
    ops,
    overview,
    portal,
    subjects,
    voids,
)
from tallybook.api.routes import billing_profiles as profile_routes
from tallybook.api.routes import credit_notes as credit_note_routes
from tallybook.api.routes import entitlements as entitlement_routes
from tallybook.api.routes import features as feature_routes
from tallybook.api.routes import invoices as invoice_routes
from tallybook.api.routes import jobs as job_routes
from tallybook.api.routes import plans as plan_routes
from tallybook.api.routes import stripe as stripe_routes
from tallybook.api.routes import subscriptions as subscription_routes
from tallybook.observability.metrics import Metrics
from tallybook.runtime import Runtime
from tallybook.ui.router import router as ui_router


class RequestMetricsMiddleware:
    """Records latency per route template (not per raw path, to keep label cardinality bounded)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.request_seconds.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )


class TallybookAPI(FastAPI):
    """FastAPI, with the common ingest request answered before the middleware stack
    (`fast_ingest.FastIngest`, which hands every other request back to the whole app)."""

    fast_ingest: FastIngest | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_ingest
        if fast is not None and fast.claims(scope):
            scope["app"] = self
            await fast(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def whole(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app with its middleware stack, for what the fast path leaves."""
        await super().__call__(scope, receive, send)


def create_app(runtime: Runtime, manage_runtime: bool = True) -> FastAPI:
    """Build the app around a runtime. With manage_runtime, app startup/shutdown starts/stops it."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_runtime:
            runtime.start()
        try:
            yield
        finally:
            if manage_runtime:
                runtime.stop()

    app = TallybookAPI(
        title="Tallybook",
        version=tallybook.__version__,
        description="Usage metering and billing. Event and meter APIs follow OpenMeter's where they overlap.",
        lifespan=lifespan,
        # /docs is served by tallybook.ui.router from packaged assets (no CDN: it works offline).
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    install_problem_handlers(app)
    app.include_router(ops.router)
    app.include_router(voids.router)
    app.include_router(events.router)
    app.include_router(events_v2.router)
    app.include_router(codehooks.router)
    app.include_router(meters.router)
    app.include_router(meter_values.router)
    app.include_router(info.router)
    app.include_router(aggregations.router)
    app.include_router(customers.router)
    app.include_router(stripe_routes.router)
    app.include_router(subjects.router)
    app.include_router(notifications.router)
    app.include_router(job_routes.router)
    app.include_router(plan_routes.router)
    app.include_router(subscription_routes.router)
    app.include_router(invoice_routes.router)
    app.include_router(invoice_tools.router)
    app.include_router(credit_note_routes.router)
    app.include_router(profile_routes.router)
    app.include_router(portal.router)
    app.include_router(overview.router)
    app.include_router(export.router)
    app.include_router(feature_routes.router)
    app.include_router(entitlement_routes.router)
    app.include_router(ui_router)
    app.fast_ingest = FastIngest(app.whole, runtime)
    app.add_middleware(RefuseNulCharacters)
    app.add_middleware(RequestMetricsMiddleware, metrics=runtime.metrics)
    app.openapi = lambda: complete_openapi(app, portal_dependencies=(portal.portal_holder,))  # type: ignore[method-assign]
    return app
