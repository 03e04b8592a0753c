"""The OpenAPI document (/openapi.json) is complete: every body and answer declared with its schema,
the problem statuses the server really returns, no FastAPI 422 (validation errors answer 400), and
it is a valid OpenAPI document. The fuzz job (`make fuzz`) checks live answers against it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient

from tallybook.api.app import create_app
from tallybook.config import DatabaseSettings, Settings
from tallybook.runtime import Runtime
from tests.conftest import auth

METHODS = ("get", "put", "post", "delete", "patch")
# Operations that act on what the path names and read no body.
NO_BODY = {
    ("post", "/api/v1/jobs/run"),
    ("post", "/api/v1/plans/{planId}/publish"),
    ("post", "/api/v1/plans/{planId}/archive"),
    ("post", "/api/v1/plans/{planIdOrKey}/next"),
    ("post", "/api/v1/notification/rules/{ruleId}/test"),
    *(
        ("post", f"/api/v1/billing/invoices/{{invoiceId}}/{action}")
        for action in (
            "advance",
            "approve",
            "void",
            "mark-paid",
            "mark-uncollectible",
            "sync",
            "snapshot-quantities",
            "verify",
        )
    ),
}
# Answers without a body besides 204s.
EMPTY_ANSWERS = {("post", "/api/v1/notification/events/{eventId}/resend", "202")}
UNAUTHENTICATED = {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"), ("post", "/api/v1/stripe/webhook")}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path_factory.mktemp('openapi') / 'tallybook.db'}"
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=url)))
    try:
        with TestClient(create_app(runtime, manage_runtime=False)) as client:
            answer = client.get("/openapi.json")
        assert answer.status_code == 200
        served: dict[str, Any] = answer.json()
        return served
    finally:
        runtime.store.close()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method, path, operation


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_the_document_is_a_valid_openapi_document(document: dict[str, Any]) -> None:
    schemathesis.openapi.from_dict(document).validate()
    schemas = document["components"]["schemas"]
    for ref in set(refs(document)):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, f"{ref} does not resolve"
    assert "$defs" not in str(document), "nested pydantic definitions must be hoisted to components"


def test_every_operation_that_reads_a_body_declares_it_with_a_schema(document: dict[str, Any]) -> None:
    missing = []
    for method, path, operation in operations(document):
        if method in ("post", "put") and (method, path) not in NO_BODY:
            body = operation.get("requestBody")
            if not body or not body.get("content"):
                missing.append(f"{method.upper()} {path}")
                continue
            for media, content in body["content"].items():
                assert content.get("schema"), f"{method.upper()} {path} {media}: no schema"
        elif (method, path) in NO_BODY:
            assert "requestBody" not in operation, f"{method.upper()} {path} reads no body"
    assert missing == []


def test_ingest_bodies_are_declared_for_every_media_type(document: dict[str, Any]) -> None:
    content = document["paths"]["/api/v1/events"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/cloudevents+json", "application/cloudevents-batch+json", "application/json"}
    event = {"$ref": "#/components/schemas/CloudEvent"}
    assert content["application/cloudevents+json"]["schema"] == event
    assert content["application/cloudevents-batch+json"]["schema"] == {"type": "array", "items": event}
    cloud_event = document["components"]["schemas"]["CloudEvent"]
    # OpenMeter's Event: the same required fields.
    assert set(cloud_event["required"]) == {"id", "source", "specversion", "type", "subject"}
    usage = document["paths"]["/usage/{eventType}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert usage == {"$ref": "#/components/schemas/UsageRecord"}
    batch = document["paths"]["/usagebatch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch == {"type": "array", "items": {"$ref": "#/components/schemas/UsageBatchRecord"}}


def test_every_answer_has_a_schema_and_problems_are_problem_json(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        name = f"{method.upper()} {path}"
        answers = operation["responses"]
        assert any(code.startswith("2") for code in answers), name
        for code, answer in answers.items():
            assert answer.get("description"), f"{name} {code}"
            if code == "204" or (method, path, code) in EMPTY_ANSWERS:
                assert "content" not in answer, f"{name}: {code} has no body"
                continue
            assert answer.get("content"), f"{name} {code}: no content declared"
            for media, content in answer["content"].items():
                assert content.get("schema"), f"{name} {code} {media}: no schema"
            if int(code) >= 400 and (method, path) != ("get", "/readyz"):
                assert answer["content"] == {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                }, f"{name} {code}"


def test_no_operation_declares_the_422_the_server_never_returns(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        assert "422" not in operation["responses"], f"{method.upper()} {path}"
        if operation.get("parameters") or operation.get("requestBody"):
            assert "400" in operation["responses"], f"{method.upper()} {path}: invalid input answers 400"
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_operations_behind_a_key_declare_401_and_403_and_their_security(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        name = f"{method.upper()} {path}"
        if (method, path) in UNAUTHENTICATED:
            assert "security" not in operation, name
            continue
        assert operation.get("security"), name
        assert "401" in operation["responses"], name
        if path.startswith("/api/v1/portal/") and operation["security"] == [{"portalToken": []}]:
            continue
        assert "403" in operation["responses"], name


def _call(client: httpx.Client, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    concrete = path.replace("{", "").replace("}", "")
    return client.request(method.upper(), concrete, headers=headers)


def test_the_declared_auth_answers_are_what_the_server_answers(
    client: httpx.Client, keys: dict[str, str], document: dict[str, Any]
) -> None:
    """Without a key every secured operation answers 401; with a key of another scope, 403."""
    for method, path, operation in operations(document):
        if "security" not in operation:
            continue
        answer = _call(client, method, path, {})
        assert answer.status_code == 401, f"{method.upper()} {path}: {answer.status_code}"
        assert answer.headers["content-type"] == "application/problem+json"
        if operation["security"] == [{"portalToken": []}]:
            continue
        # Scopes: read allows reads, ingest allows ingest, admin allows all.
        for scope in ("read", "ingest"):
            answer = _call(client, method, path, auth(keys[scope]))
            assert answer.status_code != 401, f"{method.upper()} {path} with a {scope} key"
            assert str(answer.status_code) in operation["responses"], (
                f"{method.upper()} {path} with a {scope} key answered an undeclared {answer.status_code}"
            )


def test_validation_errors_answer_400_not_422(client: httpx.Client, keys: dict[str, str]) -> None:
    answer = client.get("/api/v1/events", params={"limit": 0}, headers=auth(keys["read"]))
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"][0]["field"] == "limit"
