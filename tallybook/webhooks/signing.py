"""Request signing: Standard Webhooks (via the `standardwebhooks` library) and the codehooks header.

Every delivery carries both, so a receiver can check either:

- Standard Webhooks (also what Svix receivers verify): `webhook-id`, `webhook-timestamp` (Unix
  seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. The key is
  the base64 part of a `whsec_...` secret; a secret in any other form is used as its UTF-8 bytes.
- codehooks template: `X-Webhook-Timestamp` (the same Unix seconds) and
  `X-Webhook-Signature: v1=<hex HMAC-SHA256 of "{timestamp}.{body}">`, keyed by the whole secret
  string's UTF-8 bytes (prefix included), exactly as the template computes it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def generate_secret() -> str:
    """`whsec_` and 24 random bytes in base64 (32 characters), like Svix and OpenMeter."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def standard_key(secret: str) -> bytes:
    """The HMAC key Standard Webhooks uses for `secret`."""
    body = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    if _BASE64.match(body) and len(body) % 4 == 0:
        try:
            return base64.b64decode(body, validate=True)
        except binascii.Error:
            pass
    return secret.encode()


def standard_signer(secret: str) -> Webhook:
    return Webhook(standard_key(secret))


def codehooks_signature(secret: str, timestamp: int, body: str) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"v1={digest}"


def signature_headers(secret: str, message_id: str, sent_at: datetime, body: str) -> dict[str, str]:
    """The signature headers of one request; `sent_at` is when it is sent (seconds resolution)."""
    sent_at = sent_at.astimezone(UTC)
    timestamp = int(sent_at.timestamp())
    standard = standard_signer(secret).sign(message_id, datetime.fromtimestamp(timestamp, UTC), body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard,
        "X-Webhook-Timestamp": str(timestamp),
        "X-Webhook-Signature": codehooks_signature(secret, timestamp, body),
    }
