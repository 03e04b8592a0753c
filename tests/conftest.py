"""Shared fixtures: every store-backed test runs on SQLite and on PostgreSQL.

PostgreSQL: each pytest process creates its own throwaway database (so parallel runs and xdist
workers never collide) and tables are emptied between tests. Without a reachable server the
PostgreSQL variants skip with the reason shown; under CI (CI=true) they fail instead, because CI
must exercise PostgreSQL.

SQLite: `database_url` is a copy of a database the migrations built once per pytest process (the
PostgreSQL variant is likewise a migrated database with its rows removed), not an empty file that
each test's first Runtime.build migrates again; tests that need an empty file use `sqlite_url`.
Temporary directories live on a RAM file system when the machine has one (/dev/shm): SQLite's
fsync on every commit is then nearly free, and crash tests still crash real processes.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from tallybook.api.app import create_app
from tallybook.clock import FixedClock
from tallybook.config import DatabaseSettings, Settings
from tallybook.runtime import Runtime
from tallybook.store import open_store
from tallybook.store.tables import all_tables

metadata = all_tables()  # every room's tables (tallybook/store/tables.py)

POSTGRES_ADMIN_URL = os.environ.get("TALLYBOOK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
_pg_state: dict[str, Any] = {}


def _postgres_database() -> str:
    """Create (once per process) a private database; return its SQLAlchemy URL."""
    if "url" in _pg_state:
        return str(_pg_state["url"])
    if "error" in _pg_state:
        _skip_or_fail(_pg_state["error"])
    name = f"tallybook_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        _pg_state["error"] = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}".strip()
        _skip_or_fail(_pg_state["error"])
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    _pg_state["url"] = f"{base}/{name}"
    _pg_state["name"] = name
    return str(_pg_state["url"])


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the PostgreSQL tests. {reason}")
    pytest.skip(reason)


_RAM_DIR = Path("/dev/shm")
_ram_basetemp = pytest.StashKey[Path]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Temporary directories on a RAM file system, unless --basetemp says where (xdist gives each
    worker a directory under the controller's)."""
    if config.option.basetemp or not (_RAM_DIR.is_dir() and os.access(_RAM_DIR, os.W_OK)):
        return
    config.option.basetemp = tempfile.mkdtemp(prefix="tallybook-tests-", dir=_RAM_DIR)
    config.stash[_ram_basetemp] = Path(config.option.basetemp)


def pytest_unconfigure(config: pytest.Config) -> None:
    ram = config.stash.get(_ram_basetemp, None)
    if ram is not None:  # RAM is scarcer than disk: no run's files outlive it
        shutil.rmtree(ram, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    name = _pg_state.get("name")
    if not name:
        return
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error:
        pass


# Children before parents; on PostgreSQL one round trip. (TRUNCATE would be one statement too, but
# it replaces every table's files: over 30 tables that is hundreds of milliseconds per test, against
# a few for DELETE on the handful of rows a test leaves.)
_EMPTY_POSTGRES = "; ".join(
    [f'DELETE FROM "{table.name}"' for table in reversed(metadata.sorted_tables)]
    + ["SELECT setval(pg_get_serial_sequence('events', 'seq'), 1, false)"]
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A CLI command run in-process (serve, worker, jobs run) sets up the root logger; put it back
    after each test, so one test's log setup never writes into another test's captured output."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def empty_all_tables(runtime: Runtime) -> None:
    """Remove every row (PostgreSQL tests share one database per process)."""
    with runtime.store.write() as conn:
        if runtime.store.dialect_name == "postgresql":
            conn.exec_driver_sql(_EMPTY_POSTGRES)
            return
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database the migrations built, once per process: `database_url` copies it."""
    path = tmp_path_factory.mktemp("migrated") / "tallybook.db"
    store = open_store(f"sqlite:///{path}")
    try:
        store.migrate()
    finally:
        store.close()
    # One self-contained file (no -wal beside it); the first connection to a copy turns WAL on again.
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A migrated database with no rows, on each engine."""
    if request.param == "sqlite":
        path = tmp_path / "tallybook.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        return f"sqlite:///{path}"
    return _postgres_database()


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    """A SQLite file that does not exist yet (a first start creates and migrates it)."""
    return f"sqlite:///{tmp_path / 'tallybook.db'}"


@pytest.fixture
def postgres_url() -> str:
    return _postgres_database()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 2, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database=DatabaseSettings(url=database_url))


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """A started runtime on a clean database (system clock)."""
    rt = Runtime.build(settings)
    empty_all_tables(rt)
    rt.start()
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture
def keys(runtime: Runtime) -> dict[str, str]:
    """One key per scope: {'admin': ..., 'read': ..., 'ingest': ...}."""
    return {scope: runtime.keys.create(f"test {scope}", scope).plaintext for scope in ("admin", "read", "ingest")}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(runtime: Runtime) -> Iterator[httpx.Client]:
    """An HTTP client against the real ASGI app (the runtime is managed by the fixture)."""
    from fastapi.testclient import TestClient

    app = create_app(runtime, manage_runtime=False)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


class LiveServer:
    """uvicorn serving the app on a free loopback port in a background thread."""

    def __init__(self, runtime: Runtime) -> None:
        self.config = uvicorn.Config(
            create_app(runtime, manage_runtime=False),
            host="127.0.0.1",
            port=0,
            log_config=None,
            access_log=False,
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    @property
    def url(self) -> str:
        sockets = self.server.servers[0].sockets
        host, port = sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server(runtime: Runtime) -> Iterator[LiveServer]:
    with LiveServer(runtime) as server:
        yield server
