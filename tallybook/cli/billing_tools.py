"""Billing integrity commands: `tallybook unbilled` (usage no invoice will carry) and the
`tallybook invoices` group (`verify`, `pdf`). Registered on the main app by tallybook/cli/main.py.

They run against the database of the config (like `jobs run`), through the same services as the
API, so they print what the API answers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tallybook import jsonutil

invoices_app = typer.Typer(help="Invoices: verify one against the events, or save it as a PDF.", no_args_is_help=True)


def _main() -> Any:
    from tallybook.cli import main

    return main


def _runtime(config: Path | None, database: str | None) -> Any:
    main = _main()
    return main._runtime(main._settings(config, database))


def unbilled(
    from_: Annotated[
        str | None, typer.Option("--from", help="event time from (RFC 3339; default: 30 days ago)")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="event time to, exclusive (RFC 3339; default: now)")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="count events as of this instant")] = None,
    reason: Annotated[
        list[str] | None,
        typer.Option("--reason", help="subject_without_customer, no_subscription or meter_not_priced (repeatable)"),
    ] = None,
    meter: Annotated[list[str] | None, typer.Option("--meter", help="only this meter slug (repeatable)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")] = None,
    database: Annotated[str | None, typer.Option("--database", help="SQLAlchemy URL")] = None,
) -> None:
    """Usage no invoice will ever carry: subjects without a customer, customers without a
    subscription at the time, meters their plans do not price (docs/invoicing.md)."""
    from tallybook.errors import DomainError
    from tallybook.unbilled.model import UnbilledQuery
    from tallybook.unbilled.service import report_json

    main = _main()
    runtime = _runtime(config, database)
    try:
        end = main._parse_instant(to, "to") or runtime.clock.now()
        start = main._parse_instant(from_, "from") or end - timedelta(days=30)
        query = UnbilledQuery(start, end, main._parse_instant(as_of, "as-of"), tuple(reason or ()), tuple(meter or ()))
        try:
            report = runtime.unbilled.report(query)
        except DomainError as exc:
            main.err_console.print(f"[red]{escape(exc.detail)}[/red]", highlight=False)
            raise typer.Exit(2) from None
    finally:
        runtime.stop()
    body = report_json(report)
    if as_json:
        typer.echo(jsonutil.dumps(body))
        return
    table = Table(title=f"Unbilled usage {body['from']} to {body['to']}")
    for column in ("reason", "subject / customer", "meter", "from", "to", "quantity"):
        table.add_column(column, justify="right" if column == "quantity" else "left")
    for row in body["items"]:
        who = row.get("subject") or f"{row['customer']['key'] or row['customer']['id']} ({row['customer']['name']})"
        table.add_row(
            row["reason"], escape(who), row["meter"], row["period"]["from"], row["period"]["to"], row["quantity"]
        )
    main.console.print(table)
    main.console.print(f"{len(body['items'])} row(s)", highlight=False)


@invoices_app.command("verify")
def invoices_verify(
    invoice_id: Annotated[str, typer.Argument(help="the invoice's id")],
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")] = None,
    database: Annotated[str | None, typer.Option("--database", help="SQLAlchemy URL")] = None,
) -> None:
    """Recompute an invoice from the events at its ingest cutoff; exit 1 if it does not reproduce."""
    from tallybook.api.routes.invoice_tools import verification_json
    from tallybook.errors import DomainError

    main = _main()
    runtime = _runtime(config, database)
    try:
        try:
            body = verification_json(runtime.invoice_checks.verify(invoice_id))
        except DomainError as exc:
            main.err_console.print(f"[red]{escape(exc.detail)}[/red]", highlight=False)
            raise typer.Exit(2) from None
    finally:
        runtime.stop()
    if as_json:
        typer.echo(jsonutil.dumps(body))
    else:
        cutoff = body["cutoff"]
        label = body["number"] or body["invoiceId"]
        main.console.print(
            f"invoice {label} ({body['status']}): {body['result']} at its cutoff "
            f"(asOf {cutoff['asOf']}, seq {cutoff['asOfSeq']}); total {body['totals']['stored']}",
            highlight=False,
        )
        for d in body["differences"]:
            line = d["stored"] or d["recomputed"]
            stored = d["stored"]["amount"] if d["stored"] else "-"
            again = d["recomputed"]["amount"] if d["recomputed"] else "-"
            main.console.print(f"  differs: {line['name']}: {stored} -> {again}: {d['reason']}", highlight=False)
        for c in body["sinceCutoff"]:
            main.console.print(
                f"  since the cutoff: {c['name']} {c['billedQuantity']} -> {c['currentQuantity']} "
                f"({c['lateEvents']} late event(s), {c['voidedEvents']} voided); "
                f"not yet corrected: {c['uncorrectedQuantity']}",
                highlight=False,
            )
    if not body["reproduced"]:
        raise typer.Exit(1)


@invoices_app.command("pdf")
def invoices_pdf(
    invoice_id: Annotated[str, typer.Argument(help="the invoice's id")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file to write (default: NUMBER.pdf)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")] = None,
    database: Annotated[str | None, typer.Option("--database", help="SQLAlchemy URL")] = None,
) -> None:
    """Save the invoice's printable page as a PDF (the same as GET /api/v1/billing/invoices/{id}/pdf)."""
    from tallybook.api.routes.invoice_tools import invoice_page, pdf_filename
    from tallybook.billing.pdf import html_to_pdf
    from tallybook.errors import DomainError

    main = _main()
    runtime = _runtime(config, database)
    try:
        try:
            invoice = runtime.invoicing.get(invoice_id)
            pdf = html_to_pdf(invoice_page(runtime, invoice))
        except DomainError as exc:
            main.err_console.print(f"[red]{escape(exc.detail)}[/red]", highlight=False)
            raise typer.Exit(2) from None
    finally:
        runtime.stop()
    target = output or Path(pdf_filename(invoice))
    target.write_bytes(pdf)
    main.console.print(f"wrote {target} ({len(pdf)} bytes)", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("unbilled")(unbilled)
    app.add_typer(invoices_app, name="invoices")


__all__ = ["invoices_app", "register", "unbilled"]
