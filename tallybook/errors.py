"""The base of every domain error the API answers as an RFC 9457 problem.

A domain error says what went wrong in its own terms: `status` (the HTTP status it maps to),
`code` (the problem type's last part), `detail` (what to fix) and `extra` (more members of the
problem body, e.g. `errors`). Domain code raises it without knowing about HTTP; the API installs
one handler for all of them (tallybook/api/problems.py).
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status = 400
    code = "invalid-request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
