"""Credit notes (``cn_…``): lowering a finalized invoice after the fact, as Stripe documents it.

A credit note first reduces the invoice's ``amount_remaining`` (and ``amount_due``), not below zero:
its ``pre_payment_amount``. The rest is ``post_payment_amount`` and must be allocated exactly by
``credit_amount`` (the customer's balance, applied to their next invoice) and ``out_of_band_amount``
(refunds are not modelled). The invoice's ``pre_payment_credit_notes_amount`` and
``post_payment_credit_notes_amount`` grow by those parts. Lines are ``invoice_line_item`` (an ``il_…``
of that invoice, with ``amount`` or ``quantity``) or ``custom_line_item`` (``unit_amount`` or
``unit_amount_decimal`` times ``quantity``, refused on invoices with automatic tax). The credit notes
of an invoice never add up to more than its total, nor those of one line to more than the line.
Voiding gives the pre-payment part back to ``amount_remaining`` and takes the balance credit back.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import stripe.params as p

from ..errors import StripeAPIError
from ..routes import ROUTER, Ctx, atomic, merge_metadata, paginate
from ..state import FakeState, new_id

_KIND = "credit_note"
_INVOICE_KIND = "invoice"
_CREDITABLE = ("open", "paid", "uncollectible")


def _of_invoice(state: FakeState, invoice_id: str) -> list[dict[str, Any]]:
    return [n for n in state.table(_KIND).values() if n["invoice"] == invoice_id]


def _credited_per_line(state: FakeState, invoice_id: str) -> dict[str, int]:
    credited: dict[str, int] = {}
    for note in _of_invoice(state, invoice_id):
        if note["status"] == "void":
            continue
        for line in note["lines"]["data"]:
            if line["invoice_line_item"]:
                credited[line["invoice_line_item"]] = credited.get(line["invoice_line_item"], 0) + line["amount"]
    return credited


def _line(state: FakeState, invoice: dict[str, Any], index: int, given: dict[str, Any]) -> dict[str, Any]:
    param = f"lines[{index}]"
    kind = given["type"]
    quantity = given.get("quantity")
    if kind == "invoice_line_item":
        line_id = given.get("invoice_line_item")
        if not line_id:
            raise StripeAPIError.invalid(
                f"Missing required param: {param}[invoice_line_item].",
                param=f"{param}[invoice_line_item]",
                code="parameter_missing",
            )
        target = next((ln for ln in invoice["lines"]["data"] if ln["id"] == line_id), None)
        if target is None:
            raise StripeAPIError.invalid(
                f"Invoice line item {line_id} is not on invoice {invoice['id']}.", param=f"{param}[invoice_line_item]"
            )
        for unsupported in ("unit_amount", "unit_amount_decimal", "description"):
            if unsupported in given:
                raise StripeAPIError.invalid(
                    f"`{unsupported}` is only valid for lines of type custom_line_item.",
                    param=f"{param}[{unsupported}]",
                )
        if "amount" in given:
            amount = int(given["amount"])
        elif quantity is not None:
            unit = Decimal(target["amount"]) / Decimal(target["quantity"] or 1)
            amount = int((unit * quantity).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        else:
            amount = int(target["amount"])
        return {
            "amount": amount,
            "description": target["description"],
            "invoice_line_item": line_id,
            "quantity": quantity if quantity is not None else (target["quantity"] or 1),
            "type": kind,
            "unit_amount": None,
            "unit_amount_decimal": None,
            "metadata": merge_metadata({}, given.get("metadata")),
        }
    if invoice["automatic_tax"]["enabled"]:
        raise StripeAPIError.invalid(
            "custom_line_item is not valid when the invoice has automatic tax enabled; credit its lines with "
            "invoice_line_item.",
            param=f"{param}[type]",
        )
    if "amount" in given or "invoice_line_item" in given:
        raise StripeAPIError.invalid(
            "`amount` and `invoice_line_item` are only valid for lines of type invoice_line_item.", param=param
        )
    if ("unit_amount" in given) == ("unit_amount_decimal" in given):
        raise StripeAPIError.invalid(
            f"A custom_line_item needs exactly one of {param}[unit_amount] and {param}[unit_amount_decimal].",
            param=f"{param}[unit_amount]",
        )
    unit = Decimal(given["unit_amount"]) if "unit_amount" in given else Decimal(given["unit_amount_decimal"])
    count = quantity if quantity is not None else 1
    return {
        "amount": int((unit * count).quantize(Decimal(1), rounding=ROUND_HALF_UP)),
        "description": given.get("description"),
        "invoice_line_item": None,
        "quantity": count,
        "type": kind,
        "unit_amount": given.get("unit_amount"),
        "unit_amount_decimal": str(unit),
        "metadata": merge_metadata({}, given.get("metadata")),
    }


@ROUTER.post("/v1/credit_notes", params=p.CreditNoteCreateParams)
def create_credit_note(ctx: Ctx) -> dict[str, Any]:
    state, params = ctx.state, ctx.params
    for unsupported in ("refund_amount", "refunds", "shipping_cost"):
        if unsupported in params:
            raise StripeAPIError.invalid(f"`{unsupported}` is not supported by the fake.", param=unsupported)
    invoice = state.get(_INVOICE_KIND, params["invoice"], label="invoice", param="invoice")
    if invoice["status"] not in _CREDITABLE:
        raise StripeAPIError.invalid(
            f"Invoice {invoice['id']} is {invoice['status']}; credit notes can only be issued for finalized invoices "
            f"({', '.join(_CREDITABLE)}).",
            param="invoice",
        )
    if "lines" not in params and "amount" not in params:
        raise StripeAPIError.invalid(
            "One of `amount`, `lines`, or `shipping_cost` must be provided.", param="lines", code="parameter_missing"
        )
    lines = [_line(state, invoice, i, given) for i, given in enumerate(params.get("lines") or [])]
    if not lines:  # `amount` alone: one custom line for it
        lines = [_line(state, invoice, 0, {"type": "custom_line_item", "unit_amount": params["amount"]})]
    total = sum(line["amount"] for line in lines)
    if "amount" in params and int(params["amount"]) != total:
        raise StripeAPIError.invalid(
            f"The credit note amount ({params['amount']}) must equal the sum of its lines ({total}).", param="amount"
        )
    if total <= 0:
        raise StripeAPIError.invalid("A credit note must credit a positive amount.", param="lines")
    credited = _credited_per_line(state, invoice["id"])
    for index, line in enumerate(lines):
        target_id = line["invoice_line_item"]
        if target_id is None:
            continue
        target = next(ln for ln in invoice["lines"]["data"] if ln["id"] == target_id)
        if credited.get(target_id, 0) + line["amount"] > target["amount"]:
            raise StripeAPIError.invalid(
                f"The amount credited for invoice line item {target_id} ({credited.get(target_id, 0)} credited, "
                f"{line['amount']} more) exceeds its amount ({target['amount']}).",
                param=f"lines[{index}][amount]",
            )
        credited[target_id] = credited.get(target_id, 0) + line["amount"]
    already = sum(n["total"] for n in _of_invoice(state, invoice["id"]) if n["status"] != "void")
    if already + total > invoice["total"]:
        raise StripeAPIError.invalid(
            f"The credit note total ({total}) exceeds what is left to credit on invoice {invoice['id']} "
            f"({invoice['total'] - already}).",
            param="lines",
        )
    pre = min(total, max(invoice["amount_remaining"], 0)) if invoice["status"] == "open" else 0
    post = total - pre
    credit_amount = int(params.get("credit_amount", 0))
    out_of_band = int(params.get("out_of_band_amount", 0))
    if credit_amount + out_of_band != post:
        raise StripeAPIError.invalid(
            f"The sum of credit_amount, refund_amount and out_of_band_amount ({credit_amount + out_of_band}) must "
            f"equal the post-payment amount of the credit note ({post}).",
            param="credit_amount",
        )
    count = len(_of_invoice(state, invoice["id"])) + 1
    note_id = new_id("cn")
    line_objects = [
        {
            "id": new_id("cnli"),
            "object": "credit_note_line_item",
            "discount_amount": 0,
            "discount_amounts": [],
            "livemode": False,
            "pretax_credit_amounts": [],
            "tax_rates": [],
            "taxes": [],
            **line,
        }
        for line in lines
    ]
    note = state.base_object(
        "cn",
        "credit_note",
        amount=total,
        amount_shipping=0,
        currency=invoice["currency"],
        customer=invoice["customer"],
        customer_account=None,
        customer_balance_transaction=new_id("cbtxn") if credit_amount else None,
        discount_amount=0,
        discount_amounts=[],
        effective_at=params.get("effective_at", ctx.now),
        invoice=invoice["id"],
        lines={"object": "list", "data": line_objects, "has_more": False, "url": f"/v1/credit_notes/{note_id}/lines"},
        memo=params.get("memo"),
        metadata=merge_metadata({}, params.get("metadata")),
        number=f"{invoice['number']}-CN-{count:02d}",
        out_of_band_amount=out_of_band or None,
        pdf=f"https://pay.stripe.com/credit_notes/fake/{note_id}/pdf",
        post_payment_amount=post,
        pre_payment_amount=pre,
        pretax_credit_amounts=[],
        reason=params.get("reason"),
        refunds=[],
        shipping_cost=None,
        status="issued",
        subtotal=total,
        subtotal_excluding_tax=total,
        total=total,
        total_excluding_tax=total,
        total_taxes=[],
        type="pre_payment" if post == 0 else ("post_payment" if pre == 0 else "mixed"),
        voided_at=None,
    )
    note["id"] = note_id
    with atomic(state, _KIND, _INVOICE_KIND, "customer"):
        state.insert(_KIND, note)
        invoice["amount_remaining"] -= pre
        invoice["amount_due"] -= pre
        invoice["pre_payment_credit_notes_amount"] += pre
        invoice["post_payment_credit_notes_amount"] += post
        if credit_amount:
            customer = state.get("customer", invoice["customer"])
            customer["balance"] = customer.get("balance", 0) - credit_amount
    ctx.event("credit_note.created", note)
    return note


@ROUTER.get("/v1/credit_notes/{id}", params=p.CreditNoteRetrieveParams)
def retrieve_credit_note(ctx: Ctx) -> dict[str, Any]:
    return ctx.state.get(_KIND, ctx.path_params["id"], label="credit_note")


@ROUTER.post("/v1/credit_notes/{id}", params=p.CreditNoteUpdateParams)
def update_credit_note(ctx: Ctx) -> dict[str, Any]:
    note = ctx.state.get(_KIND, ctx.path_params["id"], label="credit_note")
    if "memo" in ctx.params:
        note["memo"] = ctx.params["memo"] or None
    if "metadata" in ctx.params:
        note["metadata"] = merge_metadata(note["metadata"], ctx.params["metadata"])
    ctx.event("credit_note.updated", note)
    return note


@ROUTER.get("/v1/credit_notes", params=p.CreditNoteListParams)
def list_credit_notes(ctx: Ctx) -> dict[str, Any]:
    items = ctx.state.all(_KIND)
    for key in ("invoice", "customer"):
        if key in ctx.params:
            items = [n for n in items if n[key] == ctx.params[key]]
    return paginate(ctx, items, "/v1/credit_notes")


@ROUTER.get("/v1/credit_notes/{id}/lines", params=p.CreditNoteListLinesParams)
def list_credit_note_lines(ctx: Ctx) -> dict[str, Any]:
    note = ctx.state.get(_KIND, ctx.path_params["id"], label="credit_note")
    return paginate(ctx, list(note["lines"]["data"]), f"/v1/credit_notes/{note['id']}/lines", filter_created=False)


@ROUTER.post("/v1/credit_notes/{id}/void", params=p.CreditNoteVoidCreditNoteParams)
def void_credit_note(ctx: Ctx) -> dict[str, Any]:
    state = ctx.state
    note = state.get(_KIND, ctx.path_params["id"], label="credit_note")
    if note["status"] == "void":
        raise StripeAPIError.invalid(f"Credit note {note['id']} is already void.")
    invoice = state.get(_INVOICE_KIND, note["invoice"])
    with atomic(state, _KIND, _INVOICE_KIND, "customer"):
        note["status"] = "void"
        note["voided_at"] = ctx.now
        invoice["pre_payment_credit_notes_amount"] -= note["pre_payment_amount"]
        invoice["post_payment_credit_notes_amount"] -= note["post_payment_amount"]
        if invoice["status"] == "open":
            invoice["amount_remaining"] += note["pre_payment_amount"]
            invoice["amount_due"] += note["pre_payment_amount"]
        credit = note["post_payment_amount"] - (note["out_of_band_amount"] or 0)
        if credit:
            customer = state.get("customer", invoice["customer"])
            customer["balance"] = customer.get("balance", 0) + credit
    ctx.event("credit_note.voided", note)
    return note
