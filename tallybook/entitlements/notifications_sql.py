"""The entitlement notifier's state in SQL (both engines): its progress marks, each rule's
threshold settings, which thresholds are crossed per period, and the resets already announced.
Read and written inside the notifier's transactions (tallybook/entitlements/notifications.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    func,
    insert,
    select,
    update,
)

from tallybook.entitlements.tables import (
    entitlement_grants,
    entitlement_notifier_state,
    entitlement_reset_sent,
    entitlement_resets,
    entitlement_rule_settings,
    entitlement_threshold_state,
    entitlements,
)
from tallybook.store.base import SqlStore
from tallybook.store.schema import events
from tallybook.voids.sql import latest_void_us, voided_subjects


class SqlNotifierTransaction:
    """ports.NotifierTransaction on one SQL transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @property
    def outbox(self) -> Connection:
        return self.conn

    def latest_void_us(self) -> int | None:
        return latest_void_us(self.conn)

    def voided_subjects(self, after_us: int, through_us: int) -> list[tuple[str, int, int]]:
        return voided_subjects(self.conn, after_us, through_us)

    def notifier_value(self, name: str) -> int | None:
        value = self.conn.execute(
            select(entitlement_notifier_state.c.value).where(entitlement_notifier_state.c.name == name)
        ).scalar_one_or_none()
        return None if value is None else int(value)

    def set_notifier_value(self, name: str, value: int) -> None:
        updated = self.conn.execute(
            update(entitlement_notifier_state).where(entitlement_notifier_state.c.name == name).values(value=value)
        )
        if not updated.rowcount:
            self.conn.execute(insert(entitlement_notifier_state).values(name=name, value=value))

    def max_event_seq(self) -> int:
        return int(self.conn.execute(select(func.coalesce(func.max(events.c.seq), 0))).scalar_one())

    def subjects_ingested(self, after_seq: int, through_seq: int) -> list[str]:
        rows = self.conn.execute(
            select(events.c.subject).where(events.c.seq > after_seq, events.c.seq <= through_seq).distinct()
        )
        return [r[0] for r in rows]

    def rule_settings(self, rule_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not rule_ids:
            return {}
        rows = self.conn.execute(
            select(entitlement_rule_settings).where(entitlement_rule_settings.c.rule_id.in_(list(rule_ids)))
        )
        return {r.rule_id: {"features": r.features, "thresholds": r.thresholds} for r in rows}

    def save_rule_settings(
        self, rule_id: str, features: list[str] | None, thresholds: list[dict[str, Any]] | None
    ) -> None:
        self.conn.execute(entitlement_rule_settings.delete().where(entitlement_rule_settings.c.rule_id == rule_id))
        row = {"rule_id": rule_id, "features": features, "thresholds": thresholds}
        self.conn.execute(insert(entitlement_rule_settings).values(**row))

    def threshold_states(self, entitlement_id: str, period_start_us: int) -> dict[tuple[str, str], tuple[bool, int]]:
        rows = self.conn.execute(
            select(entitlement_threshold_state).where(
                entitlement_threshold_state.c.entitlement_id == entitlement_id,
                entitlement_threshold_state.c.period_start_us == period_start_us,
            )
        )
        return {(r.rule_id, r.threshold): (bool(r.crossed), int(r.crossings)) for r in rows}

    def save_threshold_state(
        self,
        rule_id: str,
        entitlement_id: str,
        period_start_us: int,
        threshold: str,
        crossed: bool,
        crossings: int,
        now_us: int,
        exists: bool,
    ) -> None:
        t = entitlement_threshold_state
        if exists:
            self.conn.execute(
                update(t)
                .where(
                    t.c.rule_id == rule_id,
                    t.c.entitlement_id == entitlement_id,
                    t.c.period_start_us == period_start_us,
                    t.c.threshold == threshold,
                )
                .values(crossed=crossed, crossings=crossings, updated_us=now_us)
            )
        else:
            self.conn.execute(
                insert(t).values(
                    rule_id=rule_id,
                    entitlement_id=entitlement_id,
                    period_start_us=period_start_us,
                    threshold=threshold,
                    crossed=crossed,
                    crossings=crossings,
                    updated_us=now_us,
                )
            )

    def reset_sent(self, entitlement_id: str) -> int | None:
        value = self.conn.execute(
            select(entitlement_reset_sent.c.period_start_us).where(
                entitlement_reset_sent.c.entitlement_id == entitlement_id
            )
        ).scalar_one_or_none()
        return None if value is None else int(value)

    def save_reset_sent(self, entitlement_id: str, period_start_us: int, period_end_us: int, exists: bool) -> None:
        t = entitlement_reset_sent
        values = {"period_start_us": period_start_us, "period_end_us": period_end_us}
        if exists:
            self.conn.execute(update(t).where(t.c.entitlement_id == entitlement_id).values(**values))
        else:
            self.conn.execute(insert(t).values(entitlement_id=entitlement_id, **values))

    def changed_entitlements(self, after_us: int, through_us: int) -> set[str]:
        """Entitlements changed in (after, through]: created, ended or overridden, or given a grant, a
        grant void or a reset (by any process sharing the database)."""
        found: set[str] = set()
        for id_column, time_column in (
            (entitlements.c.id, entitlements.c.updated_us),
            (entitlement_grants.c.entitlement_id, entitlement_grants.c.updated_us),
            (entitlement_resets.c.entitlement_id, entitlement_resets.c.created_us),
        ):
            changed = select(id_column).where(time_column > after_us, time_column <= through_us).distinct()
            rows = self.conn.execute(changed)
            found.update(r[0] for r in rows)
        return found

    def all_reset_sent(self) -> dict[str, tuple[int, int | None]]:
        t = entitlement_reset_sent
        rows = self.conn.execute(select(t.c.entitlement_id, t.c.period_start_us, t.c.period_end_us))
        return {r[0]: (int(r[1]), None if r[2] is None else int(r[2])) for r in rows}


class SqlNotifierStorage:
    """ports.NotifierStorage on the SQL store."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    @contextmanager
    def reading(self) -> Iterator[SqlNotifierTransaction]:
        with self.store.read() as conn:
            yield SqlNotifierTransaction(conn)

    @contextmanager
    def writing(self) -> Iterator[SqlNotifierTransaction]:
        with self.store.write() as conn:
            yield SqlNotifierTransaction(conn)
