"""`tallybook` CLI: serve, ingest files, manage API keys, migrate the database."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tallybook.auth.keys import SCOPES
from tallybook.clock import format_rfc3339, from_micros, to_micros
from tallybook.config import ConfigError, Settings, load_settings
from tallybook.ingest.events import Event
from tallybook.ingest.files import read_events
from tallybook.ingest.service import IngestResult
from tallybook.runtime import Runtime

app = typer.Typer(help="Tallybook: usage metering and billing.", no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")

# soft_wrap: never break printed text (keys, URLs, errors) into lines; people copy it.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (default: $TALLYBOOK_CONFIG or ./tallybook.yaml)"),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option("--database", help="SQLAlchemy URL, e.g. sqlite:///./tallybook.db or postgresql+psycopg://..."),
]


def _settings(config: Path | None, database: str | None) -> Settings:
    try:
        return load_settings(config).with_database(database)
    except ConfigError as exc:
        err_console.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


def _runtime(settings: Settings) -> Runtime:
    from tallybook.store import UnsupportedDatabase

    try:
        return Runtime.build(settings)
    except UnsupportedDatabase as exc:
        err_console.print(f"[red]database error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption = None,
    database: DatabaseOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8888)")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Load demo events into an empty database")] = False,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request")] = False,
) -> None:
    """Run the HTTP server. Applies migrations first; on a new database prints a first admin key."""
    import uvicorn

    from tallybook.api.app import create_app
    from tallybook.observability.logs import configure_logging

    settings = _settings(config, database)
    configure_logging(settings.logging.level, settings.logging.json_format)
    runtime = _runtime(settings)
    if not runtime.keys.has_admin():
        created = runtime.keys.create("first admin key", "admin")
        console.print(
            "[bold]A first admin API key was created. It is shown only this once; keep it safe:[/bold]\n"
            f"  {created.plaintext}\n"
            "  use it as: -H 'Authorization: Bearer <key>'",
            highlight=False,
        )
    if demo:
        from tallybook.demo import load_demo_events

        added = load_demo_events(runtime)
        console.print(f"demo: {added} events loaded" if added else "demo: database already has events; left as is")
    bind_host = host or settings.server.host
    bind_port = port or settings.server.port
    console.print(f"Tallybook on http://{bind_host}:{bind_port}  (database: {runtime.database_label})", highlight=False)
    uvicorn.run(
        create_app(runtime),
        host=bind_host,
        port=bind_port,
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=10,
    )


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A .jsonl or .csv file of events")],
    config: ConfigOption = None,
    database: DatabaseOption = None,
    source: Annotated[str, typer.Option(help="source for records that have none")] = "import",
    batch_size: Annotated[int, typer.Option(min=1, max=50_000, help="events per transaction")] = 5_000,
) -> None:
    """Import events from a file straight into the store (same validation and dedup as the API)."""
    settings = _settings(config, database)
    runtime = _runtime(settings)
    # Only the writer: an import must not run period-close jobs or deliver webhooks on the side.
    runtime.ingest.start()
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
                    total.add(runtime.ingest.ingest(batch))
                    batch = []
                    progress.update(task, completed=stream.tell() if not stream.closed else 0)
            if batch:
                total.add(runtime.ingest.ingest(batch))
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


@keys_app.command("create")
def keys_create(
    scope: Annotated[str, typer.Option(help="ingest | read | admin")],
    name: Annotated[str, typer.Option(help="what the key is for")] = "api key",
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Create a key and print it (only its hash is stored)."""
    if scope not in SCOPES:
        err_console.print(f"[red]--scope must be one of {', '.join(SCOPES)}[/red]")
        raise typer.Exit(2)
    runtime = _runtime(_settings(config, database))
    try:
        created = runtime.keys.create(name, scope)
    finally:
        runtime.store.close()
    console.print(f"{created.record.id}  scope={scope}  name={name!r}", highlight=False)
    console.print(created.plaintext, highlight=False)


@keys_app.command("list")
def keys_list(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """List keys (never the secrets)."""
    runtime = _runtime(_settings(config, database))
    try:
        records = runtime.keys.list()
    finally:
        runtime.store.close()
    table = Table()
    for column in ("id", "name", "scope", "starts with", "created", "revoked"):
        # Ids and prefixes are what people copy: never truncate them in a narrow terminal.
        table.add_column(column, no_wrap=column in ("id", "starts with"))
    for r in records:
        table.add_row(
            r.id,
            r.name,
            r.scope,
            r.prefix + "…",
            format_rfc3339(from_micros(r.created_us)),
            format_rfc3339(from_micros(r.revoked_us)) if r.revoked_us else "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """Revoke a key by id (servers stop accepting it within 30 seconds)."""
    runtime = _runtime(_settings(config, database))
    try:
        revoked = runtime.keys.revoke(key_id)
    finally:
        runtime.store.close()
    if not revoked:
        err_console.print(f"[red]no active key with id {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """Apply all migrations (serve does this on start too)."""
    from tallybook.store import open_store
    from tallybook.store.migrate import current_revision

    settings = _settings(config, database)
    store = open_store(settings.database.url)
    try:
        store.migrate()
        console.print(f"database at revision {current_revision(store.engine)}")
    finally:
        store.close()


def main() -> None:  # pragma: no cover - console entry point alias
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


# -- background jobs: webhooks, period close, usage reports -------------------------------------------
jobs_app = typer.Typer(help="Background jobs: period close, usage reports, webhook delivery.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("run")
def jobs_run(
    once: Annotated[bool, typer.Option("--once", help="Run every job once, now, then exit (for cron)")] = False,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Run everything that is due now: close periods, send reports, deliver webhooks and retries."""
    if not once:
        err_console.print("[red]use --once (or `tallybook worker` to keep running)[/red]")
        raise typer.Exit(2)
    from tallybook.observability.logs import configure_logging

    settings = _settings(config, database)
    configure_logging(settings.logging.level, settings.logging.json_format)
    runtime = _runtime(settings)
    try:
        results = runtime.jobs.run_once()
    finally:
        runtime.stop()
    table = Table()
    for column in ("job", "ran", "result"):
        table.add_column(column)
    for r in results:
        detail = r.error or r.skipped_reason or ", ".join(f"{k}={v}" for k, v in r.result.items())
        table.add_row(r.name, "yes" if r.ran else "no", escape(detail))
    console.print(table)
    if any(r.error for r in results):
        raise typer.Exit(1)


@app.command()
def worker(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """Run the background jobs (no HTTP) until stopped; several workers may share one PostgreSQL."""
    import signal

    from tallybook.observability.logs import configure_logging

    settings = _settings(config, database)
    configure_logging(settings.logging.level, settings.logging.json_format)
    runtime = _runtime(settings)
    scheduler = runtime.jobs

    def _stop(_signum: int, _frame: object) -> None:
        scheduler.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    console.print(f"Tallybook worker running (database: {runtime.database_label})", highlight=False)
    try:
        scheduler.serve_forever()
    finally:
        runtime.stop()
