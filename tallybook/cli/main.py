"""`tallybook` CLI: serve, ingest files, manage API keys, migrate the database.

This module only assembles the Typer app; each command or group lives in its own module. The order
below is the order `tallybook --help` lists them in (commands first, then groups).
"""

from __future__ import annotations

import os

import typer

from tallybook.cli import db, events, ingest, jobs, keys, ops, serve, stripe
from tallybook.cli.common import console, err_console, tune_gc_for_throughput

# tallybook/cli/billing_tools.py reaches the shared helpers through this module by these names.
from tallybook.cli.common import open_runtime as _runtime
from tallybook.cli.common import parse_instant as _parse_instant
from tallybook.cli.common import settings_or_exit as _settings

app = typer.Typer(help="Tallybook: usage metering and billing.", no_args_is_help=True, add_completion=False)

# -- commands ------------------------------------------------------------------------------------------
app.command()(serve.serve)
app.command()(ingest.ingest)
app.command()(jobs.worker)
app.command()(ops.backup)
app.command()(ops.restore)
app.command()(ops.verify)
app.command()(ops.export)

# -- command groups ------------------------------------------------------------------------------------
app.add_typer(keys.keys_app, name="keys")
app.add_typer(db.db_app, name="db")
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(stripe.stripe_app, name="stripe")
app.add_typer(events.events_app, name="events")


# -- billing integrity: unbilled usage, invoice verify and PDF (tallybook/cli/billing_tools.py) ------
def _register_billing_tools() -> None:
    from tallybook.cli.billing_tools import register

    register(app)


_register_billing_tools()


# -- more groups register here, one line each -----------------------------------------------------------
# meters: projection status and rebuilds (tallybook/cli/meters.py)
def _register_meters() -> None:
    from tallybook.cli.meters import register

    register(app)


_register_meters()


def main() -> None:  # pragma: no cover - console entry point alias
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


__all__ = ["_parse_instant", "_runtime", "_settings", "app", "console", "err_console", "main", "tune_gc_for_throughput"]
