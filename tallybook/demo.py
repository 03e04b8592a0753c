"""Demo data for `tallybook serve --demo`: two meters, three customers, a month of their usage and,
when the server bills, their subscriptions and last month's invoices."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tallybook.clock import to_micros
from tallybook.customers import CustomerInput
from tallybook.customers.model import CustomerNotFound
from tallybook.ingest.events import Event
from tallybook.meters.models import Aggregation, MeterNotFound, MeterSpec
from tallybook.runtime import Runtime

DEMO_SOURCE = "demo"
DEMO_CUSTOMERS = ("acme", "globex", "initech")
DEMO_CUSTOMER_NAMES = {"acme": "Acme Corporation", "globex": "Globex Inc.", "initech": "Initech LLC"}
DEMO_METERS = (
    MeterSpec(
        slug="api_calls",
        name="API calls",
        description="Requests to the public API, by endpoint",
        event_type="api.calls",
        aggregation=Aggregation.COUNT,
        group_by={"endpoint": "$.endpoint"},
    ),
    MeterSpec(
        slug="storage_gb",
        name="Storage (GB)",
        description="Highest stored volume in the window",
        event_type="storage.gb",
        aggregation=Aggregation.MAX,
        value_property="$.value",
    ),
)


def ensure_demo_catalog(runtime: Runtime) -> tuple[int, int]:
    """Create the demo meters and customers that don't exist yet; return how many of each were made."""
    meters_made = 0
    for spec in DEMO_METERS:
        try:
            runtime.meters.get(spec.slug)
        except MeterNotFound:
            runtime.meters.create(spec)
            meters_made += 1
    customers_made = 0
    for key in DEMO_CUSTOMERS:
        try:
            runtime.customers.resolve(key)
        except CustomerNotFound:
            runtime.customers.create(
                CustomerInput(
                    name=DEMO_CUSTOMER_NAMES[key],
                    key=key,
                    primary_email=f"billing@{key}.example",
                    currency="USD",
                    subject_keys=(key,),
                )
            )
            customers_made += 1
    return meters_made, customers_made


# How many days of usage the demo loads, ending at the hour before `--demo-at` (or now).
DEMO_DAYS = 30


def demo_events(runtime: Runtime, days: int = DEMO_DAYS, seed: int = 7, until: datetime | None = None) -> list[Event]:
    """`days` of usage ending at the hour before `until` (default now): the same instant gives the
    same events, so figures computed from them can be printed in the docs and checked."""
    rng = random.Random(seed)
    end = (until or runtime.clock.now()).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    events: list[Event] = []
    for hour in range(days * 24):
        at = end - timedelta(hours=days * 24 - hour)
        for weight, customer in enumerate(DEMO_CUSTOMERS, start=1):
            calls = rng.randint(0, 4 * weight)
            for n in range(calls):
                when = at + timedelta(seconds=rng.randrange(3600))
                events.append(
                    Event(
                        DEMO_SOURCE,
                        f"{customer}-{hour}-{n}",
                        "api.calls",
                        customer,
                        to_micros(when),
                        {"value": 1, "endpoint": rng.choice(["/search", "/items", "/export"])},
                    )
                )
            gb = Decimal(rng.randint(100, 900 * weight)) / 100
            events.append(
                Event(
                    DEMO_SOURCE,
                    f"{customer}-{hour}-storage",
                    "storage.gb",
                    customer,
                    to_micros(at),
                    {"value": gb},
                )
            )
    return events


DEMO_PLAN: dict[str, Any] = {
    "key": "demo_pro",
    "name": "Pro (demo)",
    "currency": "USD",
    "billingCadence": "P1M",
    "rateCards": [
        {"type": "flat_fee", "key": "platform", "name": "Platform fee", "price": {"type": "flat", "amount": "49"}},
        {
            "type": "usage_based",
            "key": "api_calls",
            "name": "API calls",
            "meterSlug": "api_calls",
            "price": {"type": "unit", "amount": "0.01"},
        },
        {
            "type": "usage_based",
            "key": "storage",
            "name": "Storage (GB, peak)",
            "meterSlug": "storage_gb",
            "price": {"type": "unit", "amount": "0.5"},
        },
    ],
}


def ensure_demo_billing(runtime: Runtime, until: datetime | None = None) -> int:
    """Subscribe the demo customers to a demo plan (monthly, calendar-aligned) when none has one yet.

    The subscriptions start on the first of the month before the demo's last month (`until`, the
    `--demo-at` instant, or now), so every demo event falls inside a subscription.

    Only when this server bills (its runtime has a plan catalog and subscriptions). Returns how many
    subscriptions were made.
    """
    catalog = getattr(runtime, "catalog", None)
    subscriptions = getattr(runtime, "subscriptions", None)
    if catalog is None or subscriptions is None:
        return 0
    from tallybook.api.wire.plans import parse_plan
    from tallybook.billing.catalog_model import CatalogError
    from tallybook.billing.periods import Alignment
    from tallybook.billing.subscriptions import SubscriptionInput

    if any(subscriptions.list_subscriptions(customer=key) for key in DEMO_CUSTOMERS):
        return 0
    try:
        catalog.get(DEMO_PLAN["key"])
    except CatalogError:
        plan = catalog.create(parse_plan(DEMO_PLAN))
        catalog.publish(plan.id)
    # From the first of the month of the first demo event (UTC, the demo customers' zone): the months
    # that ended are invoiced when the demo loads (see bill_demo), this month's usage is the upcoming
    # invoice, and no demo event is left outside a subscription.
    first_event = (until or runtime.clock.now()).astimezone(UTC) - timedelta(days=DEMO_DAYS)
    start = first_event.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for key in DEMO_CUSTOMERS:
        subscriptions.create(
            SubscriptionInput(customer=key, plan_key=DEMO_PLAN["key"], alignment=Alignment.CALENDAR, active_from=start)
        )
    return len(DEMO_CUSTOMERS)


# The demo customer whose new invoices stay drafts, so the dashboard shows one waiting for approval.
DEMO_DRAFT_CUSTOMER = "initech"


def bill_demo(runtime: Runtime) -> int:
    """Run the billing job once, then issue the demo invoices it drafted (all but one customer's).

    Only invoices this run created are issued, so loading the demo again changes nothing: the job
    does not invoice a period twice, and drafts left from an earlier load stay drafts. Returns how
    many invoices were issued. Meant to run before the job scheduler starts (as `serve --demo`
    does): a scheduler that drafts the invoices first leaves this run nothing to issue.
    """
    invoicing = getattr(runtime, "invoicing", None)
    if invoicing is None:
        return 0
    from tallybook.billing.invoicing import DRAFT
    from tallybook.billing.wiring import INVOICE_JOB

    def draft_ids() -> set[str]:
        _, drafts = invoicing.list_invoices(statuses=[DRAFT], limit=1000)
        return {invoice.id for invoice in drafts}

    before = draft_ids()
    job = next(j for j in runtime.jobs.jobs if j.name == INVOICE_JOB)
    result = runtime.jobs.run_job(job, force=True)
    if result.error is not None:
        raise RuntimeError(f"demo: the billing job failed: {result.error}")
    draft_customer = runtime.customers.resolve(DEMO_DRAFT_CUSTOMER).id
    demo_customers = {runtime.customers.resolve(key).id for key in DEMO_CUSTOMERS}
    issued = 0
    for invoice_id in sorted(draft_ids() - before):
        invoice = invoicing.get(invoice_id)
        customer_id = invoice.customer.get("id")
        if customer_id in demo_customers and customer_id != draft_customer:
            invoicing.issue(invoice_id)
            issued += 1
    return issued


def load_demo_events(runtime: Runtime, until: datetime | None = None) -> int:
    """Load the demo once: an empty store gets the events, a store with events is left alone.

    The demo meters and customers are created first, each only if missing (a meter or customer of
    the same slug or key is left as it is). On a billing server the demo customers are subscribed
    from last month and the billing job runs once: last month's invoices are drafted, and issued for
    all but one customer (see bill_demo).
    """
    ensure_demo_catalog(runtime)
    ensure_demo_billing(runtime, until)
    if runtime.store.count_events() > 0:
        bill_demo(runtime)
        return 0
    events = demo_events(runtime, until=until)
    started_here = not runtime.ingest.running
    if started_here:
        runtime.ingest.start()
    try:
        accepted = runtime.ingest.ingest(events).accepted
    finally:
        if started_here:
            runtime.ingest.stop()
    bill_demo(runtime)  # after the events, so last month's invoices count the demo usage
    return accepted
