"""docs/refusals.md cannot drift: every row's limit is computed from tallybook/ingest/limits.py (or the
default settings), and its example request, sent to the real app on both engines, must be answered
with exactly the status, problem type and message the row shows.

To add a row: add it to the table in docs/refusals.md and a case here with the same first column.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tallybook.config import IngestSettings
from tallybook.ingest import limits
from tests.helpers import BATCH, SINGLE, body, cloudevent, headers

DOC = Path(__file__).resolve().parent.parent / "docs" / "refusals.md"
CODEHOOKS = "application/json"


def _ingest(content: bytes, content_type: str = SINGLE, path: str = "/api/v1/events") -> Callable[..., Any]:
    def send(client: Any, keys: dict[str, str]) -> Any:
        return client.post(path, content=content, headers=headers(keys["ingest"], content_type))

    return send


def _get(path: str, scope: str = "read") -> Callable[..., Any]:
    def send(client: Any, keys: dict[str, str]) -> Any:
        return client.get(path, headers=headers(keys[scope]))

    return send


def _raw(data: str) -> bytes:
    return body(cloudevent("e1"))[: -len(b',"data":{"value":1}}')] + b',"data":' + data.encode() + b"}"


# First column of the table -> (what the Limit column must say, the example request).
CASES: dict[str, tuple[str, Callable[..., Any]]] = {
    "Event key length (`id`, `source`, `type`, `subject`; codehooks `customerId`, `eventType`, `id`)": (
        f"{limits.MAX_KEY_BYTES:,} bytes in UTF-8",
        _ingest(body(cloudevent("x" * (limits.MAX_KEY_BYTES + 1)))),
    ),
    "U+0000 anywhere in text (keys, values, `data` keys)": (
        "none allowed",
        _ingest(body(cloudevent("e1", subject="a\x00"))),
    ),
    "Unpaired UTF-16 surrogate escape": ("none allowed", _ingest(body(cloudevent("e1"))[:-2] + b',"k":"\\ud800"}}')),
    "Nesting depth of a request body": (
        f"{limits.MAX_JSON_DEPTH} levels of arrays and objects",
        _ingest(_raw('{"x": ' + "[" * limits.MAX_JSON_DEPTH + "]" * limits.MAX_JSON_DEPTH + "}")),
    ),
    "Any number, anywhere in a request": (
        f"{limits.MAX_NUMBER_INTEGER_DIGITS:,} digits before the decimal point, "
        f"{limits.MAX_NUMBER_FRACTION_DIGITS:,} after it",
        _ingest(_raw('{"note": 1e999999999}')),
    ),
    "A number a meter counts (`valueProperty` of SUM, AVG, MIN, MAX, LATEST, FIRST; codehooks `value`)": (
        f"-10^{limits.METERED_INTEGER_DIGITS} < v < 10^{limits.METERED_INTEGER_DIGITS}, "
        f"at most {limits.METERED_FRACTION_DIGITS} digits after the point",
        _ingest(_raw('{"value": 1e15}')),
    ),
    "Text a meter groups or counts by (`groupBy` values, UNIQUE_COUNT `valueProperty`)": (
        f"{limits.MAX_METERED_TEXT_BYTES:,} bytes in UTF-8",
        _ingest(body(cloudevent("e1", data={"value": 1, "model": "m" * (limits.MAX_METERED_TEXT_BYTES + 1)}))),
    ),
    "Event `time` (codehooks `timestamp`)": (
        f"{limits.EVENT_TIME_MIN:%Y-%m-%d} to {limits.EVENT_TIME_MAX_EXCLUSIVE:%Y-%m-%d} (exclusive), UTC",
        _ingest(body(cloudevent("e1", time="1969-12-31T23:59:59Z"))),
    ),
    "Event `time` format": ("RFC 3339 with an offset", _ingest(body(cloudevent("e1", time="20260105T100000Z")))),
    "Date-time query parameters (`from`, `to`, `asOf`, `at`, `ingestedAtFrom`, …)": (
        "RFC 3339 with an offset",
        _get("/api/v1/events?from=0.067"),
    ),
    "`page` of paginated lists": (
        f"1 to {limits.MAX_PAGE:,}",
        _get("/api/v1/notification/events?page=1000001", "admin"),
    ),
    "`pageSize` of paginated lists": (
        f"1 to {limits.MAX_PAGE_SIZE:,}",
        _get("/api/v1/notification/events?pageSize=1001", "admin"),
    ),
    "Events per ingest request": (
        f"{IngestSettings().max_batch_events:,} (`ingest.max_batch_events`)",
        _ingest(body([cloudevent(f"e{i}", data=...) for i in range(IngestSettings().max_batch_events + 1)]), BATCH),
    ),
    "Ingest request body size": (
        f"{IngestSettings().max_batch_bytes:,} bytes (`ingest.max_batch_bytes`)",
        _ingest(b"[" + b" " * IngestSettings().max_batch_bytes + b"]", BATCH),
    ),
    "Body that is not JSON": ("-", _ingest(b'{"id": ')),
    "Content-Type of `POST /api/v1/events`": ("the three CloudEvents JSON types", _ingest(b"{}", "text/plain")),
    "codehooks `value`": (
        "as a number a meter counts",
        _ingest(b'{"customerId": "c", "value": 0.0000001}', CODEHOOKS, "/usage/api.calls"),
    ),
}

_ROW = re.compile(r"^\|(?P<cells>.+)\|\s*$")


def doc_rows() -> dict[str, dict[str, str]]:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index("<!-- refusals:start -->")
    end = lines.index("<!-- refusals:end -->")
    table = [line for line in lines[start + 1 : end] if _ROW.match(line)]
    header = [cell.strip() for cell in table[0].strip("|").split(" | ")]
    rows = {}
    for line in table[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == len(header), f"a row of docs/refusals.md has {len(cells)} cells: {line}"
        row = dict(zip(header, cells, strict=True))
        rows[row["Refused"]] = row
    return rows


def _unquote(cell: str) -> str:
    assert cell.startswith("`") and cell.endswith("`"), f"quote the exact message in backticks: {cell}"
    return cell[1:-1]


def test_every_row_has_a_case_and_every_case_a_row():
    rows = doc_rows()
    assert sorted(rows) == sorted(CASES), "docs/refusals.md and CASES must list the same refusals"
    for name, (limit, _send) in CASES.items():
        assert rows[name]["Limit"] == limit, f"{name}: the Limit column must say {limit!r} (limits.py)"


METER = {
    "slug": "calls",
    "name": "API calls",
    "eventType": "api.calls",
    "aggregation": "SUM",
    "valueProperty": "$.value",
    "groupBy": {"model": "$.model"},
}


def answer(client: Any, keys: dict[str, str], name: str) -> Any:
    created = client.post("/api/v1/meters", json=METER, headers=headers(keys["admin"]))
    assert created.status_code == 201, created.text
    return CASES[name][1](client, keys)


@pytest.mark.parametrize("name", list(CASES))
def test_each_refusal_is_answered_as_documented(client, keys, runtime, name):
    row = doc_rows()[name]
    response = answer(client, keys, name)
    problem = response.json()
    message = problem["errors"][0]["message"] if problem.get("errors") else problem["detail"]
    assert (response.status_code, problem["type"], message) == (
        int(row["Status"]),
        "urn:tallybook:problem:" + _unquote(row["Problem type"]),
        _unquote(row["Message"]),
    )


def test_the_domain_argument_holds_for_the_decimal_context_in_use():
    """Totals are exact only while the digits a total needs fit the context sums run in."""
    from decimal import Decimal, getcontext

    assert getcontext().prec == limits.DECIMAL_CONTEXT_DIGITS
    largest = Decimal(10) ** limits.METERED_INTEGER_DIGITS - limits.METERED_QUANTUM  # 999999999999.999999
    # That many events at the largest value, counted exactly in millionths (Python ints never round).
    millionths = (10 ** (limits.METERED_INTEGER_DIGITS + limits.METERED_FRACTION_DIGITS) - 1) * limits.EXACT_SUM_EVENTS
    assert len(str(millionths)) <= limits.DECIMAL_CONTEXT_DIGITS
    assert largest * limits.EXACT_SUM_EVENTS == Decimal(millionths).scaleb(-limits.METERED_FRACTION_DIGITS)
    text = DOC.read_text(encoding="utf-8")
    digits = limits.DECIMAL_CONTEXT_DIGITS - limits.METERED_INTEGER_DIGITS - limits.METERED_FRACTION_DIGITS
    assert f"10^{digits} events" in text
    assert f"{limits.METERED_INTEGER_DIGITS} + {limits.METERED_FRACTION_DIGITS} + {digits} = 28" in text
