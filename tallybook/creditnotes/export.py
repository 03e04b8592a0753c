"""Credit notes out: the JSON document (API answers and the `invoice.credit_note.created` webhook)
and a printable HTML page.

Money is a decimal string with the currency's minor-unit digits ("33.19"), as on invoices. The page
is rendered with Jinja2 autoescaping, so names cannot inject markup.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from jinja2 import Environment, select_autoescape

from tallybook.billing.periods import Period, zone
from tallybook.clock import format_rfc3339
from tallybook.creditnotes.model import CreditNote, CreditNoteLine

# Detail members shown on a line: credit (charged, used), correction (previousQuantity, quantity:
# the billed quantity before and after; `quantity` of the line itself is what was taken off).
_DETAIL = {"charged": "charged", "used": "used", "previousQuantity": "previousQuantity", "quantity": "newQuantity"}
REASON_TEXT = {
    "cancellation": "subscription canceled: in-advance time not used",
    "plan_change": "plan changed: the old plan's in-advance time not used",
    "usage_correction": "usage lowered after the invoice was issued",
}


def _money(value: Decimal) -> str:
    return format(value, "f")


def _period(period: Period) -> dict[str, str]:
    return {"from": format_rfc3339(period.start), "to": format_rfc3339(period.end)}


def line_json(line: CreditNoteLine) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": line.kind,
        "name": line.name,
        "period": _period(line.period),
        "amount": _money(line.amount),
    }
    optional: dict[str, Any] = {
        "description": line.description,
        "subscriptionId": line.subscription_id,
        "rateCardKey": line.rate_card_key,
        "meter": line.meter,
        "quantity": None if line.quantity is None else format(line.quantity, "f"),
        "unitPrice": None if line.unit_price is None else format(line.unit_price, "f"),
        "taxCode": line.tax_code,
        "correctsInvoiceId": line.corrects_invoice_id,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    for name, shown in _DETAIL.items():
        if name in (line.detail or {}):
            body[shown] = (line.detail or {})[name]
    return body


def credit_note_json(note: CreditNote, external: dict[str, Any] | None = None) -> dict[str, Any]:
    """The credit note document; `external` adds where Stripe holds it (`externalIds`, `sync`)."""
    body: dict[str, Any] = {
        "id": note.id,
        "number": note.number,
        "invoiceId": note.invoice_id,
        "status": note.status,
        "reason": note.reason,
        "currency": note.currency,
        "customer": {k: v for k, v in note.customer.items() if v is not None},
        "lines": [line_json(line) for line in note.lines],
        "totals": {"total": _money(note.total)},
        "issuedAt": format_rfc3339(note.issued_at),
    }
    if note.memo:
        body["memo"] = note.memo
    if note.voided_at is not None:
        body["voidedAt"] = format_rfc3339(note.voided_at)
    if external:
        body.update({k: v for k, v in external.items() if k in ("externalIds", "sync")})
    return body


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Credit note {{ note.number }}</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 2.5em; }
  h1 { font-size: 1.6em; margin: 0 0 .2em; }
  .status { display: inline-block; padding: .1em .6em; border: 1px solid #888; border-radius: .3em;
            text-transform: uppercase; font-size: .8em; letter-spacing: .05em; }
  .status.void { color: #a00; border-color: #a00; }
  .meta { display: flex; justify-content: space-between; margin: 1.5em 0; }
  table { width: 100%; border-collapse: collapse; }
  th, td { text-align: left; padding: .45em .5em; border-bottom: 1px solid #ddd; vertical-align: top; }
  th { font-size: .8em; text-transform: uppercase; color: #555; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  .sub { color: #666; font-size: .85em; }
  tfoot td { border: none; }
  tfoot tr.total td { font-weight: bold; border-top: 2px solid #222; }
  @media print { body { margin: 1cm; } }
</style>
</head>
<body>
<h1>Credit note {{ note.number }} <span class="status {{ note.status }}">{{ note.status }}</span></h1>
<div class="sub">Tallybook {{ note.id }} · credits invoice {{ note.invoice_id }}</div>
<div class="meta">
  <div>
    <strong>Credited to</strong><br>
    {{ customer.name }}<br>
    {% if customer.primaryEmail %}{{ customer.primaryEmail }}<br>{% endif %}
  </div>
  <div>
    <strong>Issued</strong> {{ issued }}<br>
    <strong>Reason</strong> {{ reason }}<br>
    {% if voided %}<strong>Voided</strong> {{ voided }}<br>{% endif %}
  </div>
</div>
{% if note.memo %}<p>{{ note.memo }}</p>{% endif %}
<table>
  <thead>
    <tr><th>Item</th><th>Period</th><th class="num">Quantity</th><th class="num">Unit price</th>
        <th>Tax code</th><th class="num">Credited ({{ note.currency }})</th></tr>
  </thead>
  <tbody>
  {% for line in lines %}
    <tr>
      <td>{{ line.name }}{% if line.description %}<div class="sub">{{ line.description }}</div>{% endif %}</td>
      <td class="sub">{{ line.period }}</td>
      <td class="num">{{ line.quantity }}</td>
      <td class="num">{{ line.unit_price }}</td>
      <td class="sub">{{ line.tax_code }}</td>
      <td class="num">{{ line.amount }}</td>
    </tr>
  {% endfor %}
  </tbody>
  <tfoot>
    <tr class="total"><td colspan="5" class="num">Total credited ({{ note.currency }})</td>
        <td class="num">{{ total }}</td></tr>
  </tfoot>
</table>
</body>
</html>
"""

_COMPILED = Environment(autoescape=select_autoescape(default=True, default_for_string=True)).from_string(_TEMPLATE)


def _local(period: Period, tz_name: str) -> str:
    tz = zone(tz_name)
    start, end = period.start.astimezone(tz), period.end.astimezone(tz)
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}"


def credit_note_html(note: CreditNote) -> str:
    tz_name = note.customer.get("timezone") or "UTC"
    lines = [
        {
            "name": line.name,
            "description": line.description,
            "period": _local(line.period, tz_name),
            "quantity": "" if line.quantity is None else format(line.quantity, "f"),
            "unit_price": "" if line.unit_price is None else format(line.unit_price, "f"),
            "tax_code": line.tax_code or "",
            "amount": _money(line.amount),
        }
        for line in note.lines
    ]
    return _COMPILED.render(
        note=note,
        customer={"name": note.customer.get("name"), "primaryEmail": note.customer.get("primaryEmail")},
        issued=format_rfc3339(note.issued_at),
        voided=None if note.voided_at is None else format_rfc3339(note.voided_at),
        reason=REASON_TEXT.get(note.reason, note.reason),
        lines=lines,
        total=_money(note.total),
    )


__all__ = ["credit_note_html", "credit_note_json", "line_json"]
