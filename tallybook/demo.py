"""Demo data for `tallybook serve --demo`: a month of API usage from three customers."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

from tallybook.clock import to_micros
from tallybook.ingest.events import Event
from tallybook.runtime import Runtime

DEMO_SOURCE = "demo"
DEMO_CUSTOMERS = ("acme", "globex", "initech")


def demo_events(runtime: Runtime, days: int = 30, seed: int = 7) -> list[Event]:
    rng = random.Random(seed)
    end = runtime.clock.now().replace(minute=0, second=0, microsecond=0)
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


def load_demo_events(runtime: Runtime) -> int:
    """Load the demo once: an empty store gets it, a store with events is left alone."""
    if runtime.store.count_events() > 0:
        return 0
    events = demo_events(runtime)
    started_here = not runtime.ingest.running
    if started_here:
        runtime.ingest.start()
    try:
        return runtime.ingest.ingest(events).accepted
    finally:
        if started_here:
            runtime.ingest.stop()
