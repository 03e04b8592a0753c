"""Bulk import of events from JSON Lines or CSV files (`tallybook ingest FILE`).

Unlike the HTTP API, a file import skips bad records and reports them: one bad line among a
million should not stop the rest. Every record goes through the same validation as the API.

JSONL: one CloudEvent object per line; `specversion` defaults to "1.0" and `source` to --source.
CSV: a header row; columns `id`, `type`, `subject` required, `source` and `time` optional, `data`
optional (a JSON object). Any other column becomes a data field; numeric cells become exact
decimals ("0.1" stays 0.1), others stay strings, empty cells are left out.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from tallybook import jsonutil
from tallybook.ingest.events import Event, FieldError, cloudevent_from_json
from tallybook.ingest.limits import MAX_JSON_DEPTH

CSV_EVENT_COLUMNS = frozenset({"id", "source", "type", "subject", "time", "data", "specversion"})


@dataclass(frozen=True)
class FileRecord:
    line: int  # 1-based line number in the file (the header is line 1 for CSV)
    event: Event | None
    errors: list[FieldError]


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"{path.name}: cannot tell the format from the extension; use .jsonl or .csv")


def _number_or_text(cell: str) -> Any:
    try:
        number = Decimal(cell)
    except InvalidOperation:
        return cell
    # A number PostgreSQL's numeric cannot hold stays the text it was, as a non-number would.
    return number if jsonutil.number_problem(number) is None else cell


def _validate(raw: dict[str, Any], line: int, default_source: str, now_us: int) -> FileRecord:
    raw.setdefault("specversion", "1.0")
    if not raw.get("source"):
        raw["source"] = default_source
    errors: list[FieldError] = []
    event = cloudevent_from_json(raw, line, now_us, errors)
    return FileRecord(line, event, errors)


def _refusals(line: int, exc: jsonutil.JsonRefused, prefix: str) -> list[FieldError]:
    return [FieldError(line, prefix + jsonutil.show_path(path)[1:], why) for path, why in exc.problems]


def read_jsonl(stream: io.TextIOBase, default_source: str, now_us: int) -> Iterator[FileRecord]:
    for line_no, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            raw = jsonutil.loads_request(line, MAX_JSON_DEPTH)
        except jsonutil.JsonRefused as exc:
            yield FileRecord(line_no, None, _refusals(line_no, exc, "(line)"))
            continue
        except ValueError as exc:
            yield FileRecord(line_no, None, [FieldError(line_no, "(line)", f"not valid JSON: {exc}")])
            continue
        if not isinstance(raw, dict):
            yield FileRecord(line_no, None, [FieldError(line_no, "(line)", "must be a JSON object")])
            continue
        yield _validate(raw, line_no, default_source, now_us)


def read_csv(stream: io.TextIOBase, default_source: str, now_us: int) -> Iterator[FileRecord]:
    reader = csv.DictReader(stream)
    for row in reader:
        line_no = reader.line_num
        raw: dict[str, Any] = {k: v for k, v in row.items() if k in CSV_EVENT_COLUMNS and v not in (None, "")}
        data: dict[str, Any] = {}
        if "data" in raw:
            try:
                parsed = jsonutil.loads_request(raw.pop("data"), MAX_JSON_DEPTH - 1)
            except jsonutil.JsonRefused as exc:
                yield FileRecord(line_no, None, _refusals(line_no, exc, "data"))
                continue
            except ValueError as exc:
                yield FileRecord(line_no, None, [FieldError(line_no, "data", f"not valid JSON: {exc}")])
                continue
            if not isinstance(parsed, dict):
                yield FileRecord(line_no, None, [FieldError(line_no, "data", "must be a JSON object")])
                continue
            data.update(parsed)
        for column, cell in row.items():
            if column is None or column in CSV_EVENT_COLUMNS or cell in (None, ""):
                continue
            data[column] = _number_or_text(cell)
        if data:
            raw["data"] = data
        problems = [(column, jsonutil.text_problem(cell)) for column, cell in row.items() if isinstance(cell, str)]
        found = [FieldError(line_no, column or "(row)", why) for column, why in problems if why]
        if found:  # decoded UTF-8 holds no lone surrogate, but a CSV cell may hold a NUL byte
            yield FileRecord(line_no, None, found)
            continue
        yield _validate(raw, line_no, default_source, now_us)


def read_events(path: Path, stream: io.TextIOBase, default_source: str, now_us: int) -> Iterator[FileRecord]:
    if detect_format(path) == "csv":
        return read_csv(stream, default_source, now_us)
    return read_jsonl(stream, default_source, now_us)
