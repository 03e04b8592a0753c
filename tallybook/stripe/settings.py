"""The `stripe:` section of tallybook.yaml.

Secrets never live in the file: the secret key comes from STRIPE_API_KEY and the webhook signing
secret from STRIPE_WEBHOOK_SECRET (or `${NAME}` references, like every other string).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The API version Tallybook is written against (stripe-python 16's pinned version).
PINNED_API_VERSION = "2026-10-28.endive"
# Usage records need an account (or request) pinned to a version before basil.
LEGACY_API_VERSION = "2025-02-24.acacia"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StripeMeterMapping(_Section):
    """How one Tallybook meter reaches Stripe."""

    meter: str = Field(min_length=1, description="Tallybook meter slug")
    mode: Literal["billing_meter", "usage_record"] = "billing_meter"
    event_name: str | None = Field(None, description="Stripe Billing Meter event_name (billing_meter mode)")
    price: str | None = Field(None, description="Stripe price id (usage_record mode: the metered price)")
    transport: Literal["v1", "v2_stream"] = "v1"
    window: Literal["MINUTE", "HOUR", "DAY"] = "HOUR"

    @model_validator(mode="after")
    def _needs_target(self) -> StripeMeterMapping:
        if self.mode == "billing_meter" and not self.event_name:
            raise ValueError("billing_meter mode needs event_name (the Stripe meter's event name)")
        if self.mode == "usage_record" and not self.price:
            raise ValueError("usage_record mode needs price (the legacy metered price id)")
        return self


class StripeSettings(_Section):
    enabled: bool = False
    api_key: str | None = Field(None, description="leave out: read from STRIPE_API_KEY")
    webhook_secret: str | None = Field(None, description="leave out: read from STRIPE_WEBHOOK_SECRET")
    api_version: str = PINNED_API_VERSION
    api_base: str | None = Field(None, description="override https://api.stripe.com (tests, proxies)")
    meter_events_base: str | None = Field(None, description="override https://meter-events.stripe.com")
    requests_per_second: float | None = Field(
        None, gt=0, description="rate budget; default 25 with a test key, 100 with a live key"
    )
    max_network_retries: int = Field(2, ge=0, le=10)
    timeout_seconds: float = Field(30.0, gt=0)
    report_interval: timedelta = timedelta(hours=1)
    # A window is reported once it ended this long ago, so most late events are in by then.
    settle_delay: timedelta = timedelta(minutes=5)
    # How far back each run re-checks reported windows for late events (corrections).
    lookback: timedelta = timedelta(days=2)
    # How far back a meter's first run reaches (it has no cursor yet); earlier usage is not sent
    # unless reported with --from/--to (`stripe report` and `reconcile` show it as not_reported).
    backfill: timedelta = timedelta(days=1)
    retry_base: timedelta = timedelta(seconds=30)
    retry_max: timedelta = timedelta(hours=1)
    meters: list[StripeMeterMapping] = Field(default_factory=list)
    # Stripe invoicing (customers whose billing profile's app is `stripe`): how often the sync job
    # looks for invoices to create, update, finalize or retry in Stripe.
    invoice_sync_interval: timedelta = timedelta(minutes=1)

    def secret_key(self) -> str | None:
        return self.api_key or os.environ.get("STRIPE_API_KEY") or None

    def signing_secret(self) -> str | None:
        return self.webhook_secret or os.environ.get("STRIPE_WEBHOOK_SECRET") or None

    def budget(self) -> float:
        if self.requests_per_second is not None:
            return self.requests_per_second
        key = self.secret_key() or ""
        return 100.0 if key.startswith(("sk_live_", "rk_live_")) else 25.0
