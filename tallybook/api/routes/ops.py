"""Liveness, readiness and Prometheus metrics (unauthenticated, like most scrapers expect)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from tallybook import jsonutil
from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import responses
from tallybook.api.wire.ops import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: a check failed"}},
)
async def readyz(request: Request) -> Response:
    """The store answers and the ingest writer runs: safe to send traffic."""
    runtime = runtime_of(request)
    checks: dict[str, str] = {}
    try:
        await run_in_threadpool(runtime.store.ping)
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"error: {type(exc).__name__}"
    checks["ingest"] = "ok" if runtime.ingest.running else "stopped"
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return Response(jsonutil.dumpb(body), status_code=200 if ready else 503, media_type="application/json")


@router.get(
    "/metrics",
    response_class=Response,
    responses=responses(
        content={CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, description="Prometheus text exposition"
    ),
)
async def metrics(request: Request) -> Response:
    return Response(runtime_of(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
