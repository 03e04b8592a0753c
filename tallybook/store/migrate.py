"""Alembic migrations, run from code (no alembic.ini): `serve` and `tallybook db upgrade` call this."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed 64-bit number: serialises concurrent `serve` processes migrating one PostgreSQL database.
_PG_MIGRATION_LOCK = 7_310_220_451


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@functools.cache
def _script_heads() -> frozenset[str]:
    """The newest revisions of the migration scripts, read once per process (the scripts cannot
    change under a running process; reading them means executing every migration file)."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def _at_heads(conn: Connection) -> bool:
    heads = MigrationContext.configure(conn).get_current_heads()
    conn.rollback()
    return frozenset(heads) == _script_heads()


def upgrade(engine: Engine, revision: str = "heads") -> None:
    # "heads": domains add migrations on their own branches off a shared base; apply them all.
    config = alembic_config()
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            conn.commit()
        try:
            # Every start calls this; a database already at the heads (the usual case) is left
            # alone without running Alembic, which would load every migration file again.
            if revision == "heads" and _at_heads(conn):
                return
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            conn.commit()
        finally:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_MIGRATION_LOCK})
                conn.commit()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    return ", ".join(sorted(heads)) if heads else None
