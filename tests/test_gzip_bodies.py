"""Request bodies may come gzip-compressed (Content-Encoding: gzip), as batching clients send them;
the size limit holds for what they decompress to (both engines)."""

from __future__ import annotations

import gzip
import json
import zlib

from tests.conftest import auth

BATCH = "application/cloudevents-batch+json"


def events(n: int, start: int = 0) -> list[dict[str, object]]:
    return [
        {"specversion": "1.0", "id": f"gz-{i}", "source": "app", "type": "api.calls", "subject": "acme",
         "time": "2026-01-05T10:00:00Z", "data": {"value": 1}}
        for i in range(start, start + n)
    ]  # fmt: skip


def post(client, keys, body: bytes, encoding: str | None = "gzip"):
    headers = {**auth(keys["ingest"]), "Content-Type": BATCH}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return client.post("/api/v1/events", content=body, headers=headers)


def stored_ids(client, keys) -> set[str]:
    listed = client.get("/api/v1/events", params={"subject": "acme", "limit": 1000}, headers=auth(keys["read"]))
    assert listed.status_code == 200, listed.text
    return {item["event"]["id"] for item in listed.json()}


def test_a_gzip_batch_is_ingested_like_a_plain_one(client, keys):
    assert post(client, keys, gzip.compress(json.dumps(events(50)).encode())).status_code == 204
    assert post(client, keys, json.dumps(events(5, start=50)).encode(), encoding=None).status_code == 204
    assert post(client, keys, json.dumps(events(5, start=55)).encode(), encoding="identity").status_code == 204
    assert stored_ids(client, keys) == {f"gz-{i}" for i in range(60)}


def test_a_small_body_that_inflates_past_the_limit_is_refused(client, keys, runtime):
    limit = runtime.settings.ingest.max_batch_bytes
    bomb = gzip.compress(b"[" + b" " * (limit + 10) + b"]", compresslevel=9)
    assert len(bomb) < limit // 100  # a few kilobytes on the wire
    response = post(client, keys, bomb)
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == f"the body decompresses to more than {limit} bytes, the limit per request"
    assert stored_ids(client, keys) == set()


def test_broken_or_unknown_encodings_are_refused_with_what_to_fix(client, keys):
    garbage = post(client, keys, b"not gzip at all")
    assert garbage.status_code == 400 and garbage.json()["type"] == "urn:tallybook:problem:malformed-body"
    cut = gzip.compress(json.dumps(events(3)).encode())[:-12]
    truncated = post(client, keys, cut)
    assert truncated.status_code == 400
    assert truncated.json()["detail"] == "the gzip body ends before its end marker; send the whole stream"
    brotli = post(client, keys, zlib.compress(b"[]"), encoding="br")
    assert brotli.status_code == 415
    assert brotli.json()["detail"] == "Content-Encoding 'br' is not supported; send gzip or none"
    assert stored_ids(client, keys) == set()
