"""Export: events, usage and invoices as CSV, JSON Lines and Parquet, from the CLI and the admin API,
exact decimals, bad parameters refused with a problem, memory bounded whatever the row count."""

# ruff: noqa: F811

from __future__ import annotations

import csv
import io
import sqlite3
import tracemalloc
from decimal import Decimal
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from tallybook import jsonutil
from tallybook.cli.main import app
from tallybook.clock import format_rfc3339
from tallybook.config import DatabaseSettings, Settings
from tallybook.ops.export import COLUMNS, ExportFormat, ExportKind, ExportRequest
from tallybook.ops.sql_export import Export as ExportJob
from tallybook.ops.sql_export import prepare
from tallybook.runtime import Runtime
from tallybook.store import open_store
from tests.ops_helpers import BIG, seed
from tests.test_meters_helpers import bearer, mclient, mclock, mkeys, mrt  # noqa: F401  (fixtures)

runner = CliRunner()
FORMATS = ["csv", "jsonl", "parquet"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from tallybook.cli import main

    monkeypatch.setattr(main.console, "width", 200)
    monkeypatch.setattr(main.err_console, "width", 200)


def parse(kind: str, fmt: str, content: bytes) -> list[dict[str, Any]]:
    """Rows as {column: value}: JSON columns parsed (numbers as Decimal), instants as RFC 3339 text."""
    columns = {c.name: c.kind for c in COLUMNS[ExportKind(kind)]}
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(content.decode()))
        assert reader.fieldnames == list(columns)
        rows: list[dict[str, Any]] = [{k: (v if v != "" else None) for k, v in row.items()} for row in reader]
    elif fmt == "jsonl":
        rows = [jsonutil.loads(line) for line in content.splitlines()]
        for row in rows:
            assert list(row) == list(columns)
            for name, kind in columns.items():
                if kind == "json" and row[name] is not None:
                    row[name] = jsonutil.dumps(row[name])  # back to text, parsed below like the others
    else:
        table = pq.read_table(io.BytesIO(content))
        assert table.schema.names == list(columns)
        assert (
            str(table.schema.field(next(n for n, k in columns.items() if k == "time")).type) == "timestamp[us, tz=UTC]"
        )
        rows = table.to_pylist()
        for row in rows:
            for name, kind in columns.items():
                if kind == "time" and row[name] is not None:
                    row[name] = format_rfc3339(row[name])
    for row in rows:
        for name, kind in columns.items():
            if kind == "json" and row[name] is not None:
                row[name] = jsonutil.loads(row[name])
            elif kind == "int" and row[name] is not None:
                row[name] = int(row[name])
    return rows


def download(client, key: str, kind: str, **params: str) -> bytes:
    response = client.get(f"/api/v1/export/{kind}", params=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.content


@pytest.mark.parametrize("fmt", FORMATS)
def test_events_export_in_each_format(mrt, mclient, mkeys, fmt, tmp_path):
    window = seed(mrt)
    content = download(mclient, mkeys["admin"], "events", format=fmt, **window)
    rows = parse("events", fmt, content)
    # Event time in [from, to): e4 (February) is out; ingest order (seq).
    assert [r["id"] for r in rows] == ["e1", "e2", "e3"]
    assert rows[0]["data"] == {"tokens": Decimal("0.1"), "model": "x"}
    assert rows[1]["data"]["tokens"] == BIG  # every digit: no float on the way
    assert rows[2]["data"] is None
    assert rows[1]["time"] == "2026-01-06T11:30:00Z"
    assert rows[0]["subject"] == "a" and rows[0]["type"] == "prompt" and rows[0]["source"] == "svc"
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)

    # The CLI writes the same file as the API download.
    out = tmp_path / f"events.{fmt}"
    args = ["export", "events", "--from", window["from"], "--to", window["to"], "--format", fmt, "-o", str(out)]
    result = runner.invoke(app, [*args, "--database", mrt.settings.database.url])
    assert result.exit_code == 0, result.output
    assert "3 events rows written" in result.output
    assert parse("events", fmt, out.read_bytes()) == rows
    if fmt != "parquet":
        assert out.read_bytes() == content


@pytest.mark.parametrize("fmt", FORMATS)
def test_usage_export_in_each_format(mrt, mclient, mkeys, fmt):
    window = seed(mrt)
    rows = parse("usage", fmt, download(mclient, mkeys["admin"], "usage", format=fmt, meter="tokens", **window))
    assert [(r["meter"], r["subject"], r["value"]) for r in rows] == [
        ("tokens", "a", "0.1"),
        ("tokens", "b", str(BIG)),
    ]
    assert rows[0]["groups"] == {"model": "x"}
    assert rows[0]["time"] == "2026-01-05T10:00:00Z"
    assert all(r["error"] is None and r["unique_key"] is None for r in rows)
    everything = parse("usage", fmt, download(mclient, mkeys["admin"], "usage", format=fmt))
    assert [r["value"] for r in everything] == ["0.1", str(BIG), "3"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_invoices_export_in_each_format(mrt, mclient, mkeys, fmt):
    window = seed(mrt)
    rows = parse("invoices", fmt, download(mclient, mkeys["admin"], "invoices", format=fmt, **window))
    assert len(rows) == 1
    invoice = rows[0]
    assert (invoice["id"], invoice["customer_key"], invoice["customer_name"]) == ("inv_1", "acme", "Acme, Inc.")
    assert (invoice["subtotal"], invoice["commitments"], invoice["total"]) == ("55.00", "0.00", "55.00")
    assert invoice["period_start"] == "2026-01-01T00:00:00Z" and invoice["status"] == "issued"
    assert [line["amount"] for line in invoice["lines"]] == ["49.00", "0.10", "5.90"]
    assert invoice["lines"][1]["meter"] == "tokens"
    assert invoice["lines"][1]["period_end"] == "2026-02-01T00:00:00Z"
    # Invoices are chosen by the start of their period.
    later = download(mclient, mkeys["admin"], "invoices", format=fmt, **{"from": "2026-01-01T00:00:01Z"})
    assert parse("invoices", fmt, later) == []


def test_download_headers(mrt, mclient, mkeys):
    seed(mrt)
    response = mclient.get("/api/v1/export/usage?format=parquet&meter=tokens", headers=bearer(mkeys["admin"]))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    assert response.headers["content-disposition"] == 'attachment; filename="usage-tokens.parquet"'
    jsonl = mclient.get("/api/v1/export/events?format=jsonl", headers=bearer(mkeys["admin"]))
    assert jsonl.headers["content-type"] == "application/jsonl"
    assert mclient.get("/api/v1/export/invoices", headers=bearer(mkeys["admin"])).headers["content-type"] == (
        "text/csv; charset=utf-8"
    )


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/api/v1/export/customers", 400, "kind"),
        ("/api/v1/export/events?format=xml", 400, "format"),
        ("/api/v1/export/events?from=yesterday", 400, "from"),
        ("/api/v1/export/events?from=2026-01-05T10:00:00", 400, "time zone offset"),
        ("/api/v1/export/events?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", 400, "'from' must be before"),
        ("/api/v1/export/events?meter=tokens", 400, "usage exports only"),
        ("/api/v1/export/usage?meter=nope", 400, "no meter with slug 'nope'"),
    ],
)
def test_bad_parameters_are_a_problem(mrt, mclient, mkeys, path, status, says):
    seed(mrt)
    response = mclient.get(path, headers=bearer(mkeys["admin"]))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert says in response.json()["detail"]


def test_export_needs_an_admin_key(mrt, mclient, mkeys):
    assert mclient.get("/api/v1/export/events").status_code == 401
    forbidden = mclient.get("/api/v1/export/events", headers=bearer(mkeys["read"]))
    assert forbidden.status_code == 403
    assert "'admin'" in forbidden.json()["detail"]


def test_cli_refuses_bad_arguments(mrt):
    seed(mrt)
    url = mrt.settings.database.url
    bad_kind = runner.invoke(app, ["export", "customers", "--database", url])
    assert bad_kind.exit_code == 2 and "KIND must be one of events, usage, invoices" in bad_kind.output
    bad_format = runner.invoke(app, ["export", "events", "--format", "xml", "--database", url])
    assert bad_format.exit_code == 2 and "--format must be one of csv, jsonl, parquet" in bad_format.output
    unknown = runner.invoke(app, ["export", "usage", "--meter", "nope", "--database", url])
    assert unknown.exit_code == 2 and "no meter with slug 'nope'" in unknown.output
    naive = runner.invoke(app, ["export", "events", "--from", "2026-01-01T00:00:00", "--database", url])
    assert naive.exit_code == 2 and "time zone offset" in naive.output


def test_cli_writes_csv_to_stdout(mrt):
    seed(mrt)
    result = runner.invoke(app, ["export", "usage", "--meter", "tokens", "--database", mrt.settings.database.url])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "meter,subject,time,event_seq,ingested_at,value,unique_key,groups,error"
    assert len(lines) == 4  # header and three usage rows (two in January, one in February)


# -- memory -------------------------------------------------------------------------------------------
# Boundedness does not depend on the row count, only on rows outnumbering a batch many times over:
# 40,000 rows streamed in batches of 1,000 (40 batches) against a control that holds all 40,000.
EVENTS = 40_000
BATCH = 1_000


@pytest.fixture(scope="module")
def big_database(tmp_path_factory) -> str:
    """40,000 events bulk-inserted straight into a migrated SQLite file (as benchmarks/ seed data)."""
    path = tmp_path_factory.mktemp("export-memory") / "big.db"
    url = f"sqlite:///{path}"
    store = open_store(url)
    store.migrate()
    store.close()
    conn = sqlite3.connect(path)
    data = '{"tokens":12.5,"model":"gpt-x","region":"eu-west-1","note":"some text to make rows realistic"}'
    conn.executemany(
        "INSERT INTO events (source, event_id, type, subject, time_us, ingested_us, data) VALUES (?,?,?,?,?,?,?)",
        (
            ("bench", f"event-{n:09d}", "prompt", f"customer-{n % 1000}", 1_767_225_600_000_000 + n, 0, data)
            for n in range(EVENTS)
        ),
    )
    conn.commit()
    conn.close()
    return url


def peak_bytes(url: str, fmt: str, batch_rows: int | None = None) -> tuple[int, int]:
    """Peak Python allocation while exporting every event (the bytes are counted, then dropped)."""
    store = open_store(url)
    try:
        request = ExportRequest(ExportKind.EVENTS, ExportFormat(fmt))
        job = prepare(store, request) if batch_rows is None else prepare(store, request, batch_rows=batch_rows)
        rows = 0

        def count(n: int) -> None:
            nonlocal rows
            rows += n

        tracemalloc.start()
        try:
            for _chunk in job.chunks(on_rows=count):
                pass
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak, rows
    finally:
        store.close()


# A batch of 1,000 rows peaks near 1.5 MiB; holding all 40,000 rows at once costs about 24 MiB, far
# more than this bound (the control below shows it).
BOUND = 4 * 1024 * 1024


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_memory_stays_bounded(big_database, fmt):
    peak, rows = peak_bytes(big_database, fmt, batch_rows=BATCH)
    assert rows == EVENTS
    assert peak < BOUND, f"{fmt}: peak {peak / 2**20:.1f} MiB"


@pytest.mark.slow
def test_the_memory_bound_would_catch_loading_every_row(big_database):
    # The control: what holding every row at once costs (what a non-streaming export would do).
    store = open_store(big_database)
    try:
        tracemalloc.start()
        try:
            with store.read() as conn:
                rows = conn.execute(ExportJob(store, ExportRequest(ExportKind.EVENTS, ExportFormat.CSV))._query()).all()
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        store.close()
    assert len(rows) == EVENTS
    assert peak > 2 * BOUND, f"peak {peak / 2**20:.1f} MiB"


def test_parquet_missing_pyarrow_is_a_clear_error(mrt, mclient, mkeys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    response = mclient.get("/api/v1/export/events?format=parquet", headers=bearer(mkeys["admin"]))
    assert response.status_code == 400
    assert "pip install 'tallybook[parquet]'" in response.json()["detail"]
    result = runner.invoke(
        app, ["export", "events", "--format", "parquet", "-o", "x.parquet", "--database", mrt.settings.database.url]
    )
    assert result.exit_code == 2 and "pyarrow" in result.output


def test_export_runtime_does_not_touch_meters(tmp_path):
    """`export` is read-only: it must not make its (empty) config's meters the live set."""
    url = f"sqlite:///{tmp_path / 'tb.db'}"
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=url)), sync_meters=False)
    runtime.start()
    try:
        seed(runtime)
    finally:
        runtime.stop()
    assert runner.invoke(app, ["export", "usage", "--database", url]).exit_code == 0
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=url)), sync_meters=False)
    try:
        assert [m.slug for m in runtime.meters.list()] == ["tokens"]
    finally:
        runtime.stop()


@given(st.integers(min_value=-(10**16), max_value=253_402_300_799_999_999))
def test_instants_are_written_as_the_api_writes_them(micros):
    from tallybook.clock import from_micros
    from tallybook.ops.export import time_text as _time_text

    assert _time_text(micros) == format_rfc3339(from_micros(micros))
