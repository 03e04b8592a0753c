"""Stripe-shaped API errors raised by the fake's handlers and turned into HTTP answers by the app."""

from __future__ import annotations

from typing import Any


class StripeAPIError(Exception):
    """An error answer: HTTP status plus Stripe's ``{"error": {...}}`` body.

    ``saved`` says whether the answer is stored under the request's idempotency key. Stripe only
    saves results of requests whose endpoint began executing: parameter-validation failures and
    authentication errors are not saved (a retry with the same key is evaluated afresh).
    """

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        saved: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.saved = saved
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        error.update(self.extra)
        return {"error": error}

    # Constructors for the common cases -------------------------------------------------------

    @classmethod
    def invalid(
        cls, message: str, *, param: str | None = None, code: str | None = None, saved: bool = False
    ) -> StripeAPIError:
        """400 ``invalid_request_error``; by default a validation failure, so not saved for replay."""
        return cls(400, "invalid_request_error", message, code=code, param=param, saved=saved)

    @classmethod
    def business(cls, message: str, *, param: str | None = None, code: str | None = None) -> StripeAPIError:
        """400 ``invalid_request_error`` raised after the endpoint started work (saved for replay)."""
        return cls(400, "invalid_request_error", message, code=code, param=param, saved=True)

    @classmethod
    def missing(cls, kind: str, ident: str, *, param: str = "id") -> StripeAPIError:
        return cls(
            404,
            "invalid_request_error",
            f"No such {kind}: '{ident}'",
            code="resource_missing",
            param=param,
            saved=True,
        )

    @classmethod
    def unauthorized(
        cls, message: str, *, type_: str = "invalid_request_error", code: str | None = None
    ) -> StripeAPIError:
        return cls(401, type_, message, code=code, saved=False)
