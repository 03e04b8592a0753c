"""Every worked example in docs/pricing.md, recomputed with the functions that bill customers."""

from __future__ import annotations

import json
import re
from decimal import Decimal as D
from itertools import takewhile
from pathlib import Path

import pytest

from tallybook.api.wire.plan_prices import parse_usage_price
from tallybook.api.wire.plans import parse_plan
from tallybook.billing.currency import round_money
from tallybook.billing.models import Commitments, FlatPrice, RoundingMode
from tallybook.billing.rating import apply_commitments, prorate, rate_usage

DOC = (Path(__file__).parent.parent / "docs" / "pricing.md").read_text(encoding="utf-8")
DAY = D(86400)


def doc_table(name: str) -> list[dict[str, str]]:
    """The markdown table after `<!-- table: name -->`, as one dict per row keyed by header."""
    start = DOC.index(f"<!-- table: {name} -->")
    lines = DOC[start:].splitlines()[1:]
    rows = list(takewhile(lambda line: line.startswith("|"), lines))
    cells = [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]
    header, body = cells[0], cells[2:]
    assert body, f"table {name} has no rows"
    return [dict(zip(header, row, strict=True)) for row in body]


def doc_json(kind: str, name: str) -> object:
    """The ```json block after `<!-- kind: name -->`."""
    match = re.search(rf"<!-- {kind}: {name} -->\s*```json\n(.*?)```", DOC, re.S)
    assert match, f"no {kind} block named {name}"
    return json.loads(match.group(1))


def amount(text: str) -> D | None:
    return D(text) if text else None


def test_the_doc_has_all_its_example_tables() -> None:
    for name in ("rating", "commitments", "proration", "rounding", "seed_invoice"):
        assert doc_table(name)


@pytest.mark.parametrize("row", doc_table("rating"), ids=lambda r: f"{r['price']}-{r['quantity']}")
def test_rating_examples(row: dict[str, str]) -> None:
    price, _ = parse_usage_price(doc_json("price", row["price"]))
    rated = rate_usage(price, D(row["quantity"]))
    assert rated.amount == D(row["amount"])
    assert str(round_money(rated.amount, "USD", RoundingMode.HALF_EVEN)) == row["USD line"]


@pytest.mark.parametrize("row", doc_table("commitments"), ids=lambda r: r["rated amount"])
def test_commitment_examples(row: dict[str, str]) -> None:
    bounds = Commitments(minimum=amount(row["minimumAmount"]), maximum=amount(row["maximumAmount"]))
    committed = apply_commitments(D(row["rated amount"]), bounds)
    assert committed.amount == D(row["charged"])
    assert committed.adjustment == D(row["adjustment"])


@pytest.mark.parametrize("row", doc_table("proration"), ids=lambda r: f"{r['covered days']}of{r['period days']}")
def test_proration_examples(row: dict[str, str]) -> None:
    share = prorate(D(row["amount"]), D(row["covered days"]) * DAY, D(row["period days"]) * DAY)
    assert str(round_money(share, "USD", RoundingMode.HALF_EVEN)) == row["USD line"]


@pytest.mark.parametrize("row", doc_table("rounding"), ids=lambda r: f"{r['amount']}{r['currency']}")
def test_rounding_examples(row: dict[str, str]) -> None:
    assert str(round_money(D(row["amount"]), row["currency"], RoundingMode.HALF_EVEN)) == row["half_even"]
    assert str(round_money(D(row["amount"]), row["currency"], RoundingMode.HALF_UP)) == row["half_up"]


def test_seed_plan_invoice_example() -> None:
    plan = parse_plan(doc_json("plan", "seed")).spec
    cards = {card.key: card for card in plan.rate_cards}
    total = D(0)
    rows = doc_table("seed_invoice")
    for row in rows[:-1]:
        card = cards[row["rate card"]]
        if isinstance(card.price, FlatPrice):
            raw = card.price.amount
        else:
            raw = rate_usage(card.price, D(row["quantity"])).amount
        line = round_money(raw, plan.currency, RoundingMode.HALF_EVEN)
        assert str(line) == row["USD line"], row
        total += line
    assert rows[-1]["rate card"] == "total"
    assert str(total) == rows[-1]["USD line"]
    assert {card.meter for card in plan.rate_cards} == {None, "api_calls", "storage_gb", "compute_seconds"}
