"""Refusals that hold for every route, before any route code runs.

U+0000 in a request's path or query: no stored text can hold it (ingest refuses it, and PostgreSQL
cannot store it in text at all), so no lookup by such an id or filter can ever match. Without this
guard, SQLite answered "not found" and PostgreSQL failed the statement (a 500) for the same
request; now both engines answer the same 400 for every route, including ones added later.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from tallybook import jsonutil
from tallybook.api.problems import CODEHOOKS_PATHS, PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_BASE


class RefuseNulCharacters:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            where = nul_in(scope)
            if where is not None:
                await _refuse(scope, send, where)
                return
        await self.app(scope, receive, send)


def nul_in(scope: Scope) -> str | None:
    """Where the request's path or query holds U+0000, or None."""
    if "\x00" in scope.get("path", ""):
        return "path"
    query: bytes = scope.get("query_string", b"")
    if b"\x00" in query or b"%00" in query.lower():
        return "query"
    return None


async def _refuse(scope: Scope, send: Send, where: str) -> None:
    detail = f"the request's {where} contains U+0000 (%00), which no id, key or filter value can hold; remove it"
    path = scope.get("path", "")
    problem = {
        "type": PROBLEM_TYPE_BASE + "invalid-characters",
        "title": "Bad Request",
        "status": 400,
        "detail": detail,
        "instance": path.replace("\x00", "\\u0000"),
    }
    if path.startswith(CODEHOOKS_PATHS):
        problem["error"] = detail  # the codehooks template's clients read `error`
    body = jsonutil.dumpb(problem)
    headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
