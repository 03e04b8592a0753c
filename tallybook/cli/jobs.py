"""`tallybook jobs run` (everything due, once, for cron) and `tallybook worker` (the jobs until stopped)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tallybook.cli.common import (
    ConfigOption,
    DatabaseOption,
    console,
    open_runtime,
    settings_or_exit,
)

jobs_app = typer.Typer(help="Background jobs: period close, usage reports, webhook delivery.", no_args_is_help=True)


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

    settings = settings_or_exit(config, database)
    configure_logging(settings.logging.level, settings.logging.json_format)
    runtime = open_runtime(settings, runs_service=True)
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


def worker(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """Run the background jobs (no HTTP) until stopped; several workers may share one PostgreSQL."""
    import signal

    from tallybook.observability.logs import configure_logging

    settings = settings_or_exit(config, database)
    configure_logging(settings.logging.level, settings.logging.json_format)
    runtime = open_runtime(settings, runs_service=True)
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
