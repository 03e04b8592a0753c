"""Named locks held across several transactions, for work that reads, decides and writes in steps
and must not run twice at once (a job's run, a change to one subscription and the credits it gives).

`try_lock` never waits: it yields False when someone else holds the name, and the caller answers
that (a job skips its turn; an API call answers 409 "try again").

PostgreSQL: a session advisory lock (pg_try_advisory_lock) on a dedicated connection, held until the
block ends. The server drops it when that connection ends, so a killed process never leaves it
behind, and it holds across the processes of `serve --workers N`. SQLite: only one server process
serves a database file (a second is refused at start), so a name held in this process is the same
guarantee; work that another process may run on SQLite (the CLI's `jobs run`) needs a lease row
instead (see jobs/sql.py).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text

log = logging.getLogger(__name__)

_held_here: set[tuple[str, str]] = set()
_guard = threading.Lock()


def advisory_key(name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, from the lock's name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def try_advisory_lock(engine: Engine, name: str) -> Iterator[bool]:
    """PostgreSQL: yield True while this session holds the advisory lock of `name`, else False."""
    key = advisory_key(name)
    conn = engine.connect()
    try:
        held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
        conn.commit()
        try:
            yield held
        finally:
            if held:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
                except Exception:
                    # Closing the session releases it anyway; never reuse a connection in doubt.
                    log.warning("could not release an advisory lock; dropping the connection", extra={"lock": name})
                    conn.invalidate()
    finally:
        conn.close()


@contextmanager
def try_process_lock(database: str, name: str) -> Iterator[bool]:
    """Yield True while this process holds `name` for `database`, else False (never waits)."""
    entry = (database, name)
    with _guard:
        taken = entry not in _held_here
        if taken:
            _held_here.add(entry)
    try:
        yield taken
    finally:
        if taken:
            with _guard:
                _held_here.discard(entry)


@contextmanager
def try_lock(engine: Engine, name: str) -> Iterator[bool]:
    """Yield True while `name` is held here (on this database), False if another holder has it."""
    if engine.dialect.name == "postgresql":
        with try_advisory_lock(engine, name) as held:
            yield held
    else:
        with try_process_lock(engine.url.render_as_string(hide_password=True), name) as held:
            yield held


__all__ = ["advisory_key", "try_advisory_lock", "try_lock", "try_process_lock"]
