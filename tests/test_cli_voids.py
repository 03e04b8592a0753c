"""`tallybook events void|amend|voids` on SQLite and PostgreSQL: the same service as the API, the
CLI user in the audit trail, dry runs and read-only listing that change nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, inspect
from typer.testing import CliRunner

from tallybook import jsonutil
from tallybook.cli.main import app
from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tests.test_webhook_helpers import api, build_runtime

runner = CliRunner()
METERS = [{"slug": "api_calls", "eventType": "api.calls", "aggregation": "SUM", "valueProperty": "$.value"}]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    from tallybook.cli import main

    monkeypatch.setattr(main.console, "width", 250)
    monkeypatch.setattr(main.err_console, "width", 250)


@pytest.fixture
def rt(database_url: str) -> Iterator[Runtime]:
    runtime = build_runtime(database_url, FixedClock(datetime(2026, 3, 10, 12, tzinfo=UTC)), meters=METERS)
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
def client(rt: Runtime) -> Iterator[httpx.Client]:
    c = api(rt)
    try:
        c.post(
            "/api/v1/events",
            json=[event("e1", 5), event("e2", 7), event("e3", 11, subject="other")],
            headers={"Content-Type": "application/cloudevents-batch+json"},
        ).raise_for_status()
        yield c
    finally:
        c.close()


def event(event_id: str, value: Any, subject: str = "acme") -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "app",
        "type": "api.calls",
        "subject": subject,
        "time": "2026-03-10T09:00:00Z",
        "data": {"value": value},
    }


def total(client: httpx.Client) -> str:
    params = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
    rows = jsonutil.loads(client.get("/api/v1/meters/api_calls/query", params=params).content)["data"]
    return str(rows[0]["value"]) if rows else "0"


def cli(*args: str, database: str) -> Any:
    return runner.invoke(app, [*args, "--database", database])


def test_void_by_id_then_the_audit_trail(database_url: str, client: httpx.Client) -> None:
    assert total(client) == "23"
    done = cli("events", "void", "--source", "app", "--id", "e2", "--reason", "load test", database=database_url)
    assert done.exit_code == 0, done.output
    assert "1 event(s) voided" in done.output and "app/e2" in done.output
    # The summary line, wherever it is (log lines of the run may share the captured output).
    [summary] = [line for line in done.output.splitlines() if "event(s) voided at" in line]
    void_id = summary.split()[1].rstrip(":")
    assert total(client) == "16"

    listed = cli("events", "voids", database=database_url)
    assert listed.exit_code == 0, listed.output
    assert void_id in listed.output and "load test" in listed.output and "cli:" in listed.output
    shown = cli("events", "voids", "--show", void_id, database=database_url)
    assert shown.exit_code == 0 and "app/e2" in shown.output and "reason: load test" in shown.output
    record = client.get(f"/api/v1/events/voids/{void_id}").json()
    assert record["actor"]["type"] == "cli"
    assert record["selection"] == {"events": [{"source": "app", "id": "e2"}]}

    again = cli("events", "void", "--source", "app", "--id", "e2", "--reason", "x", database=database_url)
    assert again.exit_code == 1 and "voided already" in again.output
    missing = cli("events", "voids", "--show", "nope", database=database_url)
    assert missing.exit_code == 1 and "no void" in missing.output


def test_void_by_filter_with_a_dry_run_first(database_url: str, client: httpx.Client) -> None:
    base = ["events", "void", "--subject", "acme", "--type", "api.calls", "--reason", "duplicate import"]
    window = ["--from", "2026-03-10T00:00:00Z", "--to", "2026-03-11T00:00:00Z"]
    dry = cli(*base, *window, "--dry-run", database=database_url)
    assert dry.exit_code == 0, dry.output
    assert "2 event(s) would be voided" in dry.output
    assert total(client) == "23"
    assert client.get("/api/v1/events/voids").json()["totalCount"] == 0

    done = cli(*base, *window, database=database_url)
    assert done.exit_code == 0, done.output
    assert "2 event(s) voided" in done.output
    assert total(client) == "11"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--reason", "x"], 1, "at least a subject"),
        (["--id", "e1", "--reason", "x"], 2, "--id needs --source"),
        (["--source", "app", "--id", "e1", "--subject", "acme", "--reason", "x"], 2, "not both"),
        (["--subject", "acme", "--from", "yesterday", "--reason", "x"], 2, "RFC 3339"),
        (["--source", "app", "--id", "e1", "--reason", " "], 1, "reason is required"),
    ],
)
def test_void_refuses_what_could_void_the_wrong_events(
    database_url: str, client: httpx.Client, args: list[str], code: int, message: str
) -> None:
    result = cli("events", "void", *args, database=database_url)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert total(client) == "23"


def test_amend_from_a_file(database_url: str, client: httpx.Client, tmp_path: Path) -> None:
    corrected = tmp_path / "fixed.json"
    corrected.write_text(json.dumps(event("e2-v2", 2)))
    args = ["events", "amend", "--source", "app", "--id", "e2", "--reason", "units were wrong"]
    done = cli(*args, "--event", f"@{corrected}", database=database_url)
    assert done.exit_code == 0, done.output
    assert "replaced by app/e2-v2" in done.output
    assert total(client) == "18"

    bad = cli(*args, "--event", json.dumps({**event("e2-v3", 2), "time": "soon"}), database=database_url)
    assert bad.exit_code == 2 and "time" in bad.output
    taken = cli(
        "events",
        "amend",
        "--source",
        "app",
        "--id",
        "e1",
        "--reason",
        "x",
        "--event",
        json.dumps(event("e3", 1)),
        database=database_url,
    )
    assert taken.exit_code == 1 and "already stored" in taken.output
    assert total(client) == "18"


def test_listing_voids_writes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = cli("events", "voids", database=url)
    assert result.exit_code == 2, result.output
    assert "tallybook db upgrade" in result.output
    engine = create_engine(url)
    try:
        assert inspect(engine).get_table_names() == []  # no migration, no meters synced
    finally:
        engine.dispose()
