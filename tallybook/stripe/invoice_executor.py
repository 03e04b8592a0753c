"""The invoice sync executor: carries the planner's steps out with the Stripe SDK.

It knows Stripe's API and nothing of storage: `invoices.InvoiceSyncService` decides when to run it
and records what it returns. Every create carries an idempotency key derived from what it creates,
so a step repeated after a lost answer gets Stripe's saved answer, never a second object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import stripe

from tallybook.stripe.items import from_minor
from tallybook.stripe.planner import (
    AdoptStatus,
    CreateItem,
    DeleteDraft,
    DeleteItem,
    Draft,
    DraftStep,
    Finalize,
    MarkUncollectible,
    PayOutOfBand,
    StatusStep,
    StripeItem,
    UpdateInvoice,
    UpdateItem,
    VoidInvoice,
)


class AmountMismatch(stripe.StripeError):
    """Stripe and Tallybook disagree in a way syncing must not paper over (a person decides)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, http_status=422, code="tallybook_amount_mismatch")


@dataclass
class ItemCounts:
    created: int = 0
    updated: int = 0
    deleted: int = 0


def metadata_of(obj: Any) -> dict[str, str]:
    """A Stripe object's metadata (SDK objects are not dicts since stripe-python 15)."""
    return dict(obj.to_dict().get("metadata") or {})


class InvoiceExecutor:
    """One Stripe invoice's steps, on one SDK client."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self.client = client

    # -- finding and creating the invoice ------------------------------------------------------------
    def find_existing(self, customer_id: str, invoice_id: str) -> str | None:
        """A Stripe invoice already made for this Tallybook invoice (its id was never stored)."""
        listing = self.client.v1.invoices.list({"customer": customer_id, "limit": 100})
        for s_invoice in listing.auto_paging_iter():
            if metadata_of(s_invoice).get("tallybook_invoice_id") == invoice_id:
                return str(s_invoice.id)
        return None

    def create_invoice(self, params: dict[str, Any], invoice_id: str) -> Any:
        return self.client.v1.invoices.create(cast(Any, params), {"idempotency_key": f"tallybook-invoice-{invoice_id}"})

    def retrieve(self, external_id: str) -> Any:
        return self.client.v1.invoices.retrieve(external_id)

    def draft_of(self, s_invoice: Any, list_items: bool = True) -> Draft:
        """The draft as the planner reads it (without `list_items`: as holding no items)."""
        listing: Sequence[Any] | Any = (
            self.client.v1.invoice_items.list({"invoice": s_invoice.id, "limit": 100}).auto_paging_iter()
            if list_items
            else ()
        )
        items = []
        for item in listing:
            meta = metadata_of(item)
            items.append(StripeItem(str(item.id), meta.get("tallybook_line_key"), meta.get("tallybook_fingerprint")))
        return Draft(bool(s_invoice.automatic_tax.enabled), str(s_invoice.collection_method), tuple(items))

    # -- the draft ---------------------------------------------------------------------------------------
    def apply_draft(
        self, s_invoice: Any, steps: Sequence[DraftStep], invoice_id: str, currency: str, counts: ItemCounts
    ) -> Any:
        """Apply the steps to the draft `s_invoice`; the Stripe invoice after the last one."""
        for step in steps:
            if isinstance(step, UpdateInvoice):
                self.client.v1.invoices.update(s_invoice.id, cast(Any, step.changes))
            elif isinstance(step, CreateItem):
                desired = step.item
                self.client.v1.invoice_items.create(
                    cast(Any, {**desired.params, "customer": s_invoice.customer, "invoice": s_invoice.id}),
                    {"idempotency_key": f"tallybook-item-{invoice_id}-{desired.key}-{desired.fingerprint}"},
                )
                counts.created += 1
            elif isinstance(step, UpdateItem):
                params = {k: v for k, v in step.item.params.items() if k != "currency"}
                self.client.v1.invoice_items.update(step.item_id, cast(Any, params))
                counts.updated += 1
            elif isinstance(step, DeleteItem):
                self.client.v1.invoice_items.delete(step.item_id)
                counts.deleted += 1
            elif isinstance(step, DeleteDraft):
                self.client.v1.invoices.delete(str(s_invoice.id))
            elif isinstance(step, Finalize):
                s_invoice = self._finalize(str(s_invoice.id), step, currency)
        return s_invoice

    def _finalize(self, external_id: str, step: Finalize, currency: str) -> Any:
        s_invoice = self.client.v1.invoices.retrieve(external_id)
        if int(s_invoice.subtotal) != step.expected_subtotal:
            found = from_minor(int(s_invoice.subtotal), currency)
            raise AmountMismatch(
                f"the Stripe draft {external_id} adds up to {found} but the invoice total is "
                f"{from_minor(step.expected_subtotal, currency)}; it was not finalized"
            )
        try:
            return self.client.v1.invoices.finalize_invoice(external_id, {"auto_advance": step.auto_advance})
        except stripe.InvalidRequestError:
            # Another sync of this invoice (the job and a manual sync) may have finalized it first.
            s_invoice = self.client.v1.invoices.retrieve(external_id)
            if s_invoice.status == "draft":
                raise
            return s_invoice

    # -- a finalized invoice's status ------------------------------------------------------------------------
    def apply_status(self, s_invoice: Any, step: StatusStep | None) -> Any:
        """Move the Stripe invoice as the step says (AdoptStatus moves Tallybook: not done here)."""
        if isinstance(step, VoidInvoice):
            return self.client.v1.invoices.void_invoice(s_invoice.id)
        if isinstance(step, PayOutOfBand):
            return self.client.v1.invoices.pay(s_invoice.id, {"paid_out_of_band": True})
        if isinstance(step, MarkUncollectible):
            return self.client.v1.invoices.mark_uncollectible(s_invoice.id)
        assert step is None or isinstance(step, AdoptStatus)
        return s_invoice

    def update_customer_address(self, stripe_customer_id: str, address: dict[str, str]) -> None:
        self.client.v1.customers.update(stripe_customer_id, cast(Any, {"address": address}))


__all__ = ["AmountMismatch", "InvoiceExecutor", "ItemCounts", "metadata_of"]
