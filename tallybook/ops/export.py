"""Data out: events, meter usage and invoices as CSV, JSON Lines or Parquet, streamed.

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Select, Text, cast, func, select

from tallybook import jsonutil
from tallybook.errors import DomainError
from tallybook.store.base import SqlStore
from tallybook.store.billing import invoice_lines, invoices
from tallybook.store.meters import meter_usage, meters
from tallybook.store.schema import events

BATCH_ROWS = 5_000
ROW_GROUP_ROWS = 100_000
# Invoice lines are read per page of invoices: one IN (...) query per page.
_INVOICE_PAGE = 500


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


class Export:
    """One export, checked up front (`prepare`) so that a bad request fails before any byte is sent."""

    def __init__(self, store: SqlStore, request: ExportRequest, batch_rows: int = BATCH_ROWS) -> None:
        self.store = store
        self.request = request
        self.batch_rows = batch_rows
        self.columns = COLUMNS[request.kind]

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.request.format]

    def count(self) -> int:
        """Rows the export will write, give or take what is written meanwhile (for progress bars)."""
        query = select(func.count()).select_from(self._query().order_by(None).subquery())
        with self.store.read() as conn:
            return int(conn.execute(query).scalar_one())

    def chunks(self, on_rows: Callable[[int], None] | None = None) -> Iterator[bytes]:
        """The file's bytes, one chunk per batch of rows; `on_rows(n)` after each batch."""
        writer = _writer(self.request.format, self.columns)
        with self.store.read() as conn:
            result = conn.execution_options(yield_per=self.batch_rows).execute(self._query())
            batches: Iterable[Sequence[Row]] = (list(part) for part in result.partitions())
            if self.request.kind is ExportKind.INVOICES:
                batches = (_with_lines(conn, batch) for batch in batches)
            yield writer.start()
            for batch in batches:
                rows = [tuple(row) for row in batch]
                yield writer.write(rows)
                if on_rows:
                    on_rows(len(rows))
        yield writer.finish()

    # -- queries --------------------------------------------------------------------------------
    def _query(self) -> Select[Any]:
        r = self.request
        if r.kind is ExportKind.EVENTS:
            e = events.c
            query = select(
                e.seq,
                e.source,
                e.event_id,
                e.type,
                e.subject,
                e.time_us,
                e.ingested_us,
                _text(e.data),
                e.datacontenttype,
            )
            return _between(query, e.time_us, r).order_by(e.seq)
        if r.kind is ExportKind.USAGE:
            u, m = meter_usage.c, meters.c
            query = (
                select(
                    m.slug,
                    u.subject,
                    u.time_us,
                    u.event_seq,
                    u.ingested_us,
                    _text(u.num),
                    u.ukey,
                    _text(u.groups),
                    u.error,
                )
                .select_from(meter_usage.join(meters, m.key == u.meter_key))
                .where(m.deleted_us.is_(None))
            )
            if r.meter is not None:
                query = query.where(m.slug == r.meter)
            return _between(query, u.time_us, r).order_by(u.meter_key, u.time_us, u.event_seq)
        i = invoices.c
        invoice_query: Select[Any] = select(
            i.id,
            i.customer_id,
            i.customer,
            i.currency,
            i.kind,
            i.status,
            i.period_start_us,
            i.period_end_us,
            i.subtotal,
            i.commitments,
            i.total,
            i.created_us,
            i.issued_us,
            i.paid_us,
            i.voided_us,
        )
        return _between(invoice_query, i.period_start_us, r).order_by(i.period_start_us, i.id)


def prepare(store: SqlStore, request: ExportRequest, batch_rows: int = BATCH_ROWS) -> Export:
    """Check the request (time range, meter, Parquet support) and return the export to stream."""
    if request.from_us is not None and request.to_us is not None and request.from_us >= request.to_us:
        raise ExportError("'from' must be before 'to'")
    if request.meter is not None:
        if request.kind is not ExportKind.USAGE:
            raise ExportError("'meter' applies to usage exports only")
        with store.read() as conn:
            known = conn.execute(
                select(meters.c.key).where(meters.c.slug == request.meter, meters.c.deleted_us.is_(None))
            ).first()
        if known is None:
            raise ExportError(f"no meter with slug {request.meter!r}; list them with GET /api/v1/meters")
    if request.format is ExportFormat.PARQUET:
        _pyarrow()
    return Export(store, request, batch_rows)


def _text(column: Any) -> Any:
    """The column's stored text: JSON as written, numbers with their exact digits."""
    return cast(column, Text)


def _between(query: Select[Any], column: Any, request: ExportRequest) -> Select[Any]:
    if request.from_us is not None:
        query = query.where(column >= request.from_us)
    if request.to_us is not None:
        query = query.where(column < request.to_us)
    return query


def _with_lines(conn: Any, batch: Sequence[Any]) -> list[Row]:
    """Invoice rows as exported: the customer snapshot split into key and name, the lines as JSON."""
    out: list[Row] = []
    for start in range(0, len(batch), _INVOICE_PAGE):
        page = batch[start : start + _INVOICE_PAGE]
        lines: dict[str, list[dict[str, Any]]] = {row[0]: [] for row in page}
        line_columns = [c for c in invoice_lines.c if c.name not in ("invoice_id", "detail")]
        names = [str(c.name) for c in line_columns]  # plain str: orjson refuses str subclasses as keys
        query = (
            select(invoice_lines.c.invoice_id, *line_columns)
            .where(invoice_lines.c.invoice_id.in_(list(lines)))
            .order_by(invoice_lines.c.invoice_id, invoice_lines.c.position)
        )
        for line in conn.execute(query):
            values = line._mapping
            line = {n: values[n] for n in names if values[n] is not None}
            for name in ("period_start", "period_end"):
                line[name] = _time_text(line.pop(f"{name}_us"))
            lines[values["invoice_id"]].append(line)
        for row in page:
            customer = row[2] or {}
            out.append(
                (row[0], row[1], customer.get("key"), customer.get("name"), *row[3:], jsonutil.dumps(lines[row[0]]))
            )
    return out


# -- writers ----------------------------------------------------------------------------------------
class _Writer(ABC):
    """One output format: a header, rows a batch at a time, a trailer."""

    def start(self) -> bytes:
        return b""

    @abstractmethod
    def write(self, rows: list[Row]) -> bytes: ...

    def finish(self) -> bytes:
        return b""


def _writer(fmt: ExportFormat, columns: tuple[Column, ...]) -> _Writer:
    if fmt is ExportFormat.CSV:
        return _CsvWriter(columns)
    if fmt is ExportFormat.JSONL:
        return _JsonlWriter(columns)
    return _ParquetWriter(columns)


def _time_text(micros: int | None) -> str | None:
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
                values[i] = _time_text(values[i])
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
                values[i] = _time_text(values[i])
            for i in self.jsons:
                text = _json_null(values[i])
                values[i] = None if text is None else fragment(text)
            out.write(dumps(dict(zip(self.names, values, strict=True)), option=option))
        return out.getvalue()


def _pyarrow() -> Any:
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
        pa = _pyarrow()
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
