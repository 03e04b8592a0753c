"""What the Stripe room talks about: links, the report ledger's rows, sync states and its errors.

Plain frozen dataclasses and constants, no I/O: the SQL adapters (`sql.py`, `sql_sync.py`) build
and store them, the services and the planner read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tallybook.errors import DomainError

# -- the report ledger ---------------------------------------------------------------------------------
# Ledger row states.
PENDING = "PENDING"  # intent written; not (yet) confirmed by Stripe; retried at next_attempt_us
SENT = "SENT"  # Stripe accepted it (or had it already: a duplicate identifier)
REJECTED = "REJECTED"  # Stripe refused it for good (4xx other than a duplicate); needs a person
OUT_OF_RANGE = "OUT_OF_RANGE"  # never sent: the timestamp is outside what Stripe accepts

# Ledger row kinds.
EVENT = "event"  # a meter event carrying `value`
CANCEL = "cancel"  # a meter event adjustment cancelling the event `cancels`
USAGE_RECORD = "usage_record"  # a legacy usage record (action=set, quantity=`value`)


@dataclass(frozen=True, slots=True)
class CustomerLink:
    customer_id: str
    stripe_customer_id: str
    stripe_default_payment_method_id: str | None
    period_start_us: int | None
    updated_us: int


@dataclass(frozen=True, slots=True)
class MeterLink:
    meter: str
    event_name: str | None
    stripe_meter_id: str | None
    price_id: str | None
    formula: str | None
    mode: str
    updated_us: int


@dataclass(frozen=True, slots=True)
class ReportRow:
    id: int
    meter: str
    customer_id: str
    stripe_customer_id: str
    window_start_us: int
    window_end_us: int
    kind: str
    version: int
    identifier: str
    value: Decimal
    target: Decimal
    cancels: str | None
    cancelled: bool
    timestamp_us: int
    status: str
    attempts: int
    next_attempt_us: int | None
    request: Any
    response: Any
    error: str | None
    created_us: int
    updated_us: int
    sent_us: int | None
    carried: Decimal | None = None  # usage records: usage of earlier periods included in `value`


@dataclass(frozen=True, slots=True)
class ReportFilter:
    meter: str | None = None
    customer_id: str | None = None
    status: str | None = None
    from_us: int | None = None  # window start, inclusive
    to_us: int | None = None  # window start, exclusive
    limit: int = 100
    offset: int = 0


# -- invoice and credit note sync ------------------------------------------------------------------------
# Where a Tallybook document stands in the app that collects it (`invoice_syncs.status`,
# `credit_note_syncs.status`; credit notes use pending, failed and done only).
SYNC_PENDING = "pending"  # not (fully) mirrored yet, or retrying after a temporary error
SYNC_SYNCED = "synced"  # the app holds this revision (a draft, or a finalized invoice still open)
SYNC_TAX_LOCATION_REQUIRED = "tax_location_required"  # Stripe Tax needs the customer's address first
SYNC_FAILED = "failed"  # the app refused it; see `error` (retried with backoff, or after a fix)
SYNC_DONE = "done"  # paid or void on both sides (a credit note: created, and voided if voided): nothing left


# -- errors ----------------------------------------------------------------------------------------------
class StripeCustomerTaken(ValueError):
    """Another Tallybook customer is linked to this Stripe customer (a concurrent write won)."""


class StripeProblem(DomainError):
    """A domain error the API answers as problem+json with `status` and `code`."""

    status = 400
    code = "invalid-stripe-request"


class InvalidStripeData(StripeProblem):
    status = 400
    code = "invalid-stripe-data"


class NotLinked(StripeProblem):
    status = 404
    code = "stripe-not-linked"


class WebhookRejected(StripeProblem):
    status = 400
    code = "invalid-stripe-signature"


class StripeDisabled(StripeProblem):
    status = 409
    code = "stripe-not-configured"


class InvoiceNotSynced(StripeProblem):
    status = 404
    code = "invoice-not-synced"


class InvalidCheckoutRequest(StripeProblem):
    status = 400
    code = "invalid-checkout-request"


class StripeRequestFailed(StripeProblem):
    """Stripe refused a request or could not be reached; `status` and `code` say which."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


__all__ = [
    "CANCEL",
    "EVENT",
    "OUT_OF_RANGE",
    "PENDING",
    "REJECTED",
    "SENT",
    "SYNC_DONE",
    "SYNC_FAILED",
    "SYNC_PENDING",
    "SYNC_SYNCED",
    "SYNC_TAX_LOCATION_REQUIRED",
    "USAGE_RECORD",
    "CustomerLink",
    "InvalidCheckoutRequest",
    "InvalidStripeData",
    "InvoiceNotSynced",
    "MeterLink",
    "NotLinked",
    "ReportFilter",
    "ReportRow",
    "StripeCustomerTaken",
    "StripeDisabled",
    "StripeProblem",
    "StripeRequestFailed",
    "WebhookRejected",
]
