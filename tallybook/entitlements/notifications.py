"""Entitlement notifications: `entitlements.balance.threshold` and `entitlements.reset`.

A job (`entitlements.notify`) looks at the entitlements whose balance may have moved since its last
pass: customers with newly ingested or voided events, entitlements given a grant, reset or
overridden (the service tells it), and every metered entitlement whose usage period rolled over.
It computes their value as the API would, and writes outbox events (the same outbox and signed
delivery as every other notification) in the transaction that records what was sent:

- a threshold (`PERCENT` of the granted amount used, or a `NUMBER` of units used) is sent once per
  rule, entitlement, usage period and threshold when it goes from not crossed to crossed;
- when a void (or anything else) brings usage back under it, it is marked not crossed and nothing
  is sent; if usage crosses it again in the same period, that crossing is sent (a new event);
- `entitlements.reset` is sent once for each new usage period (a period boundary or a manual reset).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from tallybook.clock import Clock, format_rfc3339, to_micros
from tallybook.customers.model import Customer
from tallybook.entitlements.model import METERED, Entitlement, EntitlementValue, Reset
from tallybook.entitlements.ports import NotifierStorage, NotifierTransaction
from tallybook.entitlements.service import EntitlementService
from tallybook.jobs.runs import ItemFailureLog
from tallybook.webhooks.service import InvalidInput, OutboxMessage, WebhookService

log = logging.getLogger(__name__)

BALANCE_THRESHOLD = "entitlements.balance.threshold"
RESET = "entitlements.reset"
RULE_TYPES = (BALANCE_THRESHOLD, RESET)
THRESHOLD_TYPES = ("PERCENT", "NUMBER")
NOTIFY_JOB = "entitlements.notify"
MAX_THRESHOLD = Decimal("1e15")
SEQ_MARK = "events.seq"
VOID_MARK = "voids.us"
CHANGE_MARK = "changes.us"


@dataclass(frozen=True, slots=True)
class Threshold:
    value: Decimal
    type: str  # PERCENT | NUMBER

    @property
    def key(self) -> str:
        return f"{self.type}:{self.value.normalize():f}"

    def crossed(self, value: EntitlementValue) -> bool:
        used = value.usage or Decimal(0)
        if self.type == "NUMBER":
            return used >= self.value
        total = value.total_available or Decimal(0)
        return total > 0 and used * 100 >= self.value * total

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "type": self.type}


def check_rule_settings(
    rule_type: str, features: Sequence[str] | None, thresholds: Sequence[dict[str, Any]] | None
) -> list[dict[str, Any]] | None:
    """Validate an entitlement rule's settings; return the thresholds as stored."""
    if rule_type != BALANCE_THRESHOLD:
        if thresholds:
            raise InvalidInput("thresholds apply to entitlements.balance.threshold rules only")
        return None
    if not thresholds:
        raise InvalidInput('thresholds: name at least one, e.g. [{"value": 80, "type": "PERCENT"}]')
    if len(thresholds) > 10:
        raise InvalidInput("thresholds: at most 10")
    stored = []
    for index, item in enumerate(thresholds):
        kind = item.get("type")
        if kind not in THRESHOLD_TYPES:
            raise InvalidInput(f"thresholds[{index}].type must be PERCENT or NUMBER")
        try:
            amount = Decimal(str(item.get("value")))
        except ArithmeticError:
            raise InvalidInput(f"thresholds[{index}].value must be a number") from None
        if not amount.is_finite() or amount <= 0:
            raise InvalidInput(f"thresholds[{index}].value must be a positive number")
        if amount > MAX_THRESHOLD:
            raise InvalidInput(f"thresholds[{index}].value must be at most {MAX_THRESHOLD:f}")
        if amount == amount.to_integral_value():
            amount = amount.quantize(Decimal(1))  # 80.0 is kept (and shown) as 80
        stored.append({"value": str(amount), "type": kind})
    return stored


def thresholds_of(settings: dict[str, Any] | None) -> list[Threshold]:
    return [Threshold(Decimal(t["value"]), t["type"]) for t in (settings or {}).get("thresholds") or ()]


class EntitlementNotifier:
    def __init__(
        self,
        storage: NotifierStorage,
        webhooks: WebhookService,
        entitlements: EntitlementService,
        clock: Clock,
        failures: ItemFailureLog,
    ) -> None:
        self.storage = storage
        self.webhooks = webhooks
        self.entitlements = entitlements
        self.clock = clock
        self.failures = failures
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        entitlements.on_change.append(self.mark)

    def mark(self, entitlement: Entitlement) -> None:
        with self._lock:
            self._dirty.add(entitlement.id)

    # -- rule settings --------------------------------------------------------------------------------
    def save_settings(self, rule_id: str, features: list[str] | None, thresholds: list[dict[str, Any]] | None) -> None:
        with self.storage.writing() as tx:
            tx.save_rule_settings(rule_id, features, thresholds)

    def settings(self, rule_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self.storage.reading() as tx:
            return tx.rule_settings(rule_ids)

    # -- the job --------------------------------------------------------------------------------------
    def run(self, now: datetime) -> dict[str, Any]:
        with self.failures.run(NOTIFY_JOB) as run:
            counts = self._run(now, run)
        return run.outcome(counts)

    def _run(self, now: datetime, run: Any) -> dict[str, int]:
        counts = {"entitlements": 0, "events": 0}
        with self.storage.reading() as tx:
            threshold_rules = self.webhooks.destinations(tx.outbox, BALANCE_THRESHOLD)
            reset_rules = self.webhooks.destinations(tx.outbox, RESET)
            seq_mark = tx.notifier_value(SEQ_MARK)
            void_mark = tx.notifier_value(VOID_MARK)
            seq_now = tx.max_event_seq()
            touched_subjects = set(tx.subjects_ingested(seq_mark or 0, seq_now))
            # Voids by their instant: the mark is the latest void seen, not the clock.
            void_now = tx.latest_void_us() or 0
            touched_subjects |= {s for s, _, _ in tx.voided_subjects(void_mark or 0, void_now)}
            change_mark = tx.notifier_value(CHANGE_MARK)
            now_us = to_micros(now)
            changed = tx.changed_entitlements(change_mark or 0, now_us)
        with self._lock:
            dirty, self._dirty = self._dirty | changed, set()
        metered = [e for e in self.entitlements.entitlements(types=[METERED]) if e.active_at(now)]
        if not threshold_rules and not reset_rules:
            self._advance(seq_now, void_now, now_us)
            return counts
        owners = self.entitlements.customers.customer_of_subjects(sorted(touched_subjects))
        touched_customers = set(owners.values())
        customers: dict[str, Customer] = {}
        resets: dict[str, list[Reset]] = {}
        for reset in self.entitlements.repository.resets([e.id for e in metered]):
            resets.setdefault(reset.entitlement_id, []).append(reset)
        with self.storage.reading() as tx:
            last_sent = tx.all_reset_sent()
        for entitlement in metered:
            moved = entitlement.id in dirty or entitlement.customer_id in touched_customers
            last = last_sent.get(entitlement.id)
            if not moved and last is not None and last[1] is not None and now_us < last[1]:
                continue  # nothing new, and its usage period has not ended: no customer read at all
            with run.item("entitlement", entitlement.id, customer_id=entitlement.customer_id) as outcome:
                customer = customers.get(entitlement.customer_id)
                if customer is None:
                    customer = customers[entitlement.customer_id] = self.entitlements.customers_by_id(
                        entitlement.customer_id
                    )
                begin = self.entitlements.period_with(customer, entitlement, now, resets.get(entitlement.id, []))[0]
                if not moved and last is not None and last[0] >= to_micros(begin):
                    continue
                sent = self._evaluate(entitlement, customer, now, True, bool(threshold_rules), bool(reset_rules))
                counts["events"] += sent
                counts["entitlements"] += 1
            if outcome.failed:
                self.mark(entitlement)  # try again next pass
        self._advance(seq_now, void_now, now_us)
        return counts

    def _advance(self, seq: int, void_us: int, now_us: int) -> None:
        with self.storage.writing() as tx:
            tx.set_notifier_value(SEQ_MARK, seq)
            tx.set_notifier_value(VOID_MARK, void_us)
            tx.set_notifier_value(CHANGE_MARK, now_us)

    def _evaluate(
        self, entitlement: Entitlement, customer: Customer, now: datetime, moved: bool, thresholds: bool, resets: bool
    ) -> int:
        begin, end = self.entitlements.current_period(customer, entitlement, now)
        begin_us = to_micros(begin)
        sent = 0
        with self.storage.reading() as tx:
            last_reset = tx.reset_sent(entitlement.id)
        new_period = last_reset is None or last_reset < begin_us
        if not moved and not new_period:
            with self.storage.writing() as tx:
                tx.save_reset_sent(entitlement.id, begin_us, to_micros(end), exists=True)
            return 0
        value = self.entitlements.value_of(customer, entitlement, now)
        feature = self.entitlements.feature(entitlement.feature_id)
        with self.storage.writing() as tx:
            # The first look at an entitlement records its period without sending: its start is the
            # entitlement's creation, not a reset.
            if new_period and resets and last_reset is not None:
                message = OutboxMessage(
                    RESET,
                    f"{RESET}|{entitlement.id}|{begin_us}",
                    _payload(RESET, now, entitlement, feature.key, customer, value),
                    subject=entitlement.subject_key,
                )
                if self.webhooks.enqueue(tx.outbox, message, self.webhooks.destinations(tx.outbox, RESET), now):
                    sent += 1
            tx.save_reset_sent(entitlement.id, begin_us, to_micros(end), exists=last_reset is not None)
            if thresholds:
                sent += self._thresholds(tx, entitlement, customer, feature.id, feature.key, value, begin_us, now)
        return sent

    def _thresholds(
        self,
        tx: NotifierTransaction,
        entitlement: Entitlement,
        customer: Customer,
        feature_id: str,
        feature_key: str,
        value: EntitlementValue,
        begin_us: int,
        now: datetime,
    ) -> int:
        destinations = self.webhooks.destinations(tx.outbox, BALANCE_THRESHOLD)
        rule_ids = sorted({d.rule_id for d in destinations if d.rule_id})
        settings = tx.rule_settings(rule_ids)
        states = tx.threshold_states(entitlement.id, begin_us)
        now_us = to_micros(now)
        sent = 0
        for rule_id in rule_ids:
            rule_settings = settings.get(rule_id) or {}
            features = rule_settings.get("features")
            if features and feature_key not in features and feature_id not in features:
                continue
            for threshold in thresholds_of(rule_settings):
                crossed = threshold.crossed(value)
                was, crossings = states.get((rule_id, threshold.key), (False, 0))
                if crossed == was:
                    continue
                if crossed:
                    crossings += 1
                    payload = _payload(BALANCE_THRESHOLD, now, entitlement, feature_key, customer, value)
                    payload["data"]["threshold"] = threshold.as_dict()
                    message = OutboxMessage(
                        BALANCE_THRESHOLD,
                        f"{BALANCE_THRESHOLD}|{rule_id}|{entitlement.id}|{begin_us}|{threshold.key}|{crossings}",
                        payload,
                        subject=entitlement.subject_key,
                    )
                    rule_destinations = [d for d in destinations if d.rule_id == rule_id]
                    if self.webhooks.enqueue(tx.outbox, message, rule_destinations, now):
                        sent += 1
                tx.save_threshold_state(
                    rule_id,
                    entitlement.id,
                    begin_us,
                    threshold.key,
                    crossed,
                    crossings,
                    now_us,
                    exists=(rule_id, threshold.key) in states,
                )
        return sent

    # -- samples for POST /notification/rules/{id}/test -----------------------------------------------
    def sample(self, rule_type: str, now: datetime, settings: dict[str, Any] | None) -> dict[str, Any]:
        """A realistic payload of the rule's type, marked as a test (no real customer behind it)."""
        customer = Customer(
            id="01JTEST0000000000000000000",
            name="Sample customer",
            key="sample-customer",
            description=None,
            primary_email=None,
            currency=None,
            timezone=None,
            billing_address=None,
            metadata=None,
            subject_keys=("sample-customer",),
            created_at=now,
            updated_at=now,
            deleted_at=None,
        )
        entitlement = Entitlement(
            id="01JTEST0000000000000000001",
            type=METERED,
            feature_id="01JTEST0000000000000000002",
            feature_key="sample_feature",
            customer_id=customer.id,
            subject_key="sample-customer",
            metadata=None,
            annotations=None,
            created_at=now,
            updated_at=now,
            deleted_at=None,
            active_from=now,
            active_to=None,
            measure_usage_from=now,
        )
        value = EntitlementValue(
            entitlement,
            now,
            True,
            balance=Decimal(200),
            usage=Decimal(800),
            overage=Decimal(0),
            total_available=Decimal(1000),
        )
        payload = _payload(rule_type, now, entitlement, "sample_feature", customer, value)
        if rule_type == BALANCE_THRESHOLD:
            found = thresholds_of(settings) or [Threshold(Decimal(80), "PERCENT")]
            payload["data"]["threshold"] = found[0].as_dict()
        payload["test"] = True
        return payload


def _payload(
    kind: str, now: datetime, entitlement: Entitlement, feature_key: str, customer: Customer, value: EntitlementValue
) -> dict[str, Any]:
    entitlement_body: dict[str, Any] = {
        "id": entitlement.id,
        "type": entitlement.type,
        "featureId": entitlement.feature_id,
        "featureKey": feature_key,
        "customerId": entitlement.customer_id,
        "subjectKey": entitlement.subject_key,
    }
    if value.period_start is not None and value.period_end is not None:
        entitlement_body["currentUsagePeriod"] = {
            "from": format_rfc3339(value.period_start),
            "to": format_rfc3339(value.period_end),
        }
    return {
        "type": kind,
        "timestamp": format_rfc3339(now),
        "data": {
            "entitlement": entitlement_body,
            "feature": {"id": entitlement.feature_id, "key": feature_key},
            "subject": {"key": entitlement.subject_key},
            "customer": {"id": customer.id, "key": customer.key, "name": customer.name},
            "value": {
                "hasAccess": value.has_access,
                "balance": value.balance,
                "usage": value.usage,
                "overage": value.overage,
                "totalAvailableGrantAmount": value.total_available,
            },
        },
    }


__all__ = ["BALANCE_THRESHOLD", "NOTIFY_JOB", "RESET", "RULE_TYPES", "EntitlementNotifier"]
