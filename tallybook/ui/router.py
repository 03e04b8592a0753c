"""Serves the dashboard (/ui), the customer portal page (/portal) and their static files.

The pages are static: they hold no data and no secrets. Their scripts call the JSON API with the
credential the visitor brings (an admin API key on /ui, a portal token on /portal).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, RedirectResponse, Response

from tallybook.api.problems import Problem

STATIC_DIR = (Path(__file__).parent / "static").resolve()

router = APIRouter(include_in_schema=False)

_CSP_COMMON = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'"
)
# The dashboard must not be framed (clickjacking); the portal page is made to be embedded.
DASHBOARD_HEADERS = {
    "Content-Security-Policy": _CSP_COMMON + "; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
# The token travels in the page URL, so the page never sends a Referer anywhere.
PORTAL_HEADERS = {
    "Content-Security-Policy": _CSP_COMMON,
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


@router.get("/")
async def root() -> Response:
    """The address the server prints: a person who opens it lands on the dashboard's sign-in."""
    return RedirectResponse("/ui", status_code=307)


@router.get("/docs")
async def api_docs() -> Response:
    """Swagger UI from the package's own copy of its assets (FastAPI's default loads them from a
    CDN: a blank page offline or behind a strict proxy)."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="Tallybook API",
        swagger_js_url="/ui/static/vendor/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url="/ui/static/vendor/swagger-ui/swagger-ui.css",
        swagger_favicon_url="/ui/static/vendor/swagger-ui/favicon-32x32.png",
    )


@router.get("/ui")
async def dashboard() -> Response:
    return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html", headers=DASHBOARD_HEADERS)


@router.get("/ui/")
async def dashboard_slash() -> Response:
    return RedirectResponse("/ui", status_code=308)


@router.get("/portal")
async def portal_page() -> Response:
    return FileResponse(STATIC_DIR / "portal.html", media_type="text/html", headers=PORTAL_HEADERS)


@router.get("/ui/static/{path:path}")
async def static_file(path: str) -> Response:
    target = (STATIC_DIR / path).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file() or target.suffix == ".html":
        raise Problem(404, "not-found", f"no static file {path!r}")
    media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if target.suffix == ".js":
        media_type = "text/javascript"
    return FileResponse(target, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})
