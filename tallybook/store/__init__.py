"""Storage: one interface (`SqlStore`), one implementation per engine."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from tallybook.billing import catalog_sql as _catalog_tables  # noqa: F401
from tallybook.billing import profiles_sql as _profile_tables  # noqa: F401
from tallybook.customers import sql as _customer_tables  # noqa: F401

# Every table module registers on the shared MetaData when imported; import them all here so the
# metadata (and anything that walks it) is complete whichever module is used first.
from tallybook.entitlements import sql as _entitlement_tables  # noqa: F401
from tallybook.store import billing as _billing_tables  # noqa: F401
from tallybook.store import credit_note_sync as _credit_note_tables  # noqa: F401  (and tallybook.creditnotes.sql)
from tallybook.store import invoice_sync as _invoice_sync_tables  # noqa: F401
from tallybook.store import jobs as _job_tables  # noqa: F401
from tallybook.store import meters as _meter_tables  # noqa: F401
from tallybook.store import portal as _portal_tables  # noqa: F401
from tallybook.store import stripe as _stripe_tables  # noqa: F401
from tallybook.store import webhooks as _webhook_tables  # noqa: F401
from tallybook.store.base import ApiKeyRecord, EventFilter, SqlStore


class UnsupportedDatabase(ValueError):
    pass


def open_store(url: str) -> SqlStore:
    """Open the store for a SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg://..."""
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


__all__ = ["ApiKeyRecord", "EventFilter", "SqlStore", "UnsupportedDatabase", "open_store"]
