"""Data out: events, meter usage and invoices as CSV, JSON Lines or Parquet, streamed.

This module holds what an export is (kinds, formats, columns, the request) and the writers that
turn rows into bytes; `sql_export.py` reads the rows.
One export reads one snapshot (a single read transaction) through a streaming cursor: a
server-side cursor on PostgreSQL, SQLite's own row-at-a-time stepping, fetched `batch_rows` rows
at a time. Memory therefore stays flat whatever the row count: one batch of rows plus, for
Parquet, the row group being written (one row group per batch).

Exactness: no float ever carries a value. Usage values and money are written as decimal strings
in every format (Parquet too: a string column, because usage values have no fixed scale that a
DECIMAL(p, s) column could hold; cast in the reader, e.g. DuckDB's `value::DECIMAL(38, 9)`).
JSON columns (event `data`, usage `groups`, invoice `lines`) are the stored JSON text, verbatim:
a string in CSV and Parquet, embedded as JSON in JSON Lines. Instants are RFC 3339 UTC text in
CSV and JSON Lines, and timestamp[us, UTC] in Parquet.
"""

from __future__ import annotations

import csv
import io
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any

import orjson

from tallybook.errors import DomainError

BATCH_ROWS = 5_000
ROW_GROUP_ROWS = 100_000


class ExportKind(StrEnum):
    EVENTS = "events"
    USAGE = "usage"
    INVOICES = "invoices"


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"
    PARQUET = "parquet"


MEDIA_TYPES = {
    ExportFormat.CSV: "text/csv; charset=utf-8",
    ExportFormat.JSONL: "application/jsonl",
    ExportFormat.PARQUET: "application/vnd.apache.parquet",
}


class ExportError(DomainError):
    code = "invalid-export"


class ParquetUnavailable(ExportError):
    def __init__(self) -> None:
        super().__init__(
            "Parquet export needs pyarrow, which is not installed: pip install 'tallybook[parquet]' "
            "(or export as csv or jsonl)"
        )


# Column kinds: how a value is written. "json" values are stored JSON text.
INT, TEXT, TIME, DECIMAL, JSON = "int", "text", "time", "decimal", "json"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: str


COLUMNS: dict[ExportKind, tuple[Column, ...]] = {
    ExportKind.EVENTS: (
        Column("seq", INT),
        Column("source", TEXT),
        Column("id", TEXT),
        Column("type", TEXT),
        Column("subject", TEXT),
        Column("time", TIME),
        Column("ingested_at", TIME),
        Column("data", JSON),
        Column("datacontenttype", TEXT),
    ),
    ExportKind.USAGE: (
        Column("meter", TEXT),
        Column("subject", TEXT),
        Column("time", TIME),
        Column("event_seq", INT),
        Column("ingested_at", TIME),
        Column("value", DECIMAL),
        Column("unique_key", TEXT),
        Column("groups", JSON),
        Column("error", TEXT),
    ),
    ExportKind.INVOICES: (
        Column("id", TEXT),
        Column("customer_id", TEXT),
        Column("customer_key", TEXT),
        Column("customer_name", TEXT),
        Column("currency", TEXT),
        Column("kind", TEXT),
        Column("status", TEXT),
        Column("period_start", TIME),
        Column("period_end", TIME),
        Column("subtotal", DECIMAL),
        Column("commitments", DECIMAL),
        Column("total", DECIMAL),
        Column("created_at", TIME),
        Column("issued_at", TIME),
        Column("paid_at", TIME),
        Column("voided_at", TIME),
        Column("lines", JSON),
    ),
}


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """`from_us` inclusive, `to_us` exclusive, on event time (events, usage) or on the start of
    the billing period (invoices). `meter`: usage of one meter (slug) instead of every live meter."""

    kind: ExportKind
    format: ExportFormat
    from_us: int | None = None
    to_us: int | None = None
    meter: str | None = None

    @property
    def filename(self) -> str:
        name = self.kind.value if self.meter is None else f"{self.kind.value}-{self.meter}"
        return f"{name}.{self.format.value}"


Row = tuple[Any, ...]


# -- writers ----------------------------------------------------------------------------------------
class _Writer(ABC):
    """One output format: a header, rows a batch at a time, a trailer."""

    def start(self) -> bytes:
        return b""

    @abstractmethod
    def write(self, rows: list[Row]) -> bytes: ...

    def finish(self) -> bytes:
        return b""


def writer_for(fmt: ExportFormat, columns: tuple[Column, ...]) -> _Writer:
    if fmt is ExportFormat.CSV:
        return _CsvWriter(columns)
    if fmt is ExportFormat.JSONL:
        return _JsonlWriter(columns)
    return _ParquetWriter(columns)


def time_text(micros: int | None) -> str | None:
    """RFC 3339 UTC as tallybook.clock.format_rfc3339 writes it, without building a datetime: this
    runs for every instant of every row."""
    if micros is None:
        return None
    seconds, fraction = divmod(micros, 1_000_000)
    text = _second_text(seconds)
    return f"{text}.{fraction:06d}Z" if fraction else f"{text}Z"


@lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _json_null(text: str | None) -> str | None:
    """SQL NULL and JSON null are both "no value"."""
    return None if text is None or text == "null" else text


class _CsvWriter(_Writer):
    """RFC 4180 CSV with a header row; empty cells for missing values."""

    def __init__(self, columns: tuple[Column, ...]) -> None:
        self.columns = columns
        self.times = [i for i, c in enumerate(columns) if c.kind == TIME]
        self.jsons = [i for i, c in enumerate(columns) if c.kind == JSON]

    def start(self) -> bytes:
        return self._encode([[c.name for c in self.columns]])

    def write(self, rows: list[Row]) -> bytes:
        out: list[list[Any]] = []
        for row in rows:
            values = list(row)
            for i in self.times:
                values[i] = time_text(values[i])
            for i in self.jsons:
                values[i] = _json_null(values[i])
            out.append(values)
        return self._encode(out)

    @staticmethod
    def _encode(rows: list[list[Any]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerows(rows)
        return buffer.getvalue().encode()


class _JsonlWriter(_Writer):
    """One JSON object a line; JSON columns are embedded as stored (orjson.Fragment: verbatim)."""

    def __init__(self, columns: tuple[Column, ...]) -> None:
        self.names = [c.name for c in columns]
        self.times = [i for i, c in enumerate(columns) if c.kind == TIME]
        self.jsons = [i for i, c in enumerate(columns) if c.kind == JSON]

    def write(self, rows: list[Row]) -> bytes:
        # Into one buffer as we go: each orjson result owns a buffer of at least 1 KiB, so a list
        # of them would hold several times the batch's size.
        out = io.BytesIO()
        dumps, option, fragment = orjson.dumps, orjson.OPT_APPEND_NEWLINE, orjson.Fragment
        for row in rows:
            values = list(row)
            for i in self.times:
                values[i] = time_text(values[i])
            for i in self.jsons:
                text = _json_null(values[i])
                values[i] = None if text is None else fragment(text)
            out.write(dumps(dict(zip(self.names, values, strict=True)), option=option))
        return out.getvalue()


def parquet_module() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ParquetUnavailable() from None
    return pyarrow


class _Drain:
    """A write-only file for pyarrow that hands back what was written since the last `take`."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        return len(chunk)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


class _ParquetWriter(_Writer):
    """Row groups of ROW_GROUP_ROWS rows, each written (and its bytes handed on) once full
    (pyarrow.parquet.ParquetWriter): readers skip and parallelise by row group, and one row group
    is the most this holds in memory, as Arrow columns."""

    def __init__(self, columns: tuple[Column, ...]) -> None:
        pa = parquet_module()
        self.pa = pa
        arrow_types = {
            INT: pa.int64(),
            TEXT: pa.string(),
            TIME: pa.timestamp("us", tz="UTC"),
            DECIMAL: pa.string(),
            JSON: pa.string(),
        }
        self.columns = columns
        self.jsons = {i for i, c in enumerate(columns) if c.kind == JSON}
        self.schema = pa.schema([pa.field(c.name, arrow_types[c.kind]) for c in columns])
        self.sink = _Drain()
        self.file = pa.PythonFile(self.sink, mode="w")
        self.writer = pa.parquet.ParquetWriter(self.file, self.schema, compression="zstd")
        self.pending: list[Any] = []  # record batches of the row group being filled
        self.pending_rows = 0

    def write(self, rows: list[Row]) -> bytes:
        pa = self.pa
        arrays = []
        for i, field in enumerate(self.schema):
            values = [row[i] for row in rows]
            if i in self.jsons:
                values = [_json_null(v) for v in values]
            arrays.append(pa.array(values, type=field.type))
        self.pending.append(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        self.pending_rows += len(rows)
        if self.pending_rows >= ROW_GROUP_ROWS:
            self._flush()
        return self.sink.take()

    def finish(self) -> bytes:
        self._flush()
        self.writer.close()
        return self.sink.take()

    def _flush(self) -> None:
        if self.pending_rows:
            table = self.pa.Table.from_batches(self.pending, schema=self.schema)
            self.writer.write_table(table, row_group_size=self.pending_rows)
        self.pending, self.pending_rows = [], 0
