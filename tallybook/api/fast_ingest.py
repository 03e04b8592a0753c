"""The common ingest request, served without FastAPI's middleware, routing and dependency machinery.

A single-event POST to /api/v1/events spends most of its CPU outside ingest: the middleware stack
(FastAPI's own error, telemetry and body-limit layers and ours), matching the path against every
route, solving dependencies, building a Request and a Response. `FastIngest` answers the request
that needs none of that (an identity-encoded body of valid events, with a cached API key allowed to
ingest) by calling the same functions the route calls: the body limit, `jsonutil.loads_request`,
`parse_cloudevents` and the group-commit writer, then 204. The app (`api.app.TallybookAPI`) hands it
such requests before its middleware stack; it times the ones it answers under the route's template,
as the metrics middleware would.

Everything else goes to the whole app, whose route answers exactly as before: an unknown key, a
refusal of any kind (U+0000 in the query included), gzip, a writer that is stopping. `FastIngest`
hands over the body it read (replayed as the request's messages) and has stored nothing, or stored
the events once: a commit that failed is retried by the route, and a retry of stored events is a
duplicate by design.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tallybook import jsonutil
from tallybook.api.guards import nul_in
from tallybook.api.ingesting import nesting_errors
from tallybook.api.routes.events import BATCH, PLAIN, SINGLE, parse_cloudevents
from tallybook.auth.keys import scope_allows
from tallybook.clock import to_micros
from tallybook.runtime import Runtime

PATH = "/api/v1/events"
_KINDS = frozenset((SINGLE, BATCH, PLAIN))
_NO_CONTENT = {"type": "http.response.start", "status": 204, "headers": []}
_EMPTY = {"type": "http.response.body", "body": b"", "more_body": False}


class FastIngest:
    """`app` is the whole application, for every request this one does not answer itself. The
    app calls this only for requests it `claims`."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        # The metrics middleware's series for an answered request (labelled once, not per request).
        self.answered = runtime.metrics.request_seconds.labels("POST", PATH, "204")
        self.commits = _CommitWaits()

    @staticmethod
    def claims(scope: Scope) -> bool:
        """Whether the request is one this may answer (the rest of the checks come in `__call__`)."""
        return scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        kind = self._admitted(scope) if nul_in(scope) is None else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = await self._body(receive, messages)
        if body is None or not await self._ingest(body, kind):
            await self.app(scope, _replay(messages, receive), send)
            return
        await send(_NO_CONTENT)
        await send(_EMPTY)
        self.answered.observe(time.perf_counter() - started)

    def _admitted(self, scope: Scope) -> str | None:
        """The media type, when the headers allow the fast path (else None: the route decides)."""
        secret = media = apikey = None
        bearer = False  # the first Authorization header decides, as for the route
        for name, value in scope["headers"]:
            if name == b"content-type" and media is None:
                media = value.split(b";", 1)[0].strip().lower().decode("latin-1")
            elif name == b"authorization" and not bearer:
                scheme, _, token = value.decode("latin-1").partition(" ")
                bearer = True
                if scheme.lower() == "bearer" and token.strip():
                    secret = token.strip()
            elif name == b"x-apikey" and apikey is None:
                apikey = value.decode("latin-1") or None
            elif name == b"content-encoding" and value.strip().lower() != b"identity":
                return None
        secret = secret or apikey
        if media not in _KINDS or secret is None:
            return None
        hit, record = self.runtime.keys.cached(secret)
        if not hit or record is None or not scope_allows(record.scope, "ingest"):
            return None
        return media

    async def _body(self, receive: Receive, messages: list[Message]) -> bytes | None:
        """The whole body, or None past the size limit or on anything but body messages."""
        limit = self.runtime.settings.ingest.max_batch_bytes
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _ingest(self, body: bytes, kind: str) -> bool:
        """True once the events are committed; False leaves the request to the route."""
        runtime = self.runtime
        try:
            if not body.strip():
                return False
            payload = jsonutil.loads_request(body, None)
            if nesting_errors(payload, body, "data"):
                return False
            limits = runtime.settings.ingest
            events = parse_cloudevents(payload, kind, to_micros(runtime.clock.now()), limits.max_batch_events)
            future = runtime.ingest.submit(events, isinstance(payload, list))
            await self.commits.wait(future)
        except Exception:
            return False
        return True


class _CommitWaits:
    """Awaiting the writer's futures with one wake-up of the event loop per group commit, not one
    per request.

    `asyncio.wrap_future` makes every resolved future call `loop.call_soon_threadsafe`: a write to
    the loop's wake-up pipe and a pass of its selector, for each of the ~30 requests a group commit
    answers at once. Here the writer thread queues the resolved futures and only the first of a run
    schedules the loop callback that settles them all. Kept per event loop (a server has one; tests
    may run several), so every waiter is settled in its own loop's thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resolved: dict[asyncio.AbstractEventLoop, list[tuple[Future[Any], asyncio.Future[Any]]]] = {}

    def wait(self, future: Future[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        future.add_done_callback(lambda done: self._resolve(loop, done, waiter))
        return waiter

    def _resolve(self, loop: asyncio.AbstractEventLoop, done: Future[Any], waiter: asyncio.Future[Any]) -> None:
        """In the thread that resolved `done` (the writer; or this one, if it was done already)."""
        with self._lock:
            queued = self._resolved.get(loop)
            if queued is not None:  # a settle is scheduled on this loop and has not run yet
                queued.append((done, waiter))
                return
            self._resolved[loop] = [(done, waiter)]
        try:
            loop.call_soon_threadsafe(self._settle, loop)
        except RuntimeError:  # the loop is closed (shutting down): nobody waits any more
            with self._lock:
                self._resolved.pop(loop, None)

    def _settle(self, loop: asyncio.AbstractEventLoop) -> None:
        """In `loop`: hand every outcome queued for it to its waiter."""
        with self._lock:
            resolved = self._resolved.pop(loop, [])
        for done, waiter in resolved:
            if waiter.cancelled():
                continue
            if done.cancelled():
                waiter.cancel()
                continue
            error = done.exception()
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(done.result())


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` for the route: the messages already read, then the request's own."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
