"""RFC 9457 problem details: every 4xx/5xx answers application/problem+json saying what to fix."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tallybook import jsonutil
from tallybook.errors import DomainError

PROBLEM_TYPE_BASE = "urn:tallybook:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# The codehooks template's routes: its clients read the message from `error`.
CODEHOOKS_PATHS = ("/usage", "/usagebatch", "/events", "/aggregations")


class Problem(Exception):
    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra


def problem_response(
    request: Request, status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": PROBLEM_TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    # The codehooks template's clients read `error`; keep them working on its routes.
    if request.url.path.startswith(CODEHOOKS_PATHS):
        body.setdefault("error", detail)
    return Response(jsonutil.dumpb(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _retry_after(extra: dict[str, Any]) -> dict[str, str] | None:
    """A problem that says when to retry (e.g. a meter still being built, 503) says it in the header too."""
    seconds = extra.get("retryAfterSeconds")
    return {"Retry-After": str(seconds)} if isinstance(seconds, int) else None


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else _retry_after(exc.extra)
        return problem_response(request, exc.status, exc.code, exc.detail, headers=headers, **exc.extra)

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> Response:
        return problem_response(request, exc.status, exc.code, exc.detail, _retry_after(exc.extra), **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"field": ".".join(str(p) for p in err["loc"][1:]) or str(err["loc"][0]), "message": err["msg"]}
            for err in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(request, 400, "invalid-parameters", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return problem_response(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return problem_response(request, 500, "internal", "unexpected server error; it has been logged")
