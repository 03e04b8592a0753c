"""Structured (JSON lines) logging. Callers log facts as `extra` fields, never secrets.

Some text is not ours to shape: uvicorn's access log writes each request's path with its query
string, and a portal link carries its token there (`/portal?token=tbp_…`). `RedactSecrets` masks
Tallybook's keys and tokens, and the values of credential-named query parameters, in every record
before any handler formats it, so the README's "secrets are never logged" holds for those lines too.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}
# uvicorn's copy of the message with ANSI colour escapes: noise in a JSON line.
_DROPPED_ATTRS = frozenset({"color_message"})

REDACTED = "[redacted]"
# Tallybook API keys (tbk_) and portal tokens (tbp_), Stripe secrets and webhook signing secrets.
_SECRET_TOKEN = re.compile(r"\b(tbk_|tbp_|whsec_|sk_live_|sk_test_|rk_live_|rk_test_)[A-Za-z0-9_\-]+")
# Query parameters whose value is a credential, whatever it looks like: ?token=…&api_key=…
_SECRET_PARAM = re.compile(
    r"([?&](?:token|access_token|api_key|apikey|key|x-apikey|secret|password)=)[^&#\s\"]*", re.IGNORECASE
)


def redact(text: str) -> str:
    """`text` with every secret it carries replaced by [redacted]."""
    if "_" not in text and "=" not in text:
        return text  # the common case: nothing that could match
    text = _SECRET_PARAM.sub(lambda m: m.group(1) + REDACTED, text)
    return _SECRET_TOKEN.sub(lambda m: m.group(1) + REDACTED, text)


class RedactSecrets(logging.Filter):
    """Masks secrets in a record's message and arguments (installed on every handler we own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in _DROPPED_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted, not when logging was set up.

    A CLI command run in-process (tests, embedding) may set logging up while `sys.stderr` is a
    temporary stream; a handler holding that stream would fail on every later record once it is
    closed, and print "--- Logging error ---" into whatever output comes next.
    """

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure_logging(level: str = "INFO", json_format: bool = True) -> None:
    handler = CurrentStderrHandler()
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter on every start
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
