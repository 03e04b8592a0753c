"""The `webhooks:` section of tallybook.yaml.

Two spellings are accepted. The codehooks template's list of endpoints:

    webhooks:
      - {url: https://example.com/hook, secret: whsec_..., enabled: true}

and the full mapping, whose `endpoints` is that same list:

    webhooks:
      endpoints: [{url: ..., secret: ..., events: [aggregation.completed]}]
      periods: [daily, monthly]
      grace: 1h
      dry_run: false

Durations are seconds (a number) or a number with a unit: 90s, 15m, 1h, 3d.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

Period = Literal["hourly", "daily", "weekly", "monthly", "yearly"]
PERIODS: tuple[Period, ...] = ("hourly", "daily", "weekly", "monthly", "yearly")
DEFAULT_PERIODS: tuple[Period, ...] = ("daily", "weekly", "monthly")  # the codehooks template's example

AGGREGATION_COMPLETED = "aggregation.completed"
AGGREGATION_CORRECTED = "aggregation.corrected"
REPORT_METER = "report.meter"
# Invoice lifecycle events, written by tallybook.billing.invoicing with the full invoice as payload.
INVOICE_CREATED = "invoice.created"
INVOICE_ISSUED = "invoice.issued"
INVOICE_UPDATED = "invoice.updated"
INVOICE_VOIDED = "invoice.voided"
# Written by Stripe invoicing (tallybook.stripe.invoices) when Stripe collects the invoice.
INVOICE_PAID = "invoice.paid"
INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
INVOICE_UNCOLLECTIBLE = "invoice.uncollectible"
INVOICE_SYNC_FAILED = "invoice.sync_failed"
# Written by the billing.unbilled job (tallybook/unbilled): usage no invoice will ever carry.
BILLING_UNBILLED_USAGE = "billing.unbilled_usage"
# Written by tallybook.creditnotes when a credit note lowers an issued invoice.
INVOICE_CREDIT_NOTE_CREATED = "invoice.credit_note.created"
# Written by tallybook.entitlements.notifications (a balance crossing a rule's threshold; a new usage period).
ENTITLEMENTS_BALANCE_THRESHOLD = "entitlements.balance.threshold"
ENTITLEMENTS_RESET = "entitlements.reset"
EventType = Literal[
    "aggregation.completed",
    "aggregation.corrected",
    "report.meter",
    "invoice.created",
    "invoice.issued",
    "invoice.updated",
    "invoice.voided",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.uncollectible",
    "invoice.sync_failed",
    "billing.unbilled_usage",
    "invoice.credit_note.created",
    "entitlements.balance.threshold",
    "entitlements.reset",
]
EVENT_TYPES: tuple[str, ...] = (
    AGGREGATION_COMPLETED,
    AGGREGATION_CORRECTED,
    REPORT_METER,
    INVOICE_CREATED,
    INVOICE_ISSUED,
    INVOICE_UPDATED,
    INVOICE_VOIDED,
    INVOICE_PAID,
    INVOICE_PAYMENT_FAILED,
    INVOICE_UNCOLLECTIBLE,
    INVOICE_SYNC_FAILED,
    BILLING_UNBILLED_USAGE,
    INVOICE_CREDIT_NOTE_CREATED,
    ENTITLEMENTS_BALANCE_THRESHOLD,
    ENTITLEMENTS_RESET,
)
# What an endpoint from the config file receives when it names no `events`: what the codehooks
# template sends, plus corrections of it. Usage reports are opt-in.
DEFAULT_ENDPOINT_EVENTS: tuple[str, ...] = (AGGREGATION_COMPLETED, AGGREGATION_CORRECTED)

# Roughly exponential, about 3 days in all (the first attempt is immediate and not listed).
DEFAULT_RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=14),
    timedelta(hours=20),
    timedelta(hours=20),
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """`90`, `90s`, `15m`, `1h`, `3d` -> timedelta; timedeltas pass through."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as 30s, 15m, 1h, 3d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 15m, 1h or 3d")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError("a duration is a number of seconds or a string such as 30s, 15m, 1h, 3d")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_webhook_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http:// or https:// URL")
    return url


class WebhookEndpoint(_Section):
    url: str
    # Any string works for the codehooks signature. For Standard Webhooks a `whsec_<base64>` secret
    # is used as the spec says; any other string is used as raw bytes. Generated when left out.
    secret: str | None = Field(None, min_length=1)
    enabled: bool = True
    events: list[EventType] | None = None
    name: str | None = Field(None, min_length=1, max_length=256)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_webhook_url(value)

    @property
    def event_types(self) -> tuple[str, ...]:
        return tuple(self.events) if self.events is not None else DEFAULT_ENDPOINT_EVENTS


class ReportSettings(_Section):
    """`report.meter`: one report per meter and subject for each finished hour or day."""

    interval: Literal["hourly", "daily"] = "daily"
    # Meter slugs to report on; all meters when left out.
    meters: list[str] | None = None


class SchedulerSettings(_Section):
    # Run period close, reports and deliveries inside `tallybook serve`. Turn off when a separate
    # `tallybook worker` (or cron with `tallybook jobs run --once`) does it.
    run_in_server: bool = True
    poll_interval: Duration = timedelta(seconds=1)
    close_interval: Duration = timedelta(minutes=1)


class WebhookSettings(_Section):
    endpoints: list[WebhookEndpoint] = Field(default_factory=list)
    dry_run: bool = False
    periods: list[Period] = Field(default_factory=lambda: list(DEFAULT_PERIODS))
    timezone: str = "UTC"
    # A period is closed and sent this long after it ends, so late events still count.
    grace: Duration = timedelta(hours=1)
    retry_schedule: list[Duration] = Field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE))
    jitter: float = Field(0.2, ge=0, lt=1, description="each retry delay is scaled by 1 ± jitter")
    timeout: Duration = timedelta(seconds=10)
    # A delivery being sent is leased this long; after a crash another worker takes it over.
    claim_lease: Duration = timedelta(seconds=60)
    max_concurrency: int = Field(4, ge=1, le=64)
    reports: ReportSettings = Field(default_factory=ReportSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)

    @model_validator(mode="before")
    @classmethod
    def _accept_endpoint_list(cls, value: Any) -> Any:
        # The codehooks template writes `webhooks:` as a bare list of endpoints.
        if isinstance(value, list):
            return {"endpoints": value}
        if value is None:
            return {}
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone name") from None
        return value

    @field_validator("periods")
    @classmethod
    def _unique_periods(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _consistent(self) -> WebhookSettings:
        urls = [e.url for e in self.endpoints]
        duplicates = sorted({u for u in urls if urls.count(u) > 1})
        if duplicates:
            raise ValueError(f"endpoints: each url may appear once; repeated: {', '.join(duplicates)}")
        if self.claim_lease <= self.timeout:
            raise ValueError("claim_lease must be longer than timeout")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)
