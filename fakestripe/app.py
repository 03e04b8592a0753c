"""The ASGI app: one catch-all endpoint that runs every request through the same pipeline.

arrival log -> rate limiter -> queued faults -> route lookup -> authentication -> API version ->
idempotency replay/conflict -> parameter decoding and SDK-derived validation -> handler (under the
state lock) -> idempotent save -> JSON answer shaped like Stripe's.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
import traceback
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute

from . import resources  # noqa: F401  (registers the endpoints)
from .errors import StripeAPIError
from .faults import Fault, Faults
from .params import decode_form, validate
from .routes import ROUTER, Ctx, Route, Router
from .state import FakeState, RequestRecord, SavedResponse, new_id

_KEY_RE = re.compile(r"^(sk|rk)_test_[A-Za-z0-9_]+$")
_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
IDEMPOTENCY_TTL = 24 * 3600


def dumps(value: Any) -> bytes:
    """JSON with :class:`~decimal.Decimal` values written as exact number literals."""
    decimals: dict[str, str] = {}

    def encode(obj: Any) -> Any:
        if isinstance(obj, Decimal):
            token = f"__fakestripe_decimal_{len(decimals)}__"
            decimals[token] = format(obj.normalize(), "f")
            return token
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    text = json.dumps(value, default=encode, indent=2)
    for token, literal in decimals.items():
        text = text.replace(f'"{token}"', literal)
    return text.encode()


class _BrokenResponse(Response):
    """A response whose connection breaks after the headers: the status line and a Content-Length
    (the real answer's, or that of the body given) go out, the body never does. uvicorn closes the
    connection (logging "ASGI callable returned without completing response"), and the client sees
    the stream end early."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})


class FakeStripeApp:
    def __init__(self, state: FakeState, faults: Faults, router: Router = ROUTER) -> None:
        self.state = state
        self.faults = faults
        self.router = router
        self._in_flight: set[tuple[str, str]] = set()  # idempotency keys whose request is executing
        # Answers of "still running" requests (fault): 409s left to give, then the save to perform.
        self._held: dict[tuple[str, str], _HeldAnswer] = {}
        self.asgi = Starlette(routes=[StarletteRoute("/{path:path}", self.handle, methods=["GET", "POST", "DELETE"])])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.asgi(scope, receive, send)

    # -- pipeline ---------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        method, path = request.method.upper(), request.url.path
        headers = {k.lower(): v for k, v in request.headers.items()}
        record = RequestRecord(
            method=method,
            path=path,
            query=request.url.query,
            headers=headers,
            body=body,
            received_monotonic=time.monotonic(),
            fake_now=self.state.now(),
        )
        self.state.requests.append(record)
        request_id = new_id("req", 14)
        if not path.startswith("/_fake/") and not self.faults.arrive(method, path):
            record.outcome = "rate_limited"
            return self._error(record, request_id, _rate_limit_error(None))
        fault = self.faults.take(method, path) if not path.startswith("/_fake/") else None
        if fault is not None and fault.kind in ("rate_limit", "server_error"):
            record.outcome = f"fault:{fault.status}"
            error = _rate_limit_error(fault.should_retry) if fault.kind == "rate_limit" else _server_error(fault)
            if fault.kind == "server_error" and fault.saved:
                return await self._run(record, request_id, body, forced_error=error)
            return self._error(record, request_id, error)
        if fault is not None and fault.kind == "timeout":
            record.outcome = "fault:timeout"
            await self._hang(fault)
            return self._error(record, request_id, _server_error(Fault("server_error", status=504)))
        if fault is not None and fault.kind == "drop":
            record.outcome = "fault:drop"
            return _BrokenResponse(b"{}", status_code=200)
        if fault is not None and fault.kind == "still_running":
            record.outcome = "fault:still_running"
            response = await self._run(record, request_id, body, hold=fault.conflicts)
            return _BrokenResponse(status_code=response.status_code, headers=response.headers)
        response = await self._run(record, request_id, body)
        if fault is not None and fault.kind == "timeout_after":
            record.outcome = "fault:timeout_after"
            await self._hang(fault)
        if fault is not None and fault.kind == "drop_after":
            record.outcome = "fault:drop_after"
            return _BrokenResponse(status_code=response.status_code, headers=response.headers)
        return response

    async def _hang(self, fault: Fault) -> None:
        deadline = time.monotonic() + fault.hang_seconds
        while time.monotonic() < deadline and not self.faults.released.is_set():
            await asyncio.sleep(0.02)

    async def _run(
        self,
        record: RequestRecord,
        request_id: str,
        body: bytes,
        forced_error: StripeAPIError | None = None,
        hold: int = 0,
    ) -> Response:
        method, path = record.method, record.path
        headers = record.headers
        idem_key: str | None = None
        scope_key = ""
        raw: dict[str, Any] = {}
        try:
            route, path_params = self.router.match(method, path)
            credential = self._authenticate(route, headers)
            api_version = self._api_version(headers)
            raw = self._decode(route, record, body)
            uses_idempotency = route.auth != "none" and (method == "POST" or (route.api == "v2" and method == "DELETE"))
            idem_key = headers.get("idempotency-key") if uses_idempotency else None
            if idem_key is not None:
                if len(idem_key) > 255:
                    raise StripeAPIError.invalid(
                        "Invalid idempotency key: must be at most 255 characters.", param="Idempotency-Key"
                    )
                scope_key = credential or ""
                fingerprint = _fingerprint(method, path, raw)
                held = self._held.get((scope_key, idem_key))
                if held is not None:
                    if held.conflicts > 0:
                        held.conflicts -= 1
                        raise _in_progress(idem_key)
                    del self._held[(scope_key, idem_key)]
                    self._save(*held.save)  # the request "finished": its answer is replayed from now on
                saved = self.state.idempotency.get((scope_key, idem_key))
                if saved is not None and saved.created + IDEMPOTENCY_TTL <= self.state.now():
                    saved = None
                if saved is not None:
                    if saved.fingerprint != fingerprint:
                        raise StripeAPIError(
                            400,
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same parameters they were "
                            f"first used with. Try using a key other than '{idem_key}' if you meant to execute "
                            "a different request.",
                            saved=False,
                        )
                    record.outcome = "replayed"
                    record.status = saved.status
                    replay_headers = dict(saved.headers)
                    replay_headers["Idempotent-Replayed"] = "true"
                    replay_headers["Request-Id"] = request_id
                    return Response(saved.body, status_code=saved.status, headers=replay_headers)
                if (scope_key, idem_key) in self._in_flight:
                    raise _in_progress(idem_key)
            spec = route.spec()
            params = validate(raw, spec, form=route.api == "v1") if spec is not None else raw
            if forced_error is not None:
                raise forced_error
            ctx = Ctx(
                state=self.state,
                params=params,
                path_params=path_params,
                api_version=api_version,
                api_key=credential,
                request_id=request_id,
                idempotency_key=idem_key,
                headers=headers,
                method=method,
                path=path,
            )
            in_flight = (scope_key, idem_key) if idem_key is not None else None
            if in_flight is not None:
                self._in_flight.add(in_flight)
            try:
                result = await run_in_threadpool(self._call, route, ctx)
                status = route.status
                body_out = dumps(result)
                response_headers = self._headers(request_id, api_version, idem_key)
                if idem_key is not None:
                    self._keep(hold, scope_key, idem_key, method, path, raw, status, body_out, response_headers)
            finally:
                if in_flight is not None:
                    self._in_flight.discard(in_flight)
            record.status = status
            record.outcome = record.outcome or "ok"
            self.state.notify()
            return Response(body_out, status_code=status, headers=response_headers)
        except StripeAPIError as exc:
            return self._stripe_error(record, request_id, exc, scope_key, idem_key, raw, hold)
        except Exception as exc:  # a bug in the fake: answer like Stripe's 500 and keep it for the test to see
            self.state.server_errors.append(f"{method} {path}: {traceback.format_exc()}")
            bug = StripeAPIError(500, "api_error", f"fake Stripe server error: {exc!r}", saved=False)
            bug.headers["Stripe-Should-Retry"] = "false"
            return self._error(record, request_id, bug, idem_key)

    def _stripe_error(
        self,
        record: RequestRecord,
        request_id: str,
        exc: StripeAPIError,
        scope_key: str,
        idem_key: str | None,
        raw: dict[str, Any],
        hold: int = 0,
    ) -> Response:
        method, path = record.method, record.path
        if idem_key is not None and exc.saved and method in ("POST", "DELETE"):
            body_out = dumps(exc.body())
            response_headers = self._headers(request_id, None, idem_key)
            response_headers.update(exc.headers)
            self._keep(hold, scope_key, idem_key, method, path, raw, exc.status, body_out, response_headers)
        return self._error(record, request_id, exc, idem_key)

    # -- steps ------------------------------------------------------------------------------------

    def _call(self, route: Route, ctx: Ctx) -> Any:
        """Run a handler (in a worker thread, so the event loop keeps serving other requests)."""
        if not route.locked:
            return route.handler(ctx)
        with self.state.lock:
            return route.handler(ctx)

    def _authenticate(self, route: Route, headers: dict[str, str]) -> str | None:
        if route.auth == "none":
            return None
        auth = headers.get("authorization", "")
        credential = ""
        if auth.lower().startswith("bearer "):
            credential = auth[7:].strip()
        elif auth.lower().startswith("basic "):
            try:
                credential = base64.b64decode(auth[6:]).decode().split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                credential = ""
        if route.auth == "session":
            session = self.state.sessions.get(credential)
            if session is None:
                raise StripeAPIError.unauthorized(
                    "Invalid or missing meter event session token.", code="billing_meter_event_session_invalid"
                )
            if self.state.now() >= session.expires_at:
                raise StripeAPIError.unauthorized(
                    "The meter event session has expired; create a new session.",
                    type_="temporary_session_expired",
                    code="billing_meter_event_session_expired",
                )
            return credential
        if not credential:
            raise StripeAPIError.unauthorized(
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
            )
        allowed = self.state.api_keys
        if not _KEY_RE.match(credential) or (allowed is not None and credential not in allowed):
            masked = credential[:8] + "*" * max(0, len(credential) - 12) + credential[-4:]
            raise StripeAPIError.unauthorized(f"Invalid API Key provided: {masked}")
        return credential

    def _api_version(self, headers: dict[str, str]) -> str:
        version = headers.get("stripe-version")
        if version is None:
            return self.state.account_api_version
        if not _VERSION_RE.match(version):
            raise StripeAPIError.invalid(f"Invalid Stripe API version: {version}", param="Stripe-Version")
        return version

    def _decode(self, route: Route, record: RequestRecord, body: bytes) -> dict[str, Any]:
        if record.method == "POST" and route.api == "v2":
            if not body.strip():
                return {}
            try:
                value = json.loads(body)
            except ValueError:
                raise StripeAPIError.invalid("Invalid JSON in request body.") from None
            if not isinstance(value, dict):
                raise StripeAPIError.invalid("The request body must be a JSON object.")
            return value
        text = body.decode() if record.method == "POST" else record.query
        if record.method == "POST" and record.query:
            text = "&".join(t for t in (record.query, text) if t)
        return decode_form(parse_qsl(text, keep_blank_values=True))

    def _headers(self, request_id: str, api_version: str | None, idem_key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Request-Id": request_id}
        if api_version:
            headers["Stripe-Version"] = api_version
        if idem_key:
            headers["Idempotency-Key"] = idem_key
        return headers

    def _keep(self, hold: int, *save: Any) -> None:
        """Save an answer under its idempotency key, or, for a request that is "still running"
        (``hold`` > 0), keep it aside until ``hold`` retries have been answered 409."""
        if hold > 0:
            scope_key, idem_key = save[0], save[1]
            self._held[(scope_key, idem_key)] = _HeldAnswer(conflicts=hold, save=save)
        else:
            self._save(*save)

    def _save(
        self,
        scope_key: str,
        idem_key: str,
        method: str,
        path: str,
        raw: dict[str, Any],
        status: int,
        body: bytes,
        headers: dict[str, str],
    ) -> None:
        with self.state.lock:
            self.state.idempotency[(scope_key, idem_key)] = SavedResponse(
                fingerprint=_fingerprint(method, path, raw),
                method=method,
                path=path,
                status=status,
                body=body,
                headers=dict(headers),
                created=self.state.now(),
            )

    def _error(
        self, record: RequestRecord, request_id: str, exc: StripeAPIError, idem_key: str | None = None
    ) -> Response:
        record.status = exc.status
        record.outcome = record.outcome or "error"
        headers = self._headers(request_id, None, idem_key)
        headers.update(exc.headers)
        return Response(dumps(exc.body()), status_code=exc.status, headers=headers)


@dataclass
class _HeldAnswer:
    conflicts: int  # requests with the key still to be answered 409 "in progress"
    save: tuple[Any, ...]  # the arguments of FakeStripeApp._save once the request "finishes"


def _in_progress(idem_key: str) -> StripeAPIError:
    return StripeAPIError(
        409,
        "idempotency_error",
        f"There is currently another in-progress request using the idempotency key '{idem_key}'. Try again later.",
        saved=False,
    )


def _fingerprint(method: str, path: str, raw: dict[str, Any]) -> str:
    canonical = json.dumps([method, path, raw], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _rate_limit_error(should_retry: bool | None) -> StripeAPIError:
    headers = {} if should_retry is None else {"Stripe-Should-Retry": "true" if should_retry else "false"}
    return StripeAPIError(
        429,
        "invalid_request_error",
        "Request rate limit exceeded. You can learn more about rate limits here https://stripe.com/docs/rate-limits.",
        code="rate_limit",
        headers=headers,
        saved=False,
    )


def _server_error(fault: Fault) -> StripeAPIError:
    headers = {} if fault.should_retry is None else {"Stripe-Should-Retry": "true" if fault.should_retry else "false"}
    return StripeAPIError(
        fault.status,
        "api_error",
        "An unknown error occurred (injected by the fake Stripe server).",
        headers=headers,
        saved=fault.saved,
    )
