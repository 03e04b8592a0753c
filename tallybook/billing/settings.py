"""The `billing:` section of tallybook.yaml.

```yaml
billing:
  default_tax_code: txcd_10103001   # Stripe tax code for rate cards that name none
  rounding: half_even               # or half_up; how each invoice line is rounded to minor units
```

Fields are appended here by the parts of billing that need them; each has a default.
"""

from __future__ import annotations

import re
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tallybook.billing.models import RoundingMode
from tallybook.webhooks.settings import Duration

TAX_CODE_PATTERN = re.compile(r"^txcd_\d{8}$")


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
