"""Fixtures of the billing tests (plans, subscriptions, invoices, billing profiles): a started
runtime on a fixed clock at 2026-01-01, with the seed meters, and an HTTP client against it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tests.billing_helpers import build, client_for, utc


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(utc(2026, 1, 1))


@pytest.fixture
def rt(database_url: str, clock: FixedClock) -> Iterator[Runtime]:
    runtime = build(database_url, clock)
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
def api(rt: Runtime) -> Iterator[httpx.Client]:
    client = client_for(rt)
    try:
        yield client
    finally:
        client.close()
