"""Opening a database, as an operator sees it: one line that names the database and the fix when it
can't be opened, creating a missing PostgreSQL database when asked, and the one-server-per-file rule
of SQLite.

Driver errors are long and say what failed, not what to do; an operator at a terminal needs the
second. `explain` turns the failures people meet on a first start into that line.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError


class DatabaseUnavailable(Exception):
    """The database can't be opened or used; the message names it and says what to do."""


def label(url: str) -> str:
    """The URL with any password masked, safe to print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def explain(url: str, exc: BaseException) -> DatabaseUnavailable:
    """A one-line DatabaseUnavailable for a failure to open or migrate the database at `url`."""
    shown = label(url)
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        parsed = make_url(url)
    except ArgumentError:
        return DatabaseUnavailable(f"{shown} is not a database URL; use sqlite:///path/tallybook.db or "
                                   "postgresql+psycopg://user@host:5432/dbname")  # fmt: skip
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "").expanduser()
        if path.is_dir():
            return DatabaseUnavailable(f"cannot open {shown}: {path} is a directory; give a file path")
        if "readonly" in reason or "read-only" in reason or isinstance(exc, PermissionError):
            return DatabaseUnavailable(
                f"cannot write {shown}: {path} or its directory is read-only; "
                "run from a writable directory or pass --database sqlite:///a/writable/path.db"
            )
        return DatabaseUnavailable(
            f"cannot open {shown}: {reason}; check that {path.parent} exists and is writable "
            "(or pass --database sqlite:///a/writable/path.db)"
        )
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    if "does not exist" in reason and "database" in reason:
        return DatabaseUnavailable(
            f"PostgreSQL at {where} has no database {parsed.database!r}; create it "
            f"(createdb -h {parsed.host or 'localhost'} -p {parsed.port or 5432} -U {parsed.username or 'postgres'} "
            f"{parsed.database}), or start with: tallybook serve --create-database"
        )
    if "Connection refused" in reason or "could not connect" in reason or "timeout" in reason.lower():
        return DatabaseUnavailable(
            f"cannot reach PostgreSQL at {where} ({shown}): {reason}; is the server running, "
            "and are the host and port in the URL right?"
        )
    if "password authentication failed" in reason or "authentication" in reason:
        return DatabaseUnavailable(f"PostgreSQL at {where} refused the login in {shown}: {reason}")
    return DatabaseUnavailable(f"cannot use {shown}: {reason}")


def is_database_error(exc: BaseException) -> bool:
    """True for the errors `explain` is for (driver and file-system failures on open)."""
    return isinstance(exc, DBAPIError | OSError | psycopg.Error)


def create_postgres_database(url: str) -> bool:
    """Create the PostgreSQL database `url` names if it is missing; True if it was created."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return False
    maintenance = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    try:
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (parsed.database,)).fetchone()
            if exists:
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(parsed.database)))
            return True
    except psycopg.Error as exc:
        raise explain(url, exc) from None


class ServerLock:
    """Held by the one `serve` process allowed per SQLite file (a second one would share the
    single writer and the background jobs' leases with no coordination). An advisory `flock` on a
    file next to the database: the kernel drops it when the holder exits, even on kill -9."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.database = Path(parsed.database or "").expanduser().resolve()
        self.path = self.database.with_name(self.database.name + ".server-lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the server's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DatabaseUnavailable(
                f"another Tallybook server ({holder}) is serving {self.database}; only one server may use "
                "a SQLite file (stop it first, or use PostgreSQL to run several)"
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
