"""Backup and restore of a SQLite database; the pg_dump / pg_restore commands for PostgreSQL.

Backup uses SQLite's online backup API (`sqlite3.Connection.backup`) in one step: it copies every
page under one read transaction, so the copy is the database as of one commit, while a server
goes on serving and writing (in WAL mode readers never block the writer, nor it them). Every
event acknowledged before the backup starts is committed, hence in the copy. The copy is written
next to the target under a temporary name, switched to a single-file journal mode, checked with
`PRAGMA quick_check`, fsynced and only then renamed into place: a crash leaves no half file
under the target's name.

Restore copies a backup into the configured database with the same API (through SQLite's pager,
so a leftover -wal file is handled correctly). It refuses a file that is not a Tallybook database
at a revision this version knows, a target that a process has open (a server), and, unless
forced, a target that holds data.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from tallybook.errors import DomainError
from tallybook.ops.sql import libpq_url, sqlite_database

# Rows a first start writes by itself (a first admin key, the default billing profile, the config's
# meters, job bookkeeping): a database holding only these holds no one's data.
_SET_UP_ON_START = frozenset({"api_keys", "billing_profiles", "meters", "job_runs", "job_cursors"})


class OpsError(DomainError):
    code = "operation-refused"


class UsePostgresTools(OpsError):
    """The database is PostgreSQL: its own tools back it up; `command` is the one to run."""

    def __init__(self, detail: str, command: str) -> None:
        super().__init__(detail)
        self.command = command


@dataclass(frozen=True, slots=True)
class DatabaseFileInfo:
    path: Path
    revision: str | None  # alembic revision(s), comma-separated; None: not a Tallybook database
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return self.counts.get("events", 0)


@dataclass(frozen=True, slots=True)
class BackupResult:
    info: DatabaseFileInfo
    size_bytes: int
    seconds: float


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL; None for another engine."""
    database = sqlite_database(url)
    if database is None:
        return None
    if not database or database == ":memory:":
        raise OpsError("an in-memory SQLite database cannot be backed up or restored; use a file URL")
    return Path(database).expanduser().resolve()


def pg_dump_command(url: str, file: Path) -> str:
    return f"pg_dump --format=custom --file {shlex.quote(str(file))} {shlex.quote(libpq_url(url))}"


def pg_restore_command(url: str, file: Path) -> str:
    return f"pg_restore --clean --if-exists --no-owner --dbname {shlex.quote(libpq_url(url))} {shlex.quote(str(file))}"


def backup(url: str, destination: Path) -> BackupResult:
    """Copy the SQLite database at `url` to `destination` (a new file, or one to replace)."""
    source = sqlite_path(url)
    if source is None:
        raise UsePostgresTools(
            "PostgreSQL is backed up with pg_dump (tallybook backup copies SQLite files); run:",
            pg_dump_command(url, destination),
        )
    if not source.exists():
        raise OpsError(f"no database file at {source}; check --database / database.url")
    destination = destination.expanduser().resolve()
    if destination == source:
        raise OpsError("the backup file must not be the database itself")
    if destination.is_dir():
        raise OpsError(f"{destination} is a directory; name the backup file, e.g. {destination / 'tallybook.db'}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    started = time.monotonic()
    try:
        src = sqlite3.connect(source, timeout=30)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # pages=-1: all pages in one step, one read transaction, one snapshot
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
                _quick_check(dst, partial)
            finally:
                dst.close()
        finally:
            src.close()
        _fsync(partial)
        os.replace(partial, destination)
        _fsync(destination.parent)
    except sqlite3.Error as exc:
        raise OpsError(f"backup of {source} failed: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return BackupResult(inspect(destination), destination.stat().st_size, time.monotonic() - started)


def inspect(path: Path) -> DatabaseFileInfo:
    """What a database file holds: its revision and row counts per table. Opened read-only."""
    if not path.is_file():
        raise OpsError(f"no file at {path}")
    with path.open("rb") as stream:
        if stream.read(16) != b"SQLite format 3\x00":
            raise OpsError(f"{path} is not a SQLite database (a PostgreSQL dump is restored with pg_restore)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        revision = None
        if "alembic_version" in tables:
            heads = sorted(r[0] for r in conn.execute("SELECT version_num FROM alembic_version"))
            revision = ", ".join(heads) or None
        counts = {
            t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])
            for t in tables
            if t != "alembic_version" and not t.startswith("sqlite_")
        }
    except sqlite3.Error as exc:
        raise OpsError(f"{path} cannot be read as a SQLite database: {exc}") from None
    finally:
        conn.close()
    return DatabaseFileInfo(path, revision, counts)


def check_backup_file(path: Path) -> DatabaseFileInfo:
    """A restorable backup: a Tallybook database at a schema revision this version knows."""
    from tallybook.ops.sql_verify import known_revisions

    info = inspect(path)
    if info.revision is None or "events" not in info.counts:
        raise OpsError(f"{path} is a SQLite file but not a Tallybook database (no alembic_version or events table)")
    unknown = [r for r in info.revision.split(", ") if r not in known_revisions()]
    if unknown:
        raise OpsError(
            f"{path} is at schema revision {', '.join(unknown)}, which this Tallybook does not know: "
            "it was made by a newer version; restore it with that version"
        )
    return info


def in_use(path: Path) -> bool:
    """A process has the SQLite database open (a server, a worker).

    Every SQLite connection to a WAL database holds a shared lock on byte 128 of the -shm file
    (the "dead man switch" lock of SQLite's unix VFS) for as long as it is open; an exclusive
    lock on that byte is granted only when no connection is open. Must run before this process
    opens the database itself (POSIX locks are per process).
    """
    shm = Path(f"{path}-shm")
    if not shm.exists():
        return False
    import fcntl

    fd = os.open(shm, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
        except OSError:
            return True
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 128)
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class RestoreResult:
    info: DatabaseFileInfo
    replaced: DatabaseFileInfo | None  # what the target held before (None: it did not exist)
    seconds: float


def restore(backup_file: Path, url: str, force: bool = False) -> RestoreResult:
    """Make the SQLite database at `url` a copy of `backup_file`."""
    target = sqlite_path(url)
    backup_file = backup_file.expanduser().resolve()
    if target is None:
        raise UsePostgresTools(
            "PostgreSQL is restored with pg_restore from a pg_dump file, then checked with tallybook verify; run:",
            pg_restore_command(url, backup_file),
        )
    if target == backup_file:
        raise OpsError("the backup file is the database itself")
    if in_use(target):
        raise OpsError(f"{target} is open in another process (a running server or worker?); stop it, then restore")
    check_backup_file(backup_file)
    replaced = None
    if target.exists():
        replaced = inspect(target)
        held = {t: n for t, n in replaced.counts.items() if n and t not in _SET_UP_ON_START}
        if held and not force:
            summary = ", ".join(f"{n:,} {t}" for t, n in sorted(held.items()))
            raise OpsError(f"{target} holds data ({summary}); add --force to replace it with the backup")
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        src = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(target, timeout=30)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode=WAL")  # what Tallybook runs in
                _quick_check(dst, target)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise OpsError(f"restore into {target} failed: {exc}") from None
    return RestoreResult(inspect(target), replaced, time.monotonic() - started)


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise OpsError(f"{path} failed SQLite's quick_check: {'; '.join(problems[:5])}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
