"""Pieces shared by the benchmarks: throwaway databases, a `tallybook serve` subprocess and a cheap
HTTP/1.1 load generator.

The load generator shares the machine's cores with the server it measures, so it is built to cost
as little CPU as possible: every request is encoded to bytes before the clock starts, connections
are kept alive, responses are parsed only as far as the status line and Content-Length, and the
event loop is uvloop when it is installed (uvicorn[standard] brings it). Several client processes
can split the work when one is not enough.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = (
    os.environ.get("TALLYBOOK_BENCH_POSTGRES_URL")
    or os.environ.get("TALLYBOOK_TEST_POSTGRES_URL")
    or "postgresql://postgres@127.0.0.1:5432/test"
)
ENGINES = ("sqlite", "postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_reachable(admin_url: str = PG_ADMIN_URL) -> str | None:
    """None when PostgreSQL answers at `admin_url`, else the reason it does not."""
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip() or type(exc).__name__
    return None


# -- databases -------------------------------------------------------------------------------------
class BenchDatabase:
    """A database that exists for one benchmark run: a SQLite file in `directory`, or a PostgreSQL
    database named tallybook_bench_<label>_<pid>_<random>. `drop()` removes it."""

    def __init__(self, engine: str, directory: Path, label: str, admin_url: str = PG_ADMIN_URL) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        self.engine = engine
        self.admin_url = admin_url
        self.path = directory / f"{label}.db"
        self.name = f"tallybook_bench_{label}_{os.getpid()}_{secrets.token_hex(3)}"
        self.created = False

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Tallybook is configured with."""
        if self.engine == "sqlite":
            return f"sqlite:///{self.path}"
        base = self.admin_url.rsplit("/", 1)[0]
        return base.replace("postgresql://", "postgresql+psycopg://", 1) + f"/{self.name}"

    @property
    def libpq_url(self) -> str:
        return self.admin_url.rsplit("/", 1)[0] + f"/{self.name}"

    def create(self) -> BenchDatabase:
        if self.engine == "postgres":
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
        self.created = True
        return self

    def migrate(self) -> None:
        """Create Tallybook's tables (the same migrations `tallybook serve` applies)."""
        from tallybook.store import open_store

        store = open_store(self.url)
        try:
            store.migrate()
        finally:
            store.close()

    def count_events(self) -> int:
        if self.engine == "sqlite":
            with sqlite3.connect(self.path) as conn:
                return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        with psycopg.connect(self.libpq_url) as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
            assert row is not None
            return int(row[0])

    def drop(self) -> None:
        if not self.created:
            return
        self.created = False
        if self.engine == "sqlite":
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# -- the server under test -------------------------------------------------------------------------
_KEY_VARIABLE = "TALLYBOOK_BENCH_ADMIN_KEY"


class ServerProcess:
    """`python -m tallybook serve` on a free loopback port, configured by a file in `directory`
    with a bootstrap admin key (read from the environment, so it never lands in the file)."""

    def __init__(
        self,
        directory: Path,
        database_url: str,
        settings: dict[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        name: str = "tallybook",
    ) -> None:
        self.directory = directory
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        self.admin_key = "tbk_bench_" + secrets.token_urlsafe(24)
        self.config = directory / f"{name}.yaml"
        self.log = directory / f"{name}.log"
        document: dict[str, Any] = {
            "database": {"url": database_url},
            "auth": {"bootstrap_keys": [{"name": "bench", "scope": "admin", "key": f"${{{_KEY_VARIABLE}}}"}]},
            "logging": {"level": "WARNING"},
        }
        for section, values in (settings or {}).items():
            document.setdefault(section, {}).update(values)
        self.config.write_text(yaml.safe_dump(document), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        """What a process reading this server's config needs: the admin key it names."""
        return {**os.environ, _KEY_VARIABLE: self.admin_key, "PYTHONUNBUFFERED": "1"}

    def start(self, timeout: float = 60.0) -> ServerProcess:
        env = self.environment()
        command = [sys.executable, "-m", "tallybook", "serve", "--config", str(self.config)]
        command += ["--host", self.host, "--port", str(self.port), *self.extra_args]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(command, cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the server was not ready within {timeout:.0f} s:\n{self.log_text()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far (all its threads and processes)."""
        return sum(self.cpu_by_process().values())

    def cpu_by_process(self) -> dict[int, float]:
        """CPU seconds so far of the server process and each of its descendants (--workers)."""
        if self.proc is None:
            return {}
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found: dict[int, float] = {}
        pending = [self.proc.pid]
        while pending:
            pid = pending.pop()
            found[pid] = _pid_cpu_seconds(pid)
            pending.extend(children.get(pid, ()))
        return found

    def peak_rss_mb(self) -> dict[int, float]:
        """Peak resident memory so far (VmHWM, MB) of the server process and each descendant."""
        peaks: dict[int, float] = {}
        for pid in self.cpu_by_process():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks[pid] = int(line.split()[1]) / 1024  # kB
        return peaks

    def stop(self, timeout: float = 20.0) -> None:
        _stop(self.proc, timeout)

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples that have no labels, by name (empty if unreachable)."""
        try:
            text = httpx.get(f"{self.url}/metrics", timeout=10).text
        except httpx.HTTPError:
            return {}
        samples: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if line.startswith("#") or "{" in name or not value:
                continue
            try:
                samples[name] = float(value)
            except ValueError:
                continue
        return samples

    def log_text(self, limit: int = 4000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-limit:]
        except OSError:
            return ""


class NoopServer:
    """benchmarks/noop_app.py under uvicorn with the options `tallybook serve` uses: the same
    server stack with an endpoint that only reads the body and answers 204."""

    path = "/noop"

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        self.log = directory / "noop.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> NoopServer:
        command = [sys.executable, "-m", "uvicorn", "benchmarks.noop_app:app", "--host", self.host]
        command += ["--port", str(self.port), "--loop", "uvloop", "--http", "httptools", "--no-access-log"]
        command += ["--log-level", "warning"]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the no-op server exited with {self.proc.returncode}")
            try:
                httpx.post(f"{self.url}{self.path}", content=b"{}", timeout=2)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the no-op server was not ready within {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.proc)

    def stop(self) -> None:
        _stop(self.proc, 20.0)


def _cpu_seconds(proc: subprocess.Popen[bytes] | None) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    return 0.0 if proc is None else _pid_cpu_seconds(proc.pid)


def _pid_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields 14 and 15 of stat(5) (utime, stime); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# -- the load generator ----------------------------------------------------------------------------
def encode_post(host: str, port: int, path: str, content_type: str, key: str, body: bytes) -> bytes:
    """One complete HTTP/1.1 keep-alive POST, ready to write to a socket."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"Authorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


@dataclass
class LoadResult:
    ok: int = 0  # requests answered 2xx
    failed: int = 0  # requests answered otherwise, or not answered
    failures: list[str] = field(default_factory=list)  # the first few, for the report
    started: float = 0.0  # time.monotonic(), comparable across processes on one machine
    finished: float = 0.0
    latencies: array = field(default_factory=lambda: array("d"))  # seconds, one per request
    acked: array = field(default_factory=lambda: array("d"))  # time.monotonic() of each 2xx answer
    client_cpu: float = 0.0  # CPU seconds the client process(es) used while sending

    @property
    def elapsed(self) -> float:
        return max(self.finished - self.started, 1e-9)

    def note_failure(self, text: str) -> None:
        self.failed += 1
        if len(self.failures) < 5:
            self.failures.append(text)

    @classmethod
    def merge(cls, parts: Sequence[LoadResult]) -> LoadResult:
        merged = cls()
        merged.started = min(p.started for p in parts)
        merged.finished = max(p.finished for p in parts)
        for p in parts:
            merged.ok += p.ok
            merged.failed += p.failed
            merged.failures.extend(p.failures[: 5 - len(merged.failures)])
            merged.latencies.extend(p.latencies)
            merged.acked.extend(p.acked)
            merged.client_cpu += p.client_cpu
        return merged

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; both set TCP_NODELAY already.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        elif b"\r\ntransfer-encoding:" in head:
            waiter.set_exception(ConnectionError("chunked responses are not supported by the load client"))
            return
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        waiter.set_result((int(head[9:12]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("the server closed the connection")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self.lost is not None or self.transport is None:
            raise ConnectionError("the connection is closed")
        self.waiter = self.loop.create_future()
        self.transport.write(request)
        return self.waiter


async def _open(host: str, port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_connection(lambda: _Connection(loop), host, port)
    return protocol


async def _drive(
    host: str,
    port: int,
    requests: Sequence[bytes],
    connections: int,
    timeout: float,
    ready: Callable[[], None],
) -> LoadResult:
    result = LoadResult()
    pool = [await _open(host, port) for _ in range(max(1, min(connections, len(requests))))]
    ready()
    cpu_before = time.process_time()
    result.started = time.monotonic()
    position = 0
    latencies = result.latencies
    acked = result.acked
    clock = time.monotonic

    async def worker(conn: _Connection) -> None:
        nonlocal position
        while position < len(requests):
            request = requests[position]
            position += 1
            sent = clock()
            try:
                status, body = await conn.send(request)
            except (ConnectionError, OSError) as exc:
                result.note_failure(f"connection: {exc}")
                conn = await _open(host, port)
                continue
            answered = clock()
            latencies.append(answered - sent)
            if 200 <= status < 300:
                result.ok += 1
                acked.append(answered)
            else:
                result.note_failure(f"HTTP {status}: {body[:300].decode(errors='replace')}")

    try:
        await asyncio.wait_for(asyncio.gather(*(worker(c) for c in pool)), timeout)
    except TimeoutError:
        unanswered = len(requests) - result.ok - result.failed
        result.note_failure(f"time limit of {timeout:.0f} s reached; {unanswered} requests unanswered")
        result.failed += unanswered - 1
    result.finished = time.monotonic()
    result.client_cpu = time.process_time() - cpu_before
    for conn in pool:
        if conn.transport is not None:
            conn.transport.close()
    return result


def _run_loop(coroutine: Any) -> LoadResult:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def _client_process(
    host: str,
    port: int,
    requests: Sequence[bytes],
    connections: int,
    timeout: float,
    barrier: Any,
    pipe: Any,
) -> None:
    try:
        result = _run_loop(_drive(host, port, requests, connections, timeout, lambda: barrier.wait(60)))
    except BaseException as exc:
        barrier.abort()
        result = LoadResult()
        result.note_failure(f"client process failed: {type(exc).__name__}: {exc}")
        result.failed += len(requests) - 1
    pipe.send(result)
    pipe.close()


def run_load(
    host: str,
    port: int,
    requests: Sequence[bytes],
    concurrency: int,
    processes: int = 1,
    timeout: float = 120.0,
) -> LoadResult:
    """Send every request once, `concurrency` at a time over as many keep-alive connections, split
    across `processes` client processes that start together. Bounded by `timeout` seconds."""
    processes = max(1, min(processes, concurrency, len(requests)))
    context = multiprocessing.get_context("fork")  # the children inherit the encoded requests
    barrier = context.Barrier(processes)
    children = []
    for index in range(processes):
        share = concurrency // processes + (1 if index < concurrency % processes else 0)
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(
            target=_client_process,
            args=(host, port, requests[index::processes], share, timeout, barrier, sender),
            daemon=True,
        )
        child.start()
        sender.close()
        children.append((child, receiver))
    parts = []
    for child, receiver in children:
        try:
            if receiver.poll(timeout + 90):
                parts.append(receiver.recv())
        except EOFError:
            pass
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
            child.join()
    if len(parts) < processes:
        missing = LoadResult(started=time.monotonic(), finished=time.monotonic())
        missing.note_failure(f"{processes - len(parts)} client process(es) returned nothing")
        parts.append(missing)
    return LoadResult.merge(parts)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
