"""In-memory failure records (ports.FailureRecords), for unit tests of job loops.

Behaves as `sql.JobStore` does on `job_failures`: a failure of a known item adds to its count and
keeps its first sighting; the listing is newest first, ties by (job, kind, id).
"""

from __future__ import annotations

from dataclasses import replace

from tallybook.jobs.model import ItemFailure, JobFailureRow


class MemoryFailureRecords:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], JobFailureRow] = {}

    def record_failures(self, failures: list[ItemFailure], cleared: list[tuple[str, str, str]]) -> None:
        for key in cleared:
            self.rows.pop(key, None)
        for f in failures:
            key = (f.job, f.item_kind, f.item_id)
            known = self.rows.get(key)
            if known is None:
                self.rows[key] = JobFailureRow(*key, f.error, dict(f.context), f.seen_us, f.seen_us, 1)
            else:
                self.rows[key] = replace(
                    known, error=f.error, context=dict(f.context), last_seen_us=f.seen_us, count=known.count + 1
                )

    def failing_items(self, job: str) -> list[JobFailureRow]:
        return self.list_failures(job=job, limit=None)

    def list_failures(
        self, job: str | None = None, item_kind: str | None = None, limit: int | None = 100, offset: int = 0
    ) -> list[JobFailureRow]:
        rows = [
            r for r in self.rows.values() if (not job or r.job == job) and (not item_kind or r.item_kind == item_kind)
        ]
        rows.sort(key=lambda r: (r.job, r.item_kind, r.item_id))
        rows.sort(key=lambda r: r.last_seen_us, reverse=True)
        return rows[offset:] if limit is None else rows[offset : offset + limit]

    def count_failures(self, job: str | None = None, item_kind: str | None = None) -> int:
        return len(self.list_failures(job, item_kind, limit=None))
