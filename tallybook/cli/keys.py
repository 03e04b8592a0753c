"""`tallybook keys`: create, list and revoke API keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tallybook.auth.keys import SCOPES
from tallybook.cli.common import (
    ConfigOption,
    DatabaseOption,
    console,
    err_console,
    open_runtime,
    settings_or_exit,
)
from tallybook.clock import format_rfc3339, from_micros

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


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
    runtime = open_runtime(settings_or_exit(config, database))
    try:
        created = runtime.keys.create(name, scope)
    finally:
        runtime.store.close()
    console.print(f"{created.record.id}  scope={scope}  name={name!r}", highlight=False)
    console.print(created.plaintext, highlight=False)


@keys_app.command("list")
def keys_list(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """List keys (never the secrets)."""
    runtime = open_runtime(settings_or_exit(config, database))
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
    runtime = open_runtime(settings_or_exit(config, database))
    try:
        revoked = runtime.keys.revoke(key_id)
    finally:
        runtime.store.close()
    if not revoked:
        err_console.print(f"[red]no active key with id {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")
