"""Stripe credit notes: a Tallybook credit note against an invoice Stripe collects becomes a Stripe
credit note on that Stripe invoice.

The `stripe.credit_notes` job hands Stripe every credit note whose invoice Stripe holds (the invoice
has a Stripe id, tallybook/stripe/invoices.py). Stripe only credits finalized invoices, so a credit
note whose Stripe invoice is still a draft waits (retried with backoff) until the invoice sync has
finalized it. Each Tallybook line becomes one Stripe line:

- `invoice_line_item` with `amount` when the Stripe invoice holds the line it credits (the fee line
  of the unused time, the usage line that went down): Stripe shows what is credited against what,
  and it works with Stripe Tax (which refuses custom lines);
- `custom_line_item` (quantity 1, `unit_amount`) otherwise.

A credit note first lowers what the customer still owes on the invoice (Stripe's pre-payment part);
what exceeds it (the invoice is paid) goes to the customer's Stripe balance (`credit_amount`), which
Stripe applies to their next invoice. Refunding it instead is a decision for a person, in Stripe.

Creating it is idempotent: the Stripe id is stored once created; a lost answer is found again by the
credit note's `tallybook_credit_note_id` metadata on the invoice's credit notes before anything is
created. A Tallybook credit note voided (with its invoice) is voided in Stripe too. Each credit note
is one item of the job: a Stripe refusal is its `sync.error` (retried with backoff), a failure
inside Tallybook a failed item (GET /api/v1/jobs/failures); the others are synced.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import stripe

from tallybook.billing.invoicing import Invoice, InvoicingService
from tallybook.clock import Clock, to_micros
from tallybook.creditnotes.model import CORRECTION, VOID, CreditNote, CreditNoteLine
from tallybook.creditnotes.service import CreditNoteService
from tallybook.jobs.runs import ItemFailureLog
from tallybook.stripe.client import error_json
from tallybook.stripe.items import line_keys, to_minor
from tallybook.stripe.model import SYNC_DONE, SYNC_FAILED, SYNC_PENDING
from tallybook.stripe.planner import is_permanent, retry_delay
from tallybook.stripe.ports import SyncStorage
from tallybook.stripe.service import StripeService
from tallybook.stripe.sync_json import credit_note_external_json

log = logging.getLogger(__name__)

SYNC_JOB = "stripe.credit_notes"
BATCH = 100
STRIPE = "stripe"


class CreditNoteSyncService:
    def __init__(
        self,
        storage: SyncStorage,
        stripe_service: StripeService,
        credit_notes: CreditNoteService,
        invoicing: InvoicingService,
        clock: Clock,
        failures: ItemFailureLog,
    ) -> None:
        self.storage = storage
        self.stripe = stripe_service
        self.credit_notes = credit_notes
        self.invoicing = invoicing
        self.clock = clock
        self.failures = failures

    def run(self, now: datetime | None = None) -> dict[str, Any]:
        """Hand Stripe the credit notes that are due (new, retrying, voided here since)."""
        now = now or self.clock.now()
        with self.storage.reading() as tx:
            due = tx.due_credit_notes(to_micros(now), BATCH)
        counts: dict[str, int] = {}
        with self.failures.run(SYNC_JOB) as run:
            for credit_note_id in due:
                status: str | None = None
                with run.item("credit_note", credit_note_id, creditNoteId=credit_note_id) as item:
                    status = self.sync(credit_note_id, now)
                if item.failed:
                    counts["crashed"] = counts.get("crashed", 0) + 1
                    with run.item("credit_note_retry", credit_note_id, creditNoteId=credit_note_id):
                        self._retry(credit_note_id, now, {"message": "internal error; see the server log"})
                elif status is not None:
                    counts[status] = counts.get(status, 0) + 1
        return run.outcome({"due": len(due), **counts})

    def sync(self, credit_note_id: str, now: datetime | None = None) -> str | None:
        """Bring Stripe in line with one credit note: its status after (None: Stripe does not hold
        its invoice, nothing to do)."""
        now = now or self.clock.now()
        note = self.credit_notes.get(credit_note_id)
        with self.storage.reading() as tx:
            invoice_row = tx.invoice_row(note.invoice_id)
        if invoice_row is None or invoice_row["external_id"] is None:
            return None
        self.stripe.require_enabled()
        with self.storage.writing() as tx:
            tx.ensure_credit_note_row(note.id, STRIPE, to_micros(now))
            row = tx.credit_note_row(note.id)
        assert row is not None
        try:
            return self._converge(note, str(invoice_row["external_id"]), row, now)
        except stripe.StripeError as exc:
            error = error_json(exc)
            status = SYNC_FAILED if is_permanent(exc.http_status) else SYNC_PENDING
            self._retry(note.id, now, error, status)
            return status

    def _converge(self, note: CreditNote, s_invoice_id: str, row: dict[str, Any], now: datetime) -> str:
        client = self.stripe.client()
        external_id = row["external_id"] or self._find_existing(client, s_invoice_id, note.id)
        if external_id is None:
            if note.status == VOID:  # voided before it reached Stripe: nothing to mirror
                self._record(note, now, synced_status=VOID)
                return SYNC_DONE
            s_invoice = client.v1.invoices.retrieve(s_invoice_id)
            if s_invoice.status == "draft":
                message = (
                    f"waiting for Stripe invoice {s_invoice_id} to be finalized (Stripe credits finalized invoices)"
                )
                self._retry(note.id, now, {"message": message}, SYNC_PENDING)
                return SYNC_PENDING
            params = self._params(client, note, s_invoice)
            fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
            created = client.v1.credit_notes.create(
                cast(Any, params), {"idempotency_key": f"tallybook-credit-note-{note.id}-{fingerprint}"}
            )
            self._record(note, now, external_id=str(created.id), number=created.number, synced_status=note.status)
            return SYNC_DONE
        s_note = client.v1.credit_notes.retrieve(external_id)
        if note.status == VOID and s_note.status != "void":
            s_note = client.v1.credit_notes.void_credit_note(external_id)
        self._record(note, now, external_id=external_id, number=s_note.number, synced_status=note.status)
        return SYNC_DONE

    @staticmethod
    def _find_existing(client: stripe.StripeClient, s_invoice_id: str, credit_note_id: str) -> str | None:
        """A Stripe credit note already made for this one (its id was never stored: a lost answer)."""
        listing = client.v1.credit_notes.list({"invoice": s_invoice_id, "limit": 100})
        for s_note in listing.auto_paging_iter():
            if dict(s_note.to_dict().get("metadata") or {}).get("tallybook_credit_note_id") == credit_note_id:
                return str(s_note.id)
        return None

    def _params(self, client: stripe.StripeClient, note: CreditNote, s_invoice: Any) -> dict[str, Any]:
        invoice = self.invoicing.get(note.invoice_id)
        stripe_lines = self._stripe_lines(client, str(s_invoice.id))
        lines: list[dict[str, Any]] = []
        for line in note.lines:
            amount = to_minor(line.amount, note.currency)
            credited = _credited_line(invoice, line)
            target = stripe_lines.get(credited) if credited is not None else None
            if target is not None and int(target["amount"]) >= amount:
                lines.append({"type": "invoice_line_item", "invoice_line_item": target["id"], "amount": amount})
            else:
                lines.append(
                    {"type": "custom_line_item", "description": line.name[:500], "quantity": 1, "unit_amount": amount}
                )
        total = to_minor(note.total, note.currency)
        before_payment = min(total, max(int(s_invoice.amount_remaining), 0))
        params: dict[str, Any] = {
            "invoice": str(s_invoice.id),
            "lines": lines,
            "reason": "order_change",
            "memo": f"{note.number}: {note.memo}" if note.memo else note.number,
            "metadata": {
                "tallybook_credit_note_id": note.id,
                "tallybook_invoice_id": note.invoice_id,
                "tallybook_number": note.number,
                "tallybook_reason": note.reason,
            },
        }
        if total > before_payment:  # the invoice is paid (in part): the rest goes to the customer's balance
            params["credit_amount"] = total - before_payment
        return params

    @staticmethod
    def _stripe_lines(client: stripe.StripeClient, s_invoice_id: str) -> dict[str, dict[str, Any]]:
        """The Stripe invoice's lines by the Tallybook line key their item carries."""
        found: dict[str, dict[str, Any]] = {}
        for s_line in client.v1.invoices.line_items.list(s_invoice_id, {"limit": 100}).auto_paging_iter():
            data = s_line.to_dict()
            key = (data.get("metadata") or {}).get("tallybook_line_key")
            if key:
                found[str(key)] = {"id": str(data["id"]), "amount": int(data["amount"])}
        return found

    def _record(self, note: CreditNote, now: datetime, **values: Any) -> None:
        with self.storage.writing() as tx:
            tx.update_credit_note_row(
                note.id,
                {
                    "status": SYNC_DONE,
                    "attempts": 0,
                    "next_attempt_us": None,
                    "error": None,
                    "updated_us": to_micros(now),
                    **values,
                },
            )

    def _retry(self, credit_note_id: str, now: datetime, error: dict[str, Any], status: str = SYNC_PENDING) -> None:
        settings = self.stripe.settings
        with self.storage.writing() as tx:
            row = tx.credit_note_row(credit_note_id)
            if row is None:
                return
            attempts = int(row["attempts"]) + 1
            delay = retry_delay(attempts, settings.retry_base, settings.retry_max)
            tx.update_credit_note_row(
                credit_note_id,
                {
                    "status": status,
                    "attempts": attempts,
                    "next_attempt_us": to_micros(now + delay),
                    "error": error,
                    "updated_us": to_micros(now),
                },
            )

    def external_of(self, credit_note_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Where Stripe holds these credit notes, as API JSON (`externalIds`, `sync`)."""
        if not credit_note_ids:
            return {}
        with self.storage.reading() as tx:
            rows = tx.credit_note_rows(list(credit_note_ids))
        return {cid: credit_note_external_json(row) for cid, row in rows.items()}


def _credited_line(invoice: Invoice, line: CreditNoteLine) -> str | None:
    """The Tallybook line key (as its Stripe item carries it) of the invoice line a credit note line
    gives back: the fee line holding the unused time, or the line that billed the units taken off."""
    keys = line_keys(invoice.lines)
    for candidate, key in zip(invoice.lines, keys, strict=True):
        if candidate.subscription_id != line.subscription_id or candidate.rate_card_key != line.rate_card_key:
            continue
        if line.kind == CORRECTION:
            # The invoice's own usage line, or the correction line that billed the late units.
            own = candidate.kind == "usage" and line.corrects_invoice_id == invoice.id
            late = candidate.kind == "correction" and candidate.corrects_invoice_id == line.corrects_invoice_id
            if (own or late) and candidate.period == line.period:
                return key
        elif (
            candidate.kind == "flat_fee"
            and candidate.period.start <= line.period.start
            and line.period.end <= candidate.period.end
        ):
            return key
    return None


__all__ = ["SYNC_JOB", "CreditNoteSyncService"]
