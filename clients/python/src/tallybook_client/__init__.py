"""Tallybook's Python client: cheap to call, batched, and durable.

from tallybook_client import Tallybook
tb = Tallybook("http://127.0.0.1:8888", api_key="tbk_…", spool="~/.tallybook/spool")
tb.track("api.calls", subject="acme", data={"value": 1})
"""

from tallybook_client._buffer import DeadLetter, QueueFull
from tallybook_client._dispatch import Refused, Stats
from tallybook_client._events import uuid7
from tallybook_client._policy import Backoff, CircuitBreaker
from tallybook_client._reads import ApiError, EntitlementValue, MeterQueryResult, MeterRow, TallybookError
from tallybook_client.aio import AsyncTallybook
from tallybook_client.client import ClientClosed, NotAcknowledged, Tallybook

__all__ = [
    "ApiError",
    "AsyncTallybook",
    "Backoff",
    "CircuitBreaker",
    "ClientClosed",
    "DeadLetter",
    "EntitlementValue",
    "MeterQueryResult",
    "MeterRow",
    "NotAcknowledged",
    "QueueFull",
    "Refused",
    "Stats",
    "Tallybook",
    "TallybookError",
    "uuid7",
]
