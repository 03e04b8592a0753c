"""What every command group shares: the consoles, the --config/--database options, loading the
settings and the runtime with errors a person can act on, and reading times from the command line."""

from __future__ import annotations

import gc
from datetime import datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from tallybook.config import ConfigError, Settings, load_settings
from tallybook.runtime import Runtime

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


def settings_or_exit(config: Path | None, database: str | None) -> Settings:
    try:
        return load_settings(config).with_database(database)
    except ConfigError as exc:
        err_console.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


def open_runtime(settings: Settings, runs_service: bool = False) -> Runtime:
    """`runs_service`: serve, worker and jobs run the system under this config, so they make its
    meters the live set; every other command leaves meter definitions alone (a `keys list` with no
    config must not delete the meters another config defined)."""
    from tallybook.store import UnsupportedDatabase
    from tallybook.store.connect import explain, is_database_error

    try:
        return Runtime.build(settings, sync_meters=runs_service)
    except UnsupportedDatabase as exc:
        database_error(str(exc))
    except Exception as exc:
        if not is_database_error(exc):
            raise
        database_error(str(explain(settings.database.url, exc)))


def database_error(message: str) -> NoReturn:
    err_console.print(f"[red]database error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(2)


def ensure_database(settings: Settings) -> None:
    from tallybook.store.connect import DatabaseUnavailable, create_postgres_database, label

    try:
        if create_postgres_database(settings.database.url):
            console.print(f"created database {label(settings.database.url)}", highlight=False)
    except DatabaseUnavailable as exc:
        database_error(str(exc))


def parse_instant(value: str | None, name: str) -> datetime | None:
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
