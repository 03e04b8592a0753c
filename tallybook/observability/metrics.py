"""Prometheus metrics. One registry per running app, so tests can run several apps in a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_accepted = Counter(
            "tallybook_events_accepted", "Events stored for the first time.", registry=self.registry
        )
        self.events_duplicate = Counter(
            "tallybook_events_duplicate",
            "Events not stored again because their (source, id) was already known. kind=retry: same "
            "content; kind=conflict: same key, different content (the first one is kept).",
            ["kind"],
            registry=self.registry,
        )
        self.events_rejected = Counter(
            "tallybook_events_rejected",
            "Events in requests refused by validation (the whole request is refused).",
            ["reason"],
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "tallybook_ingest_commit_seconds",
            "Time to write and commit one group of ingest requests.",
            registry=self.registry,
        )
        self.commit_group_events = Histogram(
            "tallybook_ingest_commit_group_events",
            "Events written in one group commit.",
            buckets=(1, 10, 100, 1_000, 5_000, 10_000, 20_000, 50_000),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "tallybook_http_request_seconds",
            "HTTP request latency by route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )

        self.job_item_failures = Counter(
            "tallybook_job_item_failures",
            "Items (a customer's invoice, a subject's period, a meter's report, a delivery, ...) a "
            "background job skipped because processing them failed; the job went on with the others. "
            "Each is listed at GET /api/v1/jobs/failures until it next succeeds.",
            ["job", "kind"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
