"""Invoices out: the JSON document (API answers and webhook payloads) and a printable HTML page
(which tallybook/billing/pdf.py renders to PDF).

Money is written as decimal strings with the currency's minor-unit digits ("49.00"), so no client
reads it through a float. The HTML page is self-contained (inline CSS, print-friendly) and is
rendered with Jinja2 autoescaping, so customer names cannot inject markup. It is a customer-facing
document: it shows the seller (the billing profile's supplier, as snapshotted when the invoice was
issued), the invoice number, and dates written by Babel in the profile's locale and time zone (the
customer's zone when the profile names none), never raw RFC 3339 times. Amounts are formatted
without rounding (they are rounded once, per line, by invoicing).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_interval
from babel.numbers import format_currency, format_decimal
from jinja2 import Environment, select_autoescape

from tallybook.billing.invoicing_model import Invoice, Line
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
    # Stripe's number when Stripe holds the invoice (its document is the one the customer gets).
    number = (external or {}).get("number") or invoice.number
    body: dict[str, Any] = {
        "id": invoice.id or None,
        **({"number": number} if number else {}),
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
        # OpenMeter's name for when the usage quantities were taken (the same instant).
        body["quantitySnapshotedAt"] = body["asOf"]
    if invoice.as_of_seq is not None:
        body["asOfSeq"] = invoice.as_of_seq  # the ingest watermark: events stored with seq <= this
    seller = invoice.seller or {}
    if seller:
        body["billingProfileId"] = seller.get("billingProfileId")
        body["supplier"] = seller.get("supplier") or {}
        if seller.get("dueAt"):
            body["dueAt"] = seller["dueAt"]
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
<html lang="{{ lang }}">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
  @page { size: A4; margin: 1.6cm; }
  body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #222; margin: 2.5em; }
  h1 { font-size: 1.6em; margin: 0 0 .2em; }
  .status { display: inline-block; padding: .1em .6em; border: 1px solid #888; border-radius: .3em;
            text-transform: uppercase; font-size: .8em; letter-spacing: .05em; }
  .status.void { color: #a00; border-color: #a00; }
  .parties { display: flex; justify-content: space-between; gap: 2em; margin: 1.5em 0; }
  .parties > div { flex: 1; }
  table { width: 100%; border-collapse: collapse; }
  th, td { text-align: left; padding: .45em .5em; border-bottom: 1px solid #ddd; vertical-align: top; }
  th { font-size: .8em; text-transform: uppercase; color: #555; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  table.facts td { border: none; padding: .1em .5em .1em 0; }
  table.facts td:first-child { color: #555; white-space: nowrap; }
  .sub { color: #666; font-size: .85em; }
  .tiers td { border: none; padding: .1em .5em; font-size: .85em; color: #555; }
  .warning { color: #8a4b00; font-size: .85em; }
  .warning::before { content: "\\26A0  "; }
  tfoot td { border: none; }
  tfoot tr.total td { font-weight: bold; border-top: 2px solid #222; }
  @media print { body { margin: 0; } .noprint { display: none; } }
</style>
</head>
<body>
<h1>{{ heading }} <span class="status {{ invoice.status }}">{{ invoice.status }}</span></h1>
<div class="sub">{% if number %}<span id="invoice-number">{{ number }}</span>{% endif %}
  {%- if invoice.id %}{% if number %} · {% endif %}Tallybook {{ invoice.id }}{% endif %}</div>
<div class="parties">
  <div class="seller">
    <strong>From</strong><br>
    {% if seller.name %}{{ seller.name }}<br>{% endif %}
    {% for part in seller.address %}{{ part }}<br>{% endfor %}
    {% if seller.tax_id %}Tax ID {{ seller.tax_id }}<br>{% endif %}
  </div>
  <div class="customer">
    <strong>Billed to</strong><br>
    {{ customer.name }}<br>
    {% if customer.primaryEmail %}{{ customer.primaryEmail }}<br>{% endif %}
    {% for part in address %}{{ part }}<br>{% endfor %}
  </div>
  <div>
    <table class="facts">
      {% if number %}<tr><td>Invoice number</td><td>{{ number }}</td></tr>{% endif %}
      {% if issued %}<tr><td>Issue date</td><td>{{ issued }}</td></tr>{% endif %}
      {% if due %}<tr><td>Due date</td><td>{{ due }}</td></tr>{% endif %}
      <tr><td>Billing period</td><td>{{ period }}</td></tr>
    </table>
    {% if as_of %}<span class="sub">usage counted as of {{ as_of }}</span><br>{% endif %}
    <span class="sub">{% if period_zone != zone %}billing periods in {{ period_zone }}; {% endif -%}
      dates in {{ zone }}</span>
  </div>
</div>
<table class="lines">
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
            <td class="num">x {{ tier.unitPrice }}{% if tier.flatPrice %} + {{ tier.flatPrice }}{% endif %}</td>
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
    {% if totals.commitments %}
    <tr><td colspan="5" class="num">Commitments</td><td class="num">{{ totals.commitments }}</td></tr>
    {% endif %}
    <tr class="total"><td colspan="5" class="num">Total ({{ invoice.currency }})</td>
        <td class="num" id="invoice-total">{{ totals.total }}</td></tr>
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
_DAY = timedelta(days=1)


class _Writer:
    """Writes dates and numbers for one document: Babel, in its locale and time zone."""

    def __init__(self, locale: str, tz_name: str, currency: str) -> None:
        try:
            self.locale = Locale.parse(locale)
        except (UnknownLocaleError, ValueError, TypeError):
            self.locale = Locale.parse("en")
        self.tz_name = tz_name
        self.tz = zone(tz_name)
        self.currency = currency

    def instant(self, when: datetime) -> str:
        return str(format_datetime(when, "medium", tzinfo=self.tz, locale=self.locale))

    def day(self, when: datetime) -> str:
        return str(format_date(when.astimezone(self.tz).date(), "medium", locale=self.locale))

    def period(self, period: Period) -> str:
        """Whole local days as an interval of dates, the end day included ("Jan 1 - 31, 2026");
        otherwise both instants with their times."""
        start, end = period.start.astimezone(self.tz), period.end.astimezone(self.tz)
        midnight = start.replace(hour=0, minute=0, second=0, microsecond=0).time()
        if start.time() == midnight and end.time() == midnight and end > start:
            last = (end - _DAY).date()
            if last == start.date():
                return str(format_date(start.date(), "medium", locale=self.locale))
            return str(format_interval(start.date(), last, "yMMMd", locale=self.locale))
        return f"{self.instant(period.start)} \u2013 {self.instant(period.end)}"  # an en dash

    def number(self, value: Decimal | str | None) -> str:
        if value is None or value == "":
            return ""
        return str(format_decimal(Decimal(value), locale=self.locale, decimal_quantization=False))

    def money(self, value: Decimal | str | None) -> str:
        if value is None:
            return ""
        amount = Decimal(value)
        return str(format_currency(amount, self.currency, locale=self.locale, decimal_quantization=False))


def _address_lines(address: dict[str, Any] | None) -> list[str]:
    address = address or {}
    parts = [
        address.get("line1"),
        address.get("line2"),
        " ".join(p for p in (address.get("postalCode"), address.get("city")) if p) or None,
        address.get("state"),
        address.get("country"),
    ]
    return [p for p in parts if p]


def invoice_html(invoice: Invoice, external: dict[str, Any] | None = None, seller: dict[str, Any] | None = None) -> str:
    """A printable page for the invoice; with `external` (Stripe invoicing) it carries Stripe's
    number and, once computed, Stripe's tax. `seller` stands in for a draft's missing snapshot (the
    profile as it is now); an issued invoice shows the seller it was issued with."""
    sync = (external or {}).get("sync") or {}
    tax = sync if sync.get("taxStatus") == "complete" and sync.get("tax") is not None else None
    snapshot = invoice.seller or seller or {}
    # Billing periods are the customer's (cut in its zone); the document's own dates (issue, due,
    # usage counted as of) are written in the profile's zone, the customer's when it names none.
    customer_tz = invoice.customer.get("timezone") or "UTC"
    tz_name = snapshot.get("timezone") or customer_tz
    write = _Writer(snapshot.get("locale") or "en", tz_name, invoice.currency)
    periods = _Writer(snapshot.get("locale") or "en", customer_tz, invoice.currency)
    supplier = snapshot.get("supplier") or {}
    lines = [
        {
            "name": ln.name,
            "description": ln.description,
            "period": periods.period(ln.period),
            "quantity": write.number(ln.quantity),
            "unit_price": write.number(ln.unit_price),
            "tax_code": ln.tax_code or "",
            "amount": write.money(ln.amount),
            "tiers": [
                {
                    "tier": t.get("tier"),
                    "quantity": write.number(t.get("quantity")),
                    "unitPrice": write.number(t.get("unitPrice")),
                    "flatPrice": write.money(t["flatPrice"]) if Decimal(t.get("flatPrice") or 0) else "",
                    "amount": write.money(t.get("amount")),
                }
                for t in (ln.detail or {}).get("tiers") or []
            ],
            "warnings": (ln.detail or {}).get("warnings") or [],
        }
        for ln in invoice.lines
    ]
    number = (external or {}).get("number") or invoice.number
    if invoice.status == "preview" or not invoice.id:
        heading = "Invoice preview"
    elif invoice.status == "draft":
        heading = "Draft invoice"
    else:
        heading = f"Invoice {number}" if number else "Invoice"
    due = snapshot.get("dueAt") if invoice.seller else None
    return _COMPILED.render(
        invoice=invoice,
        lang=str(write.locale.language),
        title=heading if invoice.status in ("draft", "preview") or not number else f"Invoice {number}",
        heading=heading,
        number=number,
        tax={**tax, "tax": write.money(tax["tax"]), "totalWithTax": write.money(tax["totalWithTax"])} if tax else None,
        seller={
            "name": supplier.get("name"),
            "address": _address_lines((supplier.get("addresses") or [None])[0]),
            "tax_id": (supplier.get("taxId") or {}).get("code"),
        },
        customer={"name": invoice.customer.get("name"), "primaryEmail": invoice.customer.get("primaryEmail")},
        address=_address_lines(invoice.customer.get("billingAddress")),
        period=periods.period(invoice.period),
        zone=tz_name,
        period_zone=customer_tz,
        issued=None if invoice.issued_at is None else write.day(invoice.issued_at),
        due=None if not due else write.day(datetime.fromisoformat(due.replace("Z", "+00:00"))),
        as_of=None if invoice.as_of is None or invoice.status == "draft" else write.instant(invoice.as_of),
        lines=lines,
        totals={
            "subtotal": write.money(invoice.totals.subtotal),
            "commitments": write.money(invoice.totals.commitments) if invoice.totals.commitments else "",
            "total": write.money(invoice.totals.total),
        },
    )


__all__ = ["invoice_html", "invoice_json", "line_json"]
