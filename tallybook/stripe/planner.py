"""The invoice sync planner: what must change in Stripe for it to hold a Tallybook invoice.

Pure functions, no I/O (as OpenMeter's invoice sync planner): given what Tallybook wants (a
`Target`) and what the Stripe draft holds now (a `Draft`), `plan_draft` lists the steps that make
them equal; `plan_status` says which side of a finalized invoice must move. The executor
(`invoice_executor.py`) carries the steps out with the SDK, and `invoices.py` records the results.

The plan converges instead of replaying history, so it is idempotent: planning again after the
steps were applied gives no item steps (tests/test_stripe_planner.py holds it to that).

Items are matched by the stable line key in their metadata (`tallybook_line_key`), changes found
by the content fingerprint (`tallybook_fingerprint`); an item that is not ours, or a second item
with a key already seen, is deleted: the invoice must hold exactly Tallybook's lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tallybook.stripe.model import SYNC_DONE, SYNC_FAILED, SYNC_PENDING, SYNC_SYNCED, SYNC_TAX_LOCATION_REQUIRED

# Tallybook invoice statuses (tallybook/billing/invoicing.py), read here as plain strings so the
# planner stays free of billing's storage; tests/test_stripe_planner.py checks they still agree.
DRAFT, ISSUED, PAID, VOID, UNCOLLECTIBLE = "draft", "issued", "paid", "void", "uncollectible"
TAX_LOCATION_CODES = ("customer_tax_location_invalid",)


# -- what the planner reads ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DesiredItem:
    """One Stripe invoice item as a Tallybook line wants it."""

    key: str  # stable across revisions of the invoice (see items.line_keys)
    fingerprint: str  # changes when anything Stripe shows changes
    params: dict[str, Any]  # invoiceitems.create/update params, without customer/invoice


@dataclass(frozen=True, slots=True)
class StripeItem:
    """An invoice item the Stripe draft holds now."""

    id: str
    key: str | None  # its `tallybook_line_key` (None: not an item Tallybook made)
    fingerprint: str | None


@dataclass(frozen=True, slots=True)
class Draft:
    """The Stripe draft invoice as it is now."""

    automatic_tax: bool
    collection_method: str
    items: tuple[StripeItem, ...]


@dataclass(frozen=True, slots=True)
class Target:
    """What Stripe should hold for one Tallybook invoice."""

    status: str  # the Tallybook invoice's status
    tax_enabled: bool
    collection: dict[str, Any]  # collection_method (and days_until_due for send_invoice)
    auto_advance: bool  # whether Stripe collects once finalized
    items: tuple[DesiredItem, ...]
    total: int  # the invoice total in minor units: what the finalized draft must add up to


# -- the steps -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class UpdateInvoice:
    changes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CreateItem:
    item: DesiredItem


@dataclass(frozen=True, slots=True)
class UpdateItem:
    item_id: str
    item: DesiredItem


@dataclass(frozen=True, slots=True)
class DeleteItem:
    item_id: str


@dataclass(frozen=True, slots=True)
class DeleteDraft:
    """The invoice was voided before Stripe finalized it: the draft goes."""


@dataclass(frozen=True, slots=True)
class Finalize:
    expected_subtotal: int  # minor units; a draft adding up to anything else is never finalized
    auto_advance: bool


@dataclass(frozen=True, slots=True)
class VoidInvoice:
    pass


@dataclass(frozen=True, slots=True)
class PayOutOfBand:
    pass


@dataclass(frozen=True, slots=True)
class MarkUncollectible:
    pass


@dataclass(frozen=True, slots=True)
class AdoptStatus:
    """Stripe moved on (paid, voided, written off): move the Tallybook invoice to `status`."""

    status: str


ItemStep = CreateItem | UpdateItem | DeleteItem
DraftStep = UpdateInvoice | CreateItem | UpdateItem | DeleteItem | DeleteDraft | Finalize
StatusStep = VoidInvoice | PayOutOfBand | MarkUncollectible | AdoptStatus


# -- planning --------------------------------------------------------------------------------------------
def plan_items(wanted: Sequence[DesiredItem], present: Sequence[StripeItem]) -> list[ItemStep]:
    """Creates and updates in the order of Tallybook's lines, then deletes (foreign and duplicate
    items first, then items of lines that are gone)."""
    ours: dict[str, StripeItem] = {}
    extra: list[str] = []
    for item in present:
        if item.key is None or item.key in ours:
            extra.append(item.id)  # not ours, or a duplicate: the invoice must hold exactly our lines
        else:
            ours[item.key] = item
    steps: list[ItemStep] = []
    for desired in wanted:
        found = ours.pop(desired.key, None)
        if found is None:
            steps.append(CreateItem(desired))
        elif found.fingerprint != desired.fingerprint:
            steps.append(UpdateItem(found.id, desired))
    steps.extend(DeleteItem(item_id) for item_id in [*extra, *(i.id for i in ours.values())])
    return steps


def invoice_changes(target: Target, draft: Draft) -> dict[str, Any]:
    """The draft's own settings that differ from the target's (tax, collection method)."""
    changes: dict[str, Any] = {}
    if draft.automatic_tax != target.tax_enabled:
        changes["automatic_tax"] = {"enabled": target.tax_enabled}
    if draft.collection_method != target.collection["collection_method"]:
        changes.update(target.collection)
    return changes


def plan_draft(target: Target, draft: Draft) -> list[DraftStep]:
    """Steps that bring a Stripe draft in line with the Tallybook invoice; for an invoice no longer
    a draft in Tallybook, ending with finalizing it."""
    if target.status == VOID:
        return [DeleteDraft()]
    steps: list[DraftStep] = []
    changes = invoice_changes(target, draft)
    if changes:
        steps.append(UpdateInvoice(changes))
    steps.extend(plan_items(target.items, draft.items))
    if target.status != DRAFT:
        steps.append(Finalize(target.total, target.auto_advance))
    return steps


def plan_status(status: str, stripe_status: str) -> StatusStep | None:
    """For a finalized Stripe invoice: apply whichever side moved last. Tallybook's void, paid and
    uncollectible go to Stripe; Stripe's paid, void and uncollectible come back to Tallybook."""
    if status == VOID and stripe_status in ("open", "uncollectible"):
        return VoidInvoice()
    if status == PAID and stripe_status in ("open", "uncollectible"):
        return PayOutOfBand()
    if status == UNCOLLECTIBLE and stripe_status == "open":
        return MarkUncollectible()
    return adopt(status, stripe_status)


def adopt(status: str, stripe_status: str) -> AdoptStatus | None:
    """The Tallybook status a Stripe status moves an invoice to (None: nothing to move)."""
    if stripe_status == "paid" and status in (ISSUED, UNCOLLECTIBLE):
        return AdoptStatus(PAID)
    if stripe_status == "void" and status in (DRAFT, ISSUED, UNCOLLECTIBLE):
        return AdoptStatus(VOID)
    if stripe_status == "uncollectible" and status == ISSUED:
        return AdoptStatus(UNCOLLECTIBLE)
    return None


def settled_status(stripe_status: str) -> str:
    """The sync state once a finalized invoice's status converged: nothing left once paid or void."""
    return SYNC_DONE if stripe_status in ("paid", "void") else SYNC_SYNCED


# -- after a refusal ---------------------------------------------------------------------------------------
def is_permanent(http_status: int | None) -> bool:
    """A 4xx other than a conflict or a rate limit: retrying the same request will not help."""
    return http_status is not None and 400 <= http_status < 500 and http_status not in (409, 429)


def failure_status(code: str | None, http_status: int | None) -> str:
    """The invoice's sync state after Stripe refused a step."""
    if code in TAX_LOCATION_CODES:
        return SYNC_TAX_LOCATION_REQUIRED
    return SYNC_FAILED if is_permanent(http_status) else SYNC_PENDING


def retry_delay(attempts: int, base: timedelta, ceiling: timedelta) -> timedelta:
    """Exponential backoff: `base` after the first attempt, doubling, at most `ceiling`."""
    return min(base * (2 ** (attempts - 1)), ceiling)


__all__ = [
    "AdoptStatus",
    "CreateItem",
    "DeleteDraft",
    "DeleteItem",
    "DesiredItem",
    "Draft",
    "Finalize",
    "MarkUncollectible",
    "PayOutOfBand",
    "StripeItem",
    "Target",
    "UpdateInvoice",
    "UpdateItem",
    "VoidInvoice",
    "adopt",
    "failure_status",
    "plan_draft",
    "plan_items",
    "plan_status",
    "retry_delay",
    "settled_status",
]
