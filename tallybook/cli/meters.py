"""`tallybook meters`: where each meter's projection stands (`status`), and running pending
rebuilds to the end in the foreground (`rebuild`). Registered on the main app by cli/main.py.

A new or changed meter definition is built in the background by `serve` (the materializer thread)
and by `worker` / `jobs run` (the `meters.rebuild` job, a few seconds per run); `meters rebuild` does
the whole of it at once, e.g. from a deploy script. Interrupted, even by kill -9, it resumes where
its last committed chunk ended (docs/meters.md, "Rebuilds")."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tallybook import jsonutil

meters_app = typer.Typer(help="Meters: projection status and rebuilds (docs/meters.md).", no_args_is_help=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]
DatabaseOption = Annotated[str | None, typer.Option("--database", help="SQLAlchemy URL")]
PROGRESS_EVERY = 2.0  # seconds between progress lines of `meters rebuild`


def _main() -> Any:
    from tallybook.cli import main

    return main


def _runtime(config: Path | None, database: str | None) -> Any:
    main = _main()
    return main._runtime(main._settings(config, database))


@meters_app.command("status")
def status(
    meter: Annotated[str | None, typer.Argument(help="a meter's id or slug (default: every meter)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON (GET .../projection)")] = False,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Each meter's projection: ready, or rebuilding with events processed, percent and ETA."""
    from tallybook.meters.models import MeterError

    main = _main()
    runtime = _runtime(config, database)
    try:
        try:
            meters = [runtime.meters.get(meter)] if meter else runtime.meters.list()
        except MeterError as exc:
            main.err_console.print(f"[red]error:[/red] {escape(exc.detail)}", highlight=False)
            raise typer.Exit(1) from None
    finally:
        runtime.stop()
    if as_json:
        payload = {m.slug: m.projection.to_json() for m in meters if m.projection is not None}
        main.console.print_json(jsonutil.dumps(payload[meter] if meter and len(meters) == 1 else payload))
        return
    if not meters:
        main.console.print("no meters", highlight=False)
        return
    table = Table()
    for column in ("meter", "state", "queries answer", "events processed", "of", "percent", "eta"):
        table.add_column(column)
    for m in meters:
        p = m.projection
        if p is None:
            continue
        eta = "" if p.eta_seconds is None else f"{p.eta_seconds} s"
        table.add_row(
            escape(m.slug),
            p.state,
            p.answers_from,
            f"{p.events_processed:,}",
            f"{p.events_total:,}",
            f"{p.percent}%",
            eta,
        )
    main.console.print(table)


@meters_app.command("rebuild")
def rebuild(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """Run every pending meter build to the end here (and delete retired projections), printing
    progress; safe to stop and run again: it resumes at the last committed chunk."""
    main = _main()
    runtime = _runtime(config, database)
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    last = time.monotonic()

    def should_stop() -> bool:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_EVERY:
            last = time.monotonic()
            for m in runtime.meters.list():
                p = m.projection
                if p is not None and p.state == "rebuilding":
                    main.console.print(
                        f"{m.slug}: {p.events_processed:,} of {p.events_total:,} events ({p.percent}%)",
                        highlight=False,
                    )
        return stopping

    try:
        read = runtime.meters.run_builds(should_stop)
        building = [m.slug for m in runtime.meters.list() if m.projection and m.projection.state == "rebuilding"]
    finally:
        runtime.stop()
    if building:
        main.console.print(f"stopped; still rebuilding: {', '.join(building)} (run again to resume)", highlight=False)
        raise typer.Exit(1)
    main.console.print(f"every meter is ready ({read:,} events projected here)", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(meters_app, name="meters")


__all__ = ["meters_app", "register"]
