"""Voids: what an operator takes out of metering, who did it, when and why.

A void never deletes an event. It stamps the event (and its meter usage rows) with the void's
instant; from that instant on the event no longer counts, while a query as of an earlier instant
still counts it, so issued invoices stay reproducible. An amend is a void of one event plus the
ingest of its corrected version, in one transaction, recorded together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tallybook.clock import format_rfc3339
from tallybook.errors import DomainError
from tallybook.ingest.events import Event, key_problem

VOID, AMEND = "void", "amend"
MAX_KEYS = 1_000  # event keys named in one void request
MAX_REASON_LENGTH = 2_000
SHOWN_KEYS = 1_000  # event keys returned with a void record or a dry run


NUL = "\x00"


def _key_text_problem(value: str) -> str | None:
    # The limits ingest declares for keys (length, U+0000, valid text): no stored event breaks them.
    return "must be a non-empty string" if not value else key_problem(value)


class VoidError(DomainError):
    status = 400
    code = "invalid-void"


class EventsNotFound(VoidError):
    status = 404
    code = "events-not-found"


class AlreadyVoided(VoidError):
    status = 409
    code = "already-voided"


class ReplacementConflict(VoidError):
    status = 409
    code = "replacement-conflict"


class InvalidReplacement(VoidError):
    """The corrected event breaks a rule ingest applies (e.g. a metered value out of the domain)."""

    code = "invalid-events"


class VoidNotFound(VoidError):
    status = 404
    code = "void-not-found"


@dataclass(frozen=True, slots=True)
class EventKey:
    source: str
    id: str

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "id": self.id}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asked: an API key (`apiKey`, its id and name) or a CLI user (`cli`, the OS user)."""

    type: str
    id: str | None = None
    name: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"type": self.type, "id": self.id, "name": self.name}


@dataclass(frozen=True, slots=True)
class VoidFilter:
    """Events to void by what they are. `from` is inclusive, `to` exclusive (event time)."""

    subject: str | None = None
    type: str | None = None
    source: str | None = None
    time_from: datetime | None = None
    time_to: datetime | None = None

    def check(self) -> None:
        if not (self.subject or self.type or self.source):
            raise VoidError(
                "the filter must name at least a subject, a type or a source (an empty filter would void "
                "every event); to void specific events, send `events` instead"
            )
        for name, value in (("subject", self.subject), ("type", self.type), ("source", self.source)):
            problem = None if value is None else _key_text_problem(value)
            if problem is not None:
                raise VoidError(f"filter.{name} {problem}")
        for name, when in (("from", self.time_from), ("to", self.time_to)):
            if when is not None and when.tzinfo is None:
                raise VoidError(f"filter.{name} needs a time zone offset, e.g. 2026-01-05T00:00:00Z")
        if self.time_from is not None and self.time_to is not None and self.time_from >= self.time_to:
            raise VoidError("filter.from must be before filter.to (the range is [from, to))")

    def as_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in (("subject", self.subject), ("type", self.type), ("source", self.source)):
            if value is not None:
                out[name] = value
        if self.time_from is not None:
            out["from"] = format_rfc3339(self.time_from)
        if self.time_to is not None:
            out["to"] = format_rfc3339(self.time_to)
        return out


def check_key(key: EventKey, label: str) -> None:
    for name, value in (("source", key.source), ("id", key.id)):
        problem = _key_text_problem(value)
        if problem is not None:
            raise VoidError(f"{label}{name} {problem}")


def check_reason(reason: str) -> str:
    text = reason.strip()
    if not text:
        raise VoidError("reason is required: say why these events are voided (it is kept in the audit trail)")
    if len(text) > MAX_REASON_LENGTH:
        raise VoidError(f"reason is longer than {MAX_REASON_LENGTH} characters")
    if NUL in text:
        raise VoidError("reason must not contain U+0000")
    return text


@dataclass(frozen=True, slots=True)
class VoidRequest:
    """Void the named events, or the events a filter selects (exactly one of the two)."""

    reason: str
    actor: Actor
    events: tuple[EventKey, ...] = ()
    filter: VoidFilter | None = None
    dry_run: bool = False

    def check(self) -> str:
        """Validate; return the reason as stored."""
        if bool(self.events) == (self.filter is not None):
            raise VoidError("send either `events` (a list of {source, id}) or `filter`, not both and not neither")
        if len(self.events) > MAX_KEYS:
            raise VoidError(f"at most {MAX_KEYS} events per request; use a filter for larger sets")
        for position, key in enumerate(self.events):
            check_key(key, f"events[{position}].")
        if self.filter is not None:
            self.filter.check()
        return check_reason(self.reason)

    def selection(self) -> dict[str, Any]:
        """What was asked for, as the audit trail keeps it."""
        if self.filter is not None:
            return {"filter": self.filter.as_dict()}
        return {"events": [k.as_dict() for k in dict.fromkeys(self.events)]}


@dataclass(frozen=True, slots=True)
class AmendRequest:
    """Void `original` and store `replacement` (already validated like any ingested event)."""

    original: EventKey
    replacement: Event
    reason: str
    actor: Actor

    def check(self) -> str:
        """Validate; return the reason as stored."""
        check_key(self.original, "")
        return check_reason(self.reason)


@dataclass(frozen=True, slots=True)
class VoidRecord:
    id: str
    kind: str  # void | amend
    created_at: datetime
    reason: str
    actor: Actor
    selection: dict[str, Any]
    event_count: int
    replacement: EventKey | None = None
    events: tuple[EventKey, ...] = field(default=())  # the first SHOWN_KEYS voided events


@dataclass(frozen=True, slots=True)
class VoidPreview:
    """A dry run: how many events a void would take out, and the first of them."""

    event_count: int
    events: tuple[EventKey, ...]


@dataclass(frozen=True, slots=True)
class Target:
    """A stored event a void may take out."""

    seq: int
    source: str
    id: str
    type: str
    subject: str
    time_us: int
    voided_us: int | None
    void_id: str | None

    @property
    def key(self) -> EventKey:
        return EventKey(self.source, self.id)
