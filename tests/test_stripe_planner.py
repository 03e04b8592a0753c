"""The invoice sync planner on its own: no database, no HTTP, no Stripe.

The executor is simulated by `apply`, which does to a `Draft` what Stripe does to the draft for
each step; the property is that the plan converges: after applying it the draft holds exactly the
wanted items, and planning again finds nothing to do.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tallybook.billing import invoicing
from tallybook.stripe import planner
from tallybook.stripe.model import SYNC_DONE, SYNC_FAILED, SYNC_PENDING, SYNC_SYNCED, SYNC_TAX_LOCATION_REQUIRED
from tallybook.stripe.planner import (
    AdoptStatus,
    CreateItem,
    DeleteDraft,
    DeleteItem,
    DesiredItem,
    Draft,
    Finalize,
    MarkUncollectible,
    PayOutOfBand,
    StripeItem,
    Target,
    UpdateInvoice,
    UpdateItem,
    VoidInvoice,
)

CHARGE = {"collection_method": "charge_automatically"}
SEND = {"collection_method": "send_invoice", "days_until_due": 14}


def item(key: str, fingerprint: str = "f1") -> DesiredItem:
    return DesiredItem(key, fingerprint, {"amount": 100, "metadata": {"tallybook_line_key": key}})


def target(status: str = planner.DRAFT, items: tuple[DesiredItem, ...] = (), **overrides: Any) -> Target:
    values: dict[str, Any] = {
        "status": status,
        "tax_enabled": False,
        "collection": CHARGE,
        "auto_advance": True,
        "items": items,
        "total": 100 * len(items),
    }
    return Target(**{**values, **overrides})


def draft(*items: StripeItem, tax: bool = False, method: str = "charge_automatically") -> Draft:
    return Draft(tax, method, tuple(items))


_ids = iter(range(1_000_000))


def apply(current: Draft, steps: list[planner.DraftStep]) -> Draft:
    """What Stripe holds after the steps (items get fresh ids, as Stripe gives them)."""
    items = list(current.items)
    tax, method = current.automatic_tax, current.collection_method
    for step in steps:
        if isinstance(step, UpdateInvoice):
            tax = step.changes.get("automatic_tax", {"enabled": tax})["enabled"]
            method = step.changes.get("collection_method", method)
        elif isinstance(step, CreateItem):
            items.append(StripeItem(f"ii_{next(_ids)}", step.item.key, step.item.fingerprint))
        elif isinstance(step, UpdateItem):
            items = [StripeItem(i.id, i.key, step.item.fingerprint) if i.id == step.item_id else i for i in items]
        elif isinstance(step, DeleteItem):
            assert any(i.id == step.item_id for i in items), "deletes an item the draft does not hold"
            items = [i for i in items if i.id != step.item_id]
    return Draft(tax, method, tuple(items))


# -- examples ----------------------------------------------------------------------------------------------
def test_a_fresh_draft_gets_every_line_and_a_draft_invoice_is_not_finalized() -> None:
    wanted = target(items=(item("a"), item("b")))
    assert planner.plan_draft(wanted, draft()) == [CreateItem(item("a")), CreateItem(item("b"))]


def test_an_issued_invoice_is_finalized_for_its_total_after_its_items() -> None:
    wanted = target(planner.ISSUED, (item("a"),), auto_advance=False)
    assert planner.plan_draft(wanted, draft()) == [CreateItem(item("a")), Finalize(100, False)]


def test_changed_lines_are_updated_gone_ones_deleted_foreign_and_duplicate_items_removed() -> None:
    present = draft(
        StripeItem("ii_1", "a", "f1"),  # unchanged
        StripeItem("ii_2", "b", "old"),  # changed
        StripeItem("ii_3", "gone", "f1"),  # its line is gone
        StripeItem("ii_4", None, None),  # added by hand in Stripe
        StripeItem("ii_5", "a", "f1"),  # a second item for line a
    )
    steps = planner.plan_draft(target(items=(item("a"), item("b"), item("c"))), present)
    assert steps == [
        UpdateItem("ii_2", item("b")),
        CreateItem(item("c")),
        DeleteItem("ii_4"),
        DeleteItem("ii_5"),
        DeleteItem("ii_3"),
    ]


def test_a_void_invoice_deletes_the_draft_and_nothing_else() -> None:
    assert planner.plan_draft(target(planner.VOID, (item("a"),)), draft(StripeItem("ii_1", "b", "f"))) == [
        DeleteDraft()
    ]


def test_the_drafts_tax_and_collection_settings_follow_the_profile() -> None:
    steps = planner.plan_draft(target(tax_enabled=True, collection=SEND), draft())
    assert steps == [UpdateInvoice({"automatic_tax": {"enabled": True}, **SEND})]
    assert planner.plan_draft(target(tax_enabled=True, collection=SEND), draft(tax=True, method="send_invoice")) == []


def test_the_side_that_moved_last_wins_on_a_finalized_invoice() -> None:
    assert planner.plan_status(planner.VOID, "open") == VoidInvoice()
    assert planner.plan_status(planner.VOID, "uncollectible") == VoidInvoice()
    assert planner.plan_status(planner.PAID, "open") == PayOutOfBand()
    assert planner.plan_status(planner.UNCOLLECTIBLE, "open") == MarkUncollectible()
    assert planner.plan_status(planner.ISSUED, "paid") == AdoptStatus(planner.PAID)
    assert planner.plan_status(planner.UNCOLLECTIBLE, "paid") == AdoptStatus(planner.PAID)
    assert planner.plan_status(planner.ISSUED, "void") == AdoptStatus(planner.VOID)
    assert planner.plan_status(planner.ISSUED, "uncollectible") == AdoptStatus(planner.UNCOLLECTIBLE)
    assert planner.plan_status(planner.ISSUED, "open") is None
    assert planner.plan_status(planner.PAID, "paid") is None
    assert planner.plan_status(planner.VOID, "paid") is None  # a person refunds it; the executor says so
    assert planner.settled_status("paid") == planner.settled_status("void") == SYNC_DONE
    assert planner.settled_status("open") == planner.settled_status("uncollectible") == SYNC_SYNCED


def test_refusals_are_sorted_into_retry_fail_and_tax_location() -> None:
    assert planner.failure_status("customer_tax_location_invalid", 400) == SYNC_TAX_LOCATION_REQUIRED
    assert planner.failure_status("resource_missing", 404) == SYNC_FAILED
    assert planner.failure_status(None, 409) == SYNC_PENDING
    assert planner.failure_status(None, 429) == SYNC_PENDING
    assert planner.failure_status(None, 500) == SYNC_PENDING
    assert planner.failure_status(None, None) == SYNC_PENDING  # no answer at all


def test_retries_back_off_exponentially_up_to_the_ceiling() -> None:
    base, ceiling = timedelta(minutes=1), timedelta(minutes=10)
    delays = [planner.retry_delay(n, base, ceiling) for n in range(1, 7)]
    assert delays == [timedelta(minutes=m) for m in (1, 2, 4, 8, 10, 10)]


def test_the_planners_invoice_statuses_are_billings() -> None:
    assert (planner.DRAFT, planner.ISSUED, planner.PAID, planner.VOID, planner.UNCOLLECTIBLE) == (
        invoicing.DRAFT,
        invoicing.ISSUED,
        invoicing.PAID,
        invoicing.VOID,
        invoicing.UNCOLLECTIBLE,
    )


# -- the property ------------------------------------------------------------------------------------------
KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
FINGERPRINTS = st.sampled_from(["f1", "f2", "f3"])


@st.composite
def wanted_and_present(draw: st.DrawFn) -> tuple[Target, Draft]:
    keys = draw(st.lists(KEYS, unique=True, max_size=5))
    wanted = tuple(DesiredItem(k, draw(FINGERPRINTS), {}) for k in keys)
    present = draw(st.lists(st.tuples(st.one_of(st.none(), KEYS), st.one_of(st.none(), FINGERPRINTS)), max_size=8))
    items = tuple(StripeItem(f"ii_p{n}", key, fp) for n, (key, fp) in enumerate(present))
    status = draw(st.sampled_from([planner.DRAFT, planner.ISSUED, planner.PAID]))
    tb = target(status, wanted, tax_enabled=draw(st.booleans()), collection=draw(st.sampled_from([CHARGE, SEND])))
    return tb, Draft(draw(st.booleans()), draw(st.sampled_from(["charge_automatically", "send_invoice"])), items)


@settings(max_examples=300, deadline=None)  # pure and fast; no deadline on a loaded machine
@given(wanted_and_present())
def test_applying_the_plan_yields_the_target_lines_and_replanning_finds_nothing(case: tuple[Target, Draft]) -> None:
    wanted, present = case
    steps = planner.plan_draft(wanted, present)
    after = apply(present, steps)
    assert sorted((i.key, i.fingerprint) for i in after.items) == sorted((d.key, d.fingerprint) for d in wanted.items)
    again = planner.plan_draft(wanted, after)
    assert [s for s in again if not isinstance(s, Finalize)] == []
    # Finalizing is the last step, and only for an invoice Tallybook issued.
    assert (steps[-1:] == [Finalize(wanted.total, wanted.auto_advance)]) == (wanted.status != planner.DRAFT)
    # An item Tallybook wants unchanged is never touched.
    kept = {i.id for i in present.items if i.key is not None}
    touched = {s.item_id for s in steps if isinstance(s, UpdateItem | DeleteItem)}
    for d in wanted.items:
        same = [i.id for i in present.items if i.key == d.key and i.fingerprint == d.fingerprint]
        first = next((i.id for i in present.items if i.key == d.key), None)
        if same and first == same[0]:
            assert same[0] not in touched and same[0] in kept
