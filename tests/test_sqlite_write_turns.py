"""SQLite's write lock under back-to-back ingest commits: a writer of the same process that is
waiting for it (a meter build, a query's catch-up, an API call) gets it before the ingest writer's
next transaction (store/sqlite.WriteTurns). Before, it slept in SQLite's busy handler while the
ingest writer took the lock again and again, and a new meter stayed "rebuilding" for seconds."""

from __future__ import annotations

import threading

from sqlalchemy import text

from tallybook.store import open_store
from tallybook.store.sqlite import SqliteStore


def test_a_waiting_writer_goes_before_the_ingest_writers_next_transaction(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'turns.db'}")
    assert isinstance(store, SqliteStore)
    store.migrate()
    order: list[str] = []
    ingest = store.writer_connection()
    try:
        first = ingest.begin()  # the ingest writer holds the write lock

        def other_writer() -> None:
            with store.write() as conn:
                conn.execute(text("SELECT 1"))
                order.append("other")

        thread = threading.Thread(target=other_writer)
        thread.start()
        turns = store.write_turns
        with turns._changed:  # until the other writer is waiting for the lock
            assert turns._changed.wait_for(lambda: turns._waiting == 1, timeout=10)
        first.commit()
        with ingest.begin():  # right away, as the writer does after each commit
            order.append("ingest")
        thread.join(timeout=10)
    finally:
        ingest.close()
        store.close()
    assert order == ["other", "ingest"]


def test_the_ingest_writer_does_not_wait_for_a_writer_that_never_gets_the_lock(tmp_path):
    """A waiter that cannot take the lock (held elsewhere) holds ingest back at most LIMIT."""
    store = open_store(f"sqlite:///{tmp_path / 'turns.db'}")
    assert isinstance(store, SqliteStore)
    store.migrate()
    turns = store.write_turns
    turns.LIMIT = 0.01
    ingest = store.writer_connection()
    done: list[str] = []
    try:
        with turns.waiting(), ingest.begin():  # someone announced a wait and never got further
            ingest.execute(text("SELECT 1"))
            done.append("ingest")
    finally:
        ingest.close()
        store.close()
    assert done == ["ingest"]
