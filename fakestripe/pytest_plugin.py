"""Pytest fixtures for the fake Stripe server.

Enable with ``pytest_plugins = ["fakestripe.pytest_plugin"]`` in the root ``conftest.py``.
``fake_stripe`` is a running :class:`FakeStripeServer` (fresh state per test) that fails the test if
the fake itself hit an internal error; ``stripe_client`` is a real ``stripe.StripeClient`` aimed at it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import stripe

from .server import FakeStripeServer


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        yield server
    assert not server.state.server_errors, "\n".join(server.state.server_errors)


@pytest.fixture
def stripe_client(fake_stripe: FakeStripeServer) -> stripe.StripeClient:
    return fake_stripe.client()
