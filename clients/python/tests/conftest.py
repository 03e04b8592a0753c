"""Fixtures for the client tests: fake HTTP handlers for unit tests, real servers for the rest.

The integration tests start `tallybook serve` as a subprocess through the server's own test helper
(tests/serverproc.py in this repository), on SQLite and on PostgreSQL. Where the server package is
not installed (the client alone), they are skipped.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
POSTGRES_ADMIN_URL = os.environ.get("TALLYBOOK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _server_helpers() -> Any:
    try:
        import tallybook  # noqa: F401
    except ImportError:
        pytest.skip("the tallybook server package is not installed")
    if str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))
    from tests import serverproc

    return serverproc


class Recorder:
    """An httpx handler for unit tests: answers from a script of responses, records every batch."""

    def __init__(self, *answers: httpx.Response | Callable[[list[dict[str, Any]]], httpx.Response]) -> None:
        self.answers = list(answers)
        self.batches: list[list[dict[str, Any]]] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        import json

        batch = json.loads(request.content)
        self.batches.append(batch)
        answer = self.answers.pop(0) if self.answers else httpx.Response(204)
        return answer(batch) if callable(answer) else answer

    @property
    def ids(self) -> list[str]:
        return [e["id"] for batch in self.batches for e in batch]


@pytest.fixture
def recorder() -> Callable[..., Recorder]:
    return Recorder


class FakeClock:
    """A monotonic clock the test moves; `sleep` advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


_pg: dict[str, str] = {}


def _postgres_url() -> str:
    if "url" in _pg:
        return _pg["url"]
    psycopg = pytest.importorskip("psycopg")
    name = f"tallybook_client_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        reason = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests. {reason}")
        pytest.skip(reason)
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    _pg["name"] = name
    _pg["url"] = f"{base}/{name}"
    return _pg["url"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "name" not in _pg:
        return
    import psycopg

    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{_pg["name"]}" WITH (FORCE)')
    except psycopg.Error:
        pass


class Server:
    """A real `tallybook serve` (stop/start/kill keep the port), plus counting what it stored."""

    def __init__(self, proc: Any, admin_key: str) -> None:
        self.proc = proc
        self.url: str = proc.url
        self.key = admin_key
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)

    def start(self) -> None:
        self.proc.start()

    def stop(self) -> None:
        self.proc.stop()

    def kill(self) -> None:
        self.proc.kill()

    def stored_ids(self, event_type: str) -> list[str]:
        response = self.http.get("/api/v1/events", params={"type": event_type, "limit": 1000})
        response.raise_for_status()
        items = response.json()
        assert len(items) < 1000, "too many events to list; count them with a meter"
        return [item["event"]["id"] for item in items]

    def create_count_meter(self, slug: str, event_type: str) -> None:
        response = self.http.post(
            "/api/v1/meters", json={"slug": slug, "aggregation": "COUNT", "eventType": event_type}
        )
        assert response.status_code in (200, 201), response.text


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per module and engine (starting one costs seconds); tests use their own event type."""
    helpers = _server_helpers()
    directory = tmp_path_factory.mktemp("server")
    url = f"sqlite:///{directory / 'tallybook.db'}" if request.param == "sqlite" else _postgres_url()
    proc = helpers.ServerProcess(directory, url).start()
    server = Server(proc, helpers.ADMIN_KEY)
    try:
        yield server
    finally:
        server.http.close()
        proc.kill()


@pytest.fixture
def running_server(server: Server) -> Server:
    """The module's server, started again if an earlier test left it down."""
    if server.proc.proc is None or server.proc.proc.poll() is not None:
        server.start()
    return server


@pytest.fixture
def event_type(request: pytest.FixtureRequest) -> str:
    """A type unique to the test, so tests sharing a PostgreSQL database never count each other."""
    return f"t{secrets.token_hex(4)}.calls"
