"""`tallybook backup` / `restore`: a backup taken while a real server ingests restores every event
acknowledged before it started, exactly once; restore refuses what it must not overwrite."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tallybook.cli.main import app
from tallybook.config import DatabaseSettings, Settings
from tallybook.demo import load_demo_events
from tallybook.ingest.events import Event
from tallybook.runtime import Runtime
from tests.helpers import BATCH, body, cloudevent, headers
from tests.serverproc import ADMIN_KEY, ServerProcess

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from tallybook.cli import main

    monkeypatch.setattr(main.console, "width", 200)
    monkeypatch.setattr(main.err_console, "width", 200)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def stored_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT event_id FROM events")]
    finally:
        conn.close()


def demo_database(path: Path) -> str:
    url = sqlite_url(path)
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=url)))
    try:
        load_demo_events(runtime)
    finally:
        runtime.stop()
    return url


@pytest.mark.slow
def test_backup_while_serving_restores_every_acknowledged_event_once(tmp_path):
    served = tmp_path / "served.db"
    server = ServerProcess(tmp_path, sqlite_url(served)).start()
    acknowledged: list[str] = []
    lock = threading.Lock()
    warmed_up, stop = threading.Event(), threading.Event()
    more_after_backup = threading.Event()
    wanted_after: list[int] = []
    errors: list[str] = []

    def stream(worker: int) -> None:
        # A bounded loop: at most 2,000 requests of 10 events per worker.
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for n in range(2_000):
                if stop.is_set():
                    return
                batch = [cloudevent(f"w{worker}-{n}-{i}", subject=f"s{i}") for i in range(10)]
                response = http.post("/api/v1/events", content=body(batch), headers=headers(ADMIN_KEY, BATCH))
                if response.status_code not in (202, 204):
                    errors.append(f"{response.status_code} {response.text}")
                    return
                with lock:
                    acknowledged.extend(e["id"] for e in batch)
                    if len(acknowledged) >= 1_000:
                        warmed_up.set()
                    if wanted_after and len(acknowledged) >= wanted_after[0]:
                        more_after_backup.set()

    workers = [threading.Thread(target=stream, args=(w,)) for w in range(3)]
    backup_file = tmp_path / "backups" / "tallybook-backup.db"
    try:
        for worker in workers:
            worker.start()
        assert warmed_up.wait(timeout=120), f"the server acknowledged too little: {errors}"
        with lock:
            before_backup = set(acknowledged)
        result = runner.invoke(app, ["backup", str(backup_file), "--database", sqlite_url(served)])
        assert result.exit_code == 0, result.output
        assert "backup written" in result.output
        with lock:
            wanted_after.append(len(acknowledged) + 500)
        # The server went on acknowledging after the backup: it served throughout.
        assert more_after_backup.wait(timeout=120), f"ingest stopped after the backup: {errors}"

        # A database a server has open is never overwritten, even with --force.
        refused = runner.invoke(app, ["restore", str(backup_file), "--database", sqlite_url(served), "--force"])
        assert refused.exit_code == 2
        assert "open in another process" in refused.output
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        server.stop()
    assert not errors, errors

    restored = tmp_path / "restored" / "tallybook.db"
    result = runner.invoke(app, ["restore", str(backup_file), "--database", sqlite_url(restored)])
    assert result.exit_code == 0, result.output
    ids = stored_ids(restored)
    assert len(ids) == len(set(ids)), "an event is stored twice"
    missing = before_backup - set(ids)
    assert not missing, f"{len(missing)} events acknowledged before the backup are missing, e.g. {sorted(missing)[:5]}"
    # Nothing appears that the clients did not send (acknowledged or in flight when the backup ran).
    assert set(ids) <= set(acknowledged)
    checked = runner.invoke(app, ["verify", "--database", sqlite_url(restored)])
    assert checked.exit_code == 0, checked.output
    assert "FAILED" not in checked.output


def test_restore_refuses_a_database_with_data_unless_forced(tmp_path):
    source_url = demo_database(tmp_path / "source.db")
    backup_file = tmp_path / "backup.db"
    assert runner.invoke(app, ["backup", str(backup_file), "--database", source_url]).exit_code == 0
    assert stored_ids(backup_file) == stored_ids(tmp_path / "source.db")
    # The backup is one self-contained file: rollback journal, no -wal beside it.
    assert sqlite3.connect(backup_file).execute("PRAGMA journal_mode").fetchone()[0] == "delete"

    other = tmp_path / "other.db"
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=sqlite_url(other))))
    runtime.ingest.start()
    runtime.ingest.ingest([Event(source="x", id="only", type="t", subject="s", time_us=0, data=None)])
    runtime.stop()

    refused = runner.invoke(app, ["restore", str(backup_file), "--database", sqlite_url(other)])
    assert refused.exit_code == 2
    assert "holds data (1 events" in refused.output and "--force" in refused.output
    assert stored_ids(other) == ["only"]

    forced = runner.invoke(app, ["restore", str(backup_file), "--database", sqlite_url(other), "--force"])
    assert forced.exit_code == 0, forced.output
    assert sorted(stored_ids(other)) == sorted(stored_ids(backup_file))
    assert sqlite3.connect(other).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert runner.invoke(app, ["verify", "--database", sqlite_url(other)]).exit_code == 0


def test_restore_checks_the_file_is_a_known_tallybook_database(tmp_path):
    target = sqlite_url(tmp_path / "target.db")
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("hello")
    result = runner.invoke(app, ["restore", str(not_sqlite), "--database", target])
    assert result.exit_code == 2 and "is not a SQLite database" in result.output

    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.commit()
    result = runner.invoke(app, ["restore", str(foreign), "--database", target])
    assert result.exit_code == 2 and "not a Tallybook database" in result.output

    newer = tmp_path / "newer.db"
    demo_database(tmp_path / "current.db")
    shutil.copy(tmp_path / "current.db", newer)
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    conn.commit()
    conn.close()
    result = runner.invoke(app, ["restore", str(newer), "--database", target])
    assert result.exit_code == 2
    assert "9999_from_the_future" in result.output and "newer version" in result.output
    assert not (tmp_path / "target.db").exists()


def test_postgresql_backup_and_restore_print_the_pg_tools_commands(tmp_path):
    url = "postgresql+psycopg://tally:s3cret@db.internal:5433/tallybook"
    dumped = runner.invoke(app, ["backup", str(tmp_path / "tb.dump"), "--database", url])
    assert dumped.exit_code == 2
    assert f"pg_dump --format=custom --file {tmp_path / 'tb.dump'} postgresql://tally@db.internal:5433/tallybook" in (
        dumped.output
    )
    assert "s3cret" not in dumped.output
    restored = runner.invoke(app, ["restore", str(tmp_path / "tb.dump"), "--database", url])
    assert restored.exit_code == 2
    assert "pg_restore --clean --if-exists --no-owner --dbname postgresql://tally@db.internal:5433/tallybook" in (
        restored.output
    )


def test_an_older_backup_restores_and_says_to_upgrade(tmp_path):
    demo_database(tmp_path / "old.db")
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute("UPDATE alembic_version SET version_num = '0010'")  # a revision this version knows
    conn.commit()
    conn.close()
    result = runner.invoke(app, ["restore", str(tmp_path / "old.db"), "--database", sqlite_url(tmp_path / "new.db")])
    assert result.exit_code == 0, result.output
    assert "revision 0010" in result.output
    assert "run `tallybook db upgrade`" in result.output


def test_backup_of_a_missing_database_says_so(tmp_path):
    result = runner.invoke(app, ["backup", str(tmp_path / "b.db"), "--database", sqlite_url(tmp_path / "none.db")])
    assert result.exit_code == 2
    assert f"no database file at {tmp_path / 'none.db'}" in result.output
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "b.db").exists()
