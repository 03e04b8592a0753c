"""Invoice documents: the number and the seller an invoice is issued with.

A number is given when an invoice is issued, never to a draft (Stripe does the same: a draft has
no number until it is finalized; OpenMeter gives drafts temporary numbers and the final one on
issue). Numbers come from a series per prefix, the prefix being the billing profile's
`invoiceDocument.numberPrefix` (default INV-): INV-0001, INV-0002, ... The series row is
incremented in the issue's own transaction, so

- a rolled-back issue gives its number back: the series has no gaps;
- concurrent issues take turns on the row (PostgreSQL's row lock, SQLite's single writer): no
  number is given twice, and the unique index on `invoices.number` is the backstop.

Profiles that share a prefix share its series, so a number never means two invoices. Invoices
collected by Stripe are numbered by Stripe (its number is the one the customer receives), so
Tallybook gives them none. A voided invoice keeps its number: the series stays gapless.

The seller snapshot (the profile's `supplier`, time zone, locale and the due date) is stored with
the issued invoice: editing the profile later does not change an issued document.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol

from tallybook.billing.profiles import CUSTOM_INVOICING, SEND_INVOICE, BillingProfile
from tallybook.clock import format_rfc3339, to_micros

NUMBER_DIGITS = 4  # INV-0001; the number grows past 9999 (INV-10000), never wraps


class NumberSeries(Protocol):
    """The issuing transaction's number series (the series table is in invoicing_sql.py)."""

    def next_number(self, prefix: str, now_us: int) -> int:
        """The next number of the prefix's series, taken in the issuing transaction (which holds the
        series row until it ends: a concurrent issue waits, and sees the incremented value)."""
        ...


def format_number(prefix: str, number: int) -> str:
    return f"{prefix}{number:0{NUMBER_DIGITS}d}"


def seller_snapshot(profile: BillingProfile, issued_at: datetime) -> dict[str, Any]:
    """What the issued document says about the seller and when it is due, as of issuing."""
    seller: dict[str, Any] = {
        "billingProfileId": profile.id,
        "supplier": dict(profile.supplier),
        "locale": profile.locale,
        "collectionMethod": profile.collection_method,
    }
    if profile.timezone is not None:
        seller["timezone"] = profile.timezone
    if profile.collection_method == SEND_INVOICE:
        seller["dueAt"] = format_rfc3339(issued_at + timedelta(days=profile.days_until_due))
    return seller


def issue_document(
    series: NumberSeries, profile: BillingProfile, issued_at: datetime
) -> tuple[str | None, dict[str, Any]]:
    """The number (None when Stripe numbers the invoice) and seller snapshot of an invoice being
    issued now, inside the issuing transaction."""
    number = None
    if profile.collector == CUSTOM_INVOICING:
        number = format_number(profile.number_prefix, series.next_number(profile.number_prefix, to_micros(issued_at)))
    return number, seller_snapshot(profile, issued_at)


__all__ = ["NumberSeries", "format_number", "issue_document", "seller_snapshot"]
