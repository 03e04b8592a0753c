"""What the billing profile service needs from storage: transactions over profiles and assignments.

A profile row is a dict of its columns: `id`, `name`, `description`, `is_default`, `source`
(config | api), `body` (the settings as one JSON document, `profiles_model.profile_body`),
`created_us`, `updated_us`, `deleted_us`. An assignment row: `customer_id`, `profile_id`,
`created_us`, `updated_us`; a customer without one is billed with the default profile.

"Exactly one live default" and "no live customer on a deleted profile" span several rows, so every
change runs in one `writing()` transaction, and writing transactions on profiles are serial (the
adapter takes a lock first). `profiles_sql.SqlProfileStorage` is the adapter on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

ProfileRow = dict[str, Any]


class ProfileTransaction(Protocol):
    # -- profiles ---------------------------------------------------------------------------------------
    def profile_rows(self, include_deleted: bool = False) -> list[ProfileRow]:
        """Every (live) profile, oldest first (there are few)."""
        ...

    def get_profile(self, profile_id: str) -> ProfileRow | None: ...

    def live_api_default(self) -> str | None:
        """The id of the live API profile marked default, if any."""
        ...

    def insert_profile(self, row: ProfileRow) -> None: ...

    def update_profile(self, profile_id: str, values: dict[str, Any]) -> bool:
        """Set these columns; False when there is no such profile."""
        ...

    def clear_defaults(self, except_id: str | None = None) -> None:
        """Unmark every default profile but `except_id`."""
        ...

    # -- customer assignments ---------------------------------------------------------------------------
    def assignments_of(self, customer_ids: Sequence[str]) -> dict[str, str]:
        """customer id -> profile id, for the customers among these that have an assignment."""
        ...

    def get_assignment(self, customer_id: str) -> dict[str, Any] | None: ...

    def put_assignment(self, customer_id: str, profile_id: str, now_us: int) -> None:
        """Assign (or move) a customer."""
        ...

    def delete_assignment(self, customer_id: str) -> bool:
        """Remove a customer's assignment; False when it had none."""
        ...

    def live_customers_on(self, profile_id: str, sample: int = 5) -> tuple[int, list[str]]:
        """How many live (not deleted) customers are assigned to the profile, and a few of their ids."""
        ...

    def delete_assignments_to(self, profile_id: str) -> int:
        """Drop every assignment to the profile; how many there were."""
        ...


class ProfileStorage(Protocol):
    def reading(self) -> AbstractContextManager[ProfileTransaction]: ...

    def writing(self) -> AbstractContextManager[ProfileTransaction]:
        """A write transaction that no other profile writer runs alongside."""
        ...


__all__ = ["ProfileRow", "ProfileStorage", "ProfileTransaction"]
