"""Rendering answers: one JSON response for every route (exact decimals kept by jsonutil)."""

from __future__ import annotations

from typing import Any

from fastapi import Response

from tallybook import jsonutil

JSON = "application/json"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(jsonutil.dumpb(body), status_code=status, media_type=JSON, headers=headers)
