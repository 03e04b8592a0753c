"""`tallybook events`: void or amend stored events, and show the audit trail (tallybook/voids)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tallybook.cli.common import (
    ConfigOption,
    DatabaseOption,
    console,
    database_error,
    err_console,
    parse_instant,
    settings_or_exit,
)
from tallybook.clock import format_rfc3339, to_micros

events_app = typer.Typer(help="Void or amend stored events; show the audit trail.", no_args_is_help=True)


def _void_store(config: Path | None, database: str | None, write: bool) -> Any:
    """Only the store: these commands never touch meters, keys or jobs. Writes migrate first (as
    `db upgrade`); the read-only listing changes nothing."""
    from tallybook.store import UnsupportedDatabase, open_store
    from tallybook.store.connect import explain, is_database_error

    settings = settings_or_exit(config, database)
    try:
        store = open_store(settings.database.url)
        if write:
            store.migrate()
    except UnsupportedDatabase as exc:
        database_error(str(exc))
    except Exception as exc:
        if not is_database_error(exc):
            raise
        database_error(str(explain(settings.database.url, exc)))
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
        flt = VoidFilter(subject, event_type, source, parse_instant(from_, "from"), parse_instant(to, "to"))
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
