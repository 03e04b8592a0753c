"""Portal tokens: issue, verify, list and invalidate them, and narrow usage queries to their holder.

A token is bound to a customer (every subject attributed to it, resolved at query time, so subjects
added later count too) or to one subject. Whatever a holder asks for, `scope_query` rewrites the
query so it can only match that customer's or subject's events.
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from tallybook.billing.invoicing import Invoice, Totals
from tallybook.clock import Clock, from_micros, to_micros
from tallybook.customers import CustomerService
from tallybook.customers.model import Customer, CustomerNotFound
from tallybook.ids import new_ulid
from tallybook.meters.models import Meter, MeterError, UsageQuery
from tallybook.meters.service import MeterService
from tallybook.portal.model import PortalError, PortalTokenRow
from tallybook.portal.ports import PortalTokenStorage

TOKEN_PREFIX = "tbp_"
DEFAULT_LIFETIME = timedelta(days=1)
MAX_LIFETIME = timedelta(days=366)
MAX_SUBJECT_LENGTH = 256
MAX_ALLOWED_METERS = 100


def hash_token(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PortalToken:
    id: str
    prefix: str
    subject: str | None
    customer_id: str | None
    allowed_meters: tuple[str, ...] | None
    expires_at: datetime
    created_at: datetime
    invalidated_at: datetime | None

    def expired(self, now: datetime) -> bool:
        return self.invalidated_at is not None or now >= self.expires_at


@dataclass(frozen=True, slots=True)
class CreatedPortalToken:
    token: PortalToken
    plaintext: str  # returned once; only its hash is stored


@dataclass(frozen=True, slots=True)
class PortalHolder:
    """Who a verified token speaks for: the customer (if bound to one) and the subjects it may read."""

    token: PortalToken
    customer: Customer | None
    subjects: tuple[str, ...]


def _token(row: PortalTokenRow) -> PortalToken:
    return PortalToken(
        id=row.id,
        prefix=row.prefix,
        subject=row.subject,
        customer_id=row.customer_id,
        allowed_meters=tuple(row.allowed_meters) if row.allowed_meters is not None else None,
        expires_at=from_micros(row.expires_us),
        created_at=from_micros(row.created_us),
        invalidated_at=from_micros(row.invalidated_us) if row.invalidated_us is not None else None,
    )


class PortalService:
    def __init__(
        self, tokens: PortalTokenStorage, clock: Clock, customers: CustomerService, meters: MeterService
    ) -> None:
        self.repository = tokens
        self.clock = clock
        self.customers = customers
        self.meters = meters

    # -- issuing and revoking -------------------------------------------------------------------
    def create(
        self,
        subject: str | None = None,
        customer: str | None = None,
        expires_at: datetime | None = None,
        allowed_meters: list[str] | None = None,
    ) -> CreatedPortalToken:
        """Issue a token bound to `customer` (id or key) or to `subject`; exactly one must be given."""
        if (subject is None) == (customer is None):
            raise PortalError(400, "invalid-parameters", "give exactly one of subject or customerId")
        now = self.clock.now()
        customer_id: str | None = None
        if customer is not None:
            try:
                found = self.customers.resolve(customer)
            except CustomerNotFound as exc:
                raise PortalError(400, "invalid-parameters", f"customerId: {exc}") from None
            customer_id = found.id
            subject = found.key
        elif subject is not None and not (0 < len(subject) <= MAX_SUBJECT_LENGTH):
            raise PortalError(400, "invalid-parameters", f"subject: must be 1 to {MAX_SUBJECT_LENGTH} characters")
        expiry = expires_at or now + DEFAULT_LIFETIME
        if expiry.tzinfo is None:
            raise PortalError(400, "invalid-parameters", "expiresAt: needs a time zone offset, e.g. Z")
        if expiry <= now:
            raise PortalError(400, "invalid-parameters", "expiresAt: must be in the future")
        if expiry > now + MAX_LIFETIME:
            raise PortalError(400, "invalid-parameters", f"expiresAt: at most {MAX_LIFETIME.days} days ahead")
        slugs = self._check_meters(allowed_meters)
        plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = PortalTokenRow(
            id=new_ulid(now),
            token_hash=hash_token(plaintext),
            prefix=plaintext[:12],
            subject=subject,
            customer_id=customer_id,
            allowed_meters=slugs,
            expires_us=to_micros(expiry),
            created_us=to_micros(now),
            invalidated_us=None,
        )
        self.repository.insert(row)
        return CreatedPortalToken(_token(row), plaintext)

    def _check_meters(self, slugs: builtins.list[str] | None) -> builtins.list[str] | None:
        if slugs is None:
            return None
        unique = list(dict.fromkeys(slugs))
        if len(unique) > MAX_ALLOWED_METERS:
            raise PortalError(400, "invalid-parameters", f"allowedMeterSlugs: at most {MAX_ALLOWED_METERS}")
        known = {m.slug for m in self.meters.list()}
        unknown = [s for s in unique if s not in known]
        if unknown:
            raise PortalError(400, "invalid-parameters", f"allowedMeterSlugs: no meter {', '.join(unknown)}")
        return unique

    def list(self, limit: int = 25) -> list[PortalToken]:
        return [_token(row) for row in self.repository.newest(limit)]

    def invalidate(self, token_id: str | None = None, subject: str | None = None, customer: str | None = None) -> int:
        """Invalidate by id, by subject (every token bound to it) and/or by customer (id or key)."""
        if token_id is None and subject is None and customer is None:
            raise PortalError(400, "invalid-parameters", "give id, subject or customerId")
        at_us = to_micros(self.clock.now())
        count = self.repository.invalidate(at_us, token_id, (subject,) if subject is not None else ())
        if customer is not None:
            try:
                customer_id = self.customers.get(customer).id
            except CustomerNotFound as exc:
                raise PortalError(400, "invalid-parameters", f"customerId: {exc}") from None
            count += self.repository.invalidate_customer(customer_id, at_us)
        return count

    # -- using a token ----------------------------------------------------------------------------
    def verify(self, plaintext: str) -> PortalHolder | None:
        """The holder of a live token, or None (unknown, expired, invalidated, customer deleted)."""
        if not plaintext.startswith(TOKEN_PREFIX):
            return None
        row = self.repository.by_hash(hash_token(plaintext))
        if row is None:
            return None
        token = _token(row)
        if token.expired(self.clock.now()):
            return None
        if token.customer_id is None:
            assert token.subject is not None
            return PortalHolder(token, None, (token.subject,))
        try:
            customer = self.customers.resolve(token.customer_id)
        except CustomerNotFound:
            return None
        return PortalHolder(token, customer, customer.subjects)

    def meters_for(self, holder: PortalHolder) -> builtins.list[Meter]:
        meters = self.meters.list()
        allowed = holder.token.allowed_meters
        return [m for m in meters if allowed is None or m.slug in allowed]

    def scope_query(self, holder: PortalHolder, q: UsageQuery) -> UsageQuery:
        """The holder's query narrowed to its own usage; asking for anyone else's is refused (403)."""
        try:
            meter = self.meters.get(q.meter)
        except MeterError:
            raise PortalError(404, "meter-not-found", f"no meter {q.meter!r}") from None
        allowed = holder.token.allowed_meters
        if allowed is not None and meter.slug not in allowed:
            raise PortalError(403, "forbidden", f"this portal token may not read meter {meter.slug!r}")
        foreign = [s for s in q.subjects if s not in holder.subjects]
        if foreign:
            raise PortalError(403, "forbidden", "this portal token may only read its own subjects")
        if holder.customer is not None:
            if any(c != holder.customer.id for c in q.customer_ids):
                raise PortalError(403, "forbidden", "this portal token may only read its own customer")
            return replace(q, meter=meter.id, customer_ids=(holder.customer.id,))
        if q.customer_ids:
            raise PortalError(403, "forbidden", "this portal token is bound to a subject, not a customer")
        return replace(q, meter=meter.id, subjects=holder.subjects)

    def scope_invoice(self, holder: PortalHolder, invoice: Invoice) -> tuple[Invoice, bool]:
        """The invoice as this holder may see it, and whether lines were withheld.

        A token limited to some meters sees only those meters' usage lines and the plan's flat fees.
        Commitment top-ups and corrections of withheld meters are withheld too (a minimum-spend
        top-up is computed from every meter's spend), and the totals are the sum of what is shown,
        so no figure lets the holder work out another meter's usage.
        """
        allowed = holder.token.allowed_meters
        if allowed is None:
            return invoice, False
        shown = [
            line
            for line in invoice.lines
            if (line.meter is not None and line.meter in allowed) or (line.meter is None and line.kind == "flat_fee")
        ]
        if len(shown) == len(invoice.lines):
            return invoice, False
        zero = invoice.totals.total * 0
        subtotal = sum((line.amount for line in shown), zero)
        return replace(invoice, lines=shown, totals=Totals(subtotal, zero, subtotal)), True
