"""`tallybook stripe`: set up, report and reconcile Stripe usage reporting (docs/stripe.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
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
from tallybook.clock import format_rfc3339, from_micros
from tallybook.runtime import Runtime

stripe_app = typer.Typer(help="Stripe usage reporting (see docs/stripe.md).", no_args_is_help=True)


def _stripe_runtime(config: Path | None, database: str | None) -> Runtime:
    runtime = open_runtime(settings_or_exit(config, database))
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

    start, end = parse_instant(from_, "from"), parse_instant(to, "to")
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

    start, end = parse_instant(from_, "from"), parse_instant(to, "to")
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
    from tallybook.stripe.model import ReportFilter

    runtime = open_runtime(settings_or_exit(config, database))
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
