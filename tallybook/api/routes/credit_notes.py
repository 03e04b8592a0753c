"""Credit notes: /api/v1/billing/credit-notes (list, one as JSON or a printable HTML page)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from tallybook.api.ingesting import runtime_of
from tallybook.api.openapi import responses
from tallybook.api.problems import Problem
from tallybook.api.render import json_response
from tallybook.api.security import require
from tallybook.api.wire.credit_notes import CreditNote as CreditNoteShape
from tallybook.api.wire.credit_notes import CreditNotePage
from tallybook.auth.model import ApiKeyRecord
from tallybook.creditnotes.export import credit_note_html, credit_note_json
from tallybook.creditnotes.model import STATUSES, CreditNote, CreditNoteQuery

router = APIRouter(prefix="/api/v1/billing", tags=["credit notes"])
JSON_MEDIA_TYPE = "application/json"
_HTML = {"text/html": {"schema": {"type": "string"}}}


def _wants_html(request: Request, format_: str | None) -> bool:
    if format_ is not None:
        return format_ == "html"
    accept = request.headers.get("accept", "")
    return "text/html" in accept and JSON_MEDIA_TYPE not in accept


async def _external(request: Request, notes: list[CreditNote]) -> dict[str, dict[str, Any]]:
    """Where Stripe holds these credit notes (`externalIds`, `sync`)."""
    return await run_in_threadpool(runtime_of(request).credit_note_sync.external_of, [n.id for n in notes])


@router.get("/credit-notes", response_class=Response, responses=responses(CreditNotePage, 404))
async def list_credit_notes(
    request: Request,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    customerId: str | None = None,
    invoiceId: str | None = None,
    status: Annotated[list[str] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    """Credit notes, newest first; filter by customer (id or key), invoice and `status` (repeatable)."""
    for value in status or ():
        if value not in STATUSES:
            raise Problem(400, "invalid-parameters", f"status: must be one of {', '.join(STATUSES)}, got {value!r}")
    runtime = runtime_of(request)
    query = CreditNoteQuery(
        invoice_id=invoiceId, statuses=tuple(status) if status else None, limit=limit, offset=offset
    )
    total, found = await run_in_threadpool(runtime.credit_notes.search, query, customerId)
    external = await _external(request, found)
    items = [credit_note_json(n, external.get(n.id)) for n in found]
    return json_response({"totalCount": total, "limit": limit, "offset": offset, "items": items})


async def _one(request: Request, credit_note_id: str, html: bool) -> Response:
    note = await run_in_threadpool(runtime_of(request).credit_notes.get, credit_note_id)
    if html:
        return Response(credit_note_html(note), media_type="text/html; charset=utf-8")
    return json_response(credit_note_json(note, (await _external(request, [note])).get(note.id)))


@router.get(
    "/credit-notes/{creditNoteId}",
    response_class=Response,
    responses=responses(CreditNoteShape, 404, content=_HTML),
)
async def get_credit_note(
    request: Request,
    creditNoteId: str,
    _key: Annotated[ApiKeyRecord, Depends(require("read"))],
    format: Annotated[str | None, Query(pattern="^(json|html)$")] = None,
) -> Response:
    """One credit note as JSON, or as a printable HTML page (`?format=html` or `Accept: text/html`)."""
    return await _one(request, creditNoteId, _wants_html(request, format))


@router.get("/credit-notes/{creditNoteId}/html", response_class=Response, responses=responses(None, 404, content=_HTML))
async def get_credit_note_html(
    request: Request, creditNoteId: str, _key: Annotated[ApiKeyRecord, Depends(require("read"))]
) -> Response:
    """The printable page (print it to PDF from the browser)."""
    return await _one(request, creditNoteId, True)
