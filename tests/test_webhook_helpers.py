"""Shared pieces of the webhook tests: a real HTTP receiver, signature checks written independently
of Tallybook's signing code, and runtimes with a fixed clock on a clean database.

The checks at the bottom exercise the helpers themselves (a wrong signature must not pass).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from sqlalchemy import text

from tallybook.clock import FixedClock
from tallybook.config import Settings
from tallybook.runtime import Runtime
from tallybook.store import open_store
from tallybook.store.tables import all_tables

metadata = all_tables()  # every room's tables (tallybook/store/tables.py)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes, like a generated one
TEMPLATE_SECRET = "whsec_your_webhook_secret"  # the codehooks README's style: not base64


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


class Receiver:
    """A webhook receiver on a free loopback port. Answers from `statuses` (then `default_status`);
    can hold requests open (`hold()` until `release()`)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.statuses: deque[int] = deque()
        self.default_status = 200
        self.got_request = threading.Event()
        self._held: threading.Event | None = None
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.popleft() if receiver.statuses else receiver.default_status
                    held = receiver._held
                receiver.got_request.set()
                if held is not None:
                    held.wait(30)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender went away (timeout, or killed)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hooks"

    def hold(self) -> None:
        self._held = threading.Event()

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.set()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = threading.Event()
        waited = 0.0
        while len(self.requests) < count and waited < timeout:
            deadline.wait(0.05)
            waited += 0.05
        assert len(self.requests) >= count, f"receiver got {len(self.requests)} request(s), wanted {count}"
        return list(self.requests)


# -- signature checks, written from the two specifications (not with Tallybook's code) -------------
def standard_signature_ok(secret: str, received: Received) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    message_id = received.headers["webhook-id"]
    timestamp = received.headers["webhook-timestamp"]
    signed = f"{message_id}.{timestamp}.".encode() + received.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [part.split(",", 1)[1] for part in received.headers["webhook-signature"].split(" ")]
    return any(hmac.compare_digest(expected, sig) for sig in offered)


def codehooks_signature_ok(secret: str, received: Received) -> bool:
    timestamp = received.headers["x-webhook-timestamp"]
    expected = "v1=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + received.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, received.headers["x-webhook-signature"])


# -- runtimes ---------------------------------------------------------------------------------------
def reset_database(url: str) -> None:
    """Empty every table (PostgreSQL tests share one database per process)."""
    store = open_store(url)
    try:
        store.migrate()
        with store.write() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
            if store.dialect_name == "postgresql":
                conn.execute(text("SELECT setval(pg_get_serial_sequence('events', 'seq'), 1, false)"))
    finally:
        store.close()


def build_runtime(
    url: str, clock: FixedClock, reset: bool = True, meters: list[dict[str, Any]] | None = None, **webhooks: Any
) -> Runtime:
    """A started runtime whose jobs run only when the test says (no background scheduler)."""
    if reset:
        reset_database(url)
    webhooks.setdefault("scheduler", {"run_in_server": False})
    settings = Settings.model_validate(
        {"database": {"url": url}, "webhooks": webhooks, "meters": {"definitions": meters or []}}
    )
    runtime = Runtime.build(settings, clock=clock)
    runtime.start()
    return runtime


def now_clock() -> FixedClock:
    """A fixed clock at the real current second (signatures then verify against real time)."""
    return FixedClock(datetime.now(UTC).replace(microsecond=0))


def api(runtime: Runtime) -> httpx.Client:
    """An HTTP client on the app with an admin key (the caller closes it)."""
    from fastapi.testclient import TestClient

    from tallybook.api.app import create_app

    key = runtime.keys.create("webhook tests", "admin").plaintext
    client = TestClient(create_app(runtime, manage_runtime=False), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {key}"
    return client


# -- the helpers check out --------------------------------------------------------------------------
def test_signature_checks_reject_a_tampered_body() -> None:
    body = b'{"a":1}'
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signature = base64.b64encode(hmac.new(key, b"msg_1.1700000000." + body, hashlib.sha256).digest()).decode()
    good = Received(
        "/",
        {
            "webhook-id": "msg_1",
            "webhook-timestamp": "1700000000",
            "webhook-signature": f"v1,{signature}",
            "x-webhook-timestamp": "1700000000",
            "x-webhook-signature": "v1=" + hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest(),
        },
        body,
    )
    assert standard_signature_ok(SECRET, good)
    assert codehooks_signature_ok(SECRET, good)
    tampered = Received(good.path, good.headers, b'{"a":2}')
    assert not standard_signature_ok(SECRET, tampered)
    assert not codehooks_signature_ok(SECRET, tampered)


def test_receiver_records_requests_and_answers_as_told() -> None:
    with Receiver() as receiver, httpx.Client() as client:
        receiver.statuses.extend([500, 201])
        assert client.post(receiver.url, content=b"one").status_code == 500
        assert client.post(receiver.url, content=b"two").status_code == 201
        assert client.post(receiver.url, content=b"three").status_code == 200
    assert [r.body for r in receiver.requests] == [b"one", b"two", b"three"]
