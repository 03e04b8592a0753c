"""The ingest cutoff an invoice's quantities are counted at: a commit watermark plus an instant.

Counting "events ingested at or before T" is not enough to reproduce a figure later. On
PostgreSQL an event gets its `seq` and `ingested_us` before its transaction commits, so an
insert still in flight when the invoice is computed (ingested before T, invisible then) would be
counted by a recomputation afterwards; a void stamped before T but committing after would be
missed the same way.

So the cutoff is taken in a short write transaction that waits for both:

- `seq`: the settled horizon (tallybook/meters/materializer_sql.py), the highest seq below which every insert
  has committed; the same watermark the materializer and the period-close corrections follow;
- `at`: the clock, read while holding the materializer lock that every void takes before it reads
  its own stamp (tallybook/voids/service.py), so a void committed before has a stamp at or before
  `at` and any later one a stamp after it.

Usage counted with `through_seq=seq` and `as_of=at` is a fixed set of rows: recomputing it at
any later time gives the same figures, whatever arrived or was voided since.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tallybook.clock import Clock


@dataclass(frozen=True, slots=True)
class IngestCutoff:
    seq: int  # every event stored with seq <= this had committed
    at: datetime  # voids stamped at or before this had committed; events ingested after it don't count


class CutoffTransaction(Protocol):
    def lock_materializer(self) -> None: ...

    def settled_horizon(self) -> int: ...


class CutoffStorage(Protocol):
    """A store whose write transactions can take the cutoff (invoicing_ports.InvoiceStorage is one)."""

    def writing(self) -> AbstractContextManager[CutoffTransaction]: ...


def take_cutoff(storage: CutoffStorage, clock: Clock) -> IngestCutoff:
    with storage.writing() as tx:
        tx.lock_materializer()
        seq = tx.settled_horizon()
        at = clock.now()
    return IngestCutoff(seq, at)


__all__ = ["CutoffStorage", "CutoffTransaction", "IngestCutoff", "take_cutoff"]
