"""What can go wrong with customers, in domain terms (the API maps these to problem responses)."""

from __future__ import annotations


class CustomerError(Exception):
    pass


class CustomerNotFound(CustomerError):
    def __init__(self, id_or_key: str, detail: str | None = None) -> None:
        super().__init__(detail or f"no customer has the id or key {id_or_key!r}")
        self.id_or_key = id_or_key


class InvalidCustomer(CustomerError):
    """Bad customer input. `field` is the JSON path to fix; `errors` lists every problem found."""

    def __init__(self, field: str, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        self.errors = errors or [(field, message)]
        super().__init__("; ".join(f"{f}: {m}" for f, m in self.errors))
        self.field = field
        self.message = message


class SubjectConflict(CustomerError):
    """A subject (listed, or the customer's key) is already attributed to another live customer."""

    def __init__(self, subject: str, owner_customer_id: str, detail: str | None = None) -> None:
        super().__init__(detail or f"subject {subject!r} is already attributed to customer {owner_customer_id}")
        self.subject = subject
        self.owner_customer_id = owner_customer_id


class CustomerKeyConflict(CustomerError):
    """Another live customer already has this key."""

    def __init__(self, key: str, owner_customer_id: str) -> None:
        super().__init__(
            f"customer {owner_customer_id} already has the key {key!r}; keys are unique among live customers"
        )
        self.key = key
        self.owner_customer_id = owner_customer_id


class ConcurrentChange(CustomerError):
    """The write kept colliding with concurrent writes; retrying the request is safe."""
