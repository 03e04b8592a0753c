"""The first minutes with a server: where the printed address leads, what the banner says, and that
every database or port problem at start is one line naming the thing and the fix."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys

import httpx
import psycopg
import pytest
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from tallybook.cli.main import app
from tallybook.store.connect import ServerLock, explain
from tests.conftest import POSTGRES_ADMIN_URL
from tests.serverproc import ServerProcess, free_port

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from tallybook.cli import main

    monkeypatch.setattr(main.console, "width", 300)
    monkeypatch.setattr(main.err_console, "width", 300)


def test_the_printed_address_opens_the_dashboard(client):
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/ui"


@pytest.mark.slow
def test_banner_names_the_dashboard_and_docs_and_a_restart_says_how_to_get_a_key(tmp_path, sqlite_url):
    first = ServerProcess(tmp_path, sqlite_url, bootstrap=False).start()
    output = first.stop()
    assert f"dashboard: {first.url}/ui" in output and f"API docs: {first.url}/docs" in output
    assert "lost the admin key" not in output  # the first start shows the key itself
    again = ServerProcess(tmp_path, sqlite_url, bootstrap=False).start()
    output = again.stop()
    assert "first admin API key" not in output
    assert f"tallybook keys create --scope admin --config {again.config}" in output


PG_BASE = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)


def _one_line_error(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_postgres_on_a_wrong_port_is_one_line(tmp_path):
    port = free_port()
    line = _one_line_error(["keys", "list", "--database", f"postgresql+psycopg://postgres@127.0.0.1:{port}/x"])
    assert line.startswith("database error: cannot reach PostgreSQL at 127.0.0.1:" + str(port))
    assert "host and port" in line


def test_a_missing_postgres_database_is_one_line_and_can_be_created():
    name = f"tallybook_missing_{secrets.token_hex(4)}"
    url = f"{PG_BASE}/{name}"
    try:
        line = _one_line_error(["keys", "list", "--database", url])
    except psycopg.OperationalError as exc:  # pragma: no cover - no server: nothing to check
        pytest.skip(str(exc))
    assert f"has no database '{name}'" in line and "--create-database" in line and "createdb" in line
    try:
        created = runner.invoke(app, ["db", "upgrade", "--create-database", "--database", url])
        assert created.exit_code == 0, created.output
        assert f"created database {url}" in created.output and "database at revision" in created.output
        again = runner.invoke(app, ["db", "upgrade", "--create-database", "--database", url])
        assert again.exit_code == 0 and "created database" not in again.output
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_bad_database_flag_is_one_line_like_the_same_mistake_in_the_file():
    line = _one_line_error(["keys", "list", "--database", "mysql://root@localhost/x"])
    assert line == (
        "configuration error: database URL 'mysql://root@localhost/x': must start with sqlite:/// or "
        "postgresql+psycopg://"
    )


def test_sqlite_paths_that_cannot_be_opened_are_one_line(tmp_path):
    line = _one_line_error(["keys", "list", "--database", f"sqlite:///{tmp_path}"])
    assert line == f"database error: cannot open sqlite:///{tmp_path}: {tmp_path} is a directory; give a file path"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = _one_line_error(["db", "upgrade", "--database", f"sqlite:///{blocker}/sub/tallybook.db"])
    assert line.startswith(f"database error: cannot open sqlite:///{blocker}/sub/tallybook.db")
    assert "exists and is writable" in line


def test_a_read_only_sqlite_database_names_the_fix(tmp_path):
    """Root ignores directory permissions, so the driver's read-only error is given directly."""
    error = OperationalError("INSERT", {}, Exception("attempt to write a readonly database"))
    message = str(explain(f"sqlite:///{tmp_path}/tallybook.db", error))
    assert message.startswith(f"cannot write sqlite:///{tmp_path}/tallybook.db: ")
    assert "read-only" in message and "--database sqlite:///" in message


def _serve(tmp_path, database_url, port):
    return subprocess.run(
        [sys.executable, "-m", "tallybook", "serve", "--database", database_url, "--port", str(port)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.slow
def test_serve_on_a_busy_port_refuses_before_announcing_itself(tmp_path, sqlite_url):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _serve(tmp_path, sqlite_url, port)
    assert result.returncode == 2
    assert "Tallybook on" not in result.stdout
    assert result.stderr.strip() == (
        f"port {port} on 127.0.0.1 is in use (another Tallybook?); stop it or pass --port to pick another"
    )


@pytest.mark.slow
def test_a_second_server_on_the_same_sqlite_file_is_refused(tmp_path, sqlite_url):
    first = ServerProcess(tmp_path, sqlite_url).start()
    elsewhere = tmp_path / "elsewhere"  # no tallybook.yaml here: only the --database flag is shared
    elsewhere.mkdir()
    try:
        result = _serve(elsewhere, sqlite_url, free_port())
        assert httpx.get(f"{first.url}/readyz").status_code == 200  # the first one is unharmed
    finally:
        first.stop()
    assert result.returncode == 2
    assert "Tallybook on" not in result.stdout
    assert "database error: another Tallybook server (pid " in result.stderr
    assert "only one server may use a SQLite file" in result.stderr
    # Once the first has stopped, the file is free again (the lock dies with its holder).
    lock = ServerLock(sqlite_url)
    lock.acquire()
    lock.release()
