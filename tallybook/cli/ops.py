"""Operations on a database (tallybook/ops): `backup`, `restore`, `verify` and `export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tallybook.cli.common import (
    ConfigOption,
    DatabaseOption,
    console,
    err_console,
    open_runtime,
    parse_instant,
    settings_or_exit,
)
from tallybook.clock import to_micros


def _ops_failed(exc: Exception) -> typer.Exit:
    from tallybook.ops.backup import UsePostgresTools

    err_console.print(f"[red]{escape(str(exc))}[/red]", highlight=False)
    if isinstance(exc, UsePostgresTools):
        console.print(f"  {exc.command}", highlight=False)
    return typer.Exit(2)


def _counts_table(title: str, counts: dict[str, int | None]) -> Table:
    table = Table(title=title)
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in sorted(counts.items()):
        table.add_row(name, "missing" if rows is None else f"{rows:,}")
    return table


def backup(
    file: Annotated[Path, typer.Argument(help="Backup file to write (replaced if it exists)")],
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Copy the SQLite database to FILE while it serves (one consistent snapshot); for PostgreSQL,
    print the pg_dump command."""
    from tallybook.ops.backup import OpsError
    from tallybook.ops.backup import backup as backup_database

    settings = settings_or_exit(config, database)
    try:
        result = backup_database(settings.database.url, file)
    except OpsError as exc:
        raise _ops_failed(exc) from None
    info = result.info
    console.print(
        f"backup written: {info.path}  ({result.size_bytes:,} bytes, {info.events:,} events, "
        f"revision {info.revision}, {result.seconds:.1f} s)",
        highlight=False,
    )


def restore(
    file: Annotated[Path, typer.Argument(help="A backup written by `tallybook backup`")],
    force: Annotated[bool, typer.Option("--force", help="Replace a database that holds data")] = False,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Replace the SQLite database with a backup (stop the server first); then run `tallybook verify`."""
    from tallybook.ops.backup import OpsError
    from tallybook.ops.backup import restore as restore_database
    from tallybook.ops.sql_verify import head_revisions

    settings = settings_or_exit(config, database)
    try:
        result = restore_database(file, settings.database.url, force=force)
    except OpsError as exc:
        raise _ops_failed(exc) from None
    info = result.info
    console.print(
        f"restored {file} into {info.path}: {info.events:,} events, revision {info.revision} ({result.seconds:.1f} s)",
        highlight=False,
    )
    if info.revision != head_revisions():
        console.print("the backup is from an older version: run `tallybook db upgrade` (serve does it on start)")
    console.print("check it with: tallybook verify", highlight=False)


def verify(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """Check a database: schema revision, row counts, invoice totals against their lines, meter cursors.
    Exits 1 when a check fails. Never migrates or writes."""
    from sqlalchemy.engine import make_url

    from tallybook.ops.sql_verify import verify as verify_database
    from tallybook.store import UnsupportedDatabase, open_store

    settings = settings_or_exit(config, database)
    try:
        store = open_store(settings.database.url)
    except UnsupportedDatabase as exc:
        err_console.print(f"[red]database error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    try:
        report = verify_database(store)
    finally:
        store.close()
    label = make_url(settings.database.url).render_as_string(hide_password=True)
    console.print(_counts_table(f"row counts: {label}", dict(report.counts)))
    checks = Table(title="checks")
    for column in ("check", "result", "detail"):
        checks.add_column(column)
    for check in report.checks:
        checks.add_row(check.name, "ok" if check.ok else "[red]FAILED[/red]", escape(check.detail))
    console.print(checks)
    if not report.ok:
        raise typer.Exit(1)


def export(
    kind: Annotated[str, typer.Argument(help="events | usage | invoices", metavar="KIND")],
    from_: Annotated[str | None, typer.Option("--from", help="start, inclusive (RFC 3339)")] = None,
    to: Annotated[str | None, typer.Option("--to", help="end, exclusive (RFC 3339)")] = None,
    format: Annotated[str, typer.Option("--format", help="csv | jsonl | parquet")] = "csv",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file to write (default: stdout)")] = None,
    meter: Annotated[str | None, typer.Option(help="usage of this meter (slug) only")] = None,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Export events (by event time), meter usage or invoices (by period start), streaming in constant
    memory. Decimals are written as strings, never floats."""
    import sys

    from tallybook.ops.export import ExportError, ExportFormat, ExportKind, ExportRequest
    from tallybook.ops.sql_export import prepare

    if kind not in ExportKind.__members__.values():
        err_console.print(f"[red]KIND must be one of {', '.join(ExportKind)}, not {escape(kind)!r}[/red]")
        raise typer.Exit(2)
    if format not in ExportFormat.__members__.values():
        err_console.print(f"[red]--format must be one of {', '.join(ExportFormat)}, not {escape(format)!r}[/red]")
        raise typer.Exit(2)
    start, end = parse_instant(from_, "from"), parse_instant(to, "to")
    wanted = ExportRequest(
        ExportKind(kind),
        ExportFormat(format),
        None if start is None else to_micros(start),
        None if end is None else to_micros(end),
        meter,
    )
    if output is None and wanted.format is ExportFormat.PARQUET and sys.stdout.isatty():
        err_console.print("[red]Parquet is binary: write it to a file with --output FILE[/red]")
        raise typer.Exit(2)
    runtime = open_runtime(settings_or_exit(config, database))
    try:
        try:
            job = prepare(runtime.store, wanted)
        except ExportError as exc:
            err_console.print(f"[red]{escape(exc.detail)}[/red]")
            raise typer.Exit(2) from None
        total = job.count()
        written = 0
        # A file appears under its name only once complete: a failed export leaves no truncated file.
        partial = output.with_name(f".{output.name}.partial") if output is not None else None
        target = partial.open("wb") if partial is not None else sys.stdout.buffer
        try:
            with Progress(
                TextColumn(f"[bold]export[/bold] {wanted.kind}"),
                BarColumn(),
                TextColumn("{task.completed:,}/{task.total:,} rows"),
                TimeRemainingColumn(),
                console=err_console,
            ) as progress:
                task = progress.add_task(wanted.kind, total=total)

                def advance(rows: int) -> None:
                    nonlocal written
                    written += rows
                    progress.update(task, completed=written)

                for chunk in job.chunks(on_rows=advance):
                    target.write(chunk)
            target.flush()
            if partial is not None and output is not None:
                target.close()
                partial.replace(output)
        finally:
            if partial is not None:
                target.close()
                partial.unlink(missing_ok=True)
    finally:
        runtime.stop()
    where = str(output) if output is not None else "stdout"
    err_console.print(f"{written:,} {wanted.kind} rows written to {where} ({wanted.format})", highlight=False)
