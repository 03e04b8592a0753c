"""The OpenAPI document (/openapi.json): FastAPI's, completed with what routes do not declare one by one.

Routes declare their success shapes, request bodies and specific problems (404, 409, 413, 415...)
with `responses()` and `json_body()`. This module adds what follows from how the API works:

- every 4xx/5xx answers `application/problem+json` with the `Problem` schema (problems.py);
- an operation behind an API key answers 401 (no/unknown key) and 403 (key of another scope),
  and says so in `security`; portal routes take a portal token instead;
- an operation that takes parameters or a body answers 400 when they are invalid (validation errors
  map to 400, so FastAPI's default 422 is never returned and is dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi import routing as fastapi_routing
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter

from tallybook.api.problems import PROBLEM_MEDIA_TYPE, PROBLEM_TITLES
from tallybook.api.security import ApiKeyScope
from tallybook.api.wire.problems import Problem

SCHEMA_REF = "#/components/schemas/{model}"
PROBLEM_REF = {"$ref": SCHEMA_REF.format(model="Problem")}
API_KEY_SECURITY: list[dict[str, list[str]]] = [{"bearerApiKey": []}, {"headerApiKey": []}]
PORTAL_SECURITY: list[dict[str, list[str]]] = [{"portalToken": []}]
SECURITY_SCHEMES: dict[str, Any] = {
    "bearerApiKey": {"type": "http", "scheme": "bearer", "description": "An API key (`tbk_...`)"},
    "headerApiKey": {"type": "apiKey", "in": "header", "name": "x-apikey", "description": "An API key (codehooks)"},
    "portalToken": {"type": "http", "scheme": "bearer", "description": "A portal token (`tbp_...`)"},
}
_PROBLEM_DESCRIPTIONS = {
    400: "Invalid request: `detail` (and `errors`) say what to fix",
    401: "No API key, or an unknown or revoked one",
    403: "The key's scope does not allow this operation",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "The body is larger than the limit",
    415: "Unsupported Content-Type",
    503: "Temporarily unavailable: retry",
}


def responses(
    model: Any = None,
    *problems: int,
    status: int = 200,
    description: str | None = None,
    content: dict[str, Any] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=`: the success shape (`model`; None for no body) and the problem statuses
    specific to it. 400/401/403 are added by `complete_openapi` from the route's parameters and key."""
    declared: dict[int | str, dict[str, Any]] = {}
    success: dict[str, Any] = {}
    if model is not None:
        success["model"] = model
    if description:
        success["description"] = description
    if content:
        success["content"] = content
    if success:
        declared[status] = success
    for code in problems:
        declared[code] = {"description": _PROBLEM_DESCRIPTIONS.get(code, PROBLEM_TITLES.get(code, "Error"))}
    return declared


def schema_of(shape: Any) -> dict[str, Any]:
    """The JSON schema of a model or type, its definitions referenced as OpenAPI components (the
    `$defs` it carries are moved to components by `complete_openapi`)."""
    if isinstance(shape, dict):
        return shape
    if isinstance(shape, type) and issubclass(shape, BaseModel):
        # A reference to the model as a component (named like FastAPI names response models).
        schema = shape.model_json_schema(ref_template=SCHEMA_REF)
        definitions = {**schema.pop("$defs", {}), shape.__name__: schema}
        return {"$ref": SCHEMA_REF.format(model=shape.__name__), "$defs": definitions}
    return TypeAdapter(shape).json_schema(ref_template=SCHEMA_REF)


def json_body(*contents: tuple[str, Any], required: bool = True, description: str | None = None) -> dict[str, Any]:
    """A route's `openapi_extra=` declaring the body the route reads itself: (media type, shape) pairs."""
    body: dict[str, Any] = {
        "required": required,
        "content": {media: {"schema": schema_of(shape)} for media, shape in contents},
    }
    if description:
        body["description"] = description
    return {"requestBody": body}


def query_parameters(params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A route's `openapi_extra=` declaring query parameters the route reads from the request itself.
    A parameter's entry is its schema, plus `description` and `style`/`explode` when given."""
    declared = []
    for name, spec in params.items():
        schema = {k: v for k, v in spec.items() if k not in ("description", "style", "explode")}
        param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
        param.update({k: v for k, v in spec.items() if k in ("description", "style", "explode")})
        declared.append(param)
    return {"parameters": declared}


def merged(*extras: dict[str, Any]) -> dict[str, Any]:
    """Several `openapi_extra` declarations as one."""
    result: dict[str, Any] = {}
    for extra in extras:
        for key, value in extra.items():
            if isinstance(value, list):
                result[key] = [*result.get(key, []), *value]
            else:
                result[key] = value
    return result


def _api_routes(app: FastAPI) -> Iterator[Any]:
    """The API routes with their effective path (FastAPI 0.16x keeps included routers as contexts)."""
    contexts = getattr(fastapi_routing, "iter_route_contexts", None)
    if contexts is None:
        yield from (route for route in app.routes if isinstance(route, APIRoute))
        return
    for context in contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def _dependency_calls(route: Any) -> Iterator[Callable[..., Any]]:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if dep.call is not None:
            yield dep.call
        stack.extend(dep.dependencies)


def _complete_operation(op: dict[str, Any], route: Any, portal_dependencies: tuple[Any, ...]) -> None:
    answers: dict[str, Any] = op.setdefault("responses", {})
    answers.pop("422", None)
    calls = list(_dependency_calls(route))
    if any(isinstance(call, ApiKeyScope) for call in calls):
        op["security"] = API_KEY_SECURITY
        answers.setdefault("401", {})
        answers.setdefault("403", {})
    elif any(call in portal_dependencies for call in calls):
        op["security"] = PORTAL_SECURITY
        answers.setdefault("401", {"description": "No portal token, or an unknown, expired or invalidated one"})
    if op.get("parameters") or "requestBody" in op:
        answers.setdefault("400", {})
    for code, answer in answers.items():
        if code.isdigit() and int(code) >= 400:
            answer.setdefault("content", {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}})
            if not answer.get("description"):
                answer["description"] = _PROBLEM_DESCRIPTIONS.get(int(code), PROBLEM_TITLES.get(int(code), "Error"))
    op["responses"] = dict(sorted(answers.items()))


def _hoist_definitions(node: Any, found: dict[str, Any]) -> None:
    """Collect (and remove) pydantic's nested `$defs`; their references already point to components."""
    if isinstance(node, dict):
        defs = node.pop("$defs", None)
        if isinstance(defs, Mapping):
            for name, schema in defs.items():
                _hoist_definitions(schema, found)
                found.setdefault(name, schema)
        for value in node.values():
            _hoist_definitions(value, found)
    elif isinstance(node, list):
        for value in node:
            _hoist_definitions(value, found)


def complete_openapi(app: FastAPI, portal_dependencies: tuple[Any, ...] = ()) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = doc.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    schemas["Problem"] = schema_of(Problem)
    components["securitySchemes"] = SECURITY_SCHEMES
    for route in _api_routes(app):
        if not route.include_in_schema:
            continue
        item = doc["paths"].get(route.path_format, {})
        for method in route.methods:
            if method.lower() in item:
                _complete_operation(item[method.lower()], route, portal_dependencies)
    hoisted: dict[str, Any] = {}
    _hoist_definitions(doc, hoisted)
    for name, schema in hoisted.items():
        schemas.setdefault(name, schema)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["schemas"] = dict(sorted(schemas.items()))
    app.openapi_schema = doc
    return doc
