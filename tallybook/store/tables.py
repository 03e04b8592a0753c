"""Every table module of every room, loaded on demand: the one list of where tables live.

Each room declares its tables in its own sql module, on the shared `MetaData` of `store/schema.py`.
Whatever walks *all* tables (the migrations' autogenerate comparison, the consistency check of
`tallybook verify`, the tests that empty a database) calls `all_tables()` first. It is a function, not
imports at the top of `store/__init__.py`, because a room's sql module imports `store.schema`: loading
every room whenever the store package is first touched made `import tallybook.customers.sql` on its
own fail with a circular import."""

from __future__ import annotations

import importlib

from sqlalchemy import MetaData

from tallybook.store.schema import metadata

TABLE_MODULES = (
    "tallybook.store.schema",  # events, api keys
    "tallybook.customers.sql",
    "tallybook.meters.tables",
    "tallybook.store.billing",
    "tallybook.billing.catalog_sql",
    "tallybook.billing.profiles_sql",
    "tallybook.creditnotes.sql",
    "tallybook.entitlements.tables",
    "tallybook.jobs.sql",
    "tallybook.jobs.aggregation_sql",
    "tallybook.portal.sql",
    "tallybook.stripe.sql",
    "tallybook.stripe.sql_sync",
    "tallybook.voids.sql",
    "tallybook.webhooks.sql",
)


def all_tables() -> MetaData:
    """The shared MetaData with every room's tables on it."""
    for name in TABLE_MODULES:
        importlib.import_module(name)
    return metadata


__all__ = ["TABLE_MODULES", "all_tables"]
