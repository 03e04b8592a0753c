"""A stateful fake of the Stripe API for tests, spoken to by the real stripe-python SDK over HTTP.

See ``README.md`` in this folder. Entry point: :class:`FakeStripeServer`.
"""

from .errors import StripeAPIError
from .faults import Fault, Faults
from .server import DEFAULT_API_KEY, FakeStripeServer, FastRetryRequestsClient
from .state import FakeClock, FakeState
from .webhooks import sign

__all__ = [
    "DEFAULT_API_KEY",
    "FakeClock",
    "FakeState",
    "FakeStripeServer",
    "FastRetryRequestsClient",
    "Fault",
    "Faults",
    "StripeAPIError",
    "sign",
]
