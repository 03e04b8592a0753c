"""Storage: one interface (`SqlStore`), one implementation per engine."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from tallybook.store.base import EventFilter, SqlStore


class UnsupportedDatabase(ValueError):
    pass


def open_store(url: str) -> SqlStore:
    """Open the store for a SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg://..."""
    from tallybook.store.tables import all_tables

    all_tables()  # every room's tables, for whatever walks the metadata (tallybook/store/tables.py)
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        from tallybook.store.sqlite import SqliteStore

        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        return SqliteStore(url)
    if backend == "postgresql":
        from tallybook.store.postgres import PostgresStore

        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return PostgresStore(parsed.render_as_string(hide_password=False))
    raise UnsupportedDatabase(
        f"database URL scheme {parsed.drivername!r} is not supported; "
        "use sqlite:///path/to/tallybook.db or postgresql+psycopg://user@host/dbname"
    )


__all__ = ["EventFilter", "SqlStore", "UnsupportedDatabase", "open_store"]
