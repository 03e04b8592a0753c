"""Small builders shared by tests."""

from __future__ import annotations

from typing import Any

import orjson

SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


def cloudevent(event_id: str, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": "svc",
        "type": "api.calls",
        "subject": "cust_1",
        "time": "2026-01-05T10:00:00Z",
        "data": {"value": 1},
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not ...}


def headers(key: str, content_type: str | None = None) -> dict[str, str]:
    result = {"Authorization": f"Bearer {key}"}
    if content_type:
        result["Content-Type"] = content_type
    return result


def body(value: Any) -> bytes:
    return orjson.dumps(value)
