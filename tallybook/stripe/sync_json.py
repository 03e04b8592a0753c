"""Where Stripe holds an invoice or a credit note, as the API shows it (OpenMeter's `number` and
`externalIds`, and Tallybook's `sync` state), built from a sync row (tallybook/stripe/sql_sync.py)."""

from __future__ import annotations

from typing import Any

from tallybook.clock import format_rfc3339, from_micros


def _instant(us: int | None) -> str | None:
    return None if us is None else format_rfc3339(from_micros(us))


def invoice_external_json(row: dict[str, Any]) -> dict[str, Any]:
    """`number`, `externalIds` (OpenMeter's names) and the sync state of one invoice."""
    sync: dict[str, Any] = {
        "app": row["app"],
        "status": row["status"],
        "syncedRevision": row["synced_revision"],
        "updatedAt": format_rfc3339(from_micros(row["updated_us"])),
    }
    optional = {
        "externalStatus": row["external_status"],
        "hostedInvoiceUrl": row["hosted_url"],
        "invoicePdf": row["pdf_url"],
        "taxStatus": row["tax_status"],
        "tax": row["tax_amount"],
        "totalWithTax": row["total"],
        "paymentStatus": row["payment_status"],
        "paymentError": row["payment_error"],
        "error": row["error"],
        "attempts": row["attempts"] or None,
        "nextAttemptAt": _instant(row["next_attempt_us"]),
    }
    sync.update({k: v for k, v in optional.items() if v is not None})
    body: dict[str, Any] = {"sync": sync}
    if row["external_id"]:
        body["externalIds"] = {"invoicing": row["external_id"], "payment": row["external_id"]}
    if row["number"]:
        body["number"] = row["number"]
    return body


def credit_note_external_json(row: dict[str, Any]) -> dict[str, Any]:
    sync: dict[str, Any] = {
        "app": row["app"],
        "status": row["status"],
        "updatedAt": format_rfc3339(from_micros(row["updated_us"])),
    }
    optional = {
        "number": row["number"],
        "error": row["error"],
        "attempts": row["attempts"] or None,
        "nextAttemptAt": None
        if row["next_attempt_us"] is None
        else format_rfc3339(from_micros(row["next_attempt_us"])),
    }
    sync.update({k: v for k, v in optional.items() if v is not None})
    body: dict[str, Any] = {"sync": sync}
    if row["external_id"]:
        body["externalIds"] = {"invoicing": row["external_id"]}
    return body


__all__ = ["credit_note_external_json", "invoice_external_json"]
