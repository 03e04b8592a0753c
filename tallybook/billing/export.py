"""Invoices out: the JSON document (API answers and webhook payloads) and a printable HTML page.

Money is written as decimal strings with the currency's minor-unit digits ("49.00"), so no client
reads it through a float. The HTML page is self-contained (inline CSS, print-friendly) and is
rendered with Jinja2 autoescaping, so customer names cannot inject markup.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from jinja2 import Environment, select_autoescape

from tallybook.billing.invoicing import Invoice, Line
from tallybook.billing.periods import Period, zone
from tallybook.clock import format_rfc3339

_LINE_TYPES = {"flat_fee": "flat_fee", "usage": "usage_based", "commitment": "commitment", "correction": "correction"}


def _money(value: Decimal) -> str:
    return str(value)


def _period_json(period: Period) -> dict[str, str]:
    return {"from": format_rfc3339(period.start), "to": format_rfc3339(period.end)}


def line_json(line: Line) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": _LINE_TYPES.get(line.kind, line.kind),
        "name": line.name,
        "period": _period_json(line.period),
        "amount": _money(line.amount),
    }
    optional: dict[str, Any] = {
        "description": line.description,
        "subscriptionId": line.subscription_id,
        "rateCardKey": line.rate_card_key,
        "meter": line.meter,
        "quantity": None if line.quantity is None else str(line.quantity),
        "unitPrice": None if line.unit_price is None else str(line.unit_price),
        "taxCode": line.tax_code,
        "correctsInvoiceId": line.corrects_invoice_id,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    detail = line.detail or {}
    # usageTotal and warnings: a measured total the line did not bill as is (negative usage bills 0).
    for name in (
        "tiers",
        "packages",
        "proration",
        "paymentTerm",
        "reason",
        "previousQuantity",
        "usageTotal",
        "warnings",
    ):
        if name in detail:
            body[name] = detail[name]
    return body


def invoice_json(invoice: Invoice, external: dict[str, Any] | None = None) -> dict[str, Any]:
    """The invoice document; `external` adds where the collecting app (Stripe) holds it: its
    `number`, `externalIds` and `sync` state (see tallybook/stripe/invoices.py)."""
    body: dict[str, Any] = {
        "id": invoice.id or None,
        **({"number": external["number"]} if external and external.get("number") else {}),
        "kind": invoice.kind,  # "opening" (a subscription's first in-advance fees) or "period"
        "status": invoice.status,
        "currency": invoice.currency,
        "customer": {k: v for k, v in invoice.customer.items() if v is not None},
        "period": _period_json(invoice.period),
        "lines": [line_json(line) for line in invoice.lines],
        "totals": {
            "amount": _money(invoice.totals.subtotal),
            "commitments": _money(invoice.totals.commitments),
            "total": _money(invoice.totals.total),
        },
        "revision": invoice.revision,
        "createdAt": format_rfc3339(invoice.created_at),
        "updatedAt": format_rfc3339(invoice.updated_at),
    }
    if invoice.as_of is not None:
        body["asOf"] = format_rfc3339(invoice.as_of)
    for name, value in (
        ("issuedAt", invoice.issued_at),
        ("paidAt", invoice.paid_at),
        ("voidedAt", invoice.voided_at),
        ("uncollectibleAt", invoice.uncollectible_at),
    ):
        if value is not None:
            body[name] = format_rfc3339(value)
    if external:
        body.update({k: v for k, v in external.items() if k in ("externalIds", "sync")})
    if not invoice.id:
        del body["id"]
    return body


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Invoice {{ number }}</title>
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
  .tiers td { border: none; padding: .1em .5em; font-size: .85em; color: #555; }
  .warning { color: #8a4b00; font-size: .85em; }
  .warning::before { content: "\26A0  "; }
  tfoot td { border: none; }
  tfoot tr.total td { font-weight: bold; border-top: 2px solid #222; }
  @media print { body { margin: 1cm; } .noprint { display: none; } }
</style>
</head>
<body>
<h1>Invoice <span class="status {{ invoice.status }}">{{ invoice.status }}</span></h1>
<div class="sub">{{ number }}{% if number != invoice.id and invoice.id %} · Tallybook {{ invoice.id }}{% endif %}</div>
<div class="meta">
  <div>
    <strong>Billed to</strong><br>
    {{ customer.name }}<br>
    {% if customer.primaryEmail %}{{ customer.primaryEmail }}<br>{% endif %}
    {% for part in address %}{{ part }}<br>{% endfor %}
  </div>
  <div>
    <strong>Billing period</strong><br>{{ period }}<br>
    {% if issued %}<strong>Issued</strong> {{ issued }}<br>{% endif %}
    {% if as_of %}<span class="sub">usage counted as of {{ as_of }}</span>{% endif %}
  </div>
</div>
<table>
  <thead>
    <tr><th>Item</th><th>Period</th><th class="num">Quantity</th><th class="num">Unit price</th>
        <th>Tax code</th><th class="num">Amount ({{ invoice.currency }})</th></tr>
  </thead>
  <tbody>
  {% for line in lines %}
    <tr>
      <td>{{ line.name }}{% if line.description %}<div class="sub">{{ line.description }}</div>{% endif %}
        {% for warning in line.warnings %}<div class="warning" role="note">{{ warning }}</div>{% endfor %}
        {% if line.tiers %}<table class="tiers">
          {% for tier in line.tiers %}<tr><td>tier {{ tier.tier }}</td><td class="num">{{ tier.quantity }}</td>
            <td class="num">x {{ tier.unitPrice }}{% if tier.flatPrice != "0" %} + {{ tier.flatPrice }}{% endif %}</td>
            <td class="num">{{ tier.amount }}</td></tr>{% endfor %}
        </table>{% endif %}
      </td>
      <td class="sub">{{ line.period }}</td>
      <td class="num">{{ line.quantity }}</td>
      <td class="num">{{ line.unit_price }}</td>
      <td class="sub">{{ line.tax_code }}</td>
      <td class="num">{{ line.amount }}</td>
    </tr>
  {% endfor %}
  </tbody>
  <tfoot>
    <tr><td colspan="5" class="num">Subtotal</td><td class="num">{{ totals.subtotal }}</td></tr>
    {% if totals.commitments != zero %}
    <tr><td colspan="5" class="num">Commitments</td><td class="num">{{ totals.commitments }}</td></tr>
    {% endif %}
    <tr class="total"><td colspan="5" class="num">Total ({{ invoice.currency }})</td>
        <td class="num">{{ totals.total }}</td></tr>
    {% if tax %}
    <tr><td colspan="5" class="num">Tax (Stripe Tax)</td><td class="num">{{ tax.tax }}</td></tr>
    <tr class="total"><td colspan="5" class="num">Total with tax ({{ invoice.currency }})</td>
        <td class="num">{{ tax.totalWithTax }}</td></tr>
    {% endif %}
  </tfoot>
</table>
{% if not tax %}
<p class="sub">Taxes are not included; each line carries its tax code for your tax calculation.</p>
{% endif %}
</body>
</html>
"""

_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
_COMPILED = _ENV.from_string(_TEMPLATE)


def _local(period: Period, tz_name: str) -> str:
    tz = zone(tz_name)
    start, end = period.start.astimezone(tz), period.end.astimezone(tz)
    if start.time() == end.time() == start.replace(hour=0, minute=0, second=0, microsecond=0).time():
        return f"{start:%Y-%m-%d} to {end:%Y-%m-%d}"
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}"


def invoice_html(invoice: Invoice, external: dict[str, Any] | None = None) -> str:
    """A printable page for the invoice (open it in a browser and print to PDF if needed); with
    `external` (Stripe invoicing) it carries Stripe's number and, once computed, Stripe's tax."""
    sync = (external or {}).get("sync") or {}
    tax = sync if sync.get("taxStatus") == "complete" and sync.get("tax") is not None else None
    tz_name = invoice.customer.get("timezone") or "UTC"
    address = invoice.customer.get("billingAddress") or {}
    parts = [
        address.get("line1"),
        address.get("line2"),
        " ".join(p for p in (address.get("postalCode"), address.get("city")) if p) or None,
        address.get("state"),
        address.get("country"),
    ]
    lines = [
        {
            "name": ln.name,
            "description": ln.description,
            "period": _local(ln.period, tz_name),
            "quantity": "" if ln.quantity is None else str(ln.quantity),
            "unit_price": "" if ln.unit_price is None else str(ln.unit_price),
            "tax_code": ln.tax_code or "",
            "amount": str(ln.amount),
            "tiers": (ln.detail or {}).get("tiers"),
            "warnings": (ln.detail or {}).get("warnings") or [],
        }
        for ln in invoice.lines
    ]
    return _COMPILED.render(
        invoice=invoice,
        number=(external or {}).get("number") or invoice.id or "preview",
        tax=tax,
        customer={"name": invoice.customer.get("name"), "primaryEmail": invoice.customer.get("primaryEmail")},
        address=[p for p in parts if p],
        period=f"{_local(invoice.period, tz_name)} ({tz_name})",
        issued=None if invoice.issued_at is None else format_rfc3339(invoice.issued_at),
        as_of=None if invoice.as_of is None or invoice.status == "draft" else format_rfc3339(invoice.as_of),
        lines=lines,
        totals=invoice.totals,
        zero=Decimal(0),
    )


__all__ = ["invoice_html", "invoice_json", "line_json"]
