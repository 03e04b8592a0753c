"""`tallybook` CLI: serve, ingest files, manage API keys, migrate the database."""

from __future__ import annotations

import gc
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

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

CreateDatabaseOption = Annotated[
    bool, typer.Option("--create-database", help="Create the PostgreSQL database if it does not exist")
]


def tune_gc_for_throughput() -> None:
    """Keep the cyclic GC off the ingest path.

    The default thresholds (700, 10, 10) make Python re-walk the large, long-lived startup heap
    (FastAPI, SQLAlchemy, pydantic) over and over while requests allocate short-lived objects.
    Freezing that heap and collecting less often cut server CPU per ingested event by about a
    third in benchmarks/ingest.py. Reference counting still frees almost everything at once.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)


def _settings(config: Path | None, database: str | None) -> Settings:
    try:
        return load_settings(config).with_database(database)
    except ConfigError as exc:
        err_console.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


def _runtime(settings: Settings, runs_service: bool = False) -> Runtime:
    """`runs_service`: serve, worker and jobs run the system under this config, so they make its
    meters the live set; every other command leaves meter definitions alone (a `keys list` with no
    config must not delete the meters another config defined)."""
    from tallybook.store import UnsupportedDatabase
    from tallybook.store.connect import explain, is_database_error

    try:
        return Runtime.build(settings, sync_meters=runs_service)
    except UnsupportedDatabase as exc:
        _database_error(str(exc))
    except Exception as exc:
        if not is_database_error(exc):
            raise
        _database_error(str(explain(settings.database.url, exc)))


def _database_error(message: str) -> NoReturn:
    err_console.print(f"[red]database error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(2)


def _create_database(settings: Settings) -> None:
    from tallybook.store.connect import DatabaseUnavailable, create_postgres_database, label

    try:
        if create_postgres_database(settings.database.url):
            console.print(f"created database {label(settings.database.url)}", highlight=False)
    except DatabaseUnavailable as exc:
        _database_error(str(exc))


def _port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


@app.command()
def serve(
    config: ConfigOption = None,
    database: DatabaseOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8888)")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Load demo meters, customers and a month of usage")] = False,
    demo_at: Annotated[
        str | None,
        typer.Option(
            "--demo-at",
            help="With --demo: the demo month ends at this RFC 3339 instant instead of now "
            "(the docs' figures use 2026-11-23T12:00:00Z)",
        ),
    ] = None,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request")] = False,
    create_database: CreateDatabaseOption = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes (PostgreSQL only: SQLite has one writer per file, and group commit "
            "already gives it all requests in one transaction)",
        ),
    ] = 1,
) -> None:
    """Run the HTTP server. Applies migrations first; on a new database prints a first admin key."""
    import uvicorn

    from tallybook.api.app import create_app
    from tallybook.observability.logs import configure_logging
    from tallybook.store.connect import DatabaseUnavailable, ServerLock

    demo_until = _parse_instant(demo_at, "demo-at")
    settings = _settings(config, database)
    configure_logging(settings.logging.level, settings.logging.json_format)
    bind_host = host or settings.server.host
    bind_port = port or settings.server.port
    # Checked before anything is printed or opened: a second server must not announce itself and
    # then die with a log line from deep inside uvicorn.
    if _port_in_use(bind_host, bind_port):
        err_console.print(
            f"[red]port {bind_port} on {bind_host} is in use[/red] (another Tallybook?); "
            "stop it or pass --port to pick another",
            highlight=False,
        )
        raise typer.Exit(2)
    lock: ServerLock | None = None
    if workers > 1 and settings.database.url.startswith("sqlite"):
        err_console.print(
            "[red]--workers above 1 needs PostgreSQL[/red]: SQLite lets one process write a database file "
            "at a time, and one process already commits every request of a moment in one transaction",
            highlight=False,
        )
        raise typer.Exit(2)
    if settings.database.url.startswith("sqlite"):
        lock = ServerLock(settings.database.url)
        try:
            lock.acquire()
        except DatabaseUnavailable as exc:
            _database_error(str(exc))
    if create_database:
        _create_database(settings)
    runtime = _runtime(settings, runs_service=True)
    first_start = not runtime.keys.has_admin()
    if first_start:
        created = runtime.keys.create("first admin key", "admin")
        console.print(
            "[bold]A first admin API key was created. It is shown only this once; keep it safe:[/bold]\n"
            f"  {created.plaintext}\n"
            "  use it as: -H 'Authorization: Bearer <key>'",
            highlight=False,
        )
    if demo:
        from tallybook.demo import load_demo_events

        added = load_demo_events(runtime, until=demo_until)
        console.print(f"demo: {added} events loaded" if added else "demo: database already has events; left as is")
    base = f"http://{bind_host}:{bind_port}"
    console.print(f"Tallybook on {base}  (database: {runtime.database_label})", highlight=False)
    console.print(f"  dashboard: {base}/ui   API docs: {base}/docs   OpenAPI: {base}/openapi.json", highlight=False)
    if not first_start:
        database_flag = f" --database {runtime.database_label}" if database else ""
        config_flag = f" --config {config}" if config else ""
        console.print(
            f"  lost the admin key? make another: tallybook keys create --scope admin{config_flag}{database_flag}",
            highlight=False,
        )
    if workers > 1:
        from tallybook.cli import serve_worker

        runtime.store.close()  # each worker builds its own runtime
        os.environ[serve_worker.CONFIG_VARIABLE] = str(config.resolve()) if config else ""
        os.environ[serve_worker.DATABASE_VARIABLE] = database or ""
        console.print(f"  {workers} worker processes", highlight=False)
        uvicorn.run(
            "tallybook.cli.serve_worker:app_for_worker",
            factory=True,
            workers=workers,
            host=bind_host,
            port=bind_port,
            loop="uvloop",
            http="httptools",
            log_config=None,
            access_log=access_log,
            timeout_graceful_shutdown=10,
        )
        return
    tune_gc_for_throughput()
    uvicorn.run(
        create_app(runtime),
        host=bind_host,
        port=bind_port,
        # uvloop and httptools (uvicorn[standard]) by name: their C event loop and HTTP parser
        # are what keep the per-request cost low; "auto" would quietly fall back without them.
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=10,
    )
    if lock is not None:
        lock.release()


def _ingest_batch(runtime: Runtime, batch: list[Event], rejected: list[str]) -> IngestResult:
    """Store a batch; events whose metered fields are out of the value domain are reported, not stored."""
    result, refused = runtime.ingest.ingest_skipping_refused(batch)
    for error in refused:
        event = batch[error.index] if error.index is not None else None
        where = f"event {event.source}/{event.id}" if event is not None else "batch"
        rejected.append(f"{where}: {error.field}: {error.message}")
    return result


@app.command()
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
    settings = _settings(config, database)
    runtime = _runtime(settings)
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
    columns = ("id", "name", "scope", "starts with", "created", "revoked")
    rows = [
        (
            r.id,
            r.name,
            r.scope,
            r.prefix + "…",
            format_rfc3339(from_micros(r.created_us)),
            format_rfc3339(from_micros(r.revoked_us)) if r.revoked_us else "",
        )
        for r in records
    ]
    if not console.is_terminal:
        # Piped into a file or another program: whole values, one tab-separated line per key.
        for line in (columns, *rows):
            typer.echo("\t".join(line))  # not Rich: it would expand the tabs
        return
    table = Table()
    for column in columns:
        # Ids, prefixes and times are what people copy: never truncate them in a narrow terminal.
        table.add_column(column, no_wrap=column in ("id", "starts with", "created", "revoked"))
    for row in rows:
        table.add_row(*row)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="the key's id, from `tallybook keys list`")],
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
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
def db_upgrade(
    config: ConfigOption = None, database: DatabaseOption = None, create_database: CreateDatabaseOption = False
) -> None:
    """Apply all migrations (serve does this on start too)."""
    from tallybook.store import UnsupportedDatabase, open_store
    from tallybook.store.connect import explain, is_database_error
    from tallybook.store.migrate import current_revision

    settings = _settings(config, database)
    if create_database:
        _create_database(settings)
    try:
        store = open_store(settings.database.url)
    except UnsupportedDatabase as exc:
        _database_error(str(exc))
    except OSError as exc:
        _database_error(str(explain(settings.database.url, exc)))
    try:
        store.migrate()
        console.print(f"database at revision {current_revision(store.engine)}")
    except Exception as exc:
        if not is_database_error(exc):
            raise
        _database_error(str(explain(settings.database.url, exc)))
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
    once: Annotated[
        bool, typer.Option("--once", help="Accepted for older scripts: `jobs run` always runs once", hidden=True)
    ] = True,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Run everything that is due now, once, then exit (for cron): close periods, send reports, deliver
    webhooks and retries. `tallybook worker` keeps running instead."""
    from tallybook.observability.logs import configure_logging

    settings = _settings(config, database)
    configure_logging(settings.logging.level, settings.logging.json_format)
    runtime = _runtime(settings, runs_service=True)
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
    runtime = _runtime(settings, runs_service=True)
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


# -- Stripe: setup, report, reconcile, reports --------------------------------------------------------
stripe_app = typer.Typer(help="Stripe usage reporting (see docs/stripe.md).", no_args_is_help=True)
app.add_typer(stripe_app, name="stripe")


def _parse_instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        err_console.print(f"[red]--{name}: {escape(value)!r} is not an RFC 3339 time (2026-01-01T00:00:00Z)[/red]")
        raise typer.Exit(2) from None
    if parsed.tzinfo is None:
        err_console.print(f"[red]--{name}: add a time zone offset, e.g. 2026-01-01T00:00:00Z[/red]")
        raise typer.Exit(2)
    return parsed


def _stripe_runtime(config: Path | None, database: str | None) -> Runtime:
    runtime = _runtime(_settings(config, database))
    if not runtime.settings.stripe.secret_key():
        runtime.stop()
        err_console.print("[red]Stripe is not configured:[/red] set STRIPE_API_KEY (see docs/stripe.md)")
        raise typer.Exit(2)
    return runtime


@stripe_app.command("setup")
def stripe_setup(
    meter: Annotated[str, typer.Option(help="Tallybook meter slug to bill")],
    customer: Annotated[str, typer.Option(help="Tallybook customer id or key")],
    event_name: Annotated[str | None, typer.Option(help="Stripe meter event_name (default: the slug)")] = None,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Create a product, Billing Meter, metered price, customer and subscription; link them."""
    runtime = _stripe_runtime(config, database)
    try:
        result = runtime.stripe.setup(meter, customer, event_name)
    except Exception as exc:
        err_console.print(f"[red]setup failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    finally:
        runtime.stop()
    for kind, url in result.urls.items():
        console.print(f"{kind:<13} {url}", highlight=False)


@stripe_app.command("report")
def stripe_report(
    from_: Annotated[str | None, typer.Option("--from", help="first window (RFC 3339)")] = None,
    to: Annotated[str | None, typer.Option("--to", help="end of the last window (RFC 3339)")] = None,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Report usage now, then explain it: per meter the window-rounded range reported and why; per
    subscription item what was sent, what is held back (windows not yet whole and settled) and what
    is not sent. Exits 1 when something was refused or is out of Stripe's range."""
    from tallybook.stripe.explain import report_text

    start, end = _parse_instant(from_, "from"), _parse_instant(to, "to")
    runtime = _stripe_runtime(config, database)
    try:
        now = runtime.clock.now()
        summary = runtime.stripe.report(from_=start, to=end, now=now)
        lines = runtime.stripe.explain_report(summary, now, start, end)
    finally:
        runtime.stop()
    for text in report_text(summary, lines, runtime.settings.stripe):
        console.print(text, highlight=False, markup=False, soft_wrap=True)
    if summary.rejected or summary.out_of_range:
        raise typer.Exit(1)


@stripe_app.command("reconcile")
def stripe_reconcile(
    from_: Annotated[str, typer.Option("--from", help="start (RFC 3339)")],
    to: Annotated[str, typer.Option("--to", help="end (RFC 3339)")],
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Compare Stripe's meter event summaries with Tallybook's figures over --from/--to (rounded down
    to whole windows) and explain each drift: never reported (before reporting started, see
    stripe.backfill), not sent, held back (not yet due) or held by Stripe beyond what was sent.
    Exits 1 when something needs action (held-back usage does not: the next run sends it)."""
    from tallybook.stripe.explain import reconcile_text

    start, end = _parse_instant(from_, "from"), _parse_instant(to, "to")
    assert start is not None and end is not None
    runtime = _stripe_runtime(config, database)
    try:
        drifts = runtime.stripe.reconcile(start, end)
    finally:
        runtime.stop()
    for text in reconcile_text(drifts, runtime.settings.stripe):
        console.print(text, highlight=False, markup=False, soft_wrap=True)
    if any(d.needs_action for d in drifts):
        raise typer.Exit(1)


@stripe_app.command("reports")
def stripe_reports(
    status: Annotated[str | None, typer.Option(help="PENDING, SENT, REJECTED or OUT_OF_RANGE")] = None,
    meter: Annotated[str | None, typer.Option(help="meter slug")] = None,
    limit: Annotated[int, typer.Option(help="rows to show, newest first")] = 50,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Show the report ledger: what was sent to Stripe, its answer and status."""
    from tallybook.store.stripe import ReportFilter

    runtime = _runtime(_settings(config, database))
    try:
        total, rows = runtime.stripe.list_reports(ReportFilter(meter=meter, status=status, limit=limit))
    finally:
        runtime.stop()
    table = Table(title=f"{total} report(s)")
    for column in ("id", "meter", "customer", "window", "kind", "value", "status", "attempts", "error"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r.id),
            r.meter,
            r.stripe_customer_id,
            format_rfc3339(from_micros(r.window_start_us)),
            f"{r.kind} v{r.version}",
            str(r.value),
            r.status,
            str(r.attempts),
            escape(r.error or ""),
        )
    console.print(table)


# -- operations: backup, restore, verify, export (tallybook/ops) ---------------------------------------
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


@app.command()
def backup(
    file: Annotated[Path, typer.Argument(help="Backup file to write (replaced if it exists)")],
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Copy the SQLite database to FILE while it serves (one consistent snapshot); for PostgreSQL,
    print the pg_dump command."""
    from tallybook.ops.backup import OpsError
    from tallybook.ops.backup import backup as backup_database

    settings = _settings(config, database)
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


@app.command()
def restore(
    file: Annotated[Path, typer.Argument(help="A backup written by `tallybook backup`")],
    force: Annotated[bool, typer.Option("--force", help="Replace a database that holds data")] = False,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Replace the SQLite database with a backup (stop the server first); then run `tallybook verify`."""
    from tallybook.ops.backup import OpsError
    from tallybook.ops.backup import restore as restore_database
    from tallybook.ops.verify import head_revisions

    settings = _settings(config, database)
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


@app.command()
def verify(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """Check a database: schema revision, row counts, invoice totals against their lines, meter cursors.
    Exits 1 when a check fails. Never migrates or writes."""
    from sqlalchemy.engine import make_url

    from tallybook.ops.verify import verify as verify_database
    from tallybook.store import UnsupportedDatabase, open_store

    settings = _settings(config, database)
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


@app.command()
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

    from tallybook.ops.export import ExportError, ExportFormat, ExportKind, ExportRequest, prepare

    if kind not in ExportKind.__members__.values():
        err_console.print(f"[red]KIND must be one of {', '.join(ExportKind)}, not {escape(kind)!r}[/red]")
        raise typer.Exit(2)
    if format not in ExportFormat.__members__.values():
        err_console.print(f"[red]--format must be one of {', '.join(ExportFormat)}, not {escape(format)!r}[/red]")
        raise typer.Exit(2)
    start, end = _parse_instant(from_, "from"), _parse_instant(to, "to")
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
    runtime = _runtime(_settings(config, database))
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


# -- events: void, amend and the audit trail (see docs/corrections.md) ---------------------------------
events_app = typer.Typer(help="Void or amend stored events; show the audit trail.", no_args_is_help=True)
app.add_typer(events_app, name="events")


def _void_store(config: Path | None, database: str | None, write: bool) -> Any:
    """Only the store: these commands never touch meters, keys or jobs. Writes migrate first (as
    `db upgrade`); the read-only listing changes nothing."""
    from tallybook.store import UnsupportedDatabase, open_store
    from tallybook.store.connect import explain, is_database_error

    settings = _settings(config, database)
    try:
        store = open_store(settings.database.url)
        if write:
            store.migrate()
    except UnsupportedDatabase as exc:
        _database_error(str(exc))
    except Exception as exc:
        if not is_database_error(exc):
            raise
        _database_error(str(explain(settings.database.url, exc)))
    return store


def _cli_actor() -> Any:
    import getpass

    from tallybook.voids.model import Actor

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        user = None
    return Actor("cli", None, user)


def _print_void(record: Any) -> None:
    console.print(
        f"{record.kind} {record.id}: {record.event_count} event(s) voided at {format_rfc3339(record.created_at)}",
        highlight=False,
    )
    for key in record.events[:20]:
        console.print(f"  {key.source}/{key.id}", highlight=False)
    if record.event_count > 20:
        console.print(f"  ... and {record.event_count - 20} more", highlight=False)
    if record.replacement is not None:
        console.print(f"replaced by {record.replacement.source}/{record.replacement.id}", highlight=False)


@events_app.command("void")
def events_void(
    reason: Annotated[str, typer.Option(help="why (kept in the audit trail)")],
    event_id: Annotated[
        list[str] | None, typer.Option("--id", help="event id to void (repeatable; needs --source)")
    ] = None,
    source: Annotated[str | None, typer.Option(help="the events' source (with --id), or a filter")] = None,
    subject: Annotated[str | None, typer.Option(help="filter: subject")] = None,
    event_type: Annotated[str | None, typer.Option("--type", help="filter: event type")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="filter: event time from (RFC 3339, inclusive)")] = None,
    to: Annotated[str | None, typer.Option("--to", help="filter: event time to (RFC 3339, exclusive)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only count what would be voided")] = False,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Void events by --source and --id, or by a filter (--subject, --type, --source, --from, --to)."""
    from tallybook.errors import DomainError
    from tallybook.voids.model import EventKey, VoidFilter, VoidRequest
    from tallybook.voids.service import VoidService
    from tallybook.voids.sql import SqlVoidStorage

    if event_id and source is None:
        err_console.print("[red]--id needs --source (an event is identified by its source and id)[/red]")
        raise typer.Exit(2)
    if event_id and (subject or event_type or from_ or to):
        err_console.print("[red]give either --id (with --source) or filter options, not both[/red]")
        raise typer.Exit(2)
    flt = None
    if not event_id:
        flt = VoidFilter(subject, event_type, source, _parse_instant(from_, "from"), _parse_instant(to, "to"))
    request = VoidRequest(
        reason=reason,
        actor=_cli_actor(),
        events=tuple(EventKey(source or "", i) for i in event_id or ()),
        filter=flt,
        dry_run=dry_run,
    )
    store = _void_store(config, database, write=not dry_run)
    try:
        service = VoidService(SqlVoidStorage(store))
        if dry_run:
            preview = service.preview(request)
            console.print(f"dry run: {preview.event_count} event(s) would be voided", highlight=False)
            for key in preview.events[:20]:
                console.print(f"  {key.source}/{key.id}", highlight=False)
            return
        _print_void(service.void(request))
    except DomainError as exc:
        err_console.print(f"[red]{escape(exc.detail)}[/red]", highlight=False)
        raise typer.Exit(1) from None
    finally:
        store.close()


@events_app.command("amend")
def events_amend(
    source: Annotated[str, typer.Option(help="source of the event to replace")],
    event_id: Annotated[str, typer.Option("--id", help="id of the event to replace")],
    reason: Annotated[str, typer.Option(help="why (kept in the audit trail)")],
    event: Annotated[str, typer.Option(help="the corrected CloudEvent as JSON, or @file.json; it needs a new id")],
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Void one event and store its corrected version (validated like any ingested event)."""
    from tallybook import jsonutil
    from tallybook.clock import SystemClock
    from tallybook.errors import DomainError
    from tallybook.ingest.events import FieldError, cloudevent_from_json
    from tallybook.ingest.limits import MAX_JSON_DEPTH
    from tallybook.voids.model import AmendRequest, EventKey
    from tallybook.voids.service import VoidService
    from tallybook.voids.sql import SqlVoidStorage

    raw = Path(event[1:]).read_bytes() if event.startswith("@") else event.encode()
    errors: list[FieldError] = []
    try:
        # Decoded as an ingest body is: exact numbers, the value domain, nesting, U+0000.
        payload = jsonutil.loads_request(raw, MAX_JSON_DEPTH)
    except jsonutil.JsonRefused as exc:
        errors = [FieldError(None, jsonutil.show_path(path)[1:] or "(event)", why) for path, why in exc.problems]
        payload = None
    except ValueError as exc:
        err_console.print(f"[red]--event is not valid JSON: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    now_us = to_micros(SystemClock().now())
    corrected = cloudevent_from_json(payload, None, now_us, errors) if isinstance(payload, dict) else None
    if corrected is None or errors:
        shown = "; ".join(f"{e.field}: {e.message}" for e in errors) or "send one CloudEvent object"
        err_console.print(f"[red]the corrected event is invalid: {escape(shown)}[/red]", highlight=False)
        raise typer.Exit(2)
    store = _void_store(config, database, write=True)
    try:
        record = VoidService(SqlVoidStorage(store)).amend(
            AmendRequest(EventKey(source, event_id), corrected, reason, _cli_actor())
        )
    except DomainError as exc:
        err_console.print(f"[red]{escape(exc.detail)}[/red]", highlight=False)
        raise typer.Exit(1) from None
    finally:
        store.close()
    _print_void(record)


@events_app.command("voids")
def events_voids(
    show: Annotated[str | None, typer.Option("--show", help="one void's id: show it with its events")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="records to list, newest first")] = 50,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """The audit trail of voids and amends: who, when, why, what (read-only)."""
    from sqlalchemy.exc import DBAPIError

    from tallybook import jsonutil
    from tallybook.errors import DomainError
    from tallybook.voids.service import VoidService
    from tallybook.voids.sql import SqlVoidStorage

    store = _void_store(config, database, write=False)
    try:
        service = VoidService(SqlVoidStorage(store))
        if show is not None:
            record = service.get(show)
            console.print(f"reason: {record.reason}", highlight=False)
            _print_void(record)
            return
        total, records = service.list(1, limit)
    except DomainError as exc:
        err_console.print(f"[red]{escape(exc.detail)}[/red]", highlight=False)
        raise typer.Exit(1) from None
    except DBAPIError:
        err_console.print("[red]the database has no audit trail yet: run `tallybook db upgrade` first[/red]")
        raise typer.Exit(2) from None
    finally:
        store.close()
    table = Table(title=f"{total} void(s)")
    for column in ("id", "kind", "at", "by", "events", "reason", "what"):
        # Ids and instants are what people copy: never cut them; long text folds instead.
        table.add_column(column, no_wrap=column in ("id", "at"), overflow="fold")
    for r in records:
        by = r.actor.name or r.actor.id or ""
        what = jsonutil.dumps(r.selection)
        if r.replacement is not None:
            what += f" -> {r.replacement.source}/{r.replacement.id}"
        table.add_row(
            r.id,
            r.kind,
            format_rfc3339(r.created_at),
            f"{r.actor.type}:{by}",
            str(r.event_count),
            escape(r.reason),
            escape(what),
        )
    console.print(table)


# -- billing integrity: unbilled usage, invoice verify and PDF (tallybook/cli/billing_tools.py) ------
def _register_billing_tools() -> None:
    from tallybook.cli.billing_tools import register

    register(app)


_register_billing_tools()


# -- meters: projection status and rebuilds (tallybook/cli/meters.py) -----------------------------
def _register_meters() -> None:
    from tallybook.cli.meters import register

    register(app)


_register_meters()
