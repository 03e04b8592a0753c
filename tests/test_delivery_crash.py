"""kill -9 in the middle of a delivery loses nothing: a real `tallybook worker` process is killed
while the receiver holds the request open; after a restart the receiver gets the event again, with
the same webhook-id and the same bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from tallybook.clock import FixedClock
from tallybook.store import open_store
from tallybook.webhooks.service import OutboxMessage
from tests.test_webhook_helpers import SECRET, Receiver, build_runtime, codehooks_signature_ok, standard_signature_ok

pytestmark = pytest.mark.slow


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def _start_worker(config_file: Path, log_file: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TALLYBOOK_CONFIG": str(config_file)}
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tallybook", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def test_kill_9_mid_delivery_then_restart_delivers_the_event(receiver, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'tallybook.db'}"
    webhooks = {
        "endpoints": [{"url": receiver.url, "secret": SECRET}],
        "timeout": "2s",
        "claim_lease": "3s",
        "scheduler": {"run_in_server": False, "poll_interval": "0.2s"},
    }
    config_file = tmp_path / "tallybook.yaml"
    config_file.write_text(
        yaml.safe_dump({"database": {"url": url}, "logging": {"level": "INFO"}, "webhooks": webhooks})
    )
    # An event waits in the outbox (written the way the period-close job writes it).
    runtime = build_runtime(url, FixedClock(datetime.now(UTC)), **webhooks)
    try:
        with runtime.store.write() as conn:
            destinations = runtime.webhooks.destinations(conn, "aggregation.completed")
            message = OutboxMessage("aggregation.completed", "crash|1", {"type": "aggregation.completed", "n": 1})
            event = runtime.webhooks.enqueue(conn, message, destinations, runtime.clock.now())
        assert event is not None
    finally:
        runtime.stop()

    receiver.hold()  # the receiver takes the request and does not answer
    log_file = tmp_path / "worker.log"
    worker = _start_worker(config_file, log_file)
    try:
        assert receiver.got_request.wait(30), log_file.read_text()
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    receiver.release()
    [first] = receiver.requests

    store = open_store(url)
    try:
        with store.read() as conn:
            state = conn.execute(text("SELECT state FROM notification_deliveries")).scalar_one()
        assert state == "SENDING"  # claimed by the dead worker; its lease runs out
    finally:
        store.close()

    restarted = _start_worker(config_file, log_file)
    try:
        got = receiver.wait_for(2, timeout=30)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(15)
    assert restarted.returncode == 0, log_file.read_text()
    second = got[1]
    assert second.headers["webhook-id"] == first.headers["webhook-id"] == event.id
    assert second.body == first.body == event.body.encode()
    assert standard_signature_ok(SECRET, second) and codehooks_signature_ok(SECRET, second)
    store = open_store(url)
    try:
        with store.read() as conn:
            state = conn.execute(text("SELECT state FROM notification_deliveries")).scalar_one()
            attempts = conn.execute(text("SELECT state, status_code FROM notification_attempts")).all()
        assert state == "SUCCESS"
        assert [tuple(a) for a in attempts] == [("SUCCESS", 200)]
    finally:
        store.close()
