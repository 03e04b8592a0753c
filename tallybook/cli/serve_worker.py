"""The app of one `tallybook serve --workers N` process.

uvicorn starts N worker processes and each imports this factory: each process builds its own
runtime (store connections, ingest writer, materializer, jobs) from the configuration the parent
`serve` was given, passed in two environment variables. The parent has already migrated the
database and synced the configured meters, so workers do neither.

Only PostgreSQL is served by several processes: its row locks, unique index and advisory locks let
several writers share it (concurrent inserts of one key are settled by ON CONFLICT; materializers
take turns on an advisory lock). SQLite allows one writer at a time per database file: group
commit already turns many requests into one transaction, and a second process would only wait for
the write lock (or fail with "database is locked"), so `serve` refuses --workers above 1 there.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

CONFIG_VARIABLE = "TALLYBOOK_SERVE_CONFIG"
DATABASE_VARIABLE = "TALLYBOOK_SERVE_DATABASE"


def app_for_worker() -> FastAPI:
    from tallybook.api.app import create_app
    from tallybook.cli.common import tune_gc_for_throughput
    from tallybook.config import load_settings
    from tallybook.observability.logs import configure_logging
    from tallybook.runtime import Runtime

    config = os.environ.get(CONFIG_VARIABLE) or None
    database = os.environ.get(DATABASE_VARIABLE) or None
    settings = load_settings(Path(config) if config else None).with_database(database)
    configure_logging(settings.logging.level, settings.logging.json_format)
    tune_gc_for_throughput()
    runtime = Runtime.build(settings, migrate=False, sync_meters=False)
    return create_app(runtime)
