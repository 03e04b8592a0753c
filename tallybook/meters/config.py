"""The `meters:` section of tallybook.yaml, and codehooks `systemconfig.json` as a meter source.

    meters:
      definitions:
        - slug: tokens_total
          eventType: prompt
          aggregation: SUM
          valueProperty: $.tokens
          groupBy: {model: $.model}
      from_codehooks: ./systemconfig.json   # optional; its `events` become meters
      materialize_interval_seconds: 1.0
      rebuild_inline_events: 10000          # build within the API call up to this many events

A bare list under `meters:` is read as `definitions`.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tallybook.meters.models import Aggregation, MeterSpec

# codehooks `op` → aggregation. `last` is the newest event's value, `first` the oldest's.
CODEHOOKS_OPS = {
    "sum": Aggregation.SUM,
    "count": Aggregation.COUNT,
    "avg": Aggregation.AVG,
    "min": Aggregation.MIN,
    "max": Aggregation.MAX,
    "first": Aggregation.FIRST,
    "last": Aggregation.LATEST,
}


class MeterDefinition(BaseModel):
    """One meter, with the OpenMeter field names."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    slug: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
    name: str | None = Field(None, min_length=1, max_length=256)
    description: str | None = Field(None, max_length=1024)
    event_type: str = Field(alias="eventType", min_length=1)
    aggregation: Aggregation
    value_property: str | None = Field(None, alias="valueProperty", min_length=1)
    group_by: dict[str, str] = Field(default_factory=dict, alias="groupBy")
    event_from: datetime | None = Field(None, alias="eventFrom")

    def spec(self) -> MeterSpec:
        return MeterSpec(
            slug=self.slug,
            event_type=self.event_type,
            aggregation=self.aggregation,
            name=self.name,
            description=self.description,
            value_property=self.value_property,
            group_by=dict(self.group_by),
            event_from=self.event_from,
        )


class CodehooksSystemConfig(BaseModel):
    """The parts of a codehooks metering `systemconfig.json` that Tallybook reads."""

    model_config = ConfigDict(frozen=True)

    path: str
    periods: list[str] = Field(default_factory=list)
    events: dict[str, str] = Field(default_factory=dict)  # eventType → op
    # The template's webhook endpoints ({url, secret, enabled}), as written; the webhooks settings
    # validate them (tallybook.config merges them into `webhooks`).
    webhooks: list[dict[str, Any]] = Field(default_factory=list)

    def meter_definitions(self) -> list[MeterDefinition]:
        result = []
        for event_type, op in self.events.items():
            aggregation = CODEHOOKS_OPS[op]
            result.append(
                MeterDefinition.model_validate(
                    {
                        "slug": codehooks_slug(event_type),
                        "name": event_type,
                        "eventType": event_type,
                        "aggregation": aggregation,
                        "valueProperty": None if aggregation is Aggregation.COUNT else "$.value",
                    }
                )
            )
        return result


def codehooks_slug(event_type: str) -> str:
    """A meter slug from a codehooks event type: lower case, runs of other characters become `_`."""
    out = []
    for ch in event_type.lower():
        out.append(ch if ch.isascii() and ch.isalnum() else "_")
    return "_".join(part for part in "".join(out).split("_") if part) or "meter"


def read_codehooks_config(path: str) -> CodehooksSystemConfig:
    file = Path(path)
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"codehooks config {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"codehooks config {path} is not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"codehooks config {path}: the top level must be an object")
    events = raw.get("events") or {}
    if not isinstance(events, dict):
        raise ValueError(f"codehooks config {path}: `events` must be an object of eventType → {{op}}")
    ops: dict[str, str] = {}
    for event_type, body in events.items():
        op = body.get("op") if isinstance(body, dict) else None
        if op not in CODEHOOKS_OPS:
            raise ValueError(
                f"codehooks config {path}: events.{event_type}.op must be one of {', '.join(CODEHOOKS_OPS)}, got {op!r}"
            )
        ops[event_type] = op
    periods = raw.get("periods") or []
    if not isinstance(periods, list) or not all(isinstance(p, str) for p in periods):
        raise ValueError(f'codehooks config {path}: `periods` must be a list of names like "daily"')
    webhooks = raw.get("webhooks") or []
    if not isinstance(webhooks, list) or not all(isinstance(w, dict) for w in webhooks):
        raise ValueError(f"codehooks config {path}: `webhooks` must be a list of {{url, secret, enabled}} objects")
    return CodehooksSystemConfig(path=str(file), periods=periods, events=ops, webhooks=webhooks)


class MeterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    definitions: list[MeterDefinition] = Field(default_factory=list)
    from_codehooks: str | None = Field(None, description="path to a codehooks systemconfig.json")
    materialize_interval_seconds: float = Field(1.0, gt=0)
    # A new or changed meter is built within the API call when at most this many stored events are
    # left to read (well under a second); above it, in the background (docs/meters.md, "Rebuilds").
    rebuild_inline_events: int = Field(10_000, ge=0)
    # Events per materializer transaction (with the cursor move): what a crash can cost in redone work,
    # and how long a chunk holds SQLite's single writer.
    materialize_chunk_events: int = Field(20_000, ge=1)
    # Filled from `from_codehooks` when the settings are read; other modules read `periods` here.
    codehooks: CodehooksSystemConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_sources(cls, raw: Any) -> Any:
        if isinstance(raw, list):
            raw = {"definitions": raw}
        if isinstance(raw, dict) and raw.get("from_codehooks") and raw.get("codehooks") is None:
            raw = {**raw, "codehooks": read_codehooks_config(str(raw["from_codehooks"]))}
        return raw

    @model_validator(mode="after")
    def _unique_slugs(self) -> MeterSettings:
        seen: set[str] = set()
        for definition in self.all_definitions():
            if definition.slug in seen:
                raise ValueError(f"meter slug {definition.slug!r} is defined twice")
            seen.add(definition.slug)
        return self

    def all_definitions(self) -> list[MeterDefinition]:
        from_codehooks = self.codehooks.meter_definitions() if self.codehooks else []
        return [*self.definitions, *from_codehooks]

    @property
    def codehooks_periods(self) -> list[str]:
        return list(self.codehooks.periods) if self.codehooks else []
