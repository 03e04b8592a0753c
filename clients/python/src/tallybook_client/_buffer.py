"""Where tracked events wait until the server acknowledges them: memory or a SQLite spool.

Both hand out the oldest events first and forget an event only when told it was acknowledged
(`remove`) or moved aside as invalid (`dead_letter`), so a failed send leaves everything in place.
Keys increase in tracking order; `flush` uses them to wait for "everything tracked before now".
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

Overflow = Literal["block", "raise", "drop"]
SpoolSync = Literal["off", "normal", "full"]


class QueueFull(Exception):
    """The in-memory queue is full and the overflow policy is "raise" (or "block" timed out)."""


@dataclass(frozen=True, slots=True)
class Pending:
    key: int
    body: bytes


class Buffer(Protocol):
    def put(self, body: bytes) -> int | None: ...
    def peek(self, max_events: int, max_bytes: int) -> list[Pending]: ...
    def remove(self, keys: Iterable[int]) -> None: ...
    def dead_letter(self, item: Pending, status: int, problem: dict[str, Any]) -> None: ...
    def depth(self) -> int: ...
    def oldest_key(self) -> int | None: ...
    def newest_key(self) -> int: ...
    def maintain(self) -> None: ...
    def after_fork_in_child(self) -> None: ...
    def close(self) -> None: ...


def _take(items: Iterable[Pending], max_events: int, max_bytes: int) -> list[Pending]:
    batch: list[Pending] = []
    size = 2
    for item in items:
        if batch and (len(batch) >= max_events or size + len(item.body) + 1 > max_bytes):
            break
        batch.append(item)
        size += len(item.body) + 1
    return batch


class MemoryQueue:
    """A bounded FIFO. When full, `put` blocks, raises `QueueFull`, or drops the event (counted and
    reported to `on_drop`): the policy is chosen explicitly, and no drop is silent."""

    def __init__(
        self,
        max_events: int,
        overflow: Overflow,
        block_timeout: float | None,
        on_drop: Callable[[bytes], None],
    ) -> None:
        if max_events < 1:
            raise ValueError("max_queue must be at least 1")
        if overflow not in ("block", "raise", "drop"):
            raise ValueError(f"overflow must be 'block', 'raise' or 'drop', not {overflow!r}")
        self.max_events = max_events
        self.overflow = overflow
        self.block_timeout = block_timeout
        self._on_drop = on_drop
        self._items: deque[Pending] = deque()
        self._next_key = 1
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)

    def put(self, body: bytes) -> int | None:
        with self._lock:
            if len(self._items) >= self.max_events:
                if self.overflow == "raise":
                    raise QueueFull(f"the event queue holds {self.max_events} events (overflow='raise')")
                if self.overflow == "drop":
                    dropped = True
                else:
                    dropped = False
                    if not self._not_full.wait_for(lambda: len(self._items) < self.max_events, self.block_timeout):
                        raise QueueFull(f"the event queue stayed full for {self.block_timeout}s (overflow='block')")
                if dropped:
                    self._lock.release()
                    try:
                        self._on_drop(body)
                    finally:
                        self._lock.acquire()
                    return None
            key = self._next_key
            self._next_key += 1
            self._items.append(Pending(key, body))
            return key

    def peek(self, max_events: int, max_bytes: int) -> list[Pending]:
        with self._lock:
            return _take(self._items, max_events, max_bytes)

    def remove(self, keys: Iterable[int]) -> None:
        gone = set(keys)
        if not gone:
            return
        with self._lock:
            kept: list[Pending] = []
            while gone and self._items:
                item = self._items.popleft()
                if item.key in gone:
                    gone.discard(item.key)
                else:
                    kept.append(item)
            self._items.extendleft(reversed(kept))
            self._not_full.notify_all()

    def dead_letter(self, item: Pending, status: int, problem: dict[str, Any]) -> None:
        self.remove([item.key])

    def depth(self) -> int:
        return len(self._items)

    def oldest_key(self) -> int | None:
        with self._lock:
            return self._items[0].key if self._items else None

    def newest_key(self) -> int:
        return self._next_key - 1

    def drain_unsent(self) -> list[bytes]:
        with self._lock:
            bodies = [item.body for item in self._items]
            self._items.clear()
            self._not_full.notify_all()
            return bodies

    def maintain(self) -> None:
        pass

    def after_fork_in_child(self) -> None:
        # The parent still owns (and sends) what it queued; a copy here would only be sent twice.
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._items.clear()

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
  seq INTEGER PRIMARY KEY, body BLOB NOT NULL, status INTEGER NOT NULL, problem TEXT NOT NULL,
  failed_at REAL NOT NULL
);
"""
SPOOL_FORMAT = 1  # PRAGMA user_version: a later client can migrate an older spool, never misread one
_SYNC = {"off": "OFF", "normal": "NORMAL", "full": "FULL"}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event the server refused as invalid (4xx), kept with the server's problem answer."""

    seq: int
    event: dict[str, Any]
    status: int
    problem: dict[str, Any]
    failed_at: float


def _runs(keys: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct keys as (first, last) runs of consecutive integers: an acknowledged batch
    is usually one run, deleted as one range instead of row by row."""
    runs: list[tuple[int, int]] = []
    for key in keys:
        if runs and key == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], key)
        elif not runs or key != runs[-1][1]:
            runs.append((key, key))
    return runs


class SqliteSpool:
    """Events in a SQLite file (WAL): `put` returns once the row is committed.

    synchronous="normal" (default): a committed row survives the process being killed (kill -9,
    OOM); a power loss or kernel crash may lose the last moments. "full" fsyncs every commit, so
    rows also survive those, at the cost of one fsync per `track`. "off" leaves flushing to the OS.
    """

    FILE_NAME = "spool.sqlite3"
    CHECKPOINT_EVERY = 2_000  # puts between WAL checkpoints, run by the sender (never by `track`)

    def __init__(self, directory: str | Path, synchronous: SpoolSync = "normal") -> None:
        if synchronous not in _SYNC:
            raise ValueError(f"spool_sync must be one of {', '.join(_SYNC)}, not {synchronous!r}")
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / self.FILE_NAME
        self.synchronous = synchronous
        self._open()

    def _open(self) -> None:
        # Two connections: `track` appends through its own, so it never queues behind the sender's
        # reads and checkpoints (WAL lets them run side by side). Writes through either one take
        # `_write_lock` first: they never meet on SQLite's lock, whose busy handler sleeps in ms steps.
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._put_conn = self._connect()
        self._conn = self._connect()
        self._puts_since_checkpoint = 0

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={_SYNC[self.synchronous]}")
        # A checkpoint copies the WAL into the database file and fsyncs it; left automatic it
        # would run inside whichever commit crosses the threshold, often a `track` call.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.executescript(_SCHEMA)
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SPOOL_FORMAT:
            raise RuntimeError(f"{self.path} was written by a newer tallybook-client (format {version})")
        if version < SPOOL_FORMAT:
            conn.execute(f"PRAGMA user_version={SPOOL_FORMAT}")
        return conn

    def put(self, body: bytes) -> int:
        with self._write_lock:
            cursor = self._put_conn.execute("INSERT INTO events (body) VALUES (?)", (body,))
            self._puts_since_checkpoint += 1
            return int(cursor.lastrowid or 0)

    def maintain(self) -> None:
        """Checkpoint the WAL now and then (from the sender thread), so it stays small."""
        if self._puts_since_checkpoint < self.CHECKPOINT_EVERY:
            return
        self._puts_since_checkpoint = 0
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def peek(self, max_events: int, max_bytes: int) -> list[Pending]:
        with self._lock:
            rows = self._conn.execute("SELECT seq, body FROM events ORDER BY seq LIMIT ?", (max_events,)).fetchall()
        return _take((Pending(int(seq), bytes(body)) for seq, body in rows), max_events, max_bytes)

    def remove(self, keys: Iterable[int]) -> None:
        runs = _runs(sorted(keys))
        if not runs:
            return
        with self._write_lock, self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("DELETE FROM events WHERE seq BETWEEN ? AND ?", runs)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def dead_letter(self, item: Pending, status: int, problem: dict[str, Any]) -> None:
        with self._write_lock, self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT OR REPLACE INTO dead_letters (seq, body, status, problem, failed_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (item.key, item.body, status, json.dumps(problem), time.time()),
                )
                self._conn.execute("DELETE FROM events WHERE seq = ?", (item.key,))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def dead_letters(self) -> list[DeadLetter]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, body, status, problem, failed_at FROM dead_letters ORDER BY seq"
            ).fetchall()
        return [DeadLetter(int(r[0]), json.loads(r[1]), int(r[2]), json.loads(r[3]), float(r[4])) for r in rows]

    def requeue_dead_letters(self, seqs: Iterable[int] | None = None) -> int:
        """Move dead letters back to the send queue (after fixing the server side, e.g. a meter)."""
        with self._write_lock, self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if seqs is None:
                    wanted = [int(r[0]) for r in self._conn.execute("SELECT seq FROM dead_letters ORDER BY seq")]
                else:
                    wanted = sorted(seqs)
                moved = 0
                for seq in wanted:
                    row = self._conn.execute("SELECT body FROM dead_letters WHERE seq = ?", (seq,)).fetchone()
                    if row is None:
                        continue
                    self._conn.execute("INSERT INTO events (body) VALUES (?)", (row[0],))
                    self._conn.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,))
                    moved += 1
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return moved

    def depth(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM events").fetchone()[0])

    def oldest_key(self) -> int | None:
        with self._lock:
            row = self._conn.execute("SELECT min(seq) FROM events").fetchone()
        return None if row[0] is None else int(row[0])

    def newest_key(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return 0 if row is None else int(row[0])

    def after_fork_in_child(self) -> None:
        # A SQLite connection must not cross fork(); the child opens its own on the same file.
        # The parent's connections are abandoned, not closed (closing could disturb the parent).
        self._abandoned = (self._put_conn, self._conn)
        self._open()

    def close(self) -> None:
        with self._write_lock, self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._put_conn.close()
            self._conn.close()
