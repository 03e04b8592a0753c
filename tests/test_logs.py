"""Logs never carry secrets: keys and portal tokens are masked wherever they appear, the access log
included (uvicorn writes each request's path with its query string there)."""

from __future__ import annotations

import logging

import httpx
import pytest

from tallybook.observability.logs import JsonFormatter, RedactSecrets, redact
from tests.serverproc import ADMIN_KEY, ServerProcess


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /portal?token=tbp_AbC-123_xyz HTTP/1.1", "GET /portal?token=[redacted] HTTP/1.1"),
        ("/x?lang=en&api_key=plain-secret&y=1", "/x?lang=en&api_key=[redacted]&y=1"),
        ("/usage/x?X-APIKEY=abc", "/usage/x?X-APIKEY=[redacted]"),
        ("Bearer tbk_0123456789abcdef", "Bearer tbk_[redacted]"),
        ("signing secret whsec_c2VjcmV0", "signing secret whsec_[redacted]"),
        ("/api/v1/meters/api_calls/query?windowSize=DAY", "/api/v1/meters/api_calls/query?windowSize=DAY"),
        ("subject=acme&monkey=1", "subject=acme&monkey=1"),
    ],
)
def test_redact_masks_credentials_and_leaves_the_rest(text, expected):
    assert redact(text) == expected


def test_a_uvicorn_access_record_is_redacted_before_formatting():
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/portal?token=tbp_secretvalue", "1.1", 200), None,
    )  # fmt: skip
    record.color_message = "\x1b[1m…\x1b[0m"
    assert RedactSecrets().filter(record)
    line = JsonFormatter().format(record)
    assert "tbp_secretvalue" not in line and "token=[redacted]" in line
    assert "color_message" not in line and "\\u001b" not in line


@pytest.mark.slow
def test_access_log_of_a_served_portal_link_holds_no_token(tmp_path, database_url):
    """`serve --access-log` once logged `GET /portal?token=tbp_…` in clear."""
    if database_url.startswith("postgresql"):
        from tests.test_webhook_helpers import reset_database

        reset_database(database_url)  # this process's PostgreSQL database is shared between tests
    server = ServerProcess(tmp_path, database_url, extra_args=("--access-log",))
    # The config's WARNING level would hide access lines; this server logs at INFO.
    server.config.write_text(server.config.read_text().replace("level: WARNING", "level: INFO"))
    server.start()
    try:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        created = httpx.post(f"{server.url}/api/v1/customers", json={"name": "Acme", "key": "acme"}, headers=admin)
        assert created.status_code == 201, created.text
        token = httpx.post(f"{server.url}/api/v1/portal/tokens", json={"customerId": "acme"}, headers=admin).json()
        assert httpx.get(f"{server.url}/portal", params={"token": token["token"]}).status_code == 200
        assert httpx.get(f"{server.url}/usage/x", params={"x-apikey": ADMIN_KEY}).status_code in (400, 401, 404, 405)
    finally:
        output = server.stop()
    access = [line for line in output.splitlines() if "uvicorn.access" in line]
    assert any("/portal?token=[redacted]" in line for line in access), output
    assert token["token"] not in output
    assert ADMIN_KEY not in output
