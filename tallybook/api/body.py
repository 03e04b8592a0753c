"""Reading request bodies within the configured size limit, and decoding exact JSON.

A body may come gzip-compressed (`Content-Encoding: gzip`, as batching clients send it). The limit
then holds for the compressed bytes and for what they decompress to, checked as it decompresses,
so a small body that expands to gigabytes is refused after `limit` bytes of output, not after
filling memory.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from fastapi import Request

from tallybook import jsonutil
from tallybook.api.problems import Problem
from tallybook.ingest.limits import MAX_JSON_DEPTH


async def read_limited_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(413, "too-large", f"the body is {declared} bytes; the limit is {limit} bytes per request")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise Problem(
            415, "unsupported-content-encoding", f"Content-Encoding {encoding!r} is not supported; send gzip or none"
        )
    # wbits 16 + MAX_WBITS: the gzip container, as Content-Encoding: gzip means.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    chunks: list[bytes] = []
    size = 0
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise Problem(413, "too-large", f"the body exceeds the limit of {limit} bytes per request")
        if inflater is not None:
            try:
                chunk = inflater.decompress(chunk, limit - size + 1)
            except zlib.error as exc:
                raise Problem(400, "malformed-body", f"the body is not valid gzip: {exc}") from None
            if inflater.unconsumed_tail:
                chunk = b""
                size = limit + 1  # more output than the limit allows is waiting
        size += len(chunk)
        if size > limit:
            raise Problem(413, "too-large", f"the body decompresses to more than {limit} bytes, the limit per request")
        chunks.append(chunk)
    if inflater is not None and not inflater.eof:
        raise Problem(400, "malformed-body", "the gzip body ends before its end marker; send the whole stream")
    return b"".join(chunks)


def decode_json(body: bytes, max_depth: int | None = MAX_JSON_DEPTH, keep_refusals: bool = False) -> Any:
    """The body as exact JSON, or a 400 saying what is wrong with it.

    Valid JSON can still be refused (jsonutil.loads_request: numbers PostgreSQL cannot store,
    U+0000, lone surrogates, nesting deeper than `max_depth`): a "json-limit" problem naming where,
    or with `keep_refusals` the JsonRefused itself, for callers that name fields their own way.
    """
    if not body.strip():
        raise Problem(400, "malformed-json", "the body is empty; send a JSON document")
    try:
        return jsonutil.loads_request(body, max_depth)
    except jsonutil.JsonRefused as exc:
        if keep_refusals:
            raise
        raise Problem(
            400,
            "json-limit",
            f"the body is JSON that Tallybook does not accept: {exc}",
            errors=[{"field": jsonutil.show_path(path), "message": why} for path, why in exc.problems],
        ) from None
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
