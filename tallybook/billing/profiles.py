"""The billing profile service: profiles (the config one from tallybook.yaml, and those created
through the API), which one is the default, and which customers are billed with which.

What a profile says: `profiles_model`. The config profile (`billing:` in tallybook.yaml, see
tallybook/billing/settings.py) is written to storage at start with a fixed id and is read-only
through the API. It is the default unless a profile created through the API is marked default. A
customer without an assignment is billed with the default profile; `for_customers` answers any
number of customers with two queries. Storage is `profiles_ports.ProfileStorage` (SQL adapter
`profiles_sql`); the API's JSON shapes are `tallybook.api.wire.billing_profiles`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from tallybook.billing.profiles_model import (
    API,
    CHARGE_AUTOMATICALLY,
    COLLECTION_METHODS,
    COLLECTORS,
    CONFIG,
    CONFIG_PROFILE_ID,
    CUSTOM_INVOICING,
    ORDER_BY,
    ORDER_KEYS,
    SEND_INVOICE,
    STRIPE,
    TAX_BEHAVIORS,
    BillingProfile,
    CustomerProfile,
    CustomerUnknown,
    InvalidProfile,
    OverrideNotFound,
    ProfileConflict,
    ProfileError,
    ProfileInput,
    ProfileListQuery,
    ProfileNotFound,
    ProfilePage,
    format_iso_duration,
    parse_iso_duration,
    profile_body,
    profile_from_row,
)
from tallybook.billing.profiles_ports import ProfileRow, ProfileStorage, ProfileTransaction
from tallybook.billing.settings import BillingSettings
from tallybook.clock import Clock, format_rfc3339, from_micros, to_micros
from tallybook.customers.model import CustomerNotFound
from tallybook.customers.service import CustomerService
from tallybook.customers.validation import address_json
from tallybook.ids import new_ulid


def config_profile(settings: BillingSettings) -> BillingProfile:
    """The default profile tallybook.yaml describes (timestamps and `default` are set on reading)."""
    cfg = settings.profile
    supplier: dict[str, Any] = {}
    if cfg.supplier.name is not None:
        supplier["name"] = cfg.supplier.name
    if cfg.supplier.tax_id is not None:
        supplier["taxId"] = {"code": cfg.supplier.tax_id}
    if cfg.supplier.address is not None:
        supplier["addresses"] = [address_json(cfg.supplier.address)]
    return BillingProfile(
        id=CONFIG_PROFILE_ID,
        name=cfg.name,
        description=cfg.description,
        default=True,
        source=CONFIG,
        collector=cfg.collector,
        tax_enabled=cfg.tax_enabled,
        tax_enforced=cfg.tax_enforced,
        tax_behavior=cfg.tax_behavior,
        collection_method=cfg.collection_method,
        auto_collect=cfg.auto_collect,
        auto_advance=settings.auto_issue,
        draft_period=settings.auto_issue_after,
        due_after=cfg.due_after,
        grace=settings.invoice_grace,
        supplier=supplier,
        number_prefix=cfg.number_prefix,
        timezone=cfg.timezone,
        locale=cfg.locale,
    )


class ProfileService:
    """Billing profiles and which customers use which (no HTTP here; see api/routes/billing_profiles)."""

    def __init__(
        self,
        storage: ProfileStorage,
        clock: Clock,
        customers: CustomerService,
        settings: BillingSettings | None = None,
        stripe_enabled: bool = False,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.customers = customers
        self.stripe_enabled = stripe_enabled
        self.config = config_profile(settings or BillingSettings())
        self._started = clock.now()

    # -- the config profile ----------------------------------------------------------------------------
    def sync_config(self) -> BillingProfile:
        """Write the config profile to the database (at start): insert it, or update it if the file changed."""
        now_us = to_micros(self.clock.now())
        with self.storage.writing() as tx:
            self._write_config(tx, now_us)
            return self._effective(tx, CONFIG_PROFILE_ID)

    def _write_config(self, tx: ProfileTransaction, now_us: int) -> None:
        """Make the config row match this process's settings and carry the right default flag."""
        row = tx.get_profile(CONFIG_PROFILE_ID)
        is_default = tx.live_api_default() is None
        values = {
            "name": self.config.name,
            "description": self.config.description,
            "source": CONFIG,
            "body": profile_body(self.config, self.config.collector),
            "deleted_us": None,
        }
        if row is None:
            tx.insert_profile(
                {
                    "id": CONFIG_PROFILE_ID,
                    "is_default": is_default,
                    "created_us": now_us,
                    "updated_us": now_us,
                    **values,
                },
            )
            return
        changed = any(row[k] != v for k, v in values.items())
        if changed:
            tx.update_profile(CONFIG_PROFILE_ID, {**values, "is_default": is_default, "updated_us": now_us})
        elif row["is_default"] != is_default:
            tx.update_profile(CONFIG_PROFILE_ID, {"is_default": is_default})

    # -- reading -----------------------------------------------------------------------------------------
    def _profiles(self, tx: ProfileTransaction, include_deleted: bool = False) -> list[BillingProfile]:
        """Every (live) profile with `default` resolved; the config profile always among them."""
        rows = tx.profile_rows(include_deleted)
        default_id = CONFIG_PROFILE_ID
        api_defaults = [r for r in rows if r["source"] == API and r["is_default"] and r["deleted_us"] is None]
        if api_defaults:
            default_id = max(api_defaults, key=lambda r: (r["updated_us"], r["id"]))["id"]
        out: list[BillingProfile] = []
        config_row = None
        for row in rows:
            if row["id"] == CONFIG_PROFILE_ID:
                config_row = row
                continue
            out.append(profile_from_row(row, row["id"] == default_id))
        # The config profile says what this process's tallybook.yaml says; the row gives its times.
        created = from_micros(config_row["created_us"]) if config_row else self._started
        updated = from_micros(config_row["updated_us"]) if config_row else self._started
        config = replace(self.config, default=default_id == CONFIG_PROFILE_ID, created_at=created, updated_at=updated)
        return [config, *out]

    def _effective(self, tx: ProfileTransaction, profile_id: str) -> BillingProfile:
        for profile in self._profiles(tx, include_deleted=True):
            if profile.id == profile_id:
                return profile
        raise ProfileNotFound(f"no billing profile has the id {profile_id!r}", billingProfileId=profile_id)

    def get(self, profile_id: str) -> BillingProfile:
        """A profile by id, deleted ones too (showing deletedAt)."""
        with self.storage.reading() as tx:
            return self._effective(tx, profile_id)

    def list_profiles(self, query: ProfileListQuery | None = None) -> ProfilePage:
        query = query or ProfileListQuery()
        if query.order_by not in ORDER_KEYS:
            raise ProfileError(f"orderBy must be one of {', '.join(ORDER_BY)}, got {query.order_by!r}")
        with self.storage.reading() as tx:
            found = self._profiles(tx, query.include_deleted)
        found.sort(key=ORDER_KEYS[query.order_by], reverse=query.descending)
        start = (query.page - 1) * query.page_size
        return ProfilePage(found[start : start + query.page_size], len(found), query.page, query.page_size)

    def default(self) -> BillingProfile:
        with self.storage.reading() as tx:
            return next(p for p in self._profiles(tx) if p.default)

    def for_customers(self, customer_ids: Iterable[str]) -> dict[str, BillingProfile]:
        """Each customer's profile (its assignment, else the default): two queries for any number."""
        ids = list(dict.fromkeys(customer_ids))
        with self.storage.reading() as tx:
            profiles = self._profiles(tx)
            assigned = tx.assignments_of(ids) if ids else {}
        by_id = {p.id: p for p in profiles}
        default = next(p for p in profiles if p.default)
        # An assignment to a profile deleted meanwhile (cannot happen through the service) -> default.
        return {cid: by_id.get(assigned.get(cid, ""), default) for cid in ids}

    def shortest_grace(self) -> timedelta:
        """The shortest grace of any live profile: no customer's period is due before now minus this."""
        with self.storage.reading() as tx:
            return min(p.grace for p in self._profiles(tx))

    # -- writing -----------------------------------------------------------------------------------------
    def _check_apps(self, collector: str) -> None:
        if collector == STRIPE and not self.stripe_enabled:
            message = (
                "stripe needs the Stripe integration: set stripe.enabled: true in tallybook.yaml (and STRIPE_API_KEY)"
            )
            raise InvalidProfile([("apps", message)])

    def create(self, data: ProfileInput) -> BillingProfile:
        collector = data.collector or CUSTOM_INVOICING
        self._check_apps(collector)
        now = self.clock.now()
        now_us = to_micros(now)
        profile_id = new_ulid(now)
        with self.storage.writing() as tx:
            if data.default:
                tx.clear_defaults()
            tx.insert_profile(
                {
                    "id": profile_id,
                    "name": data.name,
                    "description": data.description,
                    "is_default": data.default,
                    "source": API,
                    "body": profile_body(data, collector),
                    "created_us": now_us,
                    "updated_us": now_us,
                    "deleted_us": None,
                },
            )
            self._write_config(tx, now_us)
            return self._effective(tx, profile_id)

    def check_not_config(self, profile_id: str, action: str = "changed") -> None:
        """Refuse (409) to change the config profile: it is tallybook.yaml's."""
        if profile_id == CONFIG_PROFILE_ID:
            raise ProfileConflict(
                f"billing profile {profile_id} is defined in tallybook.yaml (billing.profile, billing.invoice_grace, "
                f"billing.auto_issue, billing.auto_issue_after) and cannot be {action} through the API; "
                "edit the file and restart, or create a profile of your own",
                billingProfileId=profile_id,
            )

    def _writable(self, tx: ProfileTransaction, profile_id: str, action: str) -> ProfileRow:
        self.check_not_config(profile_id, action)
        row = tx.get_profile(profile_id)
        if row is None:
            raise ProfileNotFound(f"no billing profile has the id {profile_id!r}", billingProfileId=profile_id)
        if row["deleted_us"] is not None:
            deleted = format_rfc3339(from_micros(row["deleted_us"]))
            raise ProfileNotFound(f"billing profile {profile_id} was deleted at {deleted}", billingProfileId=profile_id)
        return row

    def replace(self, profile_id: str, data: ProfileInput) -> BillingProfile:
        """Replace every field (OpenMeter's PUT); `apps` left out keeps the profile's app."""
        now_us = to_micros(self.clock.now())
        with self.storage.writing() as tx:
            row = self._writable(tx, profile_id, "changed")
            collector = data.collector or (row["body"].get("apps") or {}).get("collector", CUSTOM_INVOICING)
            self._check_apps(collector)
            if data.default:
                tx.clear_defaults(except_id=profile_id)
            tx.update_profile(
                profile_id,
                {
                    "name": data.name,
                    "description": data.description,
                    "is_default": data.default,
                    "body": profile_body(data, collector),
                    "updated_us": now_us,
                },
            )
            self._write_config(tx, now_us)
            return self._effective(tx, profile_id)

    def delete(self, profile_id: str) -> BillingProfile:
        """Soft-delete a profile no live customer is assigned to; a deleted default hands over to config."""
        now_us = to_micros(self.clock.now())
        with self.storage.writing() as tx:
            self._writable(tx, profile_id, "deleted")
            count, sample = tx.live_customers_on(profile_id)
            if count:
                shown = ", ".join(sample) + (", ..." if count > len(sample) else "")
                raise ProfileConflict(
                    f"billing profile {profile_id} is assigned to {count} customer(s) ({shown}); move them to "
                    "another profile (PUT /api/v1/billing/customers/{customerId}) or remove their override first",
                    billingProfileId=profile_id,
                    customerCount=count,
                )
            tx.delete_assignments_to(profile_id)  # deleted customers' leftovers
            tx.update_profile(profile_id, {"deleted_us": now_us, "is_default": False, "updated_us": now_us})
            self._write_config(tx, now_us)
            return self._effective(tx, profile_id)

    # -- customer overrides --------------------------------------------------------------------------
    def _customer_id(self, customer: str) -> str:
        try:
            return self.customers.resolve(customer).id
        except CustomerNotFound as exc:
            raise CustomerUnknown(str(exc), customerIdOrKey=customer) from None

    def _customer_profile(self, tx: ProfileTransaction, customer_id: str) -> CustomerProfile:
        profiles = self._profiles(tx)
        by_id = {p.id: p for p in profiles}
        default = next(p for p in profiles if p.default)
        row = tx.get_assignment(customer_id)
        if row is None or row["profile_id"] not in by_id:
            return CustomerProfile(customer_id, default)
        return CustomerProfile(
            customer_id,
            by_id[row["profile_id"]],
            assigned_profile_id=row["profile_id"],
            assigned_at=from_micros(row["created_us"]),
            assignment_updated_at=from_micros(row["updated_us"]),
        )

    def customer_profile(self, customer: str) -> CustomerProfile:
        """A customer's (id or key) effective profile: its override, else the default."""
        customer_id = self._customer_id(customer)
        with self.storage.reading() as tx:
            return self._customer_profile(tx, customer_id)

    def assign(self, customer: str, profile_id: str | None) -> CustomerProfile:
        """Bill a customer (id or key) with a profile; None: remove its override (follow the default)."""
        customer_id = self._customer_id(customer)
        now_us = to_micros(self.clock.now())
        with self.storage.writing() as tx:
            if profile_id is None:
                tx.delete_assignment(customer_id)
                return self._customer_profile(tx, customer_id)
            row = tx.get_profile(profile_id)
            if row is None and profile_id != CONFIG_PROFILE_ID:
                raise InvalidProfile([("billingProfileId", f"no billing profile has the id {profile_id!r}")])
            if row is not None and row["deleted_us"] is not None:
                raise InvalidProfile([("billingProfileId", f"billing profile {profile_id} was deleted")])
            if row is None:
                self._write_config(tx, now_us)
            tx.put_assignment(customer_id, profile_id, now_us)
            return self._customer_profile(tx, customer_id)

    def unassign(self, customer: str) -> None:
        """Remove a customer's override; it is billed with the default profile again."""
        customer_id = self._customer_id(customer)
        with self.storage.writing() as tx:
            if not tx.delete_assignment(customer_id):
                raise OverrideNotFound(
                    f"customer {customer_id} has no billing profile override; it is billed with the default profile",
                    customerId=customer_id,
                )


# Other rooms import the model's names they need with the service (documents, invoicing, stripe).
__all__ = [
    "CHARGE_AUTOMATICALLY",
    "COLLECTION_METHODS",
    "COLLECTORS",
    "CONFIG_PROFILE_ID",
    "CUSTOM_INVOICING",
    "SEND_INVOICE",
    "STRIPE",
    "TAX_BEHAVIORS",
    "BillingProfile",
    "CustomerProfile",
    "InvalidProfile",
    "ProfileConflict",
    "ProfileError",
    "ProfileInput",
    "ProfileListQuery",
    "ProfileNotFound",
    "ProfilePage",
    "ProfileService",
    "config_profile",
    "format_iso_duration",
    "parse_iso_duration",
]
