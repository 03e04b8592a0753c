"""`tallybook serve --workers N`: several server processes on PostgreSQL; refused on SQLite, where
one process writes the database file at a time."""

from __future__ import annotations

from pathlib import Path

import httpx
from typer.testing import CliRunner

from tallybook.cli.main import app
from tallybook.config import DatabaseSettings, Settings
from tallybook.runtime import Runtime
from tests.conftest import empty_all_tables
from tests.helpers import BATCH, body, cloudevent
from tests.serverproc import ADMIN_KEY, ServerProcess


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_workers_serve_postgresql_and_sqlite_refuses_them(tmp_path, database_url):
    if database_url.startswith("sqlite"):
        result = CliRunner().invoke(app, ["serve", "--workers", "2", "--database", database_url])
        assert result.exit_code == 2
        assert "--workers above 1 needs PostgreSQL" in result.output
        return
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=database_url)), sync_meters=False)
    empty_all_tables(runtime)  # the database is shared by this pytest process's tests
    server = ServerProcess(tmp_path, database_url, extra_args=("--workers", "2")).start(timeout=60)
    try:
        assert server.proc is not None
        workers = children(server.proc.pid)
        assert len(workers) >= 2  # uvicorn's supervisor runs the worker processes as its children
        auth = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": BATCH}
        for n in range(20):  # a new connection each: the kernel spreads them over the workers
            batch = [cloudevent(f"w{n}-{i}") for i in range(5)]
            with httpx.Client(base_url=server.url, timeout=30) as client:
                assert client.post("/api/v1/events", content=body(batch), headers=auth).status_code == 204
    finally:
        server.stop()
    try:
        assert runtime.store.count_events() == 100
    finally:
        runtime.store.close()
