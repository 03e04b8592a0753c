"""What backup and restore need from SQLAlchemy: reading database URLs.

Backup and restore work on SQLite files with the standard library's sqlite3 and hand PostgreSQL to
its own tools; the URL the configuration gives is SQLAlchemy's, so it is read here.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url


def sqlite_database(url: str) -> str | None:
    """The database part of a sqlite:/// URL ("" or ":memory:" when in memory); None for another engine."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    return parsed.database or ""


def libpq_url(url: str) -> str:
    """The URL for pg_dump/psql: no SQLAlchemy driver suffix, the password left out (use PGPASSWORD
    or ~/.pgpass so it never lands in shell history)."""
    given = make_url(url)
    plain = URL.create("postgresql", given.username, None, given.host, given.port, given.database, given.query)
    return plain.render_as_string(hide_password=False)
