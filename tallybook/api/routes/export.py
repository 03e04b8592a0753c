"""Data export as a download: GET /api/v1/export/{kind}?from=&to=&format=&meter= (admin keys).

The body streams as it is read from the database (see tallybook/ops/export.py), so an export of
any size holds one batch of rows in memory. Bad parameters are refused before the first byte.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tallybook.api.ingesting import runtime_of
from tallybook.api.params import Instant, instant_micros
from tallybook.api.security import require
from tallybook.auth.model import ApiKeyRecord
from tallybook.ops.export import MEDIA_TYPES, ExportFormat, ExportKind, ExportRequest
from tallybook.ops.sql_export import prepare

router = APIRouter(prefix="/api/v1/export", tags=["export"])

Admin = Annotated[ApiKeyRecord, Depends(require("admin"))]


_DOWNLOAD: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The export file, streamed",
        "content": {
            media_type.split(";")[0]: {"schema": {"type": "string", "format": "binary"}}
            for media_type in MEDIA_TYPES.values()
        },
    }
}


@router.get("/{kind}", response_class=StreamingResponse, responses=_DOWNLOAD)
async def export(
    request: Request,
    kind: ExportKind,
    _key: Admin,
    from_: Annotated[Instant | None, Query(alias="from", description="inclusive (RFC 3339)")] = None,
    to: Annotated[Instant | None, Query(description="exclusive (RFC 3339)")] = None,
    format: Annotated[ExportFormat, Query(description="csv, jsonl or parquet")] = ExportFormat.CSV,
    meter: Annotated[str | None, Query(description="usage of this meter (slug) only")] = None,
) -> StreamingResponse:
    """Events (by event time), meter usage (one row per event and meter) or invoices (by period
    start) as CSV, JSON Lines or Parquet. Decimals are strings; see docs/operations.md."""
    wanted = ExportRequest(kind, format, instant_micros(from_, "from"), instant_micros(to, "to"), meter)
    job = await run_in_threadpool(prepare, runtime_of(request).store, wanted)
    return StreamingResponse(
        job.chunks(),
        media_type=job.media_type,
        headers={"Content-Disposition": f'attachment; filename="{wanted.filename}"'},
    )
