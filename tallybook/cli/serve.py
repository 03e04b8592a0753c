"""`tallybook serve`: the HTTP server (migrations first, a first admin key on a new database)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from tallybook.cli.common import (
    ConfigOption,
    CreateDatabaseOption,
    DatabaseOption,
    console,
    database_error,
    ensure_database,
    err_console,
    open_runtime,
    parse_instant,
    settings_or_exit,
    tune_gc_for_throughput,
)


def _port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


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

    demo_until = parse_instant(demo_at, "demo-at")
    settings = settings_or_exit(config, database)
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
            database_error(str(exc))
    if create_database:
        ensure_database(settings)
    runtime = open_runtime(settings, runs_service=True)
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
