"""Endpoint modules; importing this package registers every route on ``routes.ROUTER``.

To add a resource (invoices, checkout sessions...), write a module here whose handlers use
``@ROUTER.post/get/delete(pattern, params=<stripe.params TypedDict>)`` and import it below.
"""

from . import billing, catalog, control, customers, events, subscriptions, v2_billing

__all__ = ["billing", "catalog", "control", "customers", "events", "subscriptions", "v2_billing"]
