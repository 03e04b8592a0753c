"""A meter rebuild killed with SIGKILL resumes from its cursor and ends with exact figures (issue 16).

`tallybook meters rebuild` runs as a real subprocess with small chunks; it is killed mid-build,
the committed part is checked (whole chunks only: the rows match the cursor exactly), and a second
run finishes the build, which must count every event exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from tallybook.config import DatabaseSettings, Settings
from tallybook.ingest.events import Event
from tallybook.meters.models import Aggregation, MeterSpec, UsageQuery
from tallybook.meters.tables import meter_projections, meter_usage
from tallybook.runtime import Runtime
from tallybook.store.schema import events
from tests.conftest import empty_all_tables
from tests.serverproc import write_config

pytestmark = pytest.mark.slow

EVENTS = 20_000
CHUNK = 100
TIME_US = 1_767_225_600_000_000


def _build_state(runtime: Runtime) -> tuple[int, int, int]:
    """(build cursor, its rows, events at or below the cursor) of the meter's building projection."""
    with runtime.store.read() as conn:
        key, cursor = conn.execute(
            select(meter_projections.c.usage_key, meter_projections.c.projected_seq).where(
                meter_projections.c.state == "building"
            )
        ).one()
        rows = conn.execute(select(func.count()).where(meter_usage.c.meter_key == key)).scalar_one()
        done = conn.execute(select(func.count()).where(events.c.seq <= cursor)).scalar_one()
    return int(cursor), int(rows), int(done)


def _rebuild(config) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tallybook", "meters", "rebuild", "--config", str(config)],
        cwd=config.parent,
        env={**os.environ, "TB_TEST_ADMIN_KEY": "unused"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_a_rebuild_killed_with_sigkill_resumes_and_counts_every_event_once(tmp_path, database_url):
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=database_url)))
    empty_all_tables(runtime)
    runtime.ingest.start()
    runtime.ingest.ingest(
        [Event("svc", f"e{i}", "calls", f"c{i % 5}", TIME_US + i, {"n": Decimal(i) / 100}) for i in range(EVENTS)]
    )
    runtime.meters.settings = runtime.meters.settings.model_copy(update={"rebuild_inline_events": 0})
    spec = MeterSpec(slug="calls", event_type="calls", aggregation=Aggregation.SUM, value_property="$.n")
    runtime.meters.create(spec)
    assert runtime.meters.projection("calls").state == "rebuilding"

    config = write_config(
        tmp_path, database_url, bootstrap=False, extra=f"meters:\n  materialize_chunk_events: {CHUNK}\n"
    )
    child = _rebuild(config)
    # Kill it once it has committed some chunks but not all (a busy read of its cursor, no sleeping).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        cursor, _rows, _done = _build_state(runtime)
        if cursor >= 10 * CHUNK:
            break
    assert child.poll() is None, "the rebuild ended before it could be killed: " + child.stdout.read().decode()
    child.send_signal(signal.SIGKILL)
    child.wait(30)

    cursor, rows, done = _build_state(runtime)
    assert 0 < cursor < EVENTS, "killed mid-build"
    assert rows == done, "only whole committed chunks are left: the rows match the cursor exactly"
    status = runtime.meters.projection("calls")
    assert (status.state, status.events_processed) == ("rebuilding", cursor)

    again = _rebuild(config)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out.decode()
    assert "every meter is ready" in out.decode()

    status = runtime.meters.projection("calls")
    assert (status.state, status.events_processed, status.events_total) == ("ready", EVENTS, EVENTS)
    [row] = runtime.meters.query(UsageQuery(meter="calls"))
    assert row.value == sum(Decimal(i) for i in range(EVENTS)) / 100
    with runtime.store.read() as conn:
        counted = conn.execute(
            select(func.count(), func.count(func.distinct(meter_usage.c.event_seq))).where(
                meter_usage.c.meter_key == runtime.meters.get("calls").key
            )
        ).one()
    assert tuple(counted) == (EVENTS, EVENTS)
    runtime.stop()
