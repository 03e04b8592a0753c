"""Meter definitions and their projections in memory (ports.MeterDefinitionStorage), for unit tests
of what reads and changes definitions. It keeps what definitions_sql.py keeps and answers as it does
(orders, the live-meter filter, generations and usage keys, one ready and one building projection
per meter); tests/test_meter_definition_storage.py holds both to the same cases.

Usage rows stay SQL-only (see README.md, "Decisions"): this adapter has no events and no
`meter_usage`, so `visible_max_seq` is whatever the test sets `events_seq` to. Transactions are not
isolated from each other: one lock serialises them, as SQLite's write lock does; a `writing()` block
that raises leaves nothing behind, as a rolled-back transaction would.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tallybook.meters.ports import DEFINITION_COLUMNS, usage_key_of

# The columns of `meters` a new row gets when the caller leaves them out (their SQL defaults).
_METER_DEFAULTS: dict[str, Any] = {
    "description": None,
    "value_property": None,
    "event_from_us": None,
    "metadata": None,
    "deleted_us": None,
    "locked_us": None,
    "projected_seq": 0,
    "usage_key": None,
}


class MemoryMeterDefinitionsTransaction:
    def __init__(self, storage: MemoryMeterDefinitions) -> None:
        self.s = storage

    # -- definitions -------------------------------------------------------------------------------------
    def meter_row(self, id_or_slug: str) -> dict[str, Any] | None:
        for row in self._live():
            if id_or_slug in (row["id"], row["slug"]):
                return copy.deepcopy(row)
        return None

    def live_meter_rows(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(row) for row in self._live()]

    def all_meter_rows(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(self.s.meters[key]) for key in sorted(self.s.meters)]

    def insert_meter(self, row: dict[str, Any]) -> int:
        if any(m["id"] == row["id"] for m in self.s.meters.values()):
            raise ValueError(f"meter id {row['id']} exists")
        if any(m["slug"] == row["slug"] for m in self._live()):
            raise ValueError(f"a live meter has the slug {row['slug']}")
        self.s.last_key += 1
        key = self.s.last_key
        self.s.meters[key] = {**_METER_DEFAULTS, **copy.deepcopy(row), "key": key}
        return key

    def update_meter(self, key: int, values: dict[str, Any]) -> None:
        if key in self.s.meters:
            self.s.meters[key].update(copy.deepcopy(values))

    def _live(self) -> list[dict[str, Any]]:
        return [self.s.meters[key] for key in sorted(self.s.meters) if self.s.meters[key]["deleted_us"] is None]

    # -- projections ---------------------------------------------------------------------------------------
    def projection_rows(
        self, states: Sequence[str] = ("building", "ready"), meter_key: int | None = None
    ) -> list[dict[str, Any]]:
        out = []
        for key in sorted(self.s.projections):
            row = self.s.projections[key]
            meter = self.s.meters.get(row["meter_key"])
            if meter is None or meter["deleted_us"] is not None or row["state"] not in states:
                continue
            if meter_key is not None and row["meter_key"] != meter_key:
                continue
            out.append({**copy.deepcopy(row), "meter_id": meter["id"], "meter_slug": meter["slug"]})
        return out

    def add_projection(self, meter_key: int, definition: dict[str, Any], now_us: int) -> int:
        generations = [p["generation"] for p in self.s.projections.values() if p["meter_key"] == meter_key]
        generation = max(generations) + 1 if generations else 0
        key = usage_key_of(meter_key, generation)
        self._set_state(meter_key, "building", "retired")
        self.s.projections[key] = {
            "usage_key": key,
            "meter_key": meter_key,
            "generation": generation,
            "state": "building",
            "projected_seq": 0,
            "started_us": now_us,
            "ready_us": None,
            **{name: copy.deepcopy(definition[name]) for name in DEFINITION_COLUMNS},
        }
        return key

    def _set_state(self, meter_key: int, old: str, new: str) -> None:
        for row in self.s.projections.values():
            if row["meter_key"] == meter_key and row["state"] == old:
                row["state"] = new

    def retire_building(self, meter_key: int) -> None:
        self._set_state(meter_key, "building", "retired")

    def retire_projections(self, meter_key: int) -> None:
        for row in self.s.projections.values():
            if row["meter_key"] == meter_key:
                row["state"] = "retired"
        if meter_key in self.s.meters:
            self.s.meters[meter_key]["usage_key"] = None

    def cursors(self, state: str = "ready") -> dict[int, int]:
        return {int(row["usage_key"]): int(row["projected_seq"]) for row in self.projection_rows((state,))}

    def visible_max_seq(self) -> int:
        return self.s.events_seq

    def lock_materializer(self) -> None:
        """Nothing to do: one process, and `writing()` already holds the only lock."""

    def set_cursor(self, usage_keys: Sequence[int], seq: int) -> None:
        for key in usage_keys:
            row = self.s.projections.get(key)
            if row is not None and row["projected_seq"] < seq:
                row["projected_seq"] = seq
        for meter in self.s.meters.values():
            if meter["usage_key"] in usage_keys and meter["projected_seq"] < seq:
                meter["projected_seq"] = seq

    def swap_in(self, usage_keys: Sequence[int], now_us: int) -> None:
        for key in usage_keys:
            row = self.s.projections.get(key)
            if row is None or row["state"] != "building":
                continue
            self._set_state(row["meter_key"], "ready", "retired")
            row.update(state="ready", ready_us=now_us)
            meter = self.s.meters[row["meter_key"]]
            meter.update(usage_key=key, projected_seq=row["projected_seq"])

    def has_retired(self) -> bool:
        return any(row["state"] == "retired" for row in self.s.projections.values())


class MemoryMeterDefinitions:
    """ports.MeterDefinitionStorage in memory; `events_seq` stands in for the highest stored event."""

    def __init__(self) -> None:
        self.meters: dict[int, dict[str, Any]] = {}
        self.projections: dict[int, dict[str, Any]] = {}
        self.last_key = 0
        self.events_seq = 0
        self._lock = threading.RLock()

    @contextmanager
    def reading(self) -> Iterator[MemoryMeterDefinitionsTransaction]:
        with self._lock:
            yield MemoryMeterDefinitionsTransaction(self)

    @contextmanager
    def writing(self) -> Iterator[MemoryMeterDefinitionsTransaction]:
        with self._lock:
            saved = copy.deepcopy((self.meters, self.projections, self.last_key))
            try:
                yield MemoryMeterDefinitionsTransaction(self)
            except BaseException:
                self.meters, self.projections, self.last_key = saved
                raise


__all__ = ["MemoryMeterDefinitions", "MemoryMeterDefinitionsTransaction"]
