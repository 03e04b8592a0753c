"""Reading an export's rows: one read transaction, streamed, in batches (see export.py).

An export streams whole tables (events, meter usage, invoices with their lines) through a
server-side cursor, so this module is SQL through and through: it is the adapter, and it reads
other rooms' tables directly because an export is a copy of them, column for column.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Select, Text, cast, func, select

from tallybook import jsonutil
from tallybook.meters.tables import meter_usage, meters
from tallybook.ops.export import (
    BATCH_ROWS,
    COLUMNS,
    MEDIA_TYPES,
    ExportError,
    ExportFormat,
    ExportKind,
    ExportRequest,
    Row,
    parquet_module,
    time_text,
    writer_for,
)
from tallybook.store.base import SqlStore
from tallybook.store.billing import invoice_lines, invoices
from tallybook.store.schema import events

# Invoice lines are read per page of invoices: one IN (...) query per page.
_INVOICE_PAGE = 500


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
        writer = writer_for(self.request.format, self.columns)
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
                .select_from(meter_usage.join(meters, m.usage_key == u.meter_key))
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
        parquet_module()
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
                line[name] = time_text(line.pop(f"{name}_us"))
            lines[values["invoice_id"]].append(line)
        for row in page:
            customer = row[2] or {}
            out.append(
                (row[0], row[1], customer.get("key"), customer.get("name"), *row[3:], jsonutil.dumps(lines[row[0]]))
            )
    return out
