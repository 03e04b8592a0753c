"""`tallybook db`: database migrations."""

from __future__ import annotations

import typer

from tallybook.cli.common import (
    ConfigOption,
    CreateDatabaseOption,
    DatabaseOption,
    console,
    database_error,
    ensure_database,
    settings_or_exit,
)

db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None, database: DatabaseOption = None, create_database: CreateDatabaseOption = False
) -> None:
    """Apply all migrations (serve does this on start too)."""
    from tallybook.store import UnsupportedDatabase, open_store
    from tallybook.store.connect import explain, is_database_error
    from tallybook.store.migrate import current_revision

    settings = settings_or_exit(config, database)
    if create_database:
        ensure_database(settings)
    try:
        store = open_store(settings.database.url)
    except UnsupportedDatabase as exc:
        database_error(str(exc))
    except OSError as exc:
        database_error(str(explain(settings.database.url, exc)))
    try:
        store.migrate()
        console.print(f"database at revision {current_revision(store.engine)}")
    except Exception as exc:
        if not is_database_error(exc):
            raise
        database_error(str(explain(settings.database.url, exc)))
    finally:
        store.close()
