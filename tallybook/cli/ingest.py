"""`tallybook ingest`: import a file of events straight into the store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tallybook.cli.common import (
    ConfigOption,
    DatabaseOption,
    console,
    err_console,
    open_runtime,
    settings_or_exit,
    tune_gc_for_throughput,
)
from tallybook.clock import to_micros
from tallybook.ingest.events import Event
from tallybook.ingest.files import read_events
from tallybook.ingest.service import IngestResult
from tallybook.runtime import Runtime


def _ingest_batch(runtime: Runtime, batch: list[Event], rejected: list[str]) -> IngestResult:
    """Store a batch; events whose metered fields are out of the value domain are reported, not stored."""
    result, refused = runtime.ingest.ingest_skipping_refused(batch)
    for error in refused:
        event = batch[error.index] if error.index is not None else None
        where = f"event {event.source}/{event.id}" if event is not None else "batch"
        rejected.append(f"{where}: {error.field}: {error.message}")
    return result


def ingest(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, metavar="FILE", help="A .jsonl or .csv file of events")
    ],
    config: ConfigOption = None,
    database: DatabaseOption = None,
    source: Annotated[str, typer.Option(help="source for records that have none")] = "import",
    batch_size: Annotated[int, typer.Option(min=1, max=50_000, help="events per transaction")] = 5_000,
) -> None:
    """Import events from a file straight into the store (same validation and dedup as the API)."""
    settings = settings_or_exit(config, database)
    runtime = open_runtime(settings)
    # Only the writer: an import must not run period-close jobs or deliver webhooks on the side.
    runtime.ingest.start()
    tune_gc_for_throughput()
    total = IngestResult()
    rejected: list[str] = []
    batch: list[Event] = []
    now_us = to_micros(runtime.clock.now())
    try:
        with (
            file.open("r", encoding="utf-8", newline="") as stream,
            Progress(
                TextColumn("[bold]ingest[/bold] {task.description}"),
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=err_console,
            ) as progress,
        ):
            task = progress.add_task(file.name, total=file.stat().st_size)
            try:
                records = read_events(file, stream, source, now_us)
            except ValueError as exc:
                err_console.print(f"[red]{escape(str(exc))}[/red]")
                raise typer.Exit(2) from None
            for record in records:
                if record.event is None:
                    rejected.append(
                        f"line {record.line}: " + "; ".join(f"{e.field}: {e.message}" for e in record.errors)
                    )
                else:
                    batch.append(record.event)
                if len(batch) >= batch_size:
                    total.add(_ingest_batch(runtime, batch, rejected))
                    batch = []
                    progress.update(task, completed=stream.tell() if not stream.closed else 0)
            if batch:
                total.add(_ingest_batch(runtime, batch, rejected))
            progress.update(task, completed=file.stat().st_size)
    finally:
        runtime.stop()
    summary = Table(title=f"{file.name} imported")
    summary.add_column("accepted", justify="right")
    summary.add_column("duplicate", justify="right")
    summary.add_column("conflicting", justify="right")
    summary.add_column("rejected", justify="right")
    summary.add_row(str(total.accepted), str(total.duplicates), str(total.conflicts), str(len(rejected)))
    console.print(summary)
    for line in rejected[:20]:
        err_console.print(f"[yellow]rejected[/yellow] {escape(line)}", highlight=False)
    if len(rejected) > 20:
        err_console.print(f"... and {len(rejected) - 20} more rejected records")
    if rejected:
        raise typer.Exit(1)
