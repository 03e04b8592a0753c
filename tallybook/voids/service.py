"""Void and amend events; read the audit trail.

A void runs in one write transaction that also holds the materializer lock: it stamps the events
and their already projected meter usage rows with the void's instant, and records who, when, why
and what. Events the materializer has not reached yet carry the stamp on `events`, which the
materializer copies, so a void can never be missed or half applied.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tallybook.clock import Clock, SystemClock, from_micros, to_micros
from tallybook.ids import looks_like_ulid, new_ulid
from tallybook.ingest.metered import check_metered, metered_fields
from tallybook.voids.model import (
    AMEND,
    SHOWN_KEYS,
    VOID,
    Actor,
    AlreadyVoided,
    AmendRequest,
    EventKey,
    EventsNotFound,
    InvalidReplacement,
    ReplacementConflict,
    Target,
    VoidNotFound,
    VoidPreview,
    VoidRecord,
    VoidRequest,
)
from tallybook.voids.ports import VoidStorage, VoidTransaction

log = logging.getLogger(__name__)

SHOWN_IN_ERRORS = 20


class VoidService:
    def __init__(self, storage: VoidStorage, clock: Clock | None = None) -> None:
        self.storage = storage
        self.clock = clock or SystemClock()

    # -- void -------------------------------------------------------------------------------------------
    def preview(self, request: VoidRequest) -> VoidPreview:
        """What `void` would take out, without changing anything (a dry run)."""
        request.check()
        with self.storage.reading() as tx:
            if request.filter is not None:
                count = tx.count_by_filter(request.filter)
                shown = tx.targets_by_filter(request.filter, limit=SHOWN_KEYS)
                return VoidPreview(count, tuple(t.key for t in shown))
            targets = self._named(tx, request.events)
        return VoidPreview(len(targets), tuple(t.key for t in targets[:SHOWN_KEYS]))

    def void(self, request: VoidRequest) -> VoidRecord:
        """Void the named events (all or nothing) or every unvoided event the filter selects."""
        reason = request.check()
        with self.storage.writing() as tx:
            tx.lock_materializer()
            # The stamp is read under the lock, so an invoice's ingest cutoff (taken under the same
            # lock, tallybook/billing/cutoff.py) sees every void stamped before it committed.
            now = self.clock.now()
            if request.filter is not None:
                targets = tx.targets_by_filter(request.filter)
                if not targets:
                    raise EventsNotFound(
                        "no event that is not voided already matches the filter; nothing was voided",
                        filter=request.filter.as_dict(),
                    )
            else:
                targets = self._named(tx, request.events)
            record = self._void(tx, VOID, reason, request.actor, request.selection(), targets, now)
        log.info(
            "events voided",
            extra={"void_id": record.id, "events": record.event_count, "actor": request.actor.as_dict()},
        )
        return record

    def amend(self, request: AmendRequest) -> VoidRecord:
        """Void one event and store its corrected version, atomically.

        The corrected event needs a new id: (source, id) is the idempotency key, so a client that
        retries the original send after the amend must not bring the old figures back (it is a
        duplicate of the voided event), and the corrected one must not be mistaken for a retry.
        """
        reason = request.check()
        replacement = request.replacement
        new_key = EventKey(replacement.source, replacement.id)
        if new_key == request.original:
            raise ReplacementConflict(
                f"the corrected event needs a new id (e.g. {request.original.id}-v2): (source, id) identifies an "
                "event for idempotency, and the voided event keeps its id",
                field="event.id",
            )
        with self.storage.writing() as tx:
            tx.lock_materializer()
            now = self.clock.now()  # under the lock, as in `void`
            now_us = to_micros(now)
            # The values meters read are checked as ingest checks them, against the live meters.
            problems = check_metered([replacement], metered_fields(tx.live_meter_reads()), indexed=False)
            if problems:
                detail = "; ".join(f"event.{e.field}: {e.message}" for e in problems)
                raise InvalidReplacement(
                    f"the corrected event is invalid; nothing changed. {detail}",
                    errors=[{"field": f"event.{e.field}", "message": e.message} for e in problems],
                )
            targets = self._named(tx, [request.original])
            selection = {"events": [request.original.as_dict()]}
            record = self._void(tx, AMEND, reason, request.actor, selection, targets, now, replacement=new_key)
            # The corrected event is stored like any ingested one, in the void's transaction and
            # with the void's instant as its ingest time: an as-of query sees exactly one of the two.
            if not tx.insert_events([replacement], now_us):
                raise ReplacementConflict(
                    f"an event with source {new_key.source!r} and id {new_key.id!r} is already stored; "
                    "give the corrected event an id not used before",
                    field="event.id",
                )
        log.info(
            "event amended",
            extra={
                "void_id": record.id,
                "original": request.original.as_dict(),
                "replacement": new_key.as_dict(),
                "actor": request.actor.as_dict(),
            },
        )
        return record

    def _named(self, tx: VoidTransaction, keys: Sequence[EventKey]) -> list[Target]:
        wanted = list(dict.fromkeys(keys))
        found = tx.targets_by_keys(wanted)
        missing = [k for k in wanted if k not in found]
        if missing:
            shown = ", ".join(f"{k.source}/{k.id}" for k in missing[:SHOWN_IN_ERRORS])
            raise EventsNotFound(
                f"{len(missing)} event(s) not found (source/id): {shown}; nothing was voided",
                missing=[k.as_dict() for k in missing[:SHOWN_IN_ERRORS]],
            )
        voided = [found[k] for k in wanted if found[k].voided_us is not None]
        if voided:
            shown = ", ".join(f"{t.source}/{t.id} (void {t.void_id})" for t in voided[:SHOWN_IN_ERRORS])
            raise AlreadyVoided(
                f"{len(voided)} event(s) are voided already: {shown}; nothing was voided",
                voided=[{**t.key.as_dict(), "voidId": t.void_id} for t in voided[:SHOWN_IN_ERRORS]],
            )
        return [found[k] for k in wanted]

    def _void(
        self,
        tx: VoidTransaction,
        kind: str,
        reason: str,
        actor: Actor,
        selection: dict[str, Any],
        targets: Sequence[Target],
        now: datetime,
        replacement: EventKey | None = None,
    ) -> VoidRecord:
        void_id = new_ulid(now)
        now_us = to_micros(now)
        stamped = tx.stamp_events([t.seq for t in targets], void_id, now_us)
        if stamped != len(targets):
            # Only possible if another void took some of them first: start over with fresh rows.
            raise AlreadyVoided("some of these events were voided meanwhile by another request; retry")
        tx.mark_usage_voided([(t.seq, t.type, t.subject, t.time_us) for t in targets], now_us)
        record = VoidRecord(
            id=void_id,
            kind=kind,
            created_at=from_micros(now_us),
            reason=reason,
            actor=actor,
            selection=selection,
            event_count=len(targets),
            replacement=replacement,
            events=tuple(t.key for t in targets[:SHOWN_KEYS]),
        )
        tx.insert_record(
            {
                "id": void_id,
                "kind": kind,
                "created_us": now_us,
                "reason": reason,
                "actor_type": actor.type,
                "actor_id": actor.id,
                "actor_name": actor.name,
                "selection": selection,
                "event_count": len(targets),
                "replacement_source": None if replacement is None else replacement.source,
                "replacement_id": None if replacement is None else replacement.id,
            },
        )
        return record

    # -- audit trail ------------------------------------------------------------------------------------
    def get(self, void_id: str) -> VoidRecord:
        if not looks_like_ulid(void_id):  # no stored id looks otherwise (and PostgreSQL refuses U+0000)
            raise VoidNotFound(f"no void has the id {void_id!r}; void ids are 26-character ULIDs")
        with self.storage.reading() as tx:
            row = tx.record_row(void_id)
            if row is None:
                raise VoidNotFound(f"no void has the id {void_id!r}")
            keys = tx.voided_keys(void_id, SHOWN_KEYS)
        return _record_from_row(row, tuple(keys))

    def list(self, page: int = 1, page_size: int = 100) -> tuple[int, list[VoidRecord]]:
        """The audit trail, newest first (records without their event keys: see `get`)."""
        with self.storage.reading() as tx:
            total, rows = tx.record_rows((page - 1) * page_size, page_size)
        return total, [_record_from_row(r, ()) for r in rows]


def _record_from_row(row: dict[str, Any], keys: tuple[EventKey, ...]) -> VoidRecord:
    replacement = None
    if row["replacement_id"] is not None:
        replacement = EventKey(row["replacement_source"], row["replacement_id"])
    return VoidRecord(
        id=row["id"],
        kind=row["kind"],
        created_at=from_micros(int(row["created_us"])),
        reason=row["reason"],
        actor=Actor(row["actor_type"], row["actor_id"], row["actor_name"]),
        selection=dict(row["selection"]),
        event_count=int(row["event_count"]),
        replacement=replacement,
        events=keys,
    )
