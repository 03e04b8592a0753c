"""The CLI: keys, db upgrade, file import, serve's first-start key and config errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tallybook.cli.main import app
from tallybook.config import DatabaseSettings, Settings
from tallybook.runtime import Runtime
from tallybook.store.base import EventFilter
from tests.conftest import empty_all_tables
from tests.serverproc import ServerProcess

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Rich sizes its consoles once, at import, from the real terminal; make output width-independent."""
    from tallybook.cli import main

    monkeypatch.setattr(main.console, "width", 200)
    monkeypatch.setattr(main.err_console, "width", 200)


@pytest.fixture
def db(database_url):
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=database_url)))
    empty_all_tables(runtime)
    runtime.store.close()
    return database_url


def stored(database_url):
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=database_url)))
    try:
        return runtime.store.list_events(EventFilter(limit=10_000))
    finally:
        runtime.store.close()


def test_keys_create_list_revoke(db):
    created = runner.invoke(app, ["keys", "create", "--scope", "read", "--name", "grafana", "--database", db])
    assert created.exit_code == 0, created.output
    key_id, secret = created.output.split()[0], created.output.strip().splitlines()[-1]
    assert secret.startswith("tbk_")
    listed = runner.invoke(app, ["keys", "list", "--database", db])
    assert key_id in listed.output and "grafana" in listed.output
    assert secret not in listed.output
    assert runner.invoke(app, ["keys", "revoke", key_id, "--database", db]).exit_code == 0
    again = runner.invoke(app, ["keys", "revoke", key_id, "--database", db])
    assert again.exit_code == 1


def test_keys_create_rejects_unknown_scope(db):
    result = runner.invoke(app, ["keys", "create", "--scope", "root", "--database", db])
    assert result.exit_code == 2
    assert "ingest, read, admin" in result.output


def test_db_upgrade_reports_the_revision(db):
    result = runner.invoke(app, ["db", "upgrade", "--database", db])
    assert result.exit_code == 0, result.output
    assert "database at revision" in result.output


def test_ingest_jsonl_reports_accepted_duplicate_and_rejected(tmp_path, db):
    lines = [
        '{"id": "j1", "type": "api.calls", "subject": "a", "time": "2026-01-01T00:00:00Z", "data": {"value": 1}}',
        '{"id": "j2", "source": "web", "type": "api.calls", "subject": "b", "data": {"value": 0.1}}',
        '{"id": "j1", "type": "api.calls", "subject": "a", "time": "2026-01-01T00:00:00Z", "data": {"value": 1}}',
        "not json",
        '{"id": "j3", "type": "api.calls", "subject": "c", "time": "never"}',
        "",
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines))
    result = runner.invoke(app, ["ingest", str(path), "--database", db, "--source", "batch"])
    assert result.exit_code == 1  # some records were rejected
    assert "│        2 │         1 │           0 │        2 │" in result.output
    assert "line 4" in result.output and "line 5: time" in result.output
    events = {e.id: e for e in stored(db)}
    assert set(events) == {"j1", "j2"}
    assert events["j1"].source == "batch" and events["j2"].source == "web"


def test_ingest_csv_turns_extra_columns_into_exact_data(tmp_path, db):
    path = tmp_path / "usage.csv"
    path.write_text(
        "id,type,subject,time,value,region,data\n"
        'c1,storage.gb,acme,2026-01-01T00:00:00Z,0.1,eu,"{""tier"": ""gold""}"\n'
        "c2,storage.gb,acme,2026-01-02T00:00:00Z,12,,\n"
    )
    result = runner.invoke(app, ["ingest", str(path), "--database", db])
    assert result.exit_code == 0, result.output
    events = {e.id: e for e in stored(db)}
    from decimal import Decimal

    assert events["c1"].data == {"tier": "gold", "value": Decimal("0.1"), "region": "eu"}
    assert events["c2"].data == {"value": Decimal("12")}


def test_ingest_refuses_unknown_extensions(tmp_path, db):
    path = tmp_path / "events.txt"
    path.write_text("x")
    result = runner.invoke(app, ["ingest", str(path), "--database", db])
    assert result.exit_code == 2
    assert "use .jsonl or .csv" in result.output


def test_bad_config_fails_at_start_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("ingest:\n  max_batch_events: -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "tallybook", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ingest.max_batch_events: Input should be greater than 0" in result.stderr


@pytest.mark.slow
def test_serve_prints_a_first_admin_key_once_and_logs_no_secrets(tmp_path, sqlite_url):
    first_dir = tmp_path / "one"
    first_dir.mkdir()
    # No bootstrap key: serve must mint the first admin key and show it once.
    server = ServerProcess(first_dir, sqlite_url, bootstrap=False).start()
    import httpx

    output_lines: list[str] = []
    try:
        response = httpx.get(f"{server.url}/api/v1/events", headers={"Authorization": "Bearer wrong-key-secret"})
        assert response.status_code == 401
    finally:
        output_lines = server.stop().splitlines()
    keys = [line.strip() for line in output_lines if line.strip().startswith("tbk_")]
    assert len(keys) == 1
    admin_key = keys[0]
    log_text = "\n".join(line for line in output_lines if line.startswith("{"))
    assert admin_key not in log_text and "wrong-key-secret" not in log_text

    again = ServerProcess(first_dir, sqlite_url, bootstrap=False).start()
    try:
        assert (
            httpx.get(f"{again.url}/api/v1/events", headers={"Authorization": f"Bearer {admin_key}"}).status_code == 200
        )
    finally:
        second_output = again.stop()
    assert "first admin API key" not in second_output


def _config_with_meter(tmp_path, database_url):
    path = tmp_path / "tallybook.yaml"
    path.write_text(
        f"database:\n  url: {database_url}\n"
        "meters:\n  - slug: api_calls\n    eventType: api.calls\n    aggregation: COUNT\n"
    )
    return path


def _live_meters(database_url):
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=database_url)), sync_meters=False)
    try:
        return {m.slug: m.id for m in runtime.meters.list()}
    finally:
        runtime.store.close()


def test_commands_that_do_not_manage_meters_leave_config_meters_alone(tmp_path, db):
    """A read-only `keys list --database URL` (no config) once soft-deleted every config meter."""
    config = _config_with_meter(tmp_path, db)
    from tallybook.config import load_settings

    # The config's meter becomes live the way a server start makes it live.
    Runtime.build(load_settings(config)).store.close()
    before = _live_meters(db)
    assert "api_calls" in before
    for command in (
        ["keys", "list", "--database", db],
        ["keys", "create", "--scope", "read", "--database", db],
        ["stripe", "reports", "--database", db],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code in (0, 2), result.output  # stripe commands exit 2 without a Stripe key
        assert _live_meters(db) == before, f"{command} changed the meters"


def test_help_shows_flags_plainly_and_arguments_by_name():
    serve_help = runner.invoke(app, ["serve", "--help"]).output
    assert "--demo" in serve_help and "<bool>" not in serve_help
    ingest_help = runner.invoke(app, ["ingest", "--help"]).output
    assert "[OPTIONS] FILE" in ingest_help and "{file}" not in ingest_help.lower()
    assert "A .jsonl or .csv file of events" in ingest_help


def test_piped_keys_list_keeps_whole_dates(db):
    created = runner.invoke(
        app, ["keys", "create", "--scope", "read", "--name", "a rather long key name", "--database", db]
    )
    key_id = created.output.split()[0]
    listed = runner.invoke(app, ["keys", "list", "--database", db])  # CliRunner's output is not a terminal
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.splitlines()
    assert header.split("\t") == ["id", "name", "scope", "starts with", "created", "revoked"]
    fields = row.split("\t")
    assert fields[:3] == [key_id, "a rather long key name", "read"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", fields[4]), fields[4]


def test_jobs_run_runs_once_without_the_flag(db):
    result = runner.invoke(app, ["jobs", "run", "--database", db])
    assert result.exit_code == 0, result.output
    assert "webhooks" in result.output or "job" in result.output
    assert runner.invoke(app, ["jobs", "run", "--once", "--database", db]).exit_code == 0
