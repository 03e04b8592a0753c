"""API key authentication: `Authorization: Bearer <key>` or `x-apikey: <key>` (codehooks)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from tallybook.api.problems import Problem
from tallybook.auth.keys import Scope, scope_allows
from tallybook.auth.model import ApiKeyRecord


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-apikey") or None


class ApiKeyScope:
    """A FastAPI dependency that admits keys whose scope allows `scope` (admin allows all). A class,
    not a closure, so that the OpenAPI document can tell which operations need a key."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, request: Request) -> ApiKeyRecord:
        scope = self.scope
        secret = presented_key(request)
        if secret is None:
            raise Problem(401, "unauthenticated", "send an API key as 'Authorization: Bearer <key>' or 'x-apikey'")
        keys = request.app.state.runtime.keys
        # The cache answers most requests without leaving the event loop; a miss reads the store.
        hit, record = keys.cached(secret)
        if not hit:
            record = await run_in_threadpool(keys.verify, secret)
        if record is None:
            raise Problem(401, "unauthenticated", "the API key is unknown or revoked")
        if not scope_allows(record.scope, scope):
            needed = "'admin'" if scope == "admin" else f"'{scope}' or 'admin'"
            raise Problem(
                403,
                "forbidden",
                f"this key has scope '{record.scope}'; this endpoint needs {needed}",
            )
        return record


def require(scope: Scope) -> Callable[[Request], Awaitable[ApiKeyRecord]]:
    """The dependency admitting keys whose scope allows `scope`."""
    return ApiKeyScope(scope)
