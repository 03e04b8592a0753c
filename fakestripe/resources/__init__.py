"""Endpoint modules; importing this package registers every route on ``routes.ROUTER``.

To add a resource (refunds, credit notes...), write a module here whose handlers use
``@ROUTER.post/get/delete(pattern, params=<stripe.params TypedDict>)`` and import it below.
"""

from . import (
    billing,
    catalog,
    checkout,
    control,
    credit_notes,
    customers,
    events,
    invoicing,
    subscriptions,
    v2_billing,
)

__all__ = [
    "billing",
    "catalog",
    "checkout",
    "control",
    "credit_notes",
    "customers",
    "events",
    "invoicing",
    "subscriptions",
    "v2_billing",
]
