"""Reading request bodies within the configured size limit, and decoding exact JSON."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from tallybook import jsonutil
from tallybook.api.problems import Problem


async def read_limited_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(413, "too-large", f"the body is {declared} bytes; the limit is {limit} bytes per request")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, "too-large", f"the body exceeds the limit of {limit} bytes per request")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(body: bytes) -> Any:
    if not body.strip():
        raise Problem(400, "malformed-json", "the body is empty; send a JSON document")
    try:
        return jsonutil.loads(body)
    except json.JSONDecodeError as exc:
        raise Problem(
            400,
            "malformed-json",
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, "malformed-json", f"the body is not valid JSON: {exc}") from None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
