"""The `billing:` section of tallybook.yaml.

```yaml
billing:
  default_tax_code: txcd_10103001   # Stripe tax code for rate cards that name none
  rounding: half_even               # or half_up; how each invoice line is rounded to minor units
  # invoicing (docs/invoicing.md); these three are also the default billing profile's
  # workflow.collection.interval, workflow.invoicing.autoAdvance and draftPeriod
  invoice_grace: 1h                 # draft a period's invoice this long after the period ends
  auto_issue: false                 # true: issue drafts without approval ...
  auto_issue_after: 0s              # ... once they are this old
  correction_lookback: 93d          # issued invoices checked for late usage
  invoice_interval: 1m              # how often the billing.invoice job runs
  unbilled_interval: 1h             # how often billing.unbilled checks closed months for unbilled usage
  profile:                          # the rest of the default billing profile (read-only in the API)
    name: Default
    description: null
    collector: custom_invoicing     # or stripe: which app invoices, taxes and collects
    collection_method: charge_automatically   # or send_invoice (due `due_after` after issue)
    due_after: 30d                  # whole days
    auto_collect: true              # stripe: let Stripe charge/retry the finalized invoice
    tax_enabled: false              # stripe: compute tax with Stripe Tax
    tax_enforced: false             # stripe: refuse to invoice without a computed tax
    tax_behavior: exclusive         # or inclusive: whether prices include tax
    supplier:                       # who invoices: shown on invoices
      name: Example Ltd
      tax_id: GB123456789
      address: {country: GB, postal_code: EC1A 1BB, city: London, line1: 1 Example Street}
    number_prefix: INV-             # issued invoices are numbered INV-0001, INV-0002, ... (per prefix)
    timezone: null                  # dates on the invoice page and PDF; null: the customer's zone
    locale: en                      # how the page writes dates and numbers (Babel), e.g. en_GB, de_DE
```

The default profile bills every customer without a profile of its own, unless a profile created
through /api/v1/billing/profiles is marked `default: true` (see docs/invoicing.md).
Durations are seconds (a number) or a number with a unit: 90s, 15m, 1h, 3d. Fields are appended
here by the parts of billing that need them; each has a default.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tallybook.billing.models import RoundingMode
from tallybook.billing.profiles_model import check_locale, check_number_prefix, check_timezone
from tallybook.webhooks.settings import Duration

TAX_CODE_PATTERN = re.compile(r"^txcd_\d{8}$")
COUNTRY_PATTERN = re.compile(r"^[A-Z]{2}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SupplierAddressSettings(_Section):
    country: str | None = Field(None, description="ISO 3166-1 alpha-2 code, e.g. GB")
    postal_code: str | None = None
    state: str | None = None
    city: str | None = None
    line1: str | None = None
    line2: str | None = None
    phone_number: str | None = None

    @field_validator("country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is not None and not COUNTRY_PATTERN.match(value):
            raise ValueError("must be an ISO 3166-1 alpha-2 country code in capitals, e.g. GB or US")
        return value


class SupplierSettings(_Section):
    name: str | None = Field(None, min_length=1, max_length=256, description="legal name shown on invoices")
    tax_id: str | None = Field(None, min_length=1, max_length=32, description="the supplier's tax number")
    address: SupplierAddressSettings | None = None


class ProfileSettings(_Section):
    """The default billing profile, apart from grace and approval (the invoicing keys above)."""

    name: str = Field("Default", min_length=1, max_length=256)
    description: str | None = Field(None, max_length=1024)
    collector: Literal["custom_invoicing", "stripe"] = Field(
        "custom_invoicing",
        description="stripe: Stripe invoices, taxes and collects; custom_invoicing: no app, use the invoice webhooks",
    )
    collection_method: Literal["charge_automatically", "send_invoice"] = "charge_automatically"
    due_after: Duration = Field(timedelta(days=30), description="send_invoice: payment due this long after issue")
    auto_collect: bool = Field(True, description="stripe: Stripe charges and retries the finalized invoice")
    tax_enabled: bool = Field(False, description="stripe: compute tax with Stripe Tax")
    tax_enforced: bool = Field(False, description="stripe: do not invoice without a computed tax")
    tax_behavior: Literal["exclusive", "inclusive"] = Field("exclusive", description="whether prices include tax")
    supplier: SupplierSettings = Field(default_factory=SupplierSettings)
    number_prefix: str = Field("INV-", description="issued invoices are numbered with this prefix: INV-0001, ...")
    timezone: str | None = Field(None, description="the invoice page's dates; None: the customer's time zone")
    locale: str = Field("en", description="how the invoice page writes dates and numbers, e.g. en_GB")

    @field_validator("number_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        problem = check_number_prefix(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        problem = None if value is None else check_timezone(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str) -> str:
        problem = check_locale(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("due_after")
    @classmethod
    def _whole_days(cls, value: timedelta) -> timedelta:
        if value % timedelta(days=1):
            raise ValueError("must be a whole number of days, e.g. 30d")
        if value > timedelta(days=366):
            raise ValueError("must be at most 366d")
        return value

    @model_validator(mode="after")
    def _enforced_needs_enabled(self) -> ProfileSettings:
        if self.tax_enforced and not self.tax_enabled:
            raise ValueError("tax_enforced: true needs tax_enabled: true")
        return self


class BillingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_tax_code: str = Field(
        "txcd_10103001",
        description="Stripe tax code used for rate cards without one (txcd_10103001: SaaS, business use)",
    )
    rounding: RoundingMode = Field(
        RoundingMode.HALF_EVEN,
        description="tie-breaking when an invoice line is rounded to the currency's minor unit",
    )

    @field_validator("default_tax_code")
    @classmethod
    def _stripe_tax_code(cls, value: str) -> str:
        if not TAX_CODE_PATTERN.match(value):
            raise ValueError("must be a Stripe tax code: 'txcd_' and 8 digits, e.g. txcd_10103001")
        return value

    # -- invoicing (subscriptions, periods and invoices; see docs/invoicing.md) ------------------------
    invoice_grace: Duration = Field(
        timedelta(hours=1),
        description="wait this long after a billing period ends before drafting its invoice, for late events",
    )
    auto_issue: bool = Field(
        False, description="issue drafts automatically (after auto_issue_after); false: approve each one"
    )
    auto_issue_after: Duration = Field(
        timedelta(0), description="how long an invoice stays a draft before it is issued automatically"
    )
    correction_lookback: Duration = Field(
        timedelta(days=93),
        description="issued invoices whose period ended within this long are checked for late events",
    )
    invoice_interval: Duration = Field(timedelta(minutes=1), description="how often the billing.invoice job runs")
    unbilled_interval: Duration = Field(
        timedelta(hours=1),
        description="how often the billing.unbilled job looks at the last closed months (tallybook/unbilled)",
    )
    profile: ProfileSettings = Field(
        default_factory=ProfileSettings, description="the default billing profile (see docs/invoicing.md)"
    )
