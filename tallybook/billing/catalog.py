"""The catalog service: plans and their versions (create, change a draft, publish, archive, delete,
copy into a new version), and the plan versions subscriptions and invoicing bill with.

What a plan is and its rules: `catalog_model`. Storage: `catalog_ports.PlanRepository` (SQL adapter
`catalog_sql`), the pricing stored as one document (`catalog_documents`). The API's JSON shapes are
`tallybook.api.wire.plans`; the API answers `CatalogError`s as problems (api/problems.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from tallybook.billing.catalog_documents import plan_document, plan_from_row, spec_from_row
from tallybook.billing.catalog_model import (
    API_STATUS,
    CatalogError,
    FieldErrors,
    InvalidPlan,
    Plan,
    PlanConflict,
    PlanInput,
    PlanListQuery,
    PlanNotFound,
    PlanPage,
    PlanStatus,
    format_cadence,
)
from tallybook.billing.catalog_ports import MeterLookup, PlanLock, PlanRepository, PlanSearch, PlanVersionRow
from tallybook.billing.models import PlanVersion, RateCard
from tallybook.billing.settings import BillingSettings
from tallybook.clock import Clock, SystemClock, to_micros
from tallybook.ids import looks_like_ulid, new_ulid
from tallybook.meters.models import MeterNotFound


class CatalogService:
    """Plans and their versions. Usage rate cards must name a meter that `meters` knows (by slug or
    id; the slug is stored). Without `meters` (pure catalog tests) meters are not checked."""

    def __init__(
        self,
        repo: PlanRepository,
        clock: Clock | None = None,
        meters: MeterLookup | None = None,
        settings: BillingSettings | None = None,
    ) -> None:
        self.repo = repo
        self.clock = clock or SystemClock()
        self.meters = meters
        self.settings = settings or BillingSettings()

    # -- reads ---------------------------------------------------------------------------------------
    def get(self, id_or_key: str, version: int | None = None, include_latest: bool = False) -> Plan:
        """A version by id (deleted ones too), or by key: the given version, else the published one
        (with include_latest, or when none is published: the newest live version)."""
        if version is None and looks_like_ulid(id_or_key):
            row = self.repo.by_id(id_or_key.upper())
            if row is not None:
                return plan_from_row(row)
        live = [r for r in self.repo.versions_of(id_or_key) if r.deleted_us is None]
        if version is not None:
            found = [r for r in live if r.version == version]
            if not found:
                raise PlanNotFound(f"plan {id_or_key!r} has no live version {version}")
            return plan_from_row(found[0])
        if not live:
            raise PlanNotFound(f"no plan has the id or key {id_or_key!r}")
        published = [r for r in live if r.status == PlanStatus.PUBLISHED]
        if published and not include_latest:
            return plan_from_row(published[0])
        return plan_from_row(live[-1])

    def plan_version(self, key: str, version: int | None = None) -> PlanVersion:
        """For subscriptions and invoicing: `key`'s published version, or with `version` that exact
        version whatever its status (an archived or deleted version still bills the subscriptions
        that use it). PlanNotFound when there is none."""
        versions = self.repo.versions_of(key)
        if version is None:
            found = [r for r in versions if r.status == PlanStatus.PUBLISHED]
            if not found:
                raise PlanNotFound(f"plan {key!r} has no published version")
        else:
            found = [r for r in versions if r.version == version]
            if not found:
                raise PlanNotFound(f"plan {key!r} has no version {version}")
        return spec_from_row(found[0])

    def get_live(self, plan_id: str) -> Plan:
        """A version by id that is not deleted (PlanNotFound otherwise)."""
        return plan_from_row(self._live_row(plan_id))

    def list(self, query: PlanListQuery) -> PlanPage:
        search = PlanSearch(
            keys=query.keys,
            ids=tuple(i.upper() for i in query.ids),
            statuses=tuple(s.value for s in query.statuses),
            currencies=query.currencies,
            include_deleted=query.include_deleted,
            order_by=query.order_by,
            descending=query.descending,
            offset=(query.page - 1) * query.page_size,
            limit=query.page_size,
        )
        rows, total = self.repo.search(search)
        return PlanPage([plan_from_row(r) for r in rows], total, query.page, query.page_size)

    def tax_code_for(self, card: RateCard) -> str:
        """The rate card's Stripe tax code, or the configured default."""
        return card.tax_code or self.settings.default_tax_code

    # -- writes --------------------------------------------------------------------------------------
    def create(self, plan: PlanInput) -> Plan:
        """Version 1 (or the next number after deleted versions) of a new key, as a draft."""
        spec = self._with_meter_slugs(plan.spec, plan.rate_cards_path)
        now_us = to_micros(self.clock.now())
        with self.repo.lock(spec.plan_key, now_us, create=True) as lock:
            assert lock is not None
            versions = lock.versions()
            live = [r for r in versions if r.deleted_us is None]
            if live:
                raise PlanConflict(
                    f"a plan with key {spec.plan_key!r} exists (version {live[-1].version}); change its draft "
                    f"or start a new version with POST /api/v1/plans/{spec.plan_key}/next"
                )
            number = versions[-1].version + 1 if versions else 1
            row = self._row(new_ulid(self.clock.now()), replace(spec, version=number), plan, now_us)
            lock.insert(row)
        return plan_from_row(row)

    def update(self, plan_id: str, plan: PlanInput) -> Plan:
        """Replace a draft's content (the API parses the body with `api.wire.plans.parse_plan(body, update_of=...)`).

        The key and the version number stay; a published or archived version answers PlanConflict.
        """
        current = self._live_row(plan_id)
        if plan.spec.plan_key != current.plan_key:
            raise InvalidPlan([("key", f"cannot change; this plan's key is {current.plan_key!r}")])
        spec = self._with_meter_slugs(plan.spec, plan.rate_cards_path)
        now_us = to_micros(self.clock.now())
        with self._locked(current) as (lock, row):
            self._require_status(row, PlanStatus.DRAFT, "change")
            updated = self._row(row.id, replace(spec, version=row.version), plan, now_us, created_us=row.created_us)
            lock.replace(updated)
        return plan_from_row(updated)

    def publish(self, plan_id: str) -> Plan:
        """Make a draft the published version; the version published before it is archived."""
        current = self._live_row(plan_id)
        spec = spec_from_row(current)
        if current.status == PlanStatus.DRAFT:
            if not spec.rate_cards:
                raise InvalidPlan([("phases[0].rateCards", "a plan needs at least one rate card to be published")])
            self._with_meter_slugs(spec)  # the meters must still exist
        now_us = to_micros(self.clock.now())
        with self._locked(current) as (lock, row):
            self._require_status(row, PlanStatus.DRAFT, "publish")
            for other in lock.versions():
                if other.status == PlanStatus.PUBLISHED:
                    lock.replace(
                        _changed(other, status=PlanStatus.ARCHIVED.value, archived_us=now_us, updated_us=now_us)
                    )
            published = _changed(row, status=PlanStatus.PUBLISHED.value, published_us=now_us, updated_us=now_us)
            lock.replace(published)
        return plan_from_row(published)

    def archive(self, plan_id: str) -> Plan:
        """Retire the published version: new subscriptions can no longer use it."""
        current = self._live_row(plan_id)
        now_us = to_micros(self.clock.now())
        with self._locked(current) as (lock, row):
            self._require_status(row, PlanStatus.PUBLISHED, "archive")
            archived = _changed(row, status=PlanStatus.ARCHIVED.value, archived_us=now_us, updated_us=now_us)
            lock.replace(archived)
        return plan_from_row(archived)

    def delete(self, plan_id: str) -> None:
        """Delete a draft or archived version (soft: it stays readable by id, with deletedAt)."""
        current = self._live_row(plan_id)
        now_us = to_micros(self.clock.now())
        with self._locked(current) as (lock, row):
            if row.status == PlanStatus.PUBLISHED:
                raise PlanConflict(f"plan {row.plan_key!r} version {row.version} is published; archive it first")
            lock.replace(_changed(row, deleted_us=now_us, updated_us=now_us))

    def next_version(self, id_or_key: str) -> Plan:
        """A new draft copied from the newest live version of the plan (by key, or by that version's id)."""
        by_id = self.repo.by_id(id_or_key.upper()) if looks_like_ulid(id_or_key) else None
        key = by_id.plan_key if by_id is not None else id_or_key
        now_us = to_micros(self.clock.now())
        with self.repo.lock(key, now_us) as lock:
            if lock is None:
                raise PlanNotFound(f"no plan has the id or key {id_or_key!r}")
            versions = lock.versions()
            live = [r for r in versions if r.deleted_us is None]
            if not live:
                raise PlanNotFound(f"plan {key!r} has no live version to copy")
            drafts = [r for r in live if r.status == PlanStatus.DRAFT]
            if drafts:
                raise PlanConflict(
                    f"plan {key!r} already has a draft (version {drafts[0].version}, id {drafts[0].id}); "
                    "change or delete it instead"
                )
            source = live[-1]
            if by_id is not None and by_id.id != source.id:
                raise PlanConflict(
                    f"version {by_id.version} is not the newest version of plan {key!r} "
                    f"(that is version {source.version}); copy from the newest"
                )
            draft = PlanVersionRow(
                id=new_ulid(self.clock.now()),
                plan_key=key,
                version=versions[-1].version + 1,
                name=source.name,
                description=source.description,
                metadata=source.metadata,
                currency=source.currency,
                billing_cadence=source.billing_cadence,
                status=PlanStatus.DRAFT.value,
                document=source.document,
                created_us=now_us,
                updated_us=now_us,
                published_us=None,
                archived_us=None,
                deleted_us=None,
            )
            lock.insert(draft)
        return plan_from_row(draft)

    # -- helpers -------------------------------------------------------------------------------------
    def _live_row(self, plan_id: str) -> PlanVersionRow:
        row = self.repo.by_id(plan_id.upper()) if looks_like_ulid(plan_id) else None
        if row is None or row.deleted_us is not None:
            raise PlanNotFound(f"no live plan version has the id {plan_id!r}")
        return row

    @contextmanager
    def _locked(self, current: PlanVersionRow) -> Iterator[tuple[PlanLock, PlanVersionRow]]:
        """A write transaction holding the version's plan key, with the version re-read inside it."""
        with self.repo.lock(current.plan_key, to_micros(self.clock.now())) as lock:
            row = None
            if lock is not None:
                row = next((r for r in lock.versions() if r.id == current.id and r.deleted_us is None), None)
            if lock is None or row is None:
                raise PlanNotFound(f"no live plan version has the id {current.id!r}")
            yield lock, row

    @staticmethod
    def _require_status(row: PlanVersionRow, wanted: PlanStatus, action: str) -> None:
        if row.status != wanted:
            state = API_STATUS[PlanStatus(row.status)]
            why = " (a published version is immutable; start a new version with /next)" if action == "change" else ""
            raise PlanConflict(
                f"cannot {action} plan {row.plan_key!r} version {row.version}: it is {state}, "
                f"only a {API_STATUS[wanted]} version can be {'changed' if action == 'change' else action + 'd'}{why}"
            )

    def _with_meter_slugs(self, spec: PlanVersion, cards_path: str = "phases[0].rateCards") -> PlanVersion:
        """Check every usage rate card's meter exists; store its slug even when given by id."""
        if self.meters is None:
            return spec
        errors: FieldErrors = []
        cards = []
        for index, card in enumerate(spec.rate_cards):
            if card.meter is None:
                cards.append(card)
                continue
            try:
                meter = self.meters.get(card.meter)
            except MeterNotFound:
                errors.append((f"{cards_path}[{index}].meterSlug", f"no meter has the slug {card.meter!r}"))
                continue
            cards.append(replace(card, meter=meter.slug))
        if errors:
            raise InvalidPlan(errors)
        return replace(spec, rate_cards=tuple(cards))

    def _row(
        self, row_id: str, spec: PlanVersion, plan: PlanInput, now_us: int, created_us: int | None = None
    ) -> PlanVersionRow:
        return PlanVersionRow(
            id=row_id,
            plan_key=spec.plan_key,
            version=spec.version,
            name=spec.name,
            description=plan.description,
            metadata=plan.metadata,
            currency=spec.currency,
            billing_cadence=format_cadence(spec.cadence),
            status=PlanStatus.DRAFT.value,
            document=plan_document(spec),
            created_us=now_us if created_us is None else created_us,
            updated_us=now_us,
            published_us=None,
            archived_us=None,
            deleted_us=None,
        )


def _changed(row: PlanVersionRow, **values: Any) -> PlanVersionRow:
    return replace(row, **values)


__all__ = [
    "CatalogError",
    "CatalogService",
    "InvalidPlan",
    "PlanConflict",
    "PlanNotFound",
]
