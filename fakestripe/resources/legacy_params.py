"""Parameters of the legacy usage-record endpoints.

stripe-python 12 removed these endpoints' typed params together with their methods, so they are
declared here (as documented for API versions before 2025-03-31.basil) and validated by the same
machinery as the SDK-derived ones. This module deliberately has no ``from __future__ import
annotations``: ``TypedDict`` needs real ``NotRequired[...]`` annotations to compute required keys.
"""

from typing import Literal, NotRequired

from typing_extensions import TypedDict


class UsageRecordCreateParams(TypedDict):
    """``POST /v1/subscription_items/{id}/usage_records``."""

    quantity: int
    timestamp: NotRequired[int | Literal["now"]]
    action: NotRequired[Literal["increment", "set"]]
    expand: NotRequired[list[str]]


class UsageRecordSummaryListParams(TypedDict):
    ending_before: NotRequired[str]
    expand: NotRequired[list[str]]
    limit: NotRequired[int]
    starting_after: NotRequired[str]
